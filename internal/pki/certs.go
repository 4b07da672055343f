package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
)

// DeviceURIScheme is the scheme of the URI SAN that names a device in its
// operational certificate: ward://device/<id>.
const DeviceURIScheme = "ward"

const deviceURIHost = "device"

var deviceIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// ValidDeviceID returns an error wrapping ErrInvalidDeviceID unless id
// matches ^[a-z0-9][a-z0-9-]{0,63}$.
func ValidDeviceID(id string) error {
	if !deviceIDRe.MatchString(id) {
		return fmt.Errorf("%w %q", ErrInvalidDeviceID, id)
	}
	return nil
}

// DeviceURI returns ward://device/<id>.
func DeviceURI(id string) *url.URL {
	return &url.URL{Scheme: DeviceURIScheme, Host: deviceURIHost, Path: "/" + id}
}

// DeviceIDFromCert returns the device id from c's single ward://device/<id>
// URI SAN. Errors wrap ErrNotDeviceCert.
func DeviceIDFromCert(c *x509.Certificate) (string, error) {
	if c == nil {
		return "", fmt.Errorf("no certificate: %w", ErrNotDeviceCert)
	}
	var found *url.URL
	for _, u := range c.URIs {
		if u == nil || u.Scheme != DeviceURIScheme {
			continue
		}
		if found != nil {
			return "", fmt.Errorf("more than one %s URI: %w", DeviceURIScheme, ErrNotDeviceCert)
		}
		found = u
	}
	if found == nil {
		return "", fmt.Errorf("no %s://%s/ URI: %w", DeviceURIScheme, deviceURIHost, ErrNotDeviceCert)
	}
	u := found
	if u.Opaque != "" || u.User != nil || u.Host != deviceURIHost || u.RawQuery != "" ||
		u.ForceQuery || u.Fragment != "" || u.RawPath != "" || len(u.Path) < 2 || u.Path[0] != '/' {
		return "", fmt.Errorf("malformed device URI: %w", ErrNotDeviceCert)
	}
	id := u.Path[1:]
	if !deviceIDRe.MatchString(id) {
		return "", fmt.Errorf("malformed device id in URI: %w", ErrNotDeviceCert)
	}
	return id, nil
}

// ReadCertificates parses every CERTIFICATE block in pemBytes. It fails if
// there is none, or on any other block type or non-blank trailing data.
func ReadCertificates(pemBytes []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := pemBytes
	begin := []byte("-----BEGIN ")
	for {
		rest = bytes.TrimLeft(rest, " \t\r\n")
		if len(rest) == 0 {
			break
		}
		// pem.Decode skips text before a block and malformed blocks; refuse both.
		if !bytes.HasPrefix(rest, begin) {
			return nil, errors.New("pki: certificates: data that is not PEM")
		}
		next := bytes.Index(rest[len(begin):], begin)
		var block *pem.Block
		block, after := pem.Decode(rest)
		consumed := len(rest) - len(after)
		if block == nil || (next >= 0 && consumed > next+len(begin)) {
			return nil, errors.New("pki: certificates: malformed PEM block")
		}
		rest = after
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("pki: certificates: unexpected PEM block %q", block.Type)
		}
		if len(block.Headers) != 0 {
			return nil, errors.New("pki: certificates: PEM headers not allowed")
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: certificates: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("pki: certificates: no certificate found")
	}
	return certs, nil
}

// EncodeCertificates returns certs as concatenated PEM CERTIFICATE blocks.
func EncodeCertificates(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// Fingerprint returns "SHA256:" followed by the lowercase hex SHA-256 of c's DER.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "SHA256:" + hex.EncodeToString(sum[:])
}

var oidSerialNumber = asn1.ObjectIdentifier{2, 5, 4, 5}

// SubjectSerial returns the value of name's serialNumber attribute (OID
// 2.5.4.5), or "" if there is none. A parsed name carrying more than one
// serialNumber is ambiguous and yields "".
func SubjectSerial(name pkix.Name) string {
	n := 0
	for _, atv := range name.Names {
		if atv.Type.Equal(oidSerialNumber) {
			n++
		}
	}
	if n > 1 {
		return ""
	}
	return name.SerialNumber
}

// readOneCert reads a PEM file holding exactly one certificate. A missing
// file is ErrNotInitialised.
func readOneCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNotInitialised)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	certs, err := ReadCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("pki: %s: want one certificate, found %d", path, len(certs))
	}
	return certs[0], nil
}
