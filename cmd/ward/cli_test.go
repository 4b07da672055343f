package main

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

type cli struct {
	t    *testing.T
	env  *apitest.Env
	data string
	base []string
}

func newCLI(t *testing.T) *cli {
	t.Setenv("WARD_TOKEN", "")
	t.Setenv("WARD_TOKEN_FILE", "")
	e := apitest.New(t, storetest.Open(t, store.SQLite), nil)
	data := t.TempDir()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &cli{t: t, env: e, data: data, base: []string{"--server", e.Server.URL, "--token-file", tokenFile, "--data", data}}
}

// run executes ward with args in-process and returns standard output.
func (c *cli) run(args ...string) (string, error) {
	c.t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append(append([]string{}, c.base...), args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("ward %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestCLIFleet(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	acme := filepath.Join(t.TempDir(), "acme")

	// A factory: manufacturer CA and a birth certificate.
	c.ok("mfg", "init-ca", "--name", "Acme Infusion", "--out", acme)
	if fi, err := os.Stat(filepath.Join(acme, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key: %v %v", fi.Mode(), err)
	}
	if _, err := c.run("mfg", "init-ca", "--name", "Acme Infusion", "--out", acme); err == nil {
		t.Fatal("init-ca replaced an existing CA")
	}
	devDir := filepath.Join(t.TempDir(), "devices")
	c.ok("mfg", "mint", "--ca", filepath.Join(acme, "ca.crt"), "--ca-key", filepath.Join(acme, "ca.key"),
		"--serial", "PX-1", "--model", "P7", "--out", devDir)
	if fi, err := os.Stat(filepath.Join(devDir, "PX-1.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("PX-1.key: %v %v", fi.Mode(), err)
	}

	// Register the manufacturer; the birth certificate is now attested.
	out := c.ok("manufacturer", "add", "--name", "Acme Infusion", "--ca", filepath.Join(acme, "ca.crt"))
	if !strings.Contains(out, `Manufacturer "Acme Infusion" registered`) {
		t.Fatalf("manufacturer add: %q", out)
	}
	fp := regexp.MustCompile(`SHA256:[0-9a-f]{64}`)
	golden(t, "manufacturer-list.txt", fp.ReplaceAllString(c.ok("manufacturer", "list"), "SHA256:<fingerprint>"))
	var ml struct{ Items []map[string]any }
	if err := json.Unmarshal([]byte(c.ok("manufacturer", "list", "-o", "json")), &ml); err != nil || len(ml.Items) != 1 || ml.Items[0]["name"] != "Acme Infusion" {
		t.Fatalf("manufacturer list json: %+v, %v", ml, err)
	}

	// Devices.
	c.ok("device", "preregister", "--serial", "PX-1", "--manufacturer", "Acme Infusion", "--model", "P7", "--site", "Main", "--unit", "ICU-3", "--tag", "infusion", "--tag", "lvp")
	c.ok("device", "preregister", "--serial", "PX-2", "--manufacturer", "Acme Infusion", "--model", "P7", "--site", "Annex")
	c.ok("device", "preregister", "--serial", "PX-3", "--manufacturer", "Acme Infusion", "--model", "P9")
	c.ok("device", "revoke", "PX-3", "--reason", "stolen")
	golden(t, "device-list.txt", c.ok("device", "list"))
	golden(t, "device-list.json", c.ok("device", "list", "-o", "json"))
	golden(t, "device-list-page.txt", c.ok("device", "list", "--limit", "2"))
	golden(t, "device-list-annex.txt", c.ok("device", "list", "--site", "Annex"))
	golden(t, "device-show.txt", c.ok("device", "show", "PX-1"))
	golden(t, "device-show.json", c.ok("device", "show", "PX-1", "-o", "json"))
	golden(t, "device-show-revoked.txt", c.ok("device", "show", "PX-3"))
	golden(t, "audit-list.txt", c.ok("audit", "list", "--action", "device."))

	// The birth certificate was minted now; the registry's clock was pinned.
	c.env.Clock.Add(time.Since(c.env.Clock.Now()) + time.Minute)
	b, _ := os.ReadFile(filepath.Join(devDir, "PX-1.crt"))
	birth, err := pki.ReadCertificates(b)
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.env.Fleet.AttestBirthCertificate(ctx, birth[0], nil)
	if err != nil || m.Name != "Acme Infusion" {
		t.Fatalf("AttestBirthCertificate = %+v, %v", m, err)
	}
	key, err := pki.ReadKeyFile(filepath.Join(devDir, "PX-1.key"), nil)
	if err != nil || !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(birth[0].PublicKey) {
		t.Fatalf("device key does not match its birth certificate: %v", err)
	}

	// Errors are the problem's detail, which main prints as "ward: <detail>".
	if _, err := c.run("device", "show", "NOPE"); err == nil || err.Error() != `device "NOPE": not found` {
		t.Errorf("show unknown device: %v", err)
	}
	if _, err := c.run("device", "approve", "PX-1"); err == nil || !strings.Contains(err.Error(), "not allowed in the device's state") {
		t.Errorf("approve preregistered device: %v", err)
	}
	if _, err := c.run("device", "revoke", "PX-1"); err == nil || !strings.Contains(err.Error(), `"reason" not set`) {
		t.Errorf("revoke without reason: %v", err)
	}
	if _, err := c.run("device", "list", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "unknown output format") {
		t.Errorf("-o yaml: %v", err)
	}
}

func TestCLIToken(t *testing.T) {
	c := newCLI(t)
	data := t.TempDir()
	c.base = []string{"--server", c.env.Server.URL, "--data", data}
	_, err := c.run("device", "list")
	if err == nil || !strings.Contains(err.Error(), "WARD_TOKEN") || !strings.Contains(err.Error(), "--token-file") ||
		!strings.Contains(err.Error(), filepath.Join(data, "admin-token")) {
		t.Fatalf("no token: %v", err)
	}
	// <data>/admin-token, as ward serve writes it.
	os.WriteFile(filepath.Join(data, "admin-token"), []byte(c.env.Token+"\n"), 0o600)
	c.ok("device", "list")
	// WARD_TOKEN wins over the file.
	t.Setenv("WARD_TOKEN", "ward_aaaaaaaaaaaaaaaa_"+strings.Repeat("A", 43))
	if _, err := c.run("device", "list"); err == nil || !strings.Contains(err.Error(), "API token") {
		t.Fatalf("bad WARD_TOKEN: %v", err)
	}
}

func TestCLICA(t *testing.T) {
	c := newCLI(t)
	if _, err := c.run("ca", "init"); err == nil || !strings.Contains(err.Error(), "WARD_CA_PASSPHRASE") {
		t.Fatalf("ca init without passphrase: %v", err)
	}
	t.Setenv("WARD_CA_PASSPHRASE", "a long enough passphrase")
	offline := filepath.Join(t.TempDir(), "usb", "root.key")
	os.MkdirAll(filepath.Dir(offline), 0o700)
	out := c.ok("ca", "init", "--name", "St. Elsewhere", "--root-key-out", offline)
	root, err := pki.ReadRoot(filepath.Join(c.data, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, pki.Fingerprint(root)) || !strings.Contains(out, offline) {
		t.Fatalf("ca init output:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(c.data, "ca", "root.key")); !os.IsNotExist(err) {
		t.Fatalf("root key left online: %v", err)
	}
	if _, err := c.run("ca", "init"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second ca init: %v", err)
	}
	t.Setenv("WARD_CA_PASSPHRASE", "")
	if got := c.ok("ca", "export-root"); got != string(pki.EncodeCertificates(root)) {
		t.Fatalf("export-root:\n%s", got)
	}
	pemFile := filepath.Join(t.TempDir(), "root.pem")
	c.ok("ca", "export-root", "--out", pemFile)
	if b, _ := os.ReadFile(pemFile); string(b) != string(pki.EncodeCertificates(root)) {
		t.Fatal("export-root --out wrote something else")
	}

	// ca show asks the server (whose CA is the test env's, not the one above).
	out = c.ok("ca", "show")
	if !strings.Contains(out, pki.Fingerprint(c.env.CA.Root())) || !strings.Contains(out, "7 days") {
		t.Fatalf("ca show:\n%s", out)
	}
	var info struct {
		Root struct{ Fingerprint string }
	}
	if err := json.Unmarshal([]byte(c.ok("ca", "show", "-o", "json")), &info); err != nil || info.Root.Fingerprint != pki.Fingerprint(c.env.CA.Root()) {
		t.Fatalf("ca show json: %+v, %v", info, err)
	}
}
