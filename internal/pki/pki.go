// Package pki is Ward's certificate authority and the X.509 plumbing around it.
//
// # Parties and keys
//
//   - The root CA: a self-signed ECDSA P-256 certificate ("<Name> Root CA",
//     20 years by default). Its key is used once, by Init, to sign the issuing
//     CA, and should then live offline: InitConfig.RootKeyOut writes it
//     elsewhere (a removable disk), and nothing online ever reads it.
//   - The issuing CA: an ECDSA P-256 intermediate ("<Name> Issuing CA 1",
//     5 years by default, path length 0) signed by the root. Ward's server
//     holds its key, encrypted at rest, and decrypts it in memory at Open.
//   - Devices. Each holds a key generated on the device and a birth
//     certificate (IDevID, IEEE 802.1AR style) from its manufacturer's CA,
//     with the device serial in the subject serialNumber attribute (OID
//     2.5.4.5). Manufacturer CAs are not Ward's: they are trusted by the
//     enrollment policy, never by VerifyDevice. mfg.go holds the factory side
//     (NewManufacturerCA, MintBirthCertificate, NewCSR) used by `ward mfg` and
//     by tests.
//   - Operational certificates (LDevID), issued by the issuing CA after
//     enrollment: short-lived (7 days by default), client-auth only, naming the
//     device by its Ward id in exactly one URI SAN ward://device/<id> (the id
//     matches ^[a-z0-9][a-z0-9-]{0,63}$), CN=<id>, serialNumber=<device serial>,
//     O=<manufacturer>, OU=<model>.
//   - Ward's device listener gets a TLS server certificate from the same
//     issuing CA (IssueServer), so a device needs only Ward's root.
//
// # Trust chain
//
//	root (offline, self-signed) ──signs──▶ issuing CA ──signs──▶ LDevID, listener cert, CRL
//
// VerifyDevice accepts only leaves signed by the current issuing CA chaining
// to the root, valid at Now, with ExtKeyUsage ClientAuth and one valid device
// URI; intermediates offered by a peer are never trusted. Revocation is the
// caller's: CRL signs whatever list the caller keeps.
//
// # On disk (Dir, normally <data>/ca, mode 0700)
//
//	root.crt    PEM, 0644
//	root.key    encrypted PKCS#8 PEM, 0600 (absent when kept offline)
//	issuer.crt  PEM, 0644
//	issuer.key  encrypted PKCS#8 PEM, 0600
//
// Keys are encrypted with the CA passphrase (PBES2, PBKDF2 + AES-256-CBC, via
// go.step.sm/crypto/pemutil). Every file is written atomically (temp file,
// fsync, rename). Init writes root.crt last, so a directory without root.crt is
// not initialised and Init may be retried over a crash's leftovers; a
// directory with root.crt is never overwritten (ErrExists).
//
// # States
//
// Not initialised ──Init──▶ initialised ──Open(passphrase)──▶ *Authority
// (in memory, safe for concurrent use). Errors never contain a passphrase or
// key material.
package pki

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Sentinel errors. Callers compare with errors.Is.
var (
	ErrExists          = errors.New("pki: CA already initialised")
	ErrNotInitialised  = errors.New("pki: CA not initialised")
	ErrBadPassphrase   = errors.New("pki: wrong CA passphrase or damaged key")
	ErrWeakKey         = errors.New("pki: public key type or size not accepted")
	ErrCertExpired     = errors.New("pki: certificate expired")
	ErrCertNotYetValid = errors.New("pki: certificate not yet valid")
	ErrUntrusted       = errors.New("pki: certificate not issued by Ward's CA")
	ErrNotDeviceCert   = errors.New("pki: not a Ward device certificate")
	ErrInvalidDeviceID = errors.New("pki: invalid device id")
)

// File names inside the CA directory.
const (
	RootCertFile   = "root.crt"
	RootKeyFile    = "root.key"
	IssuerCertFile = "issuer.crt"
	IssuerKeyFile  = "issuer.key"
)

const (
	minPassphraseLen      = 12
	defaultName           = "Ward"
	defaultRootLifetime   = 20 * 365 * 24 * time.Hour
	defaultIssuerLifetime = 5 * 365 * 24 * time.Hour
	defaultDeviceLifetime = 7 * 24 * time.Hour
	serverLifetime        = 90 * 24 * time.Hour
	clockSkew             = 5 * time.Minute
)

// InitConfig configures Init.
type InitConfig struct {
	Dir            string
	Passphrase     []byte        // required, at least 12 bytes
	Name           string        // organisation; default "Ward"
	RootLifetime   time.Duration // default 20 years
	IssuerLifetime time.Duration // default 5 years, capped at the root's NotAfter
	// RootKeyOut, if set, receives the encrypted root key instead of
	// Dir/root.key, so the root key can be kept offline. An existing file is
	// never overwritten.
	RootKeyOut string
	Now        func() time.Time // nil: time.Now
	Rand       io.Reader        // nil: crypto/rand.Reader
}

// Init creates a new root and issuing CA in cfg.Dir. It returns an error
// wrapping ErrExists if cfg.Dir already holds root.crt.
func Init(cfg InitConfig) error {
	if cfg.Dir == "" {
		return errors.New("pki: init: no CA directory")
	}
	if len(cfg.Passphrase) < minPassphraseLen {
		return fmt.Errorf("pki: init: passphrase must be at least %d bytes", minPassphraseLen)
	}
	if cfg.RootLifetime < 0 || cfg.IssuerLifetime < 0 {
		return errors.New("pki: init: negative lifetime")
	}
	name := cmp.Or(cfg.Name, defaultName)
	rootLife := cmp.Or(cfg.RootLifetime, defaultRootLifetime)
	issuerLife := cmp.Or(cfg.IssuerLifetime, defaultIssuerLifetime)
	now := nowFunc(cfg.Now)()
	rnd := randReader(cfg.Rand)

	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}
	rootCertPath := filepath.Join(cfg.Dir, RootCertFile)
	if exists(rootCertPath) {
		return fmt.Errorf("pki: init %s: %w", cfg.Dir, ErrExists)
	}
	rootKeyPath := filepath.Join(cfg.Dir, RootKeyFile)
	if cfg.RootKeyOut != "" {
		rootKeyPath = cfg.RootKeyOut
		if exists(rootKeyPath) {
			return fmt.Errorf("pki: init: root key output %s: %w", rootKeyPath, fs.ErrExist)
		}
	}

	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return fmt.Errorf("pki: init: generate root key: %w", err)
	}
	rootSerial, err := newSerial(rnd)
	if err != nil {
		return err
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          rootSerial,
		Subject:               pkix.Name{CommonName: name + " Root CA", Organization: []string{name}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootLife),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	root, err := createCertificate(rnd, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("pki: init: root certificate: %w", err)
	}

	issuerKey, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return fmt.Errorf("pki: init: generate issuer key: %w", err)
	}
	issuerSerial, err := newSerial(rnd)
	if err != nil {
		return err
	}
	issuerTmpl := &x509.Certificate{
		SerialNumber:          issuerSerial,
		Subject:               pkix.Name{CommonName: name + " Issuing CA 1", Organization: []string{name}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              minTime(now.Add(issuerLife), root.NotAfter),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	issuer, err := createCertificate(rnd, issuerTmpl, root, issuerKey.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("pki: init: issuer certificate: %w", err)
	}

	// root.crt last: its presence is what makes the directory initialised.
	if err := WriteKeyFile(rootKeyPath, rootKey, cfg.Passphrase); err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}
	if err := WriteKeyFile(filepath.Join(cfg.Dir, IssuerKeyFile), issuerKey, cfg.Passphrase); err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(cfg.Dir, IssuerCertFile), EncodeCertificates(issuer), 0o644); err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}
	if err := writeFileAtomic(rootCertPath, EncodeCertificates(root), 0o644); err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}
	return nil
}

// Initialised reports whether dir holds a complete online CA: root.crt,
// issuer.crt and issuer.key.
func Initialised(dir string) bool {
	for _, f := range []string{RootCertFile, IssuerCertFile, IssuerKeyFile} {
		if !exists(filepath.Join(dir, f)) {
			return false
		}
	}
	return true
}

// ReadRoot reads dir/root.crt. It needs no passphrase.
func ReadRoot(dir string) (*x509.Certificate, error) {
	return readOneCert(filepath.Join(dir, RootCertFile))
}

// Config configures Open.
type Config struct {
	Dir        string
	Passphrase []byte
	Lifetime   time.Duration    // device certificate lifetime, default 7 days
	Now        func() time.Time // nil: time.Now
	Rand       io.Reader        // nil: crypto/rand.Reader
}

// Authority is an opened issuing CA. It is safe for concurrent use.
type Authority struct {
	root     *x509.Certificate
	issuer   *x509.Certificate
	key      crypto.Signer
	lifetime time.Duration
	now      func() time.Time
	rand     io.Reader
	roots    *x509.CertPool
	inter    *x509.CertPool
	// devRoots anchors device certificates at the issuing CA: its
	// signature by the root is checked once, in Open, not at every
	// handshake (an ECDSA verification each).
	devRoots *x509.CertPool
}

// Open loads the CA in cfg.Dir and decrypts the issuing key. It checks that
// the issuer is a CA signed by the root and that the key matches it.
func Open(cfg Config) (*Authority, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pki: open: no CA directory")
	}
	if len(cfg.Passphrase) == 0 {
		return nil, errors.New("pki: open: no CA passphrase")
	}
	if cfg.Lifetime < 0 {
		return nil, errors.New("pki: open: negative lifetime")
	}
	root, err := readOneCert(filepath.Join(cfg.Dir, RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: open: %w", err)
	}
	issuer, err := readOneCert(filepath.Join(cfg.Dir, IssuerCertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: open: %w", err)
	}
	keyPath := filepath.Join(cfg.Dir, IssuerKeyFile)
	if !exists(keyPath) {
		return nil, fmt.Errorf("pki: open: %s: %w", keyPath, ErrNotInitialised)
	}
	if !root.IsCA || !issuer.IsCA {
		return nil, errors.New("pki: open: root or issuer certificate is not a CA")
	}
	if err := issuer.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("pki: open: issuer certificate not signed by root: %w", err)
	}
	key, err := ReadKeyFile(keyPath, cfg.Passphrase)
	if err != nil {
		return nil, fmt.Errorf("pki: open: %w", err)
	}
	if !publicKeysEqual(issuer.PublicKey, key.Public()) {
		return nil, errors.New("pki: open: issuer key does not match issuer certificate")
	}
	a := &Authority{
		root:     root,
		issuer:   issuer,
		key:      key,
		lifetime: cmp.Or(cfg.Lifetime, defaultDeviceLifetime),
		now:      nowFunc(cfg.Now),
		rand:     randReader(cfg.Rand),
		roots:    x509.NewCertPool(),
		inter:    x509.NewCertPool(),
		devRoots: x509.NewCertPool(),
	}
	a.roots.AddCert(root)
	a.inter.AddCert(issuer)
	a.devRoots.AddCert(issuer)
	return a, nil
}

// Root returns the root CA certificate.
func (a *Authority) Root() *x509.Certificate { return a.root }

// Issuer returns the issuing CA certificate.
func (a *Authority) Issuer() *x509.Certificate { return a.issuer }

// Lifetime returns the device certificate lifetime.
func (a *Authority) Lifetime() time.Duration { return a.lifetime }

// DeviceIdentity is what the operational certificate says about a device.
type DeviceIdentity struct {
	ID           string // Ward device id: CN and URI SAN
	Serial       string // device serial from the birth certificate: subject serialNumber
	Manufacturer string // subject O, omitted when empty
	Model        string // subject OU, omitted when empty
}

// ErrBadCSR is returned for a certificate request that does not parse or
// whose self-signature does not verify.
var ErrBadCSR = errors.New("pki: bad certificate request")

// CSR is a certificate request whose self-signature, the requester's proof
// that it holds the private key, has been checked. Only ParseCSR and CheckCSR
// make one, so IssueDevice cannot sign an unchecked key, and the check (an
// ECDSA verification, the costliest step of issuance after signing) is made
// exactly once.
type CSR struct{ req *x509.CertificateRequest }

// ParseCSR parses a DER PKCS#10 request and checks its signature.
func ParseCSR(der []byte) (*CSR, error) {
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	return CheckCSR(req)
}

// CheckCSR checks a parsed request's signature.
func CheckCSR(req *x509.CertificateRequest) (*CSR, error) {
	if req == nil {
		return nil, fmt.Errorf("%w: none", ErrBadCSR)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, err)
	}
	return &CSR{req: req}, nil
}

// Request returns the parsed request.
func (c *CSR) Request() *x509.CertificateRequest { return c.req }

// IssueDevice signs an operational certificate (LDevID) for the CSR's public
// key. The caller must have checked the device's right to id.
func (a *Authority) IssueDevice(checked *CSR, id DeviceIdentity) (*x509.Certificate, error) {
	if checked == nil || checked.req == nil {
		return nil, errors.New("pki: issue device: no CSR")
	}
	csr := checked.req
	if err := ValidDeviceID(id.ID); err != nil {
		return nil, fmt.Errorf("pki: issue device: %w", err)
	}
	isRSA, err := checkPublicKey(csr.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("pki: issue device %s: %w", id.ID, err)
	}
	subject := pkix.Name{CommonName: id.ID, SerialNumber: id.Serial}
	if id.Manufacturer != "" {
		subject.Organization = []string{id.Manufacturer}
	}
	if id.Model != "" {
		subject.OrganizationalUnit = []string{id.Model}
	}
	ku := x509.KeyUsageDigitalSignature
	if isRSA {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		Subject:               subject,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{DeviceURI(id.ID)},
	}
	c, err := a.sign(tmpl, a.lifetime, csr.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("pki: issue device %s: %w", id.ID, err)
	}
	return c, nil
}

// IssueServer returns a TLS server certificate with a fresh ECDSA P-256 key
// for Ward's device listener, valid 90 days (capped at the issuer's
// NotAfter). The chain is [leaf, issuer].
func (a *Authority) IssueServer(dnsNames []string, ips []net.IP) (tls.Certificate, error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return tls.Certificate{}, errors.New("pki: issue server: no DNS names or IP addresses")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), a.rand)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue server: generate key: %w", err)
	}
	cn := "Ward device listener"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: slices.Clone(a.issuer.Subject.Organization)},
		DNSNames:              slices.Clone(dnsNames),
		IPAddresses:           slices.Clone(ips),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	leaf, err := a.sign(tmpl, serverLifetime, key.Public())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue server: %w", err)
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, a.issuer.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// sign fills serial and validity into tmpl and signs it with the issuing key.
func (a *Authority) sign(tmpl *x509.Certificate, lifetime time.Duration, pub crypto.PublicKey) (*x509.Certificate, error) {
	now := a.now()
	if !now.Before(a.issuer.NotAfter) {
		return nil, fmt.Errorf("issuing CA expired at %s: %w", a.issuer.NotAfter.UTC().Format(time.RFC3339), ErrCertExpired)
	}
	serial, err := newSerial(a.rand)
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = maxTime(now.Add(-clockSkew), a.issuer.NotBefore)
	tmpl.NotAfter = minTime(now.Add(lifetime), a.issuer.NotAfter)
	return createCertificate(a.rand, tmpl, a.issuer, pub, a.key)
}

// VerifyDevice checks an operational certificate presented by a device and
// returns the Ward device id it names. The leaf must be signed by Ward's
// current issuing CA, chain to the root and be valid at Now, carry
// ExtKeyUsage ClientAuth and exactly one ward://device/<id> URI.
// intermediates are accepted so callers can pass a TLS peer chain verbatim,
// but they are not trusted: only the issuing CA loaded by Open is.
// Revocation is not checked here.
func (a *Authority) VerifyDevice(leaf *x509.Certificate, intermediates []*x509.Certificate) (deviceID string, err error) {
	_ = intermediates
	if leaf == nil {
		return "", fmt.Errorf("pki: verify device: no certificate: %w", ErrUntrusted)
	}
	now := a.now()
	// The chain is leaf → issuing CA, which Open checked against the root;
	// x509 checks the issuing CA's validity, usages and constraints here.
	opts := x509.VerifyOptions{
		Roots:       a.devRoots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if _, err := leaf.Verify(opts); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) {
			switch inv.Reason {
			case x509.Expired:
				// Say "expired" only for a certificate that is Ward's.
				opts.CurrentTime = leaf.NotBefore
				if _, err2 := leaf.Verify(opts); err2 != nil {
					return "", fmt.Errorf("pki: verify device: %w: %w", ErrUntrusted, err2)
				}
				if now.Before(inv.Cert.NotBefore) {
					return "", fmt.Errorf("pki: verify device: %w: %w", ErrCertNotYetValid, err)
				}
				return "", fmt.Errorf("pki: verify device: %w: %w", ErrCertExpired, err)
			case x509.IncompatibleUsage:
				return "", fmt.Errorf("pki: verify device: %w: %w", ErrNotDeviceCert, err)
			}
		}
		return "", fmt.Errorf("pki: verify device: %w: %w", ErrUntrusted, err)
	}
	if now.After(a.root.NotAfter) || now.Before(a.root.NotBefore) {
		return "", fmt.Errorf("pki: verify device: root CA not valid at %s: %w", now.UTC().Format(time.RFC3339), ErrUntrusted)
	}
	if leaf.IsCA || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "", fmt.Errorf("pki: verify device: no client authentication usage: %w", ErrNotDeviceCert)
	}
	id, err := DeviceIDFromCert(leaf)
	if err != nil {
		return "", fmt.Errorf("pki: verify device: %w", err)
	}
	return id, nil
}

// CRL returns a DER X.509 v2 CRL signed by the issuing CA with the given
// entries and number, ThisUpdate now and NextUpdate now+next.
func (a *Authority) CRL(entries []x509.RevocationListEntry, number *big.Int, next time.Duration) ([]byte, error) {
	if number == nil || number.Sign() < 0 {
		return nil, errors.New("pki: crl: number must be a non-negative integer")
	}
	if next <= 0 {
		return nil, errors.New("pki: crl: next update must be in the future")
	}
	now := a.now()
	tmpl := &x509.RevocationList{
		RevokedCertificateEntries: entries,
		Number:                    number,
		ThisUpdate:                now,
		NextUpdate:                now.Add(next),
	}
	der, err := x509.CreateRevocationList(a.rand, tmpl, a.issuer, a.key)
	if err != nil {
		return nil, fmt.Errorf("pki: crl: %w", err)
	}
	return der, nil
}

// checkPublicKey accepts ECDSA P-256/P-384, Ed25519 and RSA of at least 2048
// bits. It reports whether the key is RSA.
func checkPublicKey(pub crypto.PublicKey) (isRSA bool, err error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return false, nil
		}
		return false, fmt.Errorf("ECDSA curve %s: %w", k.Curve.Params().Name, ErrWeakKey)
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return false, nil
		}
	case *rsa.PublicKey:
		if k.N.BitLen() >= 2048 {
			return true, nil
		}
		return true, fmt.Errorf("RSA %d bits: %w", k.N.BitLen(), ErrWeakKey)
	}
	return false, fmt.Errorf("key type %T: %w", pub, ErrWeakKey)
}

// createCertificate signs and parses a certificate.
func createCertificate(rnd io.Reader, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rnd, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// newSerial returns a random positive 128-bit serial number.
func newSerial(rnd io.Reader) (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := io.ReadFull(rnd, b[:]); err != nil {
			return nil, fmt.Errorf("pki: serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func nowFunc(f func() time.Time) func() time.Time {
	if f == nil {
		return time.Now
	}
	return f
}

// randReader returns r, serialised so that a caller's reader need not be safe
// for concurrent use; nil means crypto/rand.Reader.
func randReader(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return &lockedReader{r: r}
}

type lockedReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
