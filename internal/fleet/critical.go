package fleet

// Critical actions: each needs a second person's approval (package access,
// two-person rule), which the caller obtains before calling these. They do
// not check approvals themselves; they only do the change, in one
// transaction with its audit entries.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// RemoveManufacturer revokes Ward's trust in a manufacturer's CA: from now
// on no birth certificate it signed is attested, no device can be
// preregistered for it, and it is no longer listed. The record stays, since
// devices refer to it, and devices already enrolled keep their operational
// certificates (revoke them separately if the CA was compromised).
func (r *Registry) RemoveManufacturer(ctx context.Context, actor, ref string) (Manufacturer, error) {
	if ref == "" {
		return Manufacturer{}, fmt.Errorf("fleet: remove manufacturer: %w: empty reference", ErrInvalid)
	}
	now := r.now().UTC()
	var m Manufacturer
	err := r.st.Tx(ctx, func(tx *store.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT id, name, ca_pem, fingerprint, created_at, created_by FROM manufacturers WHERE (id = ? OR name = ?) AND revoked_at IS NULL`, ref, ref).
			Scan(&m.ID, &m.Name, &m.CAPEM, &m.Fingerprint, &m.CreatedAt, &m.CreatedBy)
		if err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("fleet: manufacturer %q: %w", ref, ErrNotFound)
			}
			return fmt.Errorf("fleet: remove manufacturer: %w", err)
		}
		m.CreatedAt = m.CreatedAt.UTC()
		if _, err := tx.ExecContext(ctx, `UPDATE manufacturers SET revoked_at = ? WHERE id = ?`, now, m.ID); err != nil {
			return fmt.Errorf("fleet: remove manufacturer: %w", err)
		}
		var devices int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE manufacturer_id = ?`, m.ID).Scan(&devices); err != nil {
			return fmt.Errorf("fleet: remove manufacturer: %w", err)
		}
		return r.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "manufacturer.remove", Target: "manufacturer:" + m.ID, Outcome: audit.Success,
			Detail: map[string]any{"name": m.Name, "fingerprint": m.Fingerprint, "devices": devices}})
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

// RevokeMany revokes several devices in one transaction: all of them, or,
// if any one cannot be revoked (unknown, or already revoked or
// decommissioned), none. reason is required.
func (r *Registry) RevokeMany(ctx context.Context, actor string, refs []string, reason string) ([]Device, error) {
	switch {
	case len(refs) == 0:
		return nil, fmt.Errorf("fleet: revoke devices: %w: no device named", ErrInvalid)
	case reason == "" || len(reason) > 512:
		return nil, fmt.Errorf("fleet: revoke devices: %w: a reason of 1 to 512 bytes is required", ErrInvalid)
	}
	now := r.now().UTC()
	var (
		ids     []string
		serials []string
	)
	err := r.st.Tx(ctx, func(tx *store.Tx) error {
		seen := map[string]bool{}
		for _, ref := range refs {
			d, err := r.get(ctx, tx, ref)
			if err != nil {
				return err
			}
			if seen[d.ID] {
				continue
			}
			seen[d.ID] = true
			if d.State != Pending && d.State != Active && d.State != Quarantined {
				return fmt.Errorf("fleet: revoke device %s: %w (it is %s)", d.ID, ErrState, d.State)
			}
			if err := r.revokeIn(ctx, tx, actor, d, reason, now); err != nil {
				return err
			}
			s, err := r.revokeCertificates(ctx, tx, d.ID, now)
			if err != nil {
				return err
			}
			ids, serials = append(ids, d.ID), append(serials, s...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.markRevoked(serials)
	out := make([]Device, 0, len(ids))
	for _, id := range ids {
		r.stateChanged(id, Revoked)
		d, err := r.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// revokeIn is Revoke's state change inside the caller's transaction.
func (r *Registry) revokeIn(ctx context.Context, tx *store.Tx, actor string, d Device, reason string, now time.Time) error {
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = ?, state_reason = ?, updated_at = ? WHERE id = ?`, Revoked, "revoked: "+reason, now, d.ID); err != nil {
		return fmt.Errorf("fleet: device.revoke: %w", err)
	}
	return r.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "device.revoke", Target: "device:" + d.ID, Outcome: audit.Success, Reason: reason,
		Detail: map[string]any{"serial": d.Serial, "manufacturer": d.Manufacturer, "from": string(d.State), "to": string(Revoked), "bulk": true}})
}
