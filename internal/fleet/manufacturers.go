package fleet

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// maxCAPEM bounds a manufacturer's CA bundle.
const maxCAPEM = 64 << 10

// ParseCABundle reads one or more PEM CA certificates. Anything that is not a
// CERTIFICATE block, or a certificate that is not a CA able to sign
// certificates, is refused.
func ParseCABundle(pemBytes []byte) ([]*x509.Certificate, error) {
	if len(pemBytes) > maxCAPEM {
		return nil, fmt.Errorf("%w: CA bundle larger than %d bytes", ErrInvalid, maxCAPEM)
	}
	var out []*x509.Certificate
	rest := pemBytes
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: CA bundle holds a %q block; only CERTIFICATE is accepted", ErrInvalid, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: CA certificate %d: %v", ErrInvalid, len(out)+1, err)
		}
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("%w: certificate %q is not a CA certificate", ErrInvalid, c.Subject.CommonName)
		}
		if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, fmt.Errorf("%w: CA certificate %q may not sign certificates (key usage)", ErrInvalid, c.Subject.CommonName)
		}
		out = append(out, c)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("%w: CA bundle has trailing data that is not PEM", ErrInvalid)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no PEM CERTIFICATE found", ErrInvalid)
	}
	return out, nil
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "SHA256:" + hex.EncodeToString(sum[:])
}

// AddManufacturer registers a manufacturer and the CA certificate(s) that
// sign its devices' birth certificates.
func (r *Registry) AddManufacturer(ctx context.Context, actor, name string, caPEM []byte) (Manufacturer, error) {
	if err := checkLabel("name", name, true); err != nil {
		return Manufacturer{}, fmt.Errorf("fleet: add manufacturer: %w", err)
	}
	cas, err := ParseCABundle(caPEM)
	if err != nil {
		return Manufacturer{}, fmt.Errorf("fleet: add manufacturer %q: %w", name, err)
	}
	id, err := r.newID()
	if err != nil {
		return Manufacturer{}, err
	}
	now := r.now().UTC()
	m := Manufacturer{ID: id, Name: name, Fingerprint: fingerprint(cas[0]), CAPEM: string(caPEM), CreatedAt: now, CreatedBy: actor, CAs: cas}
	err = r.st.Tx(ctx, func(tx *store.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO manufacturers (id, name, ca_pem, fingerprint, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)`,
			m.ID, m.Name, m.CAPEM, m.Fingerprint, m.CreatedAt, m.CreatedBy)
		if store.IsUniqueViolation(err) {
			return fmt.Errorf("fleet: manufacturer %q: %w", name, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("fleet: add manufacturer: %w", err)
		}
		return r.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "manufacturer.add", Target: "manufacturer:" + m.ID, Outcome: audit.Success,
			Detail: map[string]any{"name": name, "fingerprint": m.Fingerprint, "certificates": len(cas)}})
	})
	if err != nil {
		return Manufacturer{}, err
	}
	r.InvalidateManufacturers()
	if r.onManufacturers != nil {
		r.onManufacturers()
	}
	return m, nil
}

// InvalidateManufacturers drops the cached manufacturer list (another node
// added one).
func (r *Registry) InvalidateManufacturers() {
	r.mfrMu.Lock()
	r.mfrCache = nil
	r.mfrMu.Unlock()
}

// Manufacturers returns every registered manufacturer with its parsed CAs,
// except removed ones (RemoveManufacturer), whose CAs are no longer trusted.
// The list is cached until a manufacturer is added or removed.
func (r *Registry) Manufacturers(ctx context.Context) ([]Manufacturer, error) {
	r.mfrMu.RLock()
	c := r.mfrCache
	r.mfrMu.RUnlock()
	if c != nil {
		return c, nil
	}
	rows, err := r.st.QueryContext(ctx, `SELECT id, name, ca_pem, fingerprint, created_at, created_by FROM manufacturers WHERE revoked_at IS NULL ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("fleet: manufacturers: %w", err)
	}
	defer rows.Close()
	out := []Manufacturer{}
	for rows.Next() {
		var m Manufacturer
		if err := rows.Scan(&m.ID, &m.Name, &m.CAPEM, &m.Fingerprint, &m.CreatedAt, &m.CreatedBy); err != nil {
			return nil, fmt.Errorf("fleet: manufacturers: %w", err)
		}
		m.CreatedAt = m.CreatedAt.UTC()
		if m.CAs, err = ParseCABundle([]byte(m.CAPEM)); err != nil {
			return nil, fmt.Errorf("fleet: manufacturer %s: stored CA: %w", m.Name, err)
		}
		m.pool = x509.NewCertPool()
		for _, c := range m.CAs {
			m.pool.AddCert(c)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	r.mfrMu.Lock()
	r.mfrCache = out
	r.mfrMu.Unlock()
	return out, nil
}

// Manufacturer returns a manufacturer by name or id.
func (r *Registry) Manufacturer(ctx context.Context, ref string) (Manufacturer, error) {
	all, err := r.Manufacturers(ctx)
	if err != nil {
		return Manufacturer{}, err
	}
	for _, m := range all {
		if m.ID == ref || m.Name == ref {
			return m, nil
		}
	}
	// Another node may have added it since the cache was filled.
	r.InvalidateManufacturers()
	if all, err = r.Manufacturers(ctx); err != nil {
		return Manufacturer{}, err
	}
	for _, m := range all {
		if m.ID == ref || m.Name == ref {
			return m, nil
		}
	}
	return Manufacturer{}, fmt.Errorf("fleet: manufacturer %q: %w", ref, ErrNotFound)
}

// AttestBirthCertificate finds the registered manufacturer whose CA signed
// the birth certificate leaf (with optional intermediates from the TLS
// handshake), checking validity at the registry's current time.
//
// A certificate that no registered manufacturer vouches for gives an error
// wrapping ErrUntrusted (and x509's own error, such as an expiry, for the
// reason); any other error is the store's.
func (r *Registry) AttestBirthCertificate(ctx context.Context, leaf *x509.Certificate, intermediates []*x509.Certificate) (Manufacturer, error) {
	all, err := r.Manufacturers(ctx)
	if err != nil {
		return Manufacturer{}, err
	}
	m, err := r.attest(all, leaf, intermediates)
	if !errors.Is(err, ErrUnknownIssuer) {
		return m, err
	}
	// Another node may have registered the manufacturer since the cache was
	// filled. Re-read at most once every few seconds, so that a stream of
	// unknown certificates cannot turn into a stream of queries.
	if !r.mayReloadManufacturers() {
		return Manufacturer{}, err
	}
	r.InvalidateManufacturers()
	if all, err = r.Manufacturers(ctx); err != nil {
		return Manufacturer{}, err
	}
	return r.attest(all, leaf, intermediates)
}

// ErrUnknownIssuer: no registered manufacturer CA issued the certificate.
var ErrUnknownIssuer = fmt.Errorf("no registered manufacturer signed it: %w", ErrUntrusted)

func (r *Registry) attest(all []Manufacturer, leaf *x509.Certificate, intermediates []*x509.Certificate) (Manufacturer, error) {
	var inter *x509.CertPool
	if len(intermediates) > 0 {
		inter = x509.NewCertPool()
		for _, c := range intermediates {
			inter.AddCert(c)
		}
	}
	now := r.now()
	var firstErr error
	for _, m := range all {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err == nil {
			return m, nil
		}
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) && firstErr == nil {
			firstErr = fmt.Errorf("fleet: birth certificate %q: manufacturer %s: %w: %w", leaf.Subject.String(), m.Name, ErrUntrusted, err)
		}
	}
	if firstErr != nil {
		return Manufacturer{}, firstErr
	}
	return Manufacturer{}, fmt.Errorf("fleet: birth certificate %q: %w", leaf.Subject.String(), ErrUnknownIssuer)
}

// mayReloadManufacturers allows one reload of the manufacturer cache for
// unknown issuers every reloadEvery.
func (r *Registry) mayReloadManufacturers() bool {
	const reloadEvery = 5 * time.Second
	now := r.now().UnixNano()
	last := r.mfrReloaded.Load()
	if now-last < int64(reloadEvery) {
		return false
	}
	return r.mfrReloaded.CompareAndSwap(last, now)
}
