package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.step.sm/crypto/pemutil"
)

// ReadPassphrase reads a passphrase from file if file is not empty (one
// trailing newline trimmed), else from the environment variable env. An
// empty passphrase is an error. Errors never contain the passphrase.
func ReadPassphrase(env string, file string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("pki: passphrase file: %w", err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		if len(b) == 0 {
			return nil, fmt.Errorf("pki: passphrase file %s is empty", file)
		}
		return b, nil
	}
	if env == "" {
		return nil, errors.New("pki: no passphrase file or environment variable")
	}
	v := os.Getenv(env)
	if v == "" {
		return nil, fmt.Errorf("pki: passphrase: environment variable %s is empty or unset", env)
	}
	return []byte(v), nil
}

// WriteKeyFile writes key atomically with mode 0600 as PKCS#8 PEM, encrypted
// with passphrase ("ENCRYPTED PRIVATE KEY") unless passphrase is nil.
func WriteKeyFile(path string, key crypto.Signer, passphrase []byte) error {
	if key == nil {
		return errors.New("pki: write key: no key")
	}
	var block *pem.Block
	if passphrase == nil {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fmt.Errorf("pki: write key %s: %w", path, err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	} else {
		if len(passphrase) == 0 {
			return fmt.Errorf("pki: write key %s: empty passphrase", path)
		}
		var err error
		block, err = pemutil.Serialize(key, pemutil.WithPassword(passphrase), pemutil.WithPKCS8(true))
		if err != nil {
			// pemutil's errors describe the key type, never the key or password.
			return fmt.Errorf("pki: write key %s: %w", path, err)
		}
	}
	return writeFileAtomic(path, pem.EncodeToMemory(block), 0o600)
}

// ReadKeyFile reads a PKCS#8 private key written by WriteKeyFile. With a
// passphrase the file must be encrypted; a wrong passphrase or damaged file
// yields ErrBadPassphrase. With a nil passphrase the file must be plain.
func ReadKeyFile(path string, passphrase []byte) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read key: %w", err)
	}
	block, rest := pem.Decode(b)
	if block == nil || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("pki: read key %s: not a single PEM block", path)
	}
	var der []byte
	switch block.Type {
	case "ENCRYPTED PRIVATE KEY":
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("pki: read key %s: key is encrypted and no passphrase was given", path)
		}
		der, err = pemutil.DecryptPKCS8PrivateKey(block.Bytes, passphrase)
		if err != nil {
			return nil, fmt.Errorf("pki: read key %s: %w", path, ErrBadPassphrase)
		}
	case "PRIVATE KEY":
		if passphrase != nil {
			return nil, fmt.Errorf("pki: read key %s: key is not encrypted", path)
		}
		der = block.Bytes
	default:
		return nil, fmt.Errorf("pki: read key %s: unexpected PEM block %q", path, block.Type)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		if passphrase != nil {
			// CBC padding does not always detect a wrong passphrase.
			return nil, fmt.Errorf("pki: read key %s: %w", path, ErrBadPassphrase)
		}
		return nil, fmt.Errorf("pki: read key %s: malformed PKCS#8 key", path)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: read key %s: key type %T cannot sign", path, k)
	}
	return s, nil
}

// writeFileAtomic writes data to a temporary file in path's directory, syncs
// it and renames it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
