package server_test

// Invariant 7 (DESIGN §4): no secret leaves its place. A whole session of
// work runs through a real node — people log in with passwords and TOTP,
// fail to log in, create tokens, enroll and revoke a device — with every
// log line and every API response captured; then each secret the test
// created is searched for in all of it.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/server"
)

// recorder keeps every response body, except those of the routes whose
// whole point is to show a secret once.
type recorder struct {
	mu     sync.Mutex
	bodies bytes.Buffer
	next   http.RoundTripper
}

var showsSecretOnce = map[string]bool{
	"POST /api/v1/tokens":             true, // the new token's secret
	"POST /api/v1/session/totp/setup": true, // the TOTP seed for the authenticator app
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if !showsSecretOnce[req.Method+" "+req.URL.Path] {
		r.mu.Lock()
		r.bodies.Write(body)
		for name, vs := range resp.Header {
			if name == "Set-Cookie" {
				continue // where the session cookie is meant to travel
			}
			for _, v := range vs {
				r.bodies.WriteString(v + "\n")
			}
		}
		r.mu.Unlock()
	}
	return resp, nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestNoSecretInLogsOrResponses(t *testing.T) {
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.DeviceAddr, cfg.AdminAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Log.Level = "debug"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var dev, adm net.Addr
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := server.New(ctx, cfg, log, server.WithNotice(io.Discard), server.WithListenHook(func(d, a net.Addr) { dev, adm = d, a }))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()
	base := "http://" + adm.String()

	rec := &recorder{next: http.DefaultTransport}
	bootstrap, _ := os.ReadFile(cfg.AdminTokenPath())
	admin, _ := client.New(base, strings.TrimSpace(string(bootstrap)), client.WithHTTPClient(&http.Client{Transport: rec}))
	secrets := map[string]string{"bootstrap token": strings.TrimSpace(string(bootstrap))}
	pass, _ := os.ReadFile(filepath.Join(cfg.Data, "ca", "demo-passphrase"))
	secrets["CA passphrase"] = string(pass)
	seal, _ := os.ReadFile(cfg.SealKeyPath())
	secrets["seal key (hex)"] = hex.EncodeToString(seal)
	secrets["seal key (base64)"] = base64.StdEncoding.EncodeToString(seal)

	// A person with a password, who fails once, then logs in with TOTP.
	password, wrong := "correct horse battery staple 7", "Tr0ub4dor&3-wrong-guess"
	secrets["password"], secrets["wrong password"] = password, wrong
	if _, err := admin.CreateUser(ctx, client.UserRequest{Username: "alice", Password: password, Roles: []string{"admin"}}); err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Transport: rec, Jar: jar}
	call := func(method, path, csrf string, body any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if csrf != "" {
			req.Header.Set("X-CSRF-Token", csrf)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := map[string]any{"status": float64(resp.StatusCode)}
		json.NewDecoder(resp.Body).Decode(&out)
		return out
	}
	if out := call("POST", "/api/v1/session", "", map[string]string{"username": "alice", "password": wrong}); out["status"] != 401.0 {
		t.Fatalf("wrong password: %v", out)
	}
	if out := call("POST", "/api/v1/session", "", map[string]string{"username": "nobody", "password": wrong}); out["status"] != 401.0 {
		t.Fatalf("unknown user: %v", out)
	}
	out := call("POST", "/api/v1/session", "", map[string]string{"username": "alice", "password": password})
	csrf, _ := out["csrf"].(string)
	setup := call("POST", "/api/v1/session/totp/setup", csrf, nil)
	seed, _ := setup["secret"].(string)
	if seed == "" {
		t.Fatalf("totp setup: %v", setup)
	}
	secrets["TOTP seed"] = seed
	code, _ := totp.GenerateCode(seed, time.Now())
	if out := call("POST", "/api/v1/session/totp/confirm", csrf, map[string]string{"code": code}); out["status"] != 200.0 {
		t.Fatalf("totp confirm: %v", out)
	}
	u, _ := neturl.Parse(base)
	for _, c := range jar.Cookies(u) {
		secrets["session cookie "+c.Name] = c.Value
	}
	// A token for automation, used once.
	tokSecret, _, err := admin.CreateToken(ctx, client.TokenRequest{Name: "ci", Roles: []string{"biomed"}})
	if err != nil {
		t.Fatal(err)
	}
	secrets["API token"] = tokSecret
	ci, _ := client.New(base, tokSecret, client.WithHTTPClient(&http.Client{Transport: rec}))
	if _, err := ci.Devices(ctx, client.DeviceFilter{}); err != nil {
		t.Fatal(err)
	}
	bad, _ := client.New(base, tokSecret+"x", client.WithHTTPClient(&http.Client{Transport: rec}))
	bad.Devices(ctx, client.DeviceFilter{})

	// A device enrolls, and is revoked.
	root, _ := pki.ReadRoot(cfg.CADir())
	mca, mkey, _ := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Acme"})
	if _, err := admin.AddManufacturer(ctx, "Acme", pki.EncodeCertificates(mca)); err != nil {
		t.Fatal(err)
	}
	admin.Preregister(ctx, client.Preregistration{Serial: "SN-1", Manufacturer: "Acme", Model: "LVP"})
	birth, birthKey, _ := pki.MintBirthCertificate(pki.BirthConfig{CA: mca, CAKey: mkey, Serial: "SN-1"})
	c, err := tryEnroll(dev.String(), root, tls.Certificate{Certificate: [][]byte{birth.Raw}, PrivateKey: birthKey}, "simpleenroll")
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(c.key)
	secrets["device private key"] = base64.StdEncoding.EncodeToString(der)
	admin.Revoke(ctx, "SN-1", "test")

	// The audit export is a response too.
	var export bytes.Buffer
	if err := admin.ExportAudit(ctx, &export, client.AuditExport{Format: "jsonl"}); err != nil {
		t.Fatal(err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	everything := logs.String() + rec.bodies.String() + export.String()
	if len(logs.String()) < 1000 {
		t.Fatalf("suspiciously little logged (%d bytes)", len(logs.String()))
	}
	for name, secret := range secrets {
		if len(secret) < 8 {
			t.Fatalf("%s: secret too short to search for: %q", name, secret)
		}
		if strings.Contains(everything, secret) {
			t.Errorf("the %s appears in the logs or an API response", name)
		}
	}
	t.Logf("searched %d bytes of logs, %d bytes of responses and %d bytes of audit export for %d secrets",
		len(logs.String()), rec.bodies.Len(), export.Len(), len(secrets))
}
