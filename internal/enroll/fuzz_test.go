package enroll

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// Seeds shared by both targets; more live in testdata/fuzz.
func csrSeeds(tb testing.TB) [][]byte {
	k := newKey(tb)
	der, err := pki.NewCSR(k, "SN-FUZZ", "SN-FUZZ")
	if err != nil {
		tb.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	edDER, err := pki.NewCSR(edKey, "SN-FUZZ", "SN-FUZZ")
	if err != nil {
		tb.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	rsaDER, err := pki.NewCSR(rsaKey, "SN-FUZZ", "SN-OTHER")
	if err != nil {
		tb.Fatal(err)
	}
	flipped := bytes.Clone(der)
	flipped[len(flipped)-3] ^= 1
	return [][]byte{
		encodeBase64Lines(der),
		[]byte(base64.StdEncoding.EncodeToString(der)), // one line
		encodeBase64Lines(edDER),
		encodeBase64Lines(rsaDER),
		encodeBase64Lines(flipped),
		encodeBase64Lines(der[:len(der)/2]),
		der, // raw DER: not what EST sends
		[]byte(" \r\n\t"),
		[]byte("===="),
		{},
	}
}

func FuzzParseCSR(f *testing.F) {
	for _, s := range csrSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := parseCSR(body)
		if err != nil {
			if statusOf(err) != http.StatusBadRequest {
				t.Fatalf("parse error %v maps to %d, want 400", err, statusOf(err))
			}
			return
		}
		if csr == nil || csr.Request().CheckSignature() != nil {
			t.Fatal("parseCSR accepted a request whose signature does not verify")
		}
	})
}

// FuzzSimpleEnroll drives the handler with a valid birth certificate (of a
// preregistered device) and arbitrary bodies and content types.
func FuzzSimpleEnroll(f *testing.F) {
	fx := newFixture(f, storetest.Open(f, store.SQLite), func(c *Config) { c.MaxBody = 4096 })
	fx.preregister("SN-FUZZ")
	birth := fx.birth("SN-FUZZ")
	h := fx.srv.Handler()
	for _, s := range csrSeeds(f) {
		f.Add(s, mediaPKCS10)
	}
	f.Add(encodeBase64Lines([]byte("x")), "application/pkcs10; charset=binary")
	f.Add([]byte("MII"), "text/plain")
	f.Add([]byte{}, "")
	f.Add(bytes.Repeat([]byte("A"), 5000), mediaPKCS10)

	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		for _, path := range []string{PathSimpleEnroll, PathSimpleReenroll} {
			r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
			r.Header.Set("Content-Type", contentType)
			r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, PeerCertificates: []*x509.Certificate{birth.Leaf}}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			switch {
			case w.Code >= 500:
				t.Fatalf("%s: %d %q", path, w.Code, w.Body.String())
			case w.Code == http.StatusOK && path == PathSimpleReenroll:
				t.Fatal("simplereenroll accepted a birth certificate")
			case w.Code == http.StatusOK:
				csr, err := parseCSR(body)
				if err != nil || pki.SubjectSerial(csr.Request().Subject) != "SN-FUZZ" {
					t.Fatalf("issued a certificate for a request that does not parse or names another serial: %v", err)
				}
			}
		}
	})
}
