package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/smallstep/pkcs7"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/server"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

type node struct {
	cfg        config.Config
	deviceAddr string
	adminURL   string
	api        *client.Client
	done       chan error
	cancel     context.CancelFunc
}

func startNode(t *testing.T, cfg config.Config) *node {
	t.Helper()
	cfg.DeviceAddr, cfg.AdminAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var dev, adm net.Addr
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(ctx, cfg, log, server.WithNotice(io.Discard),
		server.WithListenHook(func(d, a net.Addr) { dev, adm = d, a }))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	n := &node{cfg: cfg, deviceAddr: dev.String(), adminURL: "http://" + adm.String(), done: make(chan error, 1), cancel: cancel}
	go func() { n.done <- srv.Run(ctx) }()
	<-srv.Ready()
	tok, err := os.ReadFile(cfg.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	if n.api, err = client.New(n.adminURL, strings.TrimSpace(string(tok))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.stop(t) })
	return n
}

func (n *node) stop(t *testing.T) {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Error("Run did not return within 20s of cancellation")
	}
}

func TestServeHealthAndGracefulShutdown(t *testing.T) {
	cfg := config.Default()
	cfg.Data = t.TempDir()
	n := startNode(t, cfg)
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(n.adminURL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s = %d", path, resp.StatusCode)
		}
	}
	if fi, err := os.Stat(cfg.AdminTokenPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v %v", fi, err)
	}
	// /metrics, with the admin token: the node, its gateway, the runtime.
	body, err := n.api.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`ward_node_info{node="` + cfg.NodeName + `",version=`, "\nward_gateway_sessions 0\n",
		`ward_gateway_messages_total{outcome="stored"} 0`, "\ngo_goroutines ", "\nprocess_resident_memory_bytes "} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics: no %q in\n%s", want, body)
		}
	}
	n.stop(t)
	if _, err := http.Get(n.adminURL + "/healthz"); err == nil {
		t.Fatal("admin listener still answers after shutdown")
	}
}

// TestRevocationReachesEveryNode runs two nodes on one PostgreSQL store and
// one external NATS server: a device revoked through one node is refused at
// the TLS handshake by the other at once.
func TestRevocationReachesEveryNode(t *testing.T) {
	pgURL := storetest.URL(t, store.Postgres)
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}

	cfgA := config.Default()
	cfgA.Data, cfgA.Store, cfgA.Bus, cfgA.NodeName = t.TempDir(), pgURL, ns.ClientURL(), "a"
	a := startNode(t, cfgA)

	// Node B shares the CA directory (and here its demo passphrase).
	cfgB := cfgA
	cfgB.Data, cfgB.NodeName = t.TempDir(), "b"
	copyDir(t, filepath.Join(cfgA.Data, "ca"), filepath.Join(cfgB.Data, "ca"))
	// The admin token lives in the shared store: B makes no second one.
	tok, _ := os.ReadFile(cfgA.AdminTokenPath())
	os.WriteFile(cfgB.AdminTokenPath(), tok, 0o600)
	b := startNode(t, cfgB)

	ctx := context.Background()
	root, err := pki.ReadRoot(cfgA.CADir())
	if err != nil {
		t.Fatal(err)
	}
	// Node B caches the manufacturer list (empty) and spends its reload
	// for unknown issuers on a birth certificate nobody vouches for, so
	// that it can learn of a manufacturer added on A only from the bus.
	rca, rkey, _ := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Rogue"})
	rogue, rogueKey, _ := pki.MintBirthCertificate(pki.BirthConfig{CA: rca, CAKey: rkey, Serial: "SN-1"})
	if _, err := tryEnroll(b.deviceAddr, root, tls.Certificate{Certificate: [][]byte{rogue.Raw}, PrivateKey: rogueKey}, "simpleenroll"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("rogue birth certificate: %v, want 403", err)
	}
	mca, mkey, _ := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Acme"})
	if _, err := a.api.AddManufacturer(ctx, "Acme", pki.EncodeCertificates(mca)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.api.Preregister(ctx, client.Preregistration{Serial: "SN-1", Manufacturer: "Acme", Model: "LVP"}); err != nil {
		t.Fatal(err)
	}
	birth, birthKey, _ := pki.MintBirthCertificate(pki.BirthConfig{CA: mca, CAKey: mkey, Serial: "SN-1"})

	// Enroll on node B (manufacturer added on A), renew on A.
	birthTLS := tls.Certificate{Certificate: [][]byte{birth.Raw}, PrivateKey: birthKey}
	var first issued
	for deadline := time.Now().Add(2 * time.Second); ; {
		if first, err = tryEnroll(b.deviceAddr, root, birthTLS, "simpleenroll"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node b does not know the manufacturer added on node a: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ldev, ldevKey := first.cert, first.key
	op := tls.Certificate{Certificate: [][]byte{ldev.Raw}, PrivateKey: ldevKey}
	enroll(t, a.deviceAddr, root, op, "simplereenroll")

	if _, err := a.api.Revoke(ctx, "SN-1", "test"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		_, err := tryEnroll(b.deviceAddr, root, op, "simplereenroll")
		if err != nil && strings.Contains(err.Error(), "bad certificate") {
			t.Logf("node b refused the revoked certificate %v after the revocation on node a", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("node b still accepts a certificate revoked on node a: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func enroll(t *testing.T, addr string, root *x509.Certificate, cert tls.Certificate, op string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	c, err := tryEnroll(addr, root, cert, op)
	if err != nil {
		t.Fatalf("%s at %s: %v", op, addr, err)
	}
	return c.cert, c.key
}

type issued struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func tryEnroll(addr string, root *x509.Certificate, cert tls.Certificate, op string) (issued, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := pki.NewCSR(key, "x", "SN-1")
	if err != nil {
		return issued{}, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, "https://"+addr+"/.well-known/est/"+op, bytes.NewReader([]byte(base64.StdEncoding.EncodeToString(der))))
	req.Header.Set("Content-Type", "application/pkcs10")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return issued{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return issued{}, errors.New(resp.Status + ": " + string(body))
	}
	p7der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), ""))
	if err != nil {
		return issued{}, err
	}
	p7, err := pkcs7.Parse(p7der)
	if err != nil || len(p7.Certificates) != 1 {
		return issued{}, errors.New("bad certs-only response")
	}
	return issued{p7.Certificates[0], key}, nil
}

// A wrong CA passphrase stops New with a clear error, closing what it
// opened, and the passphrase appears nowhere in the error.
func TestWrongCAPassphrase(t *testing.T) {
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.DeviceAddr, cfg.AdminAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := pki.Init(pki.InitConfig{Dir: cfg.CADir(), Passphrase: []byte("the right passphrase")}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WARD_CA_PASSPHRASE", "a wrong passphrase")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, err := server.New(context.Background(), cfg, log, server.WithNotice(io.Discard))
	if err == nil || !strings.Contains(err.Error(), "wrong CA passphrase") {
		t.Fatalf("New = %v, want a wrong-passphrase error", err)
	}
	if strings.Contains(err.Error(), "a wrong passphrase") || strings.Contains(err.Error(), "the right passphrase") {
		t.Fatalf("error holds a passphrase: %v", err)
	}
	// The store was closed: it opens again at once.
	t.Setenv("WARD_CA_PASSPHRASE", "the right passphrase")
	n := startNode(t, cfg)
	n.stop(t)
}

// The admin listener serves TLS with a certificate from Ward's CA when
// asked (and always off loopback), with HSTS.
func TestAdminTLS(t *testing.T) {
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.DeviceAddr, cfg.AdminAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.AdminTLS.Enabled = true
	cfg.AdminTLS.Names = []string{"127.0.0.1"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var adm net.Addr
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := server.New(ctx, cfg, slog.New(slog.DiscardHandler), server.WithNotice(io.Discard),
		server.WithListenHook(func(_, a net.Addr) { adm = a }))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()

	root, err := pki.ReadRoot(cfg.CADir())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := hc.Get("https://" + adm.String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Strict-Transport-Security") == "" {
		t.Fatalf("healthz over TLS: %d, HSTS %q", resp.StatusCode, resp.Header.Get("Strict-Transport-Security"))
	}
	if resp, err := http.Get("http://" + adm.String() + "/healthz"); err == nil && resp.StatusCode == http.StatusOK {
		t.Fatal("plain HTTP answered on a TLS admin listener")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
