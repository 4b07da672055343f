package agent_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardhq/ward/agent"
	"github.com/wardhq/ward/internal/pki"
)

func TestFileKeyStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	ks, err := agent.NewFileKeyStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory: %v %v", fi.Mode(), err)
	}
	if _, err := ks.Certificate(agent.CertBirth); !errors.Is(err, agent.ErrNoCertificate) {
		t.Fatalf("empty store: %v, want ErrNoCertificate", err)
	}
	signer, err := ks.Signer()
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("key: %T", signer.Public())
	}
	// The private key cannot be reached through the Signer.
	if _, ok := signer.(*ecdsa.PrivateKey); ok {
		t.Fatal("Signer is the *ecdsa.PrivateKey itself")
	}
	digest := sha256.Sum256([]byte("dose 5 ml/h"))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatalf("signature: %v", err)
	}

	// On disk: one PKCS#8 PEM file, 0600, nothing else left behind.
	keyPath := filepath.Join(dir, "device.key")
	fi, err := os.Stat(keyPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	b, _ := os.ReadFile(keyPath)
	if block, _ := pem.Decode(b); block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("key file is not PKCS#8 PEM")
	}

	// The same key after a restart.
	ks2, err := agent.NewFileKeyStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := ks2.Signer()
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(s2.Public()) {
		t.Fatal("a second open made a new key")
	}

	// Certificates round trip, replaced atomically.
	ca, caKey, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Acme"})
	if err != nil {
		t.Fatal(err)
	}
	birth, _, err := pki.MintBirthCertificate(pki.BirthConfig{CA: ca, CAKey: caKey, Serial: "SN-1", Key: signer})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := ks.PutCertificate(agent.CertBirth, []*x509.Certificate{birth, ca}); err != nil {
			t.Fatal(err)
		}
	}
	chain, err := ks2.Certificate(agent.CertBirth)
	if err != nil || len(chain) != 2 || !chain[0].Equal(birth) || !chain[1].Equal(ca) {
		t.Fatalf("chain: %d certificates, %v", len(chain), err)
	}
	if err := ks.PutCertificate("../escape", []*x509.Certificate{birth}); err == nil {
		t.Fatal("a certificate name with a path was accepted")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "device.key" && e.Name() != "birth.pem" {
			t.Fatalf("unexpected file %s", e.Name())
		}
		if fi, _ := e.Info(); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v", e.Name(), fi.Mode())
		}
	}
}

func TestNewChecksConfig(t *testing.T) {
	ks, err := agent.NewFileKeyStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	base := agent.Config{Server: "127.0.0.1:1", MQTT: "127.0.0.1:2", Roots: roots, Keys: ks, Device: newPump()}
	for name, mod := range map[string]func(*agent.Config){
		"no server": func(c *agent.Config) { c.Server = "" },
		"no mqtt":   func(c *agent.Config) { c.MQTT = "" },
		"no roots":  func(c *agent.Config) { c.Roots = nil },
		"no keys":   func(c *agent.Config) { c.Keys = nil },
		"no device": func(c *agent.Config) { c.Device = nil },
		"no certs":  func(*agent.Config) {}, // the store holds no certificate yet
	} {
		cfg := base
		mod(&cfg)
		if _, err := agent.New(cfg); !errors.Is(err, agent.ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
}

func TestMemKeyStore(t *testing.T) {
	ks := agent.NewMemKeyStore(nil)
	s1, err := ks.Signer()
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := ks.Signer()
	if !s1.Public().(*ecdsa.PublicKey).Equal(s2.Public()) {
		t.Fatal("a second key")
	}
	if _, err := ks.Certificate(agent.CertOperational); !errors.Is(err, agent.ErrNoCertificate) {
		t.Fatalf("empty: %v", err)
	}
	ca, _, _ := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Acme"})
	if err := ks.PutCertificate(agent.CertBirth, []*x509.Certificate{ca}); err != nil {
		t.Fatal(err)
	}
	if c, err := ks.Certificate(agent.CertBirth); err != nil || !c[0].Equal(ca) {
		t.Fatalf("round trip: %v", err)
	}
}
