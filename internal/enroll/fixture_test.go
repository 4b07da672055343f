package enroll

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
)

// Opening a CA costs a deliberately slow PBKDF2, so every test shares one CA
// (it keeps no state between issuances); each test gets its own store,
// registry, audit log and listener.

const testPass = "correct horse battery staple"

var (
	caOnce sync.Once
	caDir  string
	caAuth *pki.Authority
	caErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if caDir != "" {
		_ = os.RemoveAll(caDir)
	}
	os.Exit(code)
}

func sharedCA(tb testing.TB) *pki.Authority {
	tb.Helper()
	caOnce.Do(func() {
		if caDir, caErr = os.MkdirTemp("", "ward-enroll-test-"); caErr != nil {
			return
		}
		dir := filepath.Join(caDir, "ca")
		if caErr = pki.Init(pki.InitConfig{Dir: dir, Passphrase: []byte(testPass)}); caErr != nil {
			return
		}
		caAuth, caErr = pki.Open(pki.Config{Dir: dir, Passphrase: []byte(testPass)})
	})
	if caErr != nil {
		tb.Fatal(caErr)
	}
	return caAuth
}

type fixture struct {
	t      testing.TB
	st     *store.Store
	ca     *pki.Authority
	fleet  *fleet.Registry
	audit  *audit.Log
	srv    *Server
	ts     *httptest.Server
	mfr    fleet.Manufacturer
	mfrCA  *x509.Certificate
	mfrKey crypto.Signer
}

const mfrName = "Acme Medical"

// newFixture builds a Ward with one registered manufacturer and an EST
// server on a real TLS listener. cfg, if given, adjusts the enroll config.
func newFixture(t testing.TB, st *store.Store, adjust ...func(*Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{t: t, st: st, ca: sharedCA(t)}
	f.audit = audit.New(st, nil)
	var err error
	if f.fleet, err = fleet.New(ctx, fleet.Config{Store: st, Audit: f.audit}); err != nil {
		t.Fatal(err)
	}
	if f.mfrCA, f.mfrKey, err = pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: mfrName}); err != nil {
		t.Fatal(err)
	}
	if f.mfr, err = f.fleet.AddManufacturer(ctx, "token:test", mfrName, pki.EncodeCertificates(f.mfrCA)); err != nil {
		t.Fatal(err)
	}
	cfg := Config{CA: f.ca, Fleet: f.fleet, Store: st, Audit: f.audit, RateLimit: -1}
	for _, fn := range adjust {
		fn(&cfg)
	}
	if f.srv, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	serverCert, err := f.ca.IssueServer(nil, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f.ts = httptest.NewUnstartedServer(f.srv.Handler())
	f.ts.TLS = f.srv.TLSConfig(serverCert)
	f.ts.Config.ErrorLog = nil
	f.ts.StartTLS()
	t.Cleanup(f.ts.Close)
	return f
}

// birth mints a birth certificate signed by the fixture's manufacturer.
func (f *fixture) birth(serial string, adjust ...func(*pki.BirthConfig)) tls.Certificate {
	return mintBirth(f.t, f.mfrCA, f.mfrKey, serial, adjust...)
}

func mintBirth(t testing.TB, ca *x509.Certificate, key crypto.Signer, serial string, adjust ...func(*pki.BirthConfig)) tls.Certificate {
	t.Helper()
	cfg := pki.BirthConfig{CA: ca, CAKey: key, Serial: serial, Model: "Infusomat"}
	for _, fn := range adjust {
		fn(&cfg)
	}
	leaf, devKey, err := pki.MintBirthCertificate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: devKey, Leaf: leaf}
}

// client returns an HTTPS client trusting Ward's root and presenting certs.
func (f *fixture) client(certs ...tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.Root())
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS13}}
	f.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrBody returns an EST request body: base64 of a CSR, in 64-column lines.
func csrBody(t testing.TB, key crypto.Signer, serial string) []byte {
	t.Helper()
	der, err := pki.NewCSR(key, serial, serial)
	if err != nil {
		t.Fatal(err)
	}
	return encodeBase64Lines(der)
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (f *fixture) post(c *http.Client, path, contentType string, body []byte) (response, error) {
	req, err := http.NewRequest(http.MethodPost, f.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(c, req)
}

func (f *fixture) get(c *http.Client, path string) response {
	f.t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.ts.URL+path, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	r, err := do(c, req)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

func do(c *http.Client, req *http.Request) (response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// mustEnroll posts and requires status want.
func (f *fixture) mustPost(c *http.Client, path string, body []byte, want int) response {
	f.t.Helper()
	r, err := f.post(c, path, mediaPKCS10, body)
	if err != nil {
		f.t.Fatalf("POST %s: %v", path, err)
	}
	if r.status != want {
		f.t.Fatalf("POST %s: status %d, want %d; body %q", path, r.status, want, r.body)
	}
	return r
}

// certsFrom decodes a certs-only EST response.
func certsFrom(t testing.TB, r response) []*x509.Certificate {
	t.Helper()
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, mediaPKCS7) {
		t.Fatalf("Content-Type %q", ct)
	}
	if cte := r.header.Get("Content-Transfer-Encoding"); cte != "base64" {
		t.Fatalf("Content-Transfer-Encoding %q", cte)
	}
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(string(r.body)))
	if err != nil {
		t.Fatalf("response body is not base64: %v", err)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		t.Fatalf("response is not PKCS#7: %v", err)
	}
	return p7.Certificates
}

// ldevid pairs an issued certificate with its key for a TLS client.
func ldevid(cert *x509.Certificate, key crypto.Signer) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

func (f *fixture) preregister(serial string) fleet.Device {
	f.t.Helper()
	d, err := f.fleet.Preregister(context.Background(), "token:test", fleet.Preregistration{Serial: serial, Manufacturer: mfrName, Model: "Infusomat"})
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// enrolled preregisters serial and enrolls it: the device, its birth
// certificate and its LDevID.
func (f *fixture) enrolled(serial string) (fleet.Device, tls.Certificate, tls.Certificate) {
	f.t.Helper()
	f.preregister(serial)
	birth := f.birth(serial)
	key := newKey(f.t)
	r := f.mustPost(f.client(birth), PathSimpleEnroll, csrBody(f.t, key, serial), http.StatusOK)
	cert := certsFrom(f.t, r)[0]
	d, err := f.fleet.Get(context.Background(), serial)
	if err != nil {
		f.t.Fatal(err)
	}
	return d, birth, ldevid(cert, key)
}

// snapshot is everything an enrollment can change, in comparable form.
type snapshot struct {
	devices  string
	certs    int
	auditSeq int64
}

func (f *fixture) snapshot() snapshot {
	f.t.Helper()
	ctx := context.Background()
	var s snapshot
	rows, err := f.st.QueryContext(ctx, `SELECT id, state, cert_serial, approved_at, enroll_requested_at, updated_at, model FROM devices ORDER BY id`)
	if err != nil {
		f.t.Fatal(err)
	}
	var b strings.Builder
	for rows.Next() {
		var id, state, cs, model string
		var a, e, u any
		if err := rows.Scan(&id, &state, &cs, &a, &e, &u, &model); err != nil {
			f.t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %s %s %v %v %v %s\n", id, state, cs, a, e, u, model)
	}
	rows.Close()
	s.devices = b.String()
	if err := f.st.QueryRowContext(ctx, `SELECT COUNT(*) FROM certificates`).Scan(&s.certs); err != nil {
		f.t.Fatal(err)
	}
	if err := f.st.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM audit_events`).Scan(&s.auditSeq); err != nil {
		f.t.Fatal(err)
	}
	return s
}

// auditAfter returns the audit entries after seq.
func (f *fixture) auditAfter(seq int64) []audit.Entry {
	f.t.Helper()
	es, err := f.audit.List(context.Background(), audit.Filter{After: seq})
	if err != nil {
		f.t.Fatal(err)
	}
	return es
}
