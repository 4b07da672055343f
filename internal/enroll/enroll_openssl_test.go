package enroll

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// TestOpenSSLCurlClient enrolls with tools that share no code with Ward:
// openssl makes the key and CSR, curl speaks EST, openssl decodes and
// verifies what comes back. This is the walk-through in
// docs/device-protocol.md.
func TestOpenSSLCurlClient(t *testing.T) {
	for _, tool := range []string{"openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st)
		dir := t.TempDir()
		write := func(name string, data []byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		run := func(name string, args ...string) string {
			t.Helper()
			cmd := exec.Command(name, args...)
			cmd.Dir = dir
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
			}
			return out.String()
		}

		write("root.pem", pki.EncodeCertificates(f.ca.Root()))
		write("issuer.pem", pki.EncodeCertificates(f.ca.Issuer()))
		const serial = "SN-OSSL-7"
		d := f.preregister(serial)
		birth := f.birth(serial)
		write("birth.pem", pki.EncodeCertificates(birth.Leaf))
		keyDER, err := x509.MarshalPKCS8PrivateKey(birth.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		write("birth.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))

		// The device makes its operational key and CSR.
		run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "device.key")
		run("openssl", "req", "-new", "-key", "device.key", "-subj", "/CN="+serial+"/serialNumber="+serial, "-outform", "DER", "-out", "csr.der")
		run("openssl", "base64", "-in", "csr.der", "-out", "csr.b64")

		curl := func(out string, extra ...string) string {
			args := append([]string{"--silent", "--show-error", "--tlsv1.3", "--cacert", "root.pem", "-o", out, "-w", "%{http_code} %{content_type}"}, extra...)
			return run("curl", args...)
		}
		got := curl("cert.b64", "--cert", "birth.pem", "--key", "birth.key",
			"-H", "Content-Type: application/pkcs10", "--data-binary", "@csr.b64", f.ts.URL+PathSimpleEnroll)
		if got != "200 application/pkcs7-mime; smime-type=certs-only" {
			b, _ := os.ReadFile(filepath.Join(dir, "cert.b64"))
			t.Fatalf("simpleenroll: %s: %s", got, b)
		}
		run("openssl", "base64", "-d", "-in", "cert.b64", "-out", "cert.p7")
		run("openssl", "pkcs7", "-inform", "DER", "-in", "cert.p7", "-print_certs", "-out", "leaf.pem")
		if out := run("openssl", "verify", "-CAfile", "root.pem", "-untrusted", "issuer.pem", "leaf.pem"); strings.TrimSpace(out) != "leaf.pem: OK" {
			t.Errorf("openssl verify: %q", out)
		}
		text := run("openssl", "x509", "-in", "leaf.pem", "-noout", "-text")
		for _, want := range []string{"URI:ward://device/" + d.ID, "CN = " + d.ID, "serialNumber = " + serial, "TLS Web Client Authentication"} {
			if !strings.Contains(text, want) {
				t.Errorf("issued certificate lacks %q:\n%s", want, text)
			}
		}

		// Renew with the operational certificate.
		run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "device2.key")
		run("openssl", "req", "-new", "-key", "device2.key", "-subj", "/CN="+d.ID+"/serialNumber="+serial, "-outform", "DER", "-out", "csr2.der")
		run("openssl", "base64", "-in", "csr2.der", "-out", "csr2.b64")
		got = curl("cert2.b64", "--cert", "leaf.pem", "--key", "device.key",
			"-H", "Content-Type: application/pkcs10", "--data-binary", "@csr2.b64", f.ts.URL+PathSimpleReenroll)
		if got != "200 application/pkcs7-mime; smime-type=certs-only" {
			b, _ := os.ReadFile(filepath.Join(dir, "cert2.b64"))
			t.Fatalf("simplereenroll: %s: %s", got, b)
		}

		// CA certificates.
		if got := curl("cacerts.b64", f.ts.URL+PathCACerts); got != "200 application/pkcs7-mime" {
			t.Fatalf("cacerts: %s", got)
		}
		run("openssl", "base64", "-d", "-in", "cacerts.b64", "-out", "cacerts.p7")
		chain := run("openssl", "pkcs7", "-inform", "DER", "-in", "cacerts.p7", "-print_certs")
		if n := strings.Count(chain, "-----BEGIN CERTIFICATE-----"); n != 2 || !strings.Contains(chain, "Issuing CA") || !strings.Contains(chain, "Root CA") {
			t.Errorf("cacerts: %d certificates:\n%s", n, chain)
		}

		// CRL, verified against the issuing CA.
		if got := curl("ward.crl", f.ts.URL+PathCRL); got != "200 application/pkix-crl" {
			t.Fatalf("crl: %s", got)
		}
		out := run("openssl", "crl", "-inform", "DER", "-in", "ward.crl", "-CAfile", "issuer.pem", "-noout", "-text")
		if !strings.Contains(out, "Certificate Revocation List") || !strings.Contains(out, "CRL Number") {
			t.Errorf("openssl crl:\n%s", out)
		}

		// A refusal reads as one line of text.
		got = curl("refused.txt", "-H", "Content-Type: application/pkcs10", "--data-binary", "@csr.b64", f.ts.URL+PathSimpleEnroll)
		if !strings.HasPrefix(got, "401 text/plain") {
			t.Errorf("no client certificate: %s", got)
		}
	})
}
