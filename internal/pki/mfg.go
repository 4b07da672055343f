package pki

// The manufacturer side: what a factory does before a device reaches Ward.
// `ward mfg` and tests across the project use these to mint manufacturer CAs,
// birth certificates (IDevID, IEEE 802.1AR style) and CSRs. Ward itself never
// signs with a manufacturer key.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
	"unicode"
)

const (
	defaultMfgCALifetime = 25 * 365 * 24 * time.Hour
	maxSerialLen         = 64 // ub-serial-number, RFC 5280
)

// birthNotAfter is 802.1AR's "no well-defined expiration": 99991231235959Z.
var birthNotAfter = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// ManufacturerCAConfig configures NewManufacturerCA.
type ManufacturerCAConfig struct {
	Name     string           // manufacturer, required
	Lifetime time.Duration    // default 25 years
	Now      func() time.Time // nil: time.Now
	Rand     io.Reader        // nil: crypto/rand.Reader
}

// NewManufacturerCA returns a self-signed ECDSA P-256 device CA, CN
// "<Name> Device CA", O=<Name>, path length 0, and its key.
func NewManufacturerCA(cfg ManufacturerCAConfig) (*x509.Certificate, crypto.Signer, error) {
	if cfg.Name == "" {
		return nil, nil, errors.New("pki: manufacturer CA: no name")
	}
	if cfg.Lifetime < 0 {
		return nil, nil, errors.New("pki: manufacturer CA: negative lifetime")
	}
	lifetime := cfg.Lifetime
	if lifetime == 0 {
		lifetime = defaultMfgCALifetime
	}
	now := nowFunc(cfg.Now)()
	rnd := randReader(cfg.Rand)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: manufacturer CA: generate key: %w", err)
	}
	serial, err := newSerial(rnd)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cfg.Name + " Device CA", Organization: []string{cfg.Name}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	c, err := createCertificate(rnd, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: manufacturer CA: %w", err)
	}
	return c, key, nil
}

// BirthConfig configures MintBirthCertificate.
type BirthConfig struct {
	CA    *x509.Certificate // manufacturer CA, required
	CAKey crypto.Signer     // its key, required
	// Serial is the device serial, required: subject serialNumber (OID
	// 2.5.4.5) as 802.1AR says, and CN.
	Serial string
	// Model is optional: subject OU.
	Model string
	// NotBefore defaults to now-1h; NotAfter to 9999-12-31T23:59:59Z.
	NotBefore, NotAfter time.Time
	// Key is the device key; default a fresh ECDSA P-256 key.
	Key  crypto.Signer
	Now  func() time.Time // nil: time.Now
	Rand io.Reader        // nil: crypto/rand.Reader
}

// MintBirthCertificate returns a device's birth certificate (IDevID) signed
// by the manufacturer CA, and the device key. Subject: CN=<Serial>,
// serialNumber=<Serial>, O=<CA's organisation>, OU=<Model>. ExtKeyUsage
// ClientAuth, KeyUsage DigitalSignature, not a CA.
func MintBirthCertificate(cfg BirthConfig) (*x509.Certificate, crypto.Signer, error) {
	if cfg.CA == nil || cfg.CAKey == nil {
		return nil, nil, errors.New("pki: birth certificate: no manufacturer CA or key")
	}
	if err := validSerial(cfg.Serial); err != nil {
		return nil, nil, fmt.Errorf("pki: birth certificate: %w", err)
	}
	now := nowFunc(cfg.Now)()
	rnd := randReader(cfg.Rand)
	notBefore, notAfter := cfg.NotBefore, cfg.NotAfter
	if notBefore.IsZero() {
		notBefore = now.Add(-time.Hour)
	}
	if notAfter.IsZero() {
		notAfter = birthNotAfter
	}
	if !notAfter.After(notBefore) {
		return nil, nil, errors.New("pki: birth certificate: NotAfter not after NotBefore")
	}
	key := cfg.Key
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
		if err != nil {
			return nil, nil, fmt.Errorf("pki: birth certificate: generate key: %w", err)
		}
		key = k
	}
	serial, err := newSerial(rnd)
	if err != nil {
		return nil, nil, err
	}
	subject := pkix.Name{
		CommonName:   cfg.Serial,
		SerialNumber: cfg.Serial,
		Organization: slices.Clone(cfg.CA.Subject.Organization),
	}
	if cfg.Model != "" {
		subject.OrganizationalUnit = []string{cfg.Model}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	c, err := createCertificate(rnd, tmpl, cfg.CA, key.Public(), cfg.CAKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: birth certificate %s: %w", cfg.Serial, err)
	}
	return c, key, nil
}

// NewCSR returns a DER PKCS#10 request signed by key with subject
// CN=commonName and serialNumber=serial (omitted when empty).
func NewCSR(key crypto.Signer, commonName, serial string) ([]byte, error) {
	if key == nil {
		return nil, errors.New("pki: csr: no key")
	}
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName, SerialNumber: serial},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("pki: csr: %w", err)
	}
	return der, nil
}

// validSerial accepts 1 to 64 printable characters without spaces at either end.
func validSerial(s string) error {
	if s == "" {
		return errors.New("no serial number")
	}
	if len(s) > maxSerialLen {
		return fmt.Errorf("serial number longer than %d bytes", maxSerialLen)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return errors.New("serial number has non-printable characters")
		}
	}
	if s[0] == ' ' || s[len(s)-1] == ' ' {
		return errors.New("serial number has leading or trailing space")
	}
	return nil
}
