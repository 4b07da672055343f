package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Last known state and last contact are telemetry, not decisions: they are
// written with plain UPDATEs, outside any audited transaction, by the
// gateway's durable bus consumer (never in a device's publish path). Both
// only move forward in time, so a message redelivered late by the bus never
// overwrites a newer one.

// RecordState stores state as the device's last known state, reported at
// at, unless a newer one is already recorded. An unknown device is not an
// error: there is nothing to update.
func (r *Registry) RecordState(ctx context.Context, deviceID string, state json.RawMessage, at time.Time) error {
	if !json.Valid(state) {
		return fmt.Errorf("%w: state is not JSON", ErrInvalid)
	}
	at = at.UTC()
	_, err := r.st.ExecContext(ctx, `UPDATE devices SET last_state = ?, last_state_at = ?
		WHERE id = ? AND (last_state_at IS NULL OR last_state_at <= ?)`, string(state), at, deviceID, at)
	if err != nil {
		return fmt.Errorf("fleet: record state of %s: %w", deviceID, err)
	}
	return nil
}

// RecordSeen moves the device's last_seen_at forward to at.
func (r *Registry) RecordSeen(ctx context.Context, deviceID string, at time.Time) error {
	at = at.UTC()
	_, err := r.st.ExecContext(ctx, `UPDATE devices SET last_seen_at = ?
		WHERE id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)`, at, deviceID, at)
	if err != nil {
		return fmt.Errorf("fleet: record last seen of %s: %w", deviceID, err)
	}
	return nil
}

// LastState returns the device's last known state and when it was
// reported; state is nil if the device never reported one.
func (r *Registry) LastState(ctx context.Context, deviceID string) (state json.RawMessage, at *time.Time, err error) {
	var (
		s  sql.NullString
		ts sql.NullTime
	)
	err = r.st.QueryRowContext(ctx, `SELECT last_state, last_state_at FROM devices WHERE id = ?`, deviceID).Scan(&s, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, fmt.Errorf("%w: device %s", ErrNotFound, deviceID)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("fleet: last state of %s: %w", deviceID, err)
	}
	if s.Valid {
		state = json.RawMessage(s.String)
	}
	return state, ptime(ts), nil
}
