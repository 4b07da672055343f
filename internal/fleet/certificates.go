package fleet

import (
	"context"
	"crypto/x509"
	"database/sql"
	"fmt"
	"math/big"
	"time"

	"github.com/wardhq/ward/internal/store"
)

// CertSerial is how Ward writes a certificate serial number: lowercase hex.
func CertSerial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// CreatePending records a device that asked to enroll and is not yet known.
// It runs in the caller's transaction; the caller writes the audit entry.
func (r *Registry) CreatePending(ctx context.Context, tx *store.Tx, manufacturerID, serial, model string) (Device, error) {
	if !ValidSerial(serial) {
		return Device{}, fmt.Errorf("fleet: %w: serial %q", ErrInvalid, serial)
	}
	if model != "" && checkLabel("model", model, false) != nil {
		model = ""
	}
	id, err := r.newID()
	if err != nil {
		return Device{}, err
	}
	now := r.now().UTC()
	_, err = tx.ExecContext(ctx, `INSERT INTO devices (id, manufacturer_id, serial, model, state, created_at, updated_at, enroll_requested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		id, manufacturerID, serial, model, Pending, now, now, now)
	if store.IsUniqueViolation(err) {
		return Device{}, fmt.Errorf("fleet: device %s/%s: %w", manufacturerID, serial, ErrConflict)
	}
	if err != nil {
		return Device{}, fmt.Errorf("fleet: create pending device: %w", err)
	}
	return r.get(ctx, tx, id)
}

// NoteEnrollRequest records that a pending device asked again.
func (r *Registry) NoteEnrollRequest(ctx context.Context, tx *store.Tx, deviceID string) error {
	now := r.now().UTC()
	_, err := tx.ExecContext(ctx, `UPDATE devices SET enroll_requested_at = ?, updated_at = ? WHERE id = ?`, now, now, deviceID)
	if err != nil {
		return fmt.Errorf("fleet: note enroll request: %w", err)
	}
	return nil
}

// RecordIssued stores an operational certificate issued to a device and
// makes it the device's current one; a pending device becomes active. It
// fails with ErrState, writing nothing, if the device was meanwhile revoked,
// decommissioned or is not approved.
func (r *Registry) RecordIssued(ctx context.Context, tx *store.Tx, deviceID string, cert *x509.Certificate) error {
	now := r.now().UTC()
	res, err := tx.ExecContext(ctx, `UPDATE devices SET
			state = CASE WHEN state = 'pending' THEN 'active' ELSE state END,
			cert_serial = ?, cert_not_after = ?, last_seen_at = ?, updated_at = ?
		WHERE id = ? AND state IN ('pending', 'active', 'quarantined') AND approved_at IS NOT NULL`,
		CertSerial(cert), cert.NotAfter, now, now, deviceID)
	if err != nil {
		return fmt.Errorf("fleet: record certificate: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return fmt.Errorf("fleet: record certificate for device %s: %w", deviceID, ErrState)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO certificates (serial, device_id, issued_at, not_before, not_after, der) VALUES (?, ?, ?, ?, ?, ?)`,
		CertSerial(cert), deviceID, now, cert.NotBefore, cert.NotAfter, cert.Raw)
	if err != nil {
		return fmt.Errorf("fleet: record certificate: %w", err)
	}
	return nil
}

// Certificate is an operational certificate in the registry.
type Certificate struct {
	Serial    string     `json:"serial"`
	DeviceID  string     `json:"device_id"`
	IssuedAt  time.Time  `json:"issued_at"`
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// Certificates lists a device's certificates, newest first.
func (r *Registry) Certificates(ctx context.Context, deviceID string) ([]Certificate, error) {
	rows, err := r.st.QueryContext(ctx, `SELECT serial, device_id, issued_at, not_before, not_after, revoked_at FROM certificates WHERE device_id = ? ORDER BY issued_at DESC, serial`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("fleet: certificates: %w", err)
	}
	defer rows.Close()
	out := []Certificate{}
	for rows.Next() {
		var c Certificate
		var revoked sql.NullTime
		if err := rows.Scan(&c.Serial, &c.DeviceID, &c.IssuedAt, &c.NotBefore, &c.NotAfter, &revoked); err != nil {
			return nil, fmt.Errorf("fleet: certificates: %w", err)
		}
		c.IssuedAt, c.NotBefore, c.NotAfter = c.IssuedAt.UTC(), c.NotBefore.UTC(), c.NotAfter.UTC()
		c.RevokedAt = ptime(revoked)
		out = append(out, c)
	}
	return out, rows.Err()
}

// IsRevoked reports whether Ward revoked the certificate with this serial
// (CertSerial form). It reads memory only.
func (r *Registry) IsRevoked(serial string) bool {
	_, ok := r.revoked.Load(serial)
	return ok
}

// RevocationGeneration changes whenever the revocation set changes, so a
// CRL can be rebuilt only when needed.
func (r *Registry) RevocationGeneration() uint64 { return r.revokedGen.Load() }

func (r *Registry) markRevoked(serials []string) {
	if len(serials) == 0 {
		return
	}
	for _, s := range serials {
		r.revoked.Store(s, struct{}{})
	}
	r.revokedGen.Add(1)
	if r.onRevoke != nil {
		r.onRevoke(serials)
	}
}

// ReloadRevocations reads the revoked, unexpired certificates from the
// store: at start, and when another node reports a revocation.
func (r *Registry) ReloadRevocations(ctx context.Context) error {
	entries, err := r.RevokedEntries(ctx)
	if err != nil {
		return err
	}
	for _, e := range entries {
		r.revoked.Store(e.SerialNumber.Text(16), struct{}{})
	}
	r.revokedGen.Add(1)
	return nil
}

// RevokedEntries returns the revoked certificates that have not expired,
// for the CRL.
func (r *Registry) RevokedEntries(ctx context.Context) ([]x509.RevocationListEntry, error) {
	rows, err := r.st.QueryContext(ctx, `SELECT serial, revoked_at, revocation_reason FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY serial`, r.now().UTC())
	if err != nil {
		return nil, fmt.Errorf("fleet: revoked certificates: %w", err)
	}
	defer rows.Close()
	var out []x509.RevocationListEntry
	for rows.Next() {
		var (
			serial string
			at     time.Time
			reason int
		)
		if err := rows.Scan(&serial, &at, &reason); err != nil {
			return nil, fmt.Errorf("fleet: revoked certificates: %w", err)
		}
		n, ok := new(big.Int).SetString(serial, 16)
		if !ok {
			return nil, fmt.Errorf("fleet: stored certificate serial %q is not hex", serial)
		}
		out = append(out, x509.RevocationListEntry{SerialNumber: n, RevocationTime: at.UTC(), ReasonCode: reason})
	}
	return out, rows.Err()
}

// CheckAdmitted is the check every device listener makes for a device
// presenting an operational certificate: the certificate is not revoked and
// the device exists and is active or quarantined.
func (r *Registry) CheckAdmitted(ctx context.Context, deviceID, certSerial string) (Device, error) {
	if r.IsRevoked(certSerial) {
		return Device{}, fmt.Errorf("fleet: certificate %s: %w (revoked)", certSerial, ErrState)
	}
	d, err := r.get(ctx, r.st, deviceID)
	if err != nil {
		return Device{}, err
	}
	if d.ID != deviceID {
		return Device{}, fmt.Errorf("fleet: device %s: %w", deviceID, ErrNotFound)
	}
	if !d.State.Admitted() {
		return d, fmt.Errorf("fleet: device %s: %w (it is %s)", deviceID, ErrState, d.State)
	}
	return d, nil
}
