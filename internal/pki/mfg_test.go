package pki

import (
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewManufacturerCA(t *testing.T) {
	ca, key, err := NewManufacturerCA(ManufacturerCAConfig{Name: "Acme Medical", Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	if ca.Subject.CommonName != "Acme Medical Device CA" || !slices.Equal(ca.Subject.Organization, []string{"Acme Medical"}) {
		t.Errorf("subject = %v", ca.Subject)
	}
	if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
		t.Errorf("IsCA %v MaxPathLen %d zero %v", ca.IsCA, ca.MaxPathLen, ca.MaxPathLenZero)
	}
	if err := ca.CheckSignatureFrom(ca); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if !publicKeysEqual(ca.PublicKey, key.Public()) {
		t.Error("key does not match")
	}
	if want := t0.Add(25 * 365 * 24 * time.Hour); !ca.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", ca.NotAfter, want)
	}
	if _, _, err := NewManufacturerCA(ManufacturerCAConfig{}); err == nil {
		t.Error("NewManufacturerCA without a name succeeded")
	}
}

func TestMintBirthCertificate(t *testing.T) {
	ca, caKey, err := NewManufacturerCA(ManufacturerCAConfig{Name: "Acme Medical", Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _, err := NewManufacturerCA(ManufacturerCAConfig{Name: "Other", Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	ownKey := newP256(t)
	far := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	tests := []struct {
		name          string
		cfg           BirthConfig
		wantNotBefore time.Time
		wantNotAfter  time.Time
		ok            bool
	}{
		{"defaults", BirthConfig{CA: ca, CAKey: caKey, Serial: "ACME-000123", Model: "Infusa 3"}, t0.Add(-time.Hour), far, true},
		{"own key and validity", BirthConfig{CA: ca, CAKey: caKey, Serial: "ACME-9", Key: ownKey,
			NotBefore: t0.Add(-48 * time.Hour), NotAfter: t0.Add(10 * 365 * 24 * time.Hour)}, t0.Add(-48 * time.Hour), t0.Add(10 * 365 * 24 * time.Hour), true},
		{"no serial", BirthConfig{CA: ca, CAKey: caKey}, time.Time{}, time.Time{}, false},
		{"serial too long", BirthConfig{CA: ca, CAKey: caKey, Serial: strings.Repeat("9", 65)}, time.Time{}, time.Time{}, false},
		{"serial with control char", BirthConfig{CA: ca, CAKey: caKey, Serial: "A\nB"}, time.Time{}, time.Time{}, false},
		{"no CA", BirthConfig{Serial: "X"}, time.Time{}, time.Time{}, false},
		{"key does not match CA", BirthConfig{CA: otherCA, CAKey: caKey, Serial: "X"}, time.Time{}, time.Time{}, false},
		{"NotAfter before NotBefore", BirthConfig{CA: ca, CAKey: caKey, Serial: "X", NotAfter: t0.Add(-2 * time.Hour)}, time.Time{}, time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Now = fixedNow(t0)
			c, key, err := MintBirthCertificate(tt.cfg)
			if !tt.ok {
				if err == nil {
					t.Fatal("MintBirthCertificate succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := SubjectSerial(c.Subject); got != tt.cfg.Serial {
				t.Errorf("SubjectSerial = %q, want %q", got, tt.cfg.Serial)
			}
			if c.Subject.CommonName != tt.cfg.Serial || !slices.Equal(c.Subject.Organization, []string{"Acme Medical"}) {
				t.Errorf("subject = %v", c.Subject)
			}
			if tt.cfg.Model != "" && !slices.Equal(c.Subject.OrganizationalUnit, []string{tt.cfg.Model}) {
				t.Errorf("OU = %v, want model", c.Subject.OrganizationalUnit)
			}
			if tt.cfg.Key != nil && key != tt.cfg.Key {
				t.Error("returned key is not the given key")
			}
			if !publicKeysEqual(c.PublicKey, key.Public()) {
				t.Error("certificate does not carry the returned key")
			}
			if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature ||
				!slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("IsCA %v KeyUsage %v ExtKeyUsage %v", c.IsCA, c.KeyUsage, c.ExtKeyUsage)
			}
			if !c.NotBefore.Equal(tt.wantNotBefore) || !c.NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("validity %v..%v, want %v..%v", c.NotBefore, c.NotAfter, tt.wantNotBefore, tt.wantNotAfter)
			}
			if _, err := c.Verify(x509.VerifyOptions{
				Roots: pool(ca), CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}); err != nil {
				t.Errorf("does not verify against the manufacturer CA: %v", err)
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool(otherCA), CurrentTime: t0}); err == nil {
				t.Error("verifies against another manufacturer's CA")
			}
		})
	}
}

func TestNewCSR(t *testing.T) {
	key := newP256(t)
	der, err := NewCSR(key, "ACME-1", "ACME-1")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Error(err)
	}
	if csr.Subject.CommonName != "ACME-1" || SubjectSerial(csr.Subject) != "ACME-1" {
		t.Errorf("subject = %v", csr.Subject)
	}
	if !publicKeysEqual(csr.PublicKey, key.Public()) {
		t.Error("CSR does not carry the key")
	}
	if _, err := NewCSR(nil, "x", ""); err == nil {
		t.Error("NewCSR without a key succeeded")
	}
}

// A device's whole life in certificates: birth certificate from the factory,
// CSR with the same key, LDevID from Ward naming it by Ward id and serial.
func TestBirthToOperational(t *testing.T) {
	a := testCA(t)
	ca, caKey, err := NewManufacturerCA(ManufacturerCAConfig{Name: "Acme Medical", Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	birth, key, err := MintBirthCertificate(BirthConfig{CA: ca, CAKey: caKey, Serial: "ACME-7", Model: "Infusa 3", Now: fixedNow(t0)})
	if err != nil {
		t.Fatal(err)
	}
	csr := newCSR(t, key, "ACME-7", SubjectSerial(birth.Subject))
	ldev, err := a.IssueDevice(csr, DeviceIdentity{ID: "pump-7", Serial: SubjectSerial(birth.Subject), Manufacturer: "Acme Medical", Model: "Infusa 3"})
	if err != nil {
		t.Fatal(err)
	}
	if SubjectSerial(ldev.Subject) != "ACME-7" || !publicKeysEqual(ldev.PublicKey, birth.PublicKey) {
		t.Error("LDevID does not carry the birth serial and key")
	}
	if id, err := at(a, t0.Add(time.Minute)).VerifyDevice(ldev, nil); err != nil || id != "pump-7" {
		t.Errorf("VerifyDevice = %q, %v", id, err)
	}
	if _, err := at(a, t0.Add(time.Minute)).VerifyDevice(birth, nil); !errors.Is(err, ErrUntrusted) {
		t.Errorf("VerifyDevice(birth) = %v, want ErrUntrusted", err)
	}
}

func TestOpenSSLVerifyBirth(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not on PATH")
	}
	ca, caKey, err := NewManufacturerCA(ManufacturerCAConfig{Name: "Acme Medical"})
	if err != nil {
		t.Fatal(err)
	}
	birth, _, err := MintBirthCertificate(BirthConfig{CA: ca, CAKey: caKey, Serial: "ACME-1"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caPath, leafPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "idevid.pem")
	_ = os.WriteFile(caPath, EncodeCertificates(ca), 0o644)
	_ = os.WriteFile(leafPath, EncodeCertificates(birth), 0o644)
	if out, err := exec.Command(openssl, "verify", "-purpose", "sslclient", "-CAfile", caPath, leafPath).CombinedOutput(); err != nil {
		t.Errorf("openssl verify: %v\n%s", err, out)
	}
	out, err := exec.Command(openssl, "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", leafPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "serialNumber=ACME-1") {
		t.Errorf("openssl subject: %s %v; want serialNumber=ACME-1", out, err)
	}
}
