package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Encrypting and decrypting a CA key costs a deliberately slow PBKDF2, so
// most tests share one CA initialised once at t0 and copy its Authority with
// a different clock (at).

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const testPass = "correct horse battery staple"

var (
	fixturesMu sync.Mutex
	fixtureDir string
	fixtures   = map[string]*Authority{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureDir != "" {
		_ = os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

func fixedNow(t time.Time) func() time.Time { return func() time.Time { return t } }

// testCA returns the shared "Ward" CA, opened with the clock at t0. Its
// directory is caDir("Ward").
func testCA(tb testing.TB) *Authority { return fixture(tb, "Ward") }

// otherCA returns a second shared CA that Ward must not trust.
func otherCA(tb testing.TB) *Authority { return fixture(tb, "Other") }

func caDir(name string) string { return filepath.Join(fixtureDir, name) }

func fixture(tb testing.TB, name string) *Authority {
	tb.Helper()
	fixturesMu.Lock()
	defer fixturesMu.Unlock()
	if a := fixtures[name]; a != nil {
		return a
	}
	if fixtureDir == "" {
		d, err := os.MkdirTemp("", "ward-pki-test-")
		if err != nil {
			tb.Fatal(err)
		}
		fixtureDir = d
	}
	dir := caDir(name)
	if err := Init(InitConfig{Dir: dir, Passphrase: []byte(testPass), Name: name, Now: fixedNow(t0)}); err != nil {
		tb.Fatal(err)
	}
	a, err := Open(Config{Dir: dir, Passphrase: []byte(testPass), Now: fixedNow(t0)})
	if err != nil {
		tb.Fatal(err)
	}
	fixtures[name] = a
	return a
}

// at returns a copy of a whose clock reads now.
func at(a *Authority, now time.Time) *Authority {
	b := *a
	b.now = fixedNow(now)
	return &b
}

// newCA initialises and opens a fresh CA in a temporary directory.
func newCA(t *testing.T, name string) (*Authority, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(InitConfig{Dir: dir, Passphrase: []byte(testPass), Name: name, Now: fixedNow(t0)}); err != nil {
		t.Fatal(err)
	}
	a, err := Open(Config{Dir: dir, Passphrase: []byte(testPass), Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	return a, dir
}

func newP256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func newCSR(tb testing.TB, key crypto.Signer, cn, serial string) *CSR {
	tb.Helper()
	der, err := NewCSR(key, cn, serial)
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		tb.Fatal(err)
	}
	return csr
}

// issue issues a device certificate from a for a fresh P-256 key.
func issue(tb testing.TB, a *Authority, id string) *x509.Certificate {
	tb.Helper()
	c, err := a.IssueDevice(newCSR(tb, newP256(tb), id, "SN-"+id), DeviceIdentity{ID: id, Serial: "SN-" + id, Manufacturer: "Acme Medical", Model: "Pump 3000"})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
