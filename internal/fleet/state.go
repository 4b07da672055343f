package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wardhq/ward/internal/store"
)

// Last known state and last contact are telemetry, not decisions: they are
// written with plain UPDATEs, outside any audited transaction, by the
// gateway (never in a device's publish path): states in batches from its
// durable bus consumer, last-seen times from memory. Both
// only move forward in time, so a message redelivered late by the bus never
// overwrites a newer one.

// StateReport is a device's state as it reported it at At.
type StateReport struct {
	DeviceID string
	State    json.RawMessage
	At       time.Time
}

// RecordStates stores each report's state as its device's last known
// state, unless a newer one is already recorded, all in one transaction
// (one flushed commit for the batch). A report whose state is not JSON is
// skipped; an unknown device is not an error: there is nothing to update.
func (r *Registry) RecordStates(ctx context.Context, reports []StateReport) error {
	return r.st.Tx(ctx, func(tx *store.Tx) error {
		for _, s := range reports {
			if !json.Valid(s.State) {
				continue
			}
			at := s.At.UTC()
			if _, err := tx.ExecContext(ctx, `UPDATE devices SET last_state = ?, last_state_at = ?
		WHERE id = ? AND (last_state_at IS NULL OR last_state_at <= ?)`, string(s.State), at, s.DeviceID, at); err != nil {
				return fmt.Errorf("fleet: record state of %s: %w", s.DeviceID, err)
			}
		}
		return nil
	})
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
