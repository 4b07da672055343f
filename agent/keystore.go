package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"
)

// KeyStore holds the device key and its certificates. The key is generated
// on the device and never leaves it: no method returns private key bytes.
// FileKeyStore keeps them in files; a secure element or a TPM implements
// the same interface, its Signer signing inside the chip.
type KeyStore interface {
	// Signer returns the device key, creating it (ECDSA P-256) on first use.
	Signer() (crypto.Signer, error)
	// Certificate returns the chain stored under name (CertBirth,
	// CertOperational), leaf first, or an error wrapping ErrNoCertificate.
	Certificate(name string) ([]*x509.Certificate, error)
	// PutCertificate stores chain under name, replacing what was there,
	// atomically: a crash leaves the old chain or the new one.
	PutCertificate(name string, chain []*x509.Certificate) error
}

// ErrNoCertificate is wrapped by KeyStore.Certificate when nothing is
// stored under the name.
var ErrNoCertificate = errors.New("agent: no certificate")

// FileKeyStore is a KeyStore in a directory (mode 0700):
//
//	device.key        the device key, PKCS#8 PEM, mode 0600
//	birth.pem         the birth certificate chain, PEM
//	operational.pem   the operational certificate chain, PEM
//
// Every file is written atomically (temporary file, fsync, rename, fsync of
// the directory).
type FileKeyStore struct {
	dir  string
	rand io.Reader

	mu     sync.Mutex
	signer crypto.Signer
}

var _ KeyStore = (*FileKeyStore)(nil)

const keyFile = "device.key"

var certNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// NewFileKeyStore opens (creating it, mode 0700) the key store in dir.
func NewFileKeyStore(dir string) (*FileKeyStore, error) {
	if dir == "" {
		return nil, errors.New("agent: key store: no directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: key store: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: key store: %w", err)
	}
	return &FileKeyStore{dir: dir, rand: rand.Reader}, nil
}

// Dir returns the key store's directory.
func (s *FileKeyStore) Dir() string { return s.dir }

// Signer returns the device key, generating and storing it on first use.
func (s *FileKeyStore) Signer() (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.signer != nil {
		return s.signer, nil
	}
	path := filepath.Join(s.dir, keyFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		block, _ := pem.Decode(b)
		if block == nil || block.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("agent: key store: %s is not a PKCS#8 PEM key", keyFile)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("agent: key store: %s: %w", keyFile, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("agent: key store: %s: %T keys are not supported", keyFile, k)
		}
		s.signer = keySigner{ek}
	case errors.Is(err, fs.ErrNotExist):
		k, err := ecdsa.GenerateKey(elliptic.P256(), s.rand)
		if err != nil {
			return nil, fmt.Errorf("agent: key store: generate key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("agent: key store: %w", err)
		}
		if err := writeAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			return nil, fmt.Errorf("agent: key store: %w", err)
		}
		s.signer = keySigner{k}
	default:
		return nil, fmt.Errorf("agent: key store: %w", err)
	}
	return s.signer, nil
}

// Certificate returns the chain stored under name.
func (s *FileKeyStore) Certificate(name string) ([]*x509.Certificate, error) {
	if !certNameRE.MatchString(name) {
		return nil, fmt.Errorf("agent: key store: bad certificate name %q", name)
	}
	b, err := os.ReadFile(filepath.Join(s.dir, name+".pem"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoCertificate, name)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: key store: %w", err)
	}
	var chain []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("agent: key store: %s: %w", name, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: %s.pem holds none", ErrNoCertificate, name)
	}
	return chain, nil
}

// PutCertificate stores chain under name.
func (s *FileKeyStore) PutCertificate(name string, chain []*x509.Certificate) error {
	if !certNameRE.MatchString(name) {
		return fmt.Errorf("agent: key store: bad certificate name %q", name)
	}
	if len(chain) == 0 {
		return errors.New("agent: key store: empty chain")
	}
	var b []byte
	for _, c := range chain {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := writeAtomic(filepath.Join(s.dir, name+".pem"), b); err != nil {
		return fmt.Errorf("agent: key store: %w", err)
	}
	return nil
}

// keySigner exposes a software key as a crypto.Signer only, so that no
// caller can reach the private scalar through a type assertion.
type keySigner struct{ k *ecdsa.PrivateKey }

func (s keySigner) Public() crypto.PublicKey { return s.k.Public() }

func (s keySigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.k.Sign(r, digest, opts)
}

// writeAtomic writes b to path with mode 0600: a temporary file in the
// same directory, fsync, rename over path, fsync of the directory.
func writeAtomic(path string, b []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err = f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// MemKeyStore is a KeyStore in memory, for simulators and tests: nothing
// survives the process, so a real device must not use it.
type MemKeyStore struct {
	rand io.Reader

	mu     sync.Mutex
	signer crypto.Signer
	certs  map[string][]*x509.Certificate
}

var _ KeyStore = (*MemKeyStore)(nil)

// NewMemKeyStore returns an empty in-memory key store whose key is drawn
// from r (nil: crypto/rand.Reader).
func NewMemKeyStore(r io.Reader) *MemKeyStore {
	if r == nil {
		r = rand.Reader
	}
	return &MemKeyStore{rand: r, certs: make(map[string][]*x509.Certificate)}
}

// Signer returns the key, generating it on first use.
func (s *MemKeyStore) Signer() (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.signer == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), s.rand)
		if err != nil {
			return nil, fmt.Errorf("agent: key store: generate key: %w", err)
		}
		s.signer = keySigner{k}
	}
	return s.signer, nil
}

// Certificate returns the chain stored under name.
func (s *MemKeyStore) Certificate(name string) ([]*x509.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.certs[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNoCertificate, name)
	}
	return append([]*x509.Certificate(nil), c...), nil
}

// PutCertificate stores chain under name.
func (s *MemKeyStore) PutCertificate(name string, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("agent: key store: empty chain")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.certs[name] = append([]*x509.Certificate(nil), chain...)
	return nil
}
