package fleet

// Quarantine and release: active ↔ quarantined. A quarantined device keeps
// its certificate and stays connected, but the gateway lets it publish only
// its state and events and receive commands (security updates); therapy is
// never stopped (DESIGN.md §4.1). The change reaches every node's gateway
// through OnStateChange.

import (
	"context"
	"fmt"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// Quarantine restricts an active device. reason (1 to 512 bytes) is
// required: it is what the people looking at the device read.
func (r *Registry) Quarantine(ctx context.Context, actor, ref, reason string) (Device, error) {
	if reason == "" || len(reason) > 512 {
		return Device{}, fmt.Errorf("fleet: quarantine: %w: a reason of 1 to 512 bytes is required", ErrInvalid)
	}
	return r.setAdmitted(ctx, actor, ref, "device.quarantine", Active, Quarantined, "quarantined: "+reason, reason)
}

// Release lifts a device's quarantine: it becomes active again.
func (r *Registry) Release(ctx context.Context, actor, ref string) (Device, error) {
	return r.setAdmitted(ctx, actor, ref, "device.release", Quarantined, Active, "", "")
}

func (r *Registry) setAdmitted(ctx context.Context, actor, ref, action string, from, to State, stateReason, reason string) (Device, error) {
	return r.transition(ctx, actor, ref, action, []State{from}, func(tx *store.Tx, d Device, now time.Time) error {
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = ?, state_reason = ?, updated_at = ? WHERE id = ? AND state = ?`,
			to, stateReason, now, d.ID, from); err != nil {
			return fmt.Errorf("fleet: %s: %w", action, err)
		}
		return r.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: action, Target: "device:" + d.ID, Outcome: audit.Success, Reason: reason,
			Detail: map[string]any{"serial": d.Serial, "manufacturer": d.Manufacturer, "from": string(from), "to": string(to)}})
	})
}
