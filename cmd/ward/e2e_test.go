package main

// End-to-end: the real ward binary, `ward serve` on a fresh data directory,
// the CLI against it, and openssl and curl as an independent EST client.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// buildWard compiles the ward binary once per test binary run.
func buildWard(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ward")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not installed; .ci/run installs it", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
}

type node struct {
	t          *testing.T
	bin, data  string
	admin, dev string
	mqtt       string
	dir        string // working directory for files
	cmd        *exec.Cmd
	log        *lockedBuffer
	extra      []string
}

// lockedBuffer is the server's output, written by exec's copier while the
// test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func (n *node) start() {
	n.t.Helper()
	if n.mqtt == "" {
		n.mqtt = freeAddr(n.t)
	}
	args := append([]string{"serve", "--data", n.data, "--device-addr", n.dev, "--admin-addr", n.admin, "--mqtt-addr", n.mqtt, "--log-format", "json"}, n.extra...)
	n.log = &lockedBuffer{}
	n.cmd = exec.Command(n.bin, args...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + n.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			n.cmd.Process.Kill()
			n.t.Fatalf("ward serve not ready after 30s:\n%s", n.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM and expects a clean exit.
func (n *node) stop() {
	n.t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- n.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			n.t.Fatalf("ward serve exited with %v:\n%s", err, n.log)
		}
	case <-time.After(20 * time.Second):
		n.cmd.Process.Kill()
		n.t.Fatalf("ward serve did not stop within 20s of SIGTERM")
	}
}

// ward runs a CLI command against the node.
func (n *node) ward(args ...string) string {
	n.t.Helper()
	cmd := exec.Command(n.bin, append([]string{"--data", n.data, "--server", "http://" + n.admin}, args...)...)
	cmd.Dir = n.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		n.t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sh runs a tool in the node's working directory.
func (n *node) sh(name string, args ...string) string {
	n.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = n.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// est posts a CSR with curl and returns the HTTP status and body.
func (n *node) est(path, cert, key, csr string) (int, string) {
	n.t.Helper()
	cmd := exec.Command("curl", "-sS", "--cacert", "root.pem", "--cert", cert, "--key", key,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+csr,
		"-o", "body.out", "-w", "%{http_code}", "https://localhost:"+port(n.dev)+path)
	cmd.Dir = n.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, string(out)
	}
	body, _ := os.ReadFile(filepath.Join(n.dir, "body.out"))
	var code int
	fmt.Sscanf(string(out), "%d", &code)
	return code, string(body)
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// csr makes a device key and a base64 CSR naming serial.
func (n *node) csr(name, serial string) {
	n.t.Helper()
	n.sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name+".key")
	n.sh("openssl", "req", "-new", "-key", name+".key", "-subj", "/CN="+serial+"/serialNumber="+serial, "-outform", "DER", "-out", name+".csr.der")
	n.sh("openssl", "base64", "-in", name+".csr.der", "-out", name+".csr")
}

// saveCert decodes an EST certs-only response into PEM.
func (n *node) saveCert(body, name string) {
	n.t.Helper()
	os.WriteFile(filepath.Join(n.dir, name+".p7.b64"), []byte(body), 0o600)
	n.sh("openssl", "base64", "-d", "-in", name+".p7.b64", "-out", name+".p7")
	n.sh("openssl", "pkcs7", "-inform", "DER", "-in", name+".p7", "-print_certs", "-out", name+".crt")
}

func TestEndToEndEnrollment(t *testing.T) {
	need(t, "openssl", "curl")
	bin := buildWard(t)
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			n := &node{t: t, bin: bin, data: filepath.Join(t.TempDir(), "data"), dir: t.TempDir(), admin: freeAddr(t), dev: freeAddr(t)}
			if d == store.Postgres {
				n.extra = []string{"--store", storetest.URL(t, store.Postgres)}
			}
			n.start()
			defer func() {
				if n.cmd.ProcessState == nil {
					n.cmd.Process.Kill()
					n.cmd.Wait()
				}
			}()
			if !strings.Contains(n.log.String(), "created a NEW certificate authority") || !strings.Contains(n.log.String(), "Bootstrap admin token") {
				t.Fatalf("first start did not announce the demo CA and the admin token:\n%s", n.log)
			}
			if fi, err := os.Stat(filepath.Join(n.data, "admin-token")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("admin-token: %v %v", fi, err)
			}

			// A manufacturer, two devices from its factory, one pre-registered.
			n.ward("mfg", "init-ca", "--name", "Acme Medical", "--out", "acme")
			n.ward("manufacturer", "add", "--name", "Acme Medical", "--ca", "acme/ca.crt")
			n.ward("mfg", "mint", "--ca", "acme/ca.crt", "--ca-key", "acme/ca.key", "--serial", "PUMP-0001", "--model", "LVP 3000", "--out", "acme")
			n.ward("mfg", "mint", "--ca", "acme/ca.crt", "--ca-key", "acme/ca.key", "--serial", "PUMP-0002", "--out", "acme")
			n.ward("device", "preregister", "--serial", "PUMP-0001", "--manufacturer", "Acme Medical", "--model", "LVP 3000", "--unit", "ICU 4")
			n.ward("ca", "export-root", "--out", "root.pem")
			n.sh("curl", "-sS", "--cacert", "root.pem", "-o", "issuer.p7.b64", "--cert", "acme/PUMP-0001.crt", "--key", "acme/PUMP-0001.key",
				"https://localhost:"+port(n.dev)+"/.well-known/est/cacerts")
			n.sh("openssl", "base64", "-d", "-in", "issuer.p7.b64", "-out", "cacerts.p7")
			n.sh("openssl", "pkcs7", "-inform", "DER", "-in", "cacerts.p7", "-print_certs", "-out", "cacerts.pem")

			// Pre-registered: admitted at once.
			n.csr("d1", "PUMP-0001")
			code, body := n.est("/.well-known/est/simpleenroll", "acme/PUMP-0001.crt", "acme/PUMP-0001.key", "d1.csr")
			if code != http.StatusOK {
				t.Fatalf("preregistered simpleenroll: %d %s", code, body)
			}
			n.saveCert(body, "d1")
			if out := n.sh("openssl", "verify", "-CAfile", "root.pem", "-untrusted", "cacerts.pem", "d1.crt"); !strings.Contains(out, ": OK") {
				t.Fatalf("openssl verify: %s", out)
			}
			var dev1 struct {
				ID, State string
			}
			json.Unmarshal([]byte(n.ward("device", "show", "PUMP-0001", "-o", "json")), &dev1)
			if dev1.State != "active" {
				t.Fatalf("PUMP-0001 is %q, want active", dev1.State)
			}
			if out := n.sh("openssl", "x509", "-in", "d1.crt", "-noout", "-ext", "subjectAltName"); !strings.Contains(out, "URI:ward://device/"+dev1.ID) {
				t.Fatalf("certificate does not name device %s: %s", dev1.ID, out)
			}

			// Unknown serial: 202 and Retry-After, approve, then a certificate.
			n.csr("d2", "PUMP-0002")
			code, body = n.est("/.well-known/est/simpleenroll", "acme/PUMP-0002.crt", "acme/PUMP-0002.key", "d2.csr")
			if code != http.StatusAccepted {
				t.Fatalf("unknown serial: %d %s, want 202", code, body)
			}
			if out := n.ward("device", "list", "--state", "pending"); !strings.Contains(out, "PUMP-0002") {
				t.Fatalf("pending list: %s", out)
			}
			n.ward("device", "approve", "PUMP-0002")
			code, body = n.est("/.well-known/est/simpleenroll", "acme/PUMP-0002.crt", "acme/PUMP-0002.key", "d2.csr")
			if code != http.StatusOK {
				t.Fatalf("after approve: %d %s", code, body)
			}
			n.saveCert(body, "d2")

			// Re-enroll with the operational certificate: same device.
			n.csr("d1b", "PUMP-0001")
			code, body = n.est("/.well-known/est/simplereenroll", "d1.crt", "d1.key", "d1b.csr")
			if code != http.StatusOK {
				t.Fatalf("simplereenroll: %d %s", code, body)
			}
			n.saveCert(body, "d1b")
			if out := n.sh("openssl", "x509", "-in", "d1b.crt", "-noout", "-ext", "subjectAltName"); !strings.Contains(out, dev1.ID) {
				t.Fatalf("re-enrolled certificate names another device: %s", out)
			}

			// Revoke: refused on the device listener, listed in the CRL.
			n.ward("device", "revoke", "PUMP-0001", "--reason", "reported stolen")
			if code, _ := n.est("/.well-known/est/simplereenroll", "d1b.crt", "d1b.key", "d1b.csr"); code == http.StatusOK {
				t.Fatal("revoked device re-enrolled")
			}
			serial := strings.TrimPrefix(strings.TrimSpace(n.sh("openssl", "x509", "-in", "d1b.crt", "-noout", "-serial")), "serial=")
			n.sh("curl", "-sS", "--cacert", "root.pem", "--cert", "d2.crt", "--key", "d2.key", "-o", "ward.crl", "https://localhost:"+port(n.dev)+"/crl")
			crl := n.sh("openssl", "crl", "-inform", "DER", "-in", "ward.crl", "-noout", "-text")
			if !strings.Contains(strings.ToUpper(crl), strings.TrimLeft(strings.ToUpper(serial), "0")) {
				t.Fatalf("CRL does not list %s:\n%s", serial, crl)
			}

			// The audit log has the decisions.
			audit := n.ward("audit", "list", "--limit", "100")
			for _, want := range []string{"manufacturer.add", "device.preregister", "enroll.simpleenroll", "device.approve", "enroll.simplereenroll", "device.revoke"} {
				if !strings.Contains(audit, want) {
					t.Errorf("audit list lacks %s:\n%s", want, audit)
				}
			}

			// kill -9, then a restart: every decision answered before the
			// kill is still there, the CA is the same and no new token is made.
			auditBefore := n.ward("audit", "list", "--limit", "1000", "-o", "json")
			rootBefore, _ := os.ReadFile(filepath.Join(n.dir, "root.pem"))
			n.cmd.Process.Kill()
			n.cmd.Wait()
			n.start()
			if after := n.ward("audit", "list", "--limit", "1000", "-o", "json"); after != auditBefore {
				t.Fatalf("audit log changed across kill -9:\nbefore %s\nafter  %s", auditBefore, after)
			}
			// The chain is whole (ward audit verify exits 1 otherwise).
			t.Logf("after kill -9: %s", strings.TrimSpace(n.ward("audit", "verify")))
			if strings.Contains(n.log.String(), "Bootstrap admin token") || strings.Contains(n.log.String(), "created a NEW certificate authority") {
				t.Fatalf("restart created a new CA or token:\n%s", n.log)
			}
			n.ward("ca", "export-root", "--out", "root2.pem")
			rootAfter, _ := os.ReadFile(filepath.Join(n.dir, "root2.pem"))
			if !bytes.Equal(rootBefore, rootAfter) {
				t.Fatal("root CA changed across a restart")
			}
			if out := n.ward("device", "list"); !regexp.MustCompile(`PUMP-0002 .*active`).MatchString(out) {
				t.Fatalf("after restart: %s", out)
			}
			n.stop() // graceful: SIGTERM, exit status 0
			// No secret in the logs: the token was printed once, on purpose,
			// to the terminal; the CA passphrase never.
			pass, _ := os.ReadFile(filepath.Join(n.data, "ca", "demo-passphrase"))
			if len(pass) == 0 || strings.Contains(n.log.String(), string(pass)) {
				t.Fatal("demo passphrase missing or logged")
			}
		})
	}
}
