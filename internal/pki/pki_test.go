package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestInitOpenRoundTrip(t *testing.T) {
	t.Parallel()
	a, dir := newCA(t, "Clinic")
	if !Initialised(dir) {
		t.Fatal("Initialised = false after Init")
	}
	root, issuer := a.Root(), a.Issuer()
	if got, want := root.Subject.CommonName, "Clinic Root CA"; got != want {
		t.Errorf("root CN = %q, want %q", got, want)
	}
	if got, want := issuer.Subject.CommonName, "Clinic Issuing CA 1"; got != want {
		t.Errorf("issuer CN = %q, want %q", got, want)
	}
	if !root.IsCA || !issuer.IsCA || issuer.MaxPathLen != 0 || !issuer.MaxPathLenZero {
		t.Errorf("CA flags: root IsCA %v, issuer IsCA %v MaxPathLen %d", root.IsCA, issuer.IsCA, issuer.MaxPathLen)
	}
	for _, c := range []*x509.Certificate{root, issuer} {
		if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || c.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
			t.Errorf("%s: key is not ECDSA P-256", c.Subject.CommonName)
		}
	}
	if got, want := root.NotAfter, t0.Add(20*365*24*time.Hour).Truncate(time.Second); !got.Equal(want) {
		t.Errorf("root NotAfter = %v, want %v", got, want)
	}
	if got, want := issuer.NotAfter, t0.Add(5*365*24*time.Hour).Truncate(time.Second); !got.Equal(want) {
		t.Errorf("issuer NotAfter = %v, want %v", got, want)
	}
	if err := issuer.CheckSignatureFrom(root); err != nil {
		t.Errorf("issuer not signed by root: %v", err)
	}
	if a.Lifetime() != 7*24*time.Hour {
		t.Errorf("Lifetime = %v, want 7 days", a.Lifetime())
	}
	r, err := ReadRoot(dir)
	if err != nil || !r.Equal(root) {
		t.Errorf("ReadRoot = %v, %v; want the root", r, err)
	}

	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode = %v, %v; want 0700", st.Mode().Perm(), err)
	}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{
		{RootCertFile, 0o644}, {IssuerCertFile, 0o644}, {RootKeyFile, 0o600}, {IssuerKeyFile, 0o600},
	} {
		path := filepath.Join(dir, f.name)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != f.mode {
			t.Errorf("%s mode = %v, want %v", f.name, st.Mode().Perm(), f.mode)
		}
		if strings.HasSuffix(f.name, ".key") {
			b, _ := os.ReadFile(path)
			if !bytes.HasPrefix(b, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
				t.Errorf("%s is not an encrypted PKCS#8 PEM key", f.name)
			}
			if bytes.Contains(b, []byte(testPass)) {
				t.Errorf("%s contains the passphrase", f.name)
			}
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("dir has %d entries, want 4 (no temp files left)", len(entries))
	}

	// The root key decrypts with the passphrase and matches root.crt.
	rk, err := ReadKeyFile(filepath.Join(dir, RootKeyFile), []byte(testPass))
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(root.PublicKey, rk.Public()) {
		t.Error("root.key does not match root.crt")
	}
}

func TestInitErrors(t *testing.T) {
	t.Parallel()
	existing := filepath.Join(t.TempDir(), "ca")
	if err := Init(InitConfig{Dir: existing, Passphrase: []byte(testPass), Now: fixedNow(t0)}); err != nil {
		t.Fatal(err)
	}
	offline := filepath.Join(t.TempDir(), "root.key")
	if err := os.WriteFile(offline, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cfg     InitConfig
		wantErr error
	}{
		{"twice", InitConfig{Dir: existing, Passphrase: []byte(testPass)}, ErrExists},
		{"short passphrase", InitConfig{Dir: filepath.Join(t.TempDir(), "ca"), Passphrase: []byte("elevenbytes")}, nil},
		{"no passphrase", InitConfig{Dir: filepath.Join(t.TempDir(), "ca")}, nil},
		{"no dir", InitConfig{Passphrase: []byte(testPass)}, nil},
		{"root key out exists", InitConfig{Dir: filepath.Join(t.TempDir(), "ca"), Passphrase: []byte(testPass), RootKeyOut: offline}, os.ErrExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Init(tt.cfg)
			if err == nil {
				t.Fatal("Init succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if len(tt.cfg.Passphrase) > 0 && strings.Contains(err.Error(), string(tt.cfg.Passphrase)) {
				t.Errorf("error %q contains the passphrase", err)
			}
		})
	}
	if b, _ := os.ReadFile(offline); string(b) != "keep me" {
		t.Error("existing RootKeyOut file was overwritten")
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	testCA(t)
	dir := caDir("Ward")
	const wrong = "not the passphrase at all"
	tests := []struct {
		name    string
		cfg     Config
		wantErr error
	}{
		{"wrong passphrase", Config{Dir: dir, Passphrase: []byte(wrong)}, ErrBadPassphrase},
		{"empty dir", Config{Dir: t.TempDir(), Passphrase: []byte(testPass)}, ErrNotInitialised},
		{"missing dir", Config{Dir: filepath.Join(t.TempDir(), "nope"), Passphrase: []byte(testPass)}, ErrNotInitialised},
		{"no passphrase", Config{Dir: dir}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Open(tt.cfg)
			if err == nil {
				t.Fatalf("Open = %v, want error", a)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			for _, secret := range []string{wrong, testPass} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q contains a passphrase", err)
				}
			}
		})
	}
}

func TestOpenRejectsMismatchedFiles(t *testing.T) {
	t.Parallel()
	testCA(t)
	otherCA(t)
	// copyCA copies Ward's CA directory, with some files taken from Other's.
	copyCA := func(fromOther ...string) string {
		dir := t.TempDir()
		for _, f := range []string{RootCertFile, IssuerCertFile, IssuerKeyFile} {
			src := caDir("Ward")
			if slices.Contains(fromOther, f) {
				src = caDir("Other")
			}
			b, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	tests := []struct {
		name      string
		fromOther []string
	}{
		{"issuer not signed by root", []string{IssuerCertFile}},
		{"key does not match issuer", []string{IssuerKeyFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Open(Config{Dir: copyCA(tt.fromOther...), Passphrase: []byte(testPass)}); err == nil {
				t.Error("Open succeeded")
			}
		})
	}
	if _, err := Open(Config{Dir: copyCA(), Passphrase: []byte(testPass)}); err != nil {
		t.Errorf("Open of an unmodified copy: %v", err)
	}
}

func TestRootKeyOut(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	offline := filepath.Join(t.TempDir(), "offline-root.key")
	if err := Init(InitConfig{Dir: dir, Passphrase: []byte(testPass), RootKeyOut: offline, Now: fixedNow(t0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, RootKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir/root.key exists (err %v); the root key must be only at RootKeyOut", err)
	}
	b, err := os.ReadFile(offline)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
		t.Error("offline root key is not encrypted PKCS#8")
	}
	if st, _ := os.Stat(offline); st.Mode().Perm() != 0o600 {
		t.Errorf("offline root key mode = %v, want 0600", st.Mode().Perm())
	}
	if !Initialised(dir) {
		t.Error("Initialised = false without the root key")
	}
	a, err := Open(Config{Dir: dir, Passphrase: []byte(testPass), Now: fixedNow(t0)})
	if err != nil {
		t.Fatalf("Open without the root key: %v", err)
	}
	rk, err := ReadKeyFile(offline, []byte(testPass))
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(a.Root().PublicKey, rk.Public()) {
		t.Error("offline key does not match root.crt")
	}
	issue(t, a, "dev-1")
}

func TestIssueDevice(t *testing.T) {
	a := testCA(t)
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)

	tests := []struct {
		name    string
		key     crypto.Signer
		wantKU  x509.KeyUsage
		wantErr error
	}{
		{"ecdsa p256", newP256(t), x509.KeyUsageDigitalSignature, nil},
		{"ecdsa p384", p384, x509.KeyUsageDigitalSignature, nil},
		{"ed25519", ed, x509.KeyUsageDigitalSignature, nil},
		{"rsa 2048", rsa2048, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil},
		{"rsa 1024 refused", rsa1024, 0, ErrWeakKey},
		{"ecdsa p521 refused", p521, 0, ErrWeakKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := DeviceIdentity{ID: "pump-0042", Serial: "ACME-123456", Manufacturer: "Acme Medical", Model: "Infusa 3"}
			c, err := a.IssueDevice(newCSR(t, tt.key, "anything", "ACME-123456"), id)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject.CommonName != id.ID || SubjectSerial(c.Subject) != id.Serial ||
				!slices.Equal(c.Subject.Organization, []string{id.Manufacturer}) ||
				!slices.Equal(c.Subject.OrganizationalUnit, []string{id.Model}) {
				t.Errorf("subject = %v", c.Subject)
			}
			if len(c.URIs) != 1 || c.URIs[0].String() != "ward://device/pump-0042" {
				t.Errorf("URIs = %v", c.URIs)
			}
			if got, err := DeviceIDFromCert(c); err != nil || got != id.ID {
				t.Errorf("DeviceIDFromCert = %q, %v", got, err)
			}
			if c.KeyUsage != tt.wantKU {
				t.Errorf("KeyUsage = %v, want %v", c.KeyUsage, tt.wantKU)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ExtKeyUsage = %v", c.ExtKeyUsage)
			}
			if c.IsCA || !c.BasicConstraintsValid {
				t.Errorf("IsCA %v, BasicConstraintsValid %v", c.IsCA, c.BasicConstraintsValid)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %v not a positive 128-bit number", c.SerialNumber)
			}
			if !publicKeysEqual(c.PublicKey, tt.key.Public()) {
				t.Error("certificate does not carry the CSR's key")
			}
			if !c.NotBefore.Equal(t0.Add(-5*time.Minute)) || !c.NotAfter.Equal(t0.Add(7*24*time.Hour)) {
				t.Errorf("validity %v..%v", c.NotBefore, c.NotAfter)
			}
			chains, err := c.Verify(x509.VerifyOptions{
				Roots:         pool(a.Root()),
				Intermediates: pool(a.Issuer()),
				CurrentTime:   t0,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			})
			if err != nil || len(chains) != 1 || len(chains[0]) != 3 {
				t.Errorf("Verify = %v, %v", chains, err)
			}
		})
	}
}

func TestIssueDeviceOmitsEmptyFields(t *testing.T) {
	a := testCA(t)
	c, err := a.IssueDevice(newCSR(t, newP256(t), "x", ""), DeviceIdentity{ID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.SerialNumber != "" || len(c.Subject.Organization) != 0 || len(c.Subject.OrganizationalUnit) != 0 {
		t.Errorf("subject = %v, want only CN", c.Subject)
	}
}

func TestIssueDeviceRefuses(t *testing.T) {
	a := testCA(t)
	tampered := *newCSR(t, newP256(t), "x", "").Request()
	tampered.Signature = slices.Clone(tampered.Signature)
	tampered.Signature[len(tampered.Signature)-1] ^= 1
	if _, err := CheckCSR(&tampered); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("CheckCSR(tampered) = %v, want ErrBadCSR", err)
	}
	if _, err := ParseCSR([]byte("not der")); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("ParseCSR(garbage) = %v, want ErrBadCSR", err)
	}
	tests := []struct {
		name    string
		csr     *CSR
		id      string
		wantErr error
	}{
		{"nil csr", nil, "d1", nil},
		{"zero CSR", &CSR{}, "d1", nil},
		{"empty id", newCSR(t, newP256(t), "x", ""), "", ErrInvalidDeviceID},
		{"uppercase id", newCSR(t, newP256(t), "x", ""), "Pump1", ErrInvalidDeviceID},
		{"slash in id", newCSR(t, newP256(t), "x", ""), "a/b", ErrInvalidDeviceID},
		{"leading dash", newCSR(t, newP256(t), "x", ""), "-a", ErrInvalidDeviceID},
		{"too long", newCSR(t, newP256(t), "x", ""), strings.Repeat("a", 65), ErrInvalidDeviceID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := a.IssueDevice(tt.csr, DeviceIdentity{ID: tt.id})
			if err == nil {
				t.Fatalf("IssueDevice = %v, want error", c.Subject)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestIssueDeviceLifetime(t *testing.T) {
	base := testCA(t)
	issuerEnd := base.Issuer().NotAfter
	tests := []struct {
		name         string
		now          time.Time
		lifetime     time.Duration
		wantNotAfter time.Time
		wantErr      error
	}{
		{"default 7 days", t0.Add(time.Hour), 0, t0.Add(time.Hour + 7*24*time.Hour), nil},
		{"configured 30 days", t0.Add(48 * time.Hour), 30 * 24 * time.Hour, t0.Add(48*time.Hour + 30*24*time.Hour), nil},
		{"capped at issuer NotAfter", issuerEnd.Add(-24 * time.Hour), 0, issuerEnd, nil},
		{"issuer expired", issuerEnd.Add(time.Second), 0, time.Time{}, ErrCertExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := at(base, tt.now)
			if tt.lifetime != 0 {
				a.lifetime = tt.lifetime
			}
			c, err := a.IssueDevice(newCSR(t, newP256(t), "x", ""), DeviceIdentity{ID: "d1"})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("NotAfter = %v, want %v", c.NotAfter, tt.wantNotAfter)
			}
			if !c.NotBefore.Equal(tt.now.Add(-5 * time.Minute)) {
				t.Errorf("NotBefore = %v, want now-5m", c.NotBefore)
			}
		})
	}
}

func TestVerifyDevice(t *testing.T) {
	a := testCA(t)
	good := issue(t, a, "pump-7")
	other := otherCA(t)
	foreign := issue(t, other, "pump-7")
	mca, mkey, err := NewManufacturerCA(ManufacturerCAConfig{Name: "Acme", Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	birth, _, err := MintBirthCertificate(BirthConfig{CA: mca, CAKey: mkey, Serial: "ACME-1", Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	server, err := a.IssueServer([]string{"ward.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Signed by Ward's issuer, client auth, but two device URIs.
	twoURIs, err := a.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "d1"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		URIs:        []*url.URL{DeviceURI("d1"), DeviceURI("d2")},
	}, time.Hour, newP256(t).Public())
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		leaf    *x509.Certificate
		now     time.Time
		wantID  string
		wantErr error
	}{
		{"good", good, t0.Add(time.Hour), "pump-7", nil},
		{"good within skew", good, t0.Add(-4 * time.Minute), "pump-7", nil},
		{"expired", good, good.NotAfter.Add(time.Second), "", ErrCertExpired},
		{"not yet valid", good, good.NotBefore.Add(-time.Second), "", ErrCertNotYetValid},
		{"other CA", foreign, t0.Add(time.Hour), "", ErrUntrusted},
		{"other CA and expired", foreign, foreign.NotAfter.Add(time.Hour), "", ErrUntrusted},
		{"birth certificate", birth, t0.Add(time.Hour), "", ErrUntrusted},
		{"server certificate", server.Leaf, t0.Add(time.Hour), "", ErrNotDeviceCert},
		{"two device URIs", twoURIs, t0, "", ErrNotDeviceCert},
		{"issuing CA itself", a.Issuer(), t0.Add(time.Hour), "", ErrNotDeviceCert},
		{"nil", nil, t0, "", ErrUntrusted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := at(a, tt.now).VerifyDevice(tt.leaf, []*x509.Certificate{a.Issuer()})
			if tt.wantID != "" {
				if err != nil || id != tt.wantID {
					t.Fatalf("VerifyDevice = %q, %v; want %q", id, err, tt.wantID)
				}
				return
			}
			if err == nil {
				t.Fatalf("VerifyDevice = %q, want error", id)
			}
			if id != "" {
				t.Errorf("id = %q on error", id)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// A peer cannot smuggle in an intermediate: only the loaded issuer is trusted.
func TestVerifyDeviceIgnoresPeerIntermediates(t *testing.T) {
	a := testCA(t)
	other := otherCA(t)
	foreign := issue(t, other, "pump-7")
	_, err := at(a, t0.Add(time.Hour)).VerifyDevice(foreign, []*x509.Certificate{other.Issuer(), other.Root()})
	if !errors.Is(err, ErrUntrusted) {
		t.Errorf("err = %v, want ErrUntrusted", err)
	}
}

// A device with an LDevID completes mutual TLS 1.3 against the listener
// certificate, and the server learns its id from VerifyDevice.
func TestIssueServerMutualTLS(t *testing.T) {
	a := at(testCA(t), time.Now())
	srvCert, err := a.IssueServer([]string{"ward.example", "localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	leaf := srvCert.Leaf
	if len(srvCert.Certificate) != 2 || !bytes.Equal(srvCert.Certificate[1], a.Issuer().Raw) {
		t.Error("chain is not [leaf, issuer]")
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 90*24*time.Hour+5*time.Minute {
		t.Errorf("validity = %v, want 90 days + skew", got)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || leaf.IsCA {
		t.Errorf("ExtKeyUsage %v IsCA %v", leaf.ExtKeyUsage, leaf.IsCA)
	}
	if k, ok := srvCert.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Error("server key is not ECDSA P-256")
	}
	if _, err := a.IssueServer(nil, nil); err == nil {
		t.Error("IssueServer with no names succeeded")
	}

	devKey := newP256(t)
	devCert, err := a.IssueDevice(newCSR(t, devKey, "pump-9", ""), DeviceIdentity{ID: "pump-9"})
	if err != nil {
		t.Fatal(err)
	}
	gotID := make(chan string, 1)
	serverConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := a.VerifyDevice(cs.PeerCertificates[0], cs.PeerCertificates[1:])
			gotID <- id
			return err
		},
	}
	clientConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pool(a.Root()),
		ServerName:   "ward.example",
		Certificates: []tls.Certificate{{Certificate: [][]byte{devCert.Raw, a.Issuer().Raw}, PrivateKey: devKey}},
	}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	errc := make(chan error, 1)
	go func() { errc <- tls.Server(c1, serverConf).Handshake() }()
	cerr := tls.Client(c2, clientConf).Handshake()
	serr := <-errc
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	if id := <-gotID; id != "pump-9" {
		t.Errorf("server saw device %q, want pump-9", id)
	}
}

func TestCRL(t *testing.T) {
	a := testCA(t)
	c1, c2 := issue(t, a, "d1"), issue(t, a, "d2")
	entries := []x509.RevocationListEntry{
		{SerialNumber: c1.SerialNumber, RevocationTime: t0.Add(-time.Minute)},
		{SerialNumber: c2.SerialNumber, RevocationTime: t0.Add(-2 * time.Minute)},
	}
	der, err := a.CRL(entries, big.NewInt(42), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(a.Issuer()); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if err := crl.CheckSignatureFrom(a.Root()); err == nil {
		t.Error("CRL signature checks against the root; want the issuer only")
	}
	if crl.Number.Cmp(big.NewInt(42)) != 0 || !crl.ThisUpdate.Equal(t0) || !crl.NextUpdate.Equal(t0.Add(24*time.Hour)) {
		t.Errorf("number %v, this %v, next %v", crl.Number, crl.ThisUpdate, crl.NextUpdate)
	}
	if len(crl.RevokedCertificateEntries) != 2 {
		t.Fatalf("%d entries, want 2", len(crl.RevokedCertificateEntries))
	}
	for i, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(entries[i].SerialNumber) != 0 || !e.RevocationTime.Equal(entries[i].RevocationTime) {
			t.Errorf("entry %d = %v, want %v", i, e.SerialNumber, entries[i].SerialNumber)
		}
	}
	if _, err := a.CRL(nil, nil, time.Hour); err == nil {
		t.Error("CRL without a number succeeded")
	}
	if _, err := a.CRL(nil, big.NewInt(1), 0); err == nil {
		t.Error("CRL with no next update succeeded")
	}
}

// OpenSSL, an independent implementation, accepts what Ward issues.
func TestOpenSSLVerify(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not on PATH")
	}
	a := at(testCA(t), time.Now())
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, EncodeCertificates(certs...), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	root := write("root.pem", a.Root())
	issuer := write("issuer.pem", a.Issuer())
	leaf := write("leaf.pem", issue(t, a, "pump-1"))
	srv, err := a.IssueServer([]string{"ward.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	server := write("server.pem", srv.Leaf)
	other := otherCA(t)
	foreign := write("foreign.pem", issue(t, at(other, time.Now()), "pump-1"))

	tests := []struct {
		name string
		args []string
		ok   bool
	}{
		{"device", []string{"-purpose", "sslclient", leaf}, true},
		{"server", []string{"-purpose", "sslserver", server}, true},
		{"device as server", []string{"-purpose", "sslserver", leaf}, false},
		{"other CA", []string{foreign}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"verify", "-CAfile", root, "-untrusted", issuer}, tt.args...)
			out, err := exec.Command(openssl, args...).CombinedOutput()
			if (err == nil) != tt.ok {
				t.Errorf("openssl %s: err %v, want ok=%v\n%s", strings.Join(args, " "), err, tt.ok, out)
			}
		})
	}
}

func TestDeviceIDFromCert(t *testing.T) {
	parse := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	tests := []struct {
		name string
		uris []string
		want string
	}{
		{"ok", []string{"ward://device/pump-1"}, "pump-1"},
		{"ok with other scheme", []string{"urn:uuid:123", "ward://device/a"}, "a"},
		{"64 chars", []string{"ward://device/" + strings.Repeat("a", 64)}, strings.Repeat("a", 64)},
		{"none", nil, ""},
		{"two", []string{"ward://device/a", "ward://device/b"}, ""},
		{"wrong host", []string{"ward://devices/a"}, ""},
		{"nested path", []string{"ward://device/a/b"}, ""},
		{"empty id", []string{"ward://device/"}, ""},
		{"query", []string{"ward://device/a?x=1"}, ""},
		{"fragment", []string{"ward://device/a#x"}, ""},
		{"user", []string{"ward://u@device/a"}, ""},
		{"port", []string{"ward://device:1/a"}, ""},
		{"uppercase", []string{"ward://device/A"}, ""},
		{"escaped", []string{"ward://device/a%2Fb"}, ""},
		{"opaque", []string{"ward:device/a"}, ""},
		{"65 chars", []string{"ward://device/" + strings.Repeat("a", 65)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &x509.Certificate{}
			for _, s := range tt.uris {
				c.URIs = append(c.URIs, parse(s))
			}
			got, err := DeviceIDFromCert(c)
			if tt.want == "" {
				if !errors.Is(err, ErrNotDeviceCert) {
					t.Errorf("DeviceIDFromCert = %q, %v; want ErrNotDeviceCert", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("DeviceIDFromCert = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if got := DeviceURI("pump-1").String(); got != "ward://device/pump-1" {
		t.Errorf("DeviceURI = %q", got)
	}
}

func TestReadCertificates(t *testing.T) {
	a := testCA(t)
	two := EncodeCertificates(a.Root(), a.Issuer())
	keyPEM := []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	tests := []struct {
		name  string
		in    []byte
		count int // 0: want error
	}{
		{"one", EncodeCertificates(a.Root()), 1},
		{"two", two, 2},
		{"trailing whitespace", append(slices.Clone(two), "\n\n  \n"...), 2},
		{"empty", nil, 0},
		{"blank", []byte("\n \n"), 0},
		{"trailing garbage", append(slices.Clone(two), "garbage"...), 0},
		{"leading garbage", append([]byte("garbage\n"), two...), 0},
		{"malformed block before a good one", append([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n"), two...), 0},
		{"private key block", append(slices.Clone(two), keyPEM...), 0},
		{"bad DER", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := ReadCertificates(tt.in)
			if tt.count == 0 {
				if err == nil {
					t.Errorf("ReadCertificates = %d certs, want error", len(certs))
				}
				return
			}
			if err != nil || len(certs) != tt.count {
				t.Fatalf("ReadCertificates = %d, %v; want %d", len(certs), err, tt.count)
			}
			if !certs[0].Equal(a.Root()) {
				t.Error("first certificate is not the root")
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	a := testCA(t)
	sum := sha256.Sum256(a.Root().Raw)
	if got, want := Fingerprint(a.Root()), "SHA256:"+hex.EncodeToString(sum[:]); got != want {
		t.Errorf("Fingerprint = %q, want %q", got, want)
	}
}

func TestReadPassphrase(t *testing.T) {
	dir := t.TempDir()
	file := func(content string) string {
		p := filepath.Join(dir, strings.NewReplacer("\n", "n", "\r", "r", " ", "_").Replace(content)+".pass")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("WARD_TEST_PASS", "from env passphrase")
	t.Setenv("WARD_TEST_EMPTY", "")
	tests := []struct {
		name      string
		env, file string
		want      string // "": want error
	}{
		{"file with newline", "WARD_TEST_PASS", file("from file pass\n"), "from file pass"},
		{"file with crlf", "", file("crlf pass phrase\r\n"), "crlf pass phrase"},
		{"file keeps inner spaces", "", file(" spaced  "), " spaced  "},
		{"env", "WARD_TEST_PASS", "", "from env passphrase"},
		{"empty file", "WARD_TEST_PASS", file("\n"), ""},
		{"missing file", "WARD_TEST_PASS", filepath.Join(dir, "nope"), ""},
		{"empty env", "WARD_TEST_EMPTY", "", ""},
		{"unset env", "WARD_TEST_UNSET_XYZ", "", ""},
		{"neither", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadPassphrase(tt.env, tt.file)
			if tt.want == "" {
				if err == nil {
					t.Errorf("ReadPassphrase = %q, want error", got)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Errorf("ReadPassphrase = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestKeyFiles(t *testing.T) {
	t.Parallel()
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pass := []byte("a key file passphrase")
	dir := t.TempDir()
	write := func(name string, key crypto.Signer, pass []byte, header string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := WriteKeyFile(path, key, pass); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(path)
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", name, st.Mode().Perm())
		}
		b, _ := os.ReadFile(path)
		if !bytes.HasPrefix(b, []byte("-----BEGIN "+header+"-----\n")) {
			t.Errorf("%s starts %q", name, b[:min(len(b), 40)])
		}
		return path
	}
	ecKey := newP256(t)
	encrypted := write("ec.enc", ecKey, pass, "ENCRYPTED PRIVATE KEY")
	plain := write("ec.plain", ecKey, nil, "PRIVATE KEY")

	tests := []struct {
		name    string
		path    string
		pass    []byte
		want    crypto.Signer // nil: want error
		wantErr error
	}{
		{"ecdsa encrypted", encrypted, pass, ecKey, nil},
		{"ed25519 encrypted", write("ed.enc", ed, pass, "ENCRYPTED PRIVATE KEY"), pass, ed, nil},
		{"rsa encrypted", write("rsa.enc", rk, pass, "ENCRYPTED PRIVATE KEY"), pass, rk, nil},
		{"ecdsa plain", plain, nil, ecKey, nil},
		{"wrong passphrase", encrypted, []byte("another passphrase"), nil, ErrBadPassphrase},
		{"encrypted, no passphrase", encrypted, nil, nil, nil},
		{"plain, passphrase given", plain, pass, nil, nil},
		{"missing file", filepath.Join(dir, "nope"), pass, nil, os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadKeyFile(tt.path, tt.pass)
			if tt.want == nil {
				if err == nil {
					t.Fatal("ReadKeyFile succeeded")
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
				for _, p := range [][]byte{tt.pass, pass} {
					if len(p) > 0 && strings.Contains(err.Error(), string(p)) {
						t.Errorf("error %q contains a passphrase", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !publicKeysEqual(got.Public(), tt.want.Public()) {
				t.Error("read key differs from written key")
			}
		})
	}
	if err := WriteKeyFile(filepath.Join(dir, "k"), newP256(t), []byte{}); err == nil {
		t.Error("WriteKeyFile with an empty non-nil passphrase succeeded")
	}
}

func TestSubjectSerial(t *testing.T) {
	c := issue(t, testCA(t), "d9")
	if got := SubjectSerial(c.Subject); got != "SN-d9" {
		t.Errorf("SubjectSerial(parsed) = %q", got)
	}
	if got := SubjectSerial(pkix.Name{SerialNumber: "X1"}); got != "X1" {
		t.Errorf("SubjectSerial(built) = %q", got)
	}
	if got := SubjectSerial(pkix.Name{CommonName: "x"}); got != "" {
		t.Errorf("SubjectSerial(none) = %q", got)
	}
	ambiguous := pkix.Name{Names: []pkix.AttributeTypeAndValue{
		{Type: oidSerialNumber, Value: "A"}, {Type: oidSerialNumber, Value: "B"},
	}, SerialNumber: "B"}
	if got := SubjectSerial(ambiguous); got != "" {
		t.Errorf("SubjectSerial(two serials) = %q, want empty", got)
	}
}

func FuzzReadCertificates(f *testing.F) {
	f.Add(EncodeCertificates(testCA(f).Root(), testCA(f).Issuer()))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ReadCertificates(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		if err == nil {
			again, err := ReadCertificates(EncodeCertificates(certs...))
			if err != nil || len(again) != len(certs) {
				t.Fatalf("re-encoding: %d, %v", len(again), err)
			}
		}
	})
}

func FuzzDeviceIDFromCert(f *testing.F) {
	for _, s := range []string{"ward://device/pump-1", "ward://device/a/b", "ward://device/%41", "WARD://DEVICE/x", "ward://device/a?b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		id, err := DeviceIDFromCert(&x509.Certificate{URIs: []*url.URL{u}})
		if err != nil {
			return
		}
		if ValidDeviceID(id) != nil {
			t.Fatalf("accepted invalid id %q from %q", id, s)
		}
		if back, err := DeviceIDFromCert(&x509.Certificate{URIs: []*url.URL{DeviceURI(id)}}); err != nil || back != id {
			t.Fatalf("round trip of %q: %q, %v", id, back, err)
		}
	})
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// repeatReader returns b forever.
type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

func TestInjectedRandDrivesSerials(t *testing.T) {
	a := at(testCA(t), t0)
	a.rand = randReader(repeatReader(0xab))
	c := issue(t, a, "d1")
	want, _ := new(big.Int).SetString(strings.Repeat("ab", 16), 16)
	if c.SerialNumber.Cmp(want) != 0 {
		t.Errorf("serial = %x, want %x", c.SerialNumber, want)
	}
	// Zero is not a positive serial: newSerial draws again, here hitting EOF.
	if n, err := newSerial(bytes.NewReader(make([]byte, 32))); err == nil {
		t.Errorf("newSerial from zeros = %v, want error", n)
	}
}

func TestConcurrentIssueAndVerify(t *testing.T) {
	a := at(testCA(t), t0)
	a.rand = randReader(rand.Reader) // a caller's reader, serialised by Authority
	errc := make(chan error, 16)
	csrs := make([]*CSR, 16)
	for i := range csrs {
		csrs[i] = newCSR(t, newP256(t), "x", "")
	}
	for i := range 16 {
		go func() {
			id := "dev-" + strings.Repeat("x", i%5+1)
			c, err := a.IssueDevice(csrs[i], DeviceIdentity{ID: id})
			if err == nil {
				var got string
				got, err = a.VerifyDevice(c, nil)
				if err == nil && got != id {
					err = errors.New("wrong id " + got)
				}
			}
			errc <- err
		}()
	}
	for range 16 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}
