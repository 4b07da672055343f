// Package audit records who did what to which object, when, and with what
// outcome: every enrollment decision and every admin action, accepted or
// refused.
//
// An entry is written in the same transaction as the change it records
// (Append with the caller's store.Tx), so a change never lands without its
// entry and a refused request leaves its entry and nothing else (Record, in a
// transaction of its own). Entries are append-only and numbered by a
// store-assigned sequence.
//
// Actors are named "<kind>:<id>": "token:<id>" for an admin API token,
// "device:<ward id>" for a device with an operational certificate,
// "birthcert:<fingerprint>" for a device presenting its birth certificate,
// "system" for Ward itself and "anonymous" when nobody was authenticated.
//
// Entries never hold secrets: no token, key, passphrase or CSR body goes into
// Reason or Detail.
//
// The hash chain, signed checkpoints and verification build on this table.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/wardhq/ward/internal/store"
)

// Outcomes of an audited action.
const (
	Success = "success" // the action happened
	Denied  = "denied"  // refused by policy or authentication
	Pending = "pending" // accepted for a later decision
	Failed  = "failed"  // could not be carried out
)

// Actor names for parties that are not a token or a device.
const (
	System    = "system"
	Anonymous = "anonymous"
)

// Entry is one audit record.
type Entry struct {
	Seq     int64          `json:"seq"`
	At      time.Time      `json:"at"`
	Actor   string         `json:"actor"`
	Action  string         `json:"action"`
	Target  string         `json:"target,omitempty"`
	Outcome string         `json:"outcome"`
	Reason  string         `json:"reason,omitempty"`
	Source  string         `json:"source,omitempty"`
	Detail  map[string]any `json:"detail,omitempty"`
}

// Log is the audit log in the store.
type Log struct {
	st  *store.Store
	now func() time.Time
}

// New returns the audit log kept in st. now may be nil.
func New(st *store.Store, now func() time.Time) *Log {
	if now == nil {
		now = time.Now
	}
	return &Log{st: st, now: now}
}

// Append writes e as part of the caller's transaction.
func (l *Log) Append(ctx context.Context, tx *store.Tx, e Entry) error {
	if e.Actor == "" || e.Action == "" || e.Outcome == "" {
		return fmt.Errorf("audit: entry needs actor, action and outcome")
	}
	if e.At.IsZero() {
		e.At = l.now()
	}
	detail := []byte("{}")
	if len(e.Detail) > 0 {
		var err error
		if detail, err = json.Marshal(e.Detail); err != nil {
			return fmt.Errorf("audit: detail: %w", err)
		}
	}
	_, err := tx.ExecContext(ctx,
		`INSERT INTO audit_events (at, actor, action, target, outcome, reason, source, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		e.At, e.Actor, e.Action, e.Target, e.Outcome, clip(e.Reason, 1024), clip(e.Source, 256), string(detail))
	if err != nil {
		return fmt.Errorf("audit: append %s: %w", e.Action, err)
	}
	return nil
}

// Record writes e in a transaction of its own: for refusals and other
// decisions that change nothing else.
func (l *Log) Record(ctx context.Context, e Entry) error {
	return l.st.Tx(ctx, func(tx *store.Tx) error { return l.Append(ctx, tx, e) })
}

// Filter selects entries for List.
type Filter struct {
	Target  string // exact match when set
	Action  string // prefix match when set, e.g. "enroll."
	Outcome string
	After   int64 // entries with Seq > After
	Limit   int   // default 100, at most 1000
}

// List returns entries in sequence order.
func (l *Log) List(ctx context.Context, f Filter) ([]Entry, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	q := `SELECT seq, at, actor, action, target, outcome, reason, source, detail FROM audit_events WHERE seq > ?`
	args := []any{f.After}
	if f.Target != "" {
		q += ` AND target = ?`
		args = append(args, f.Target)
	}
	if f.Action != "" {
		q += ` AND substr(action, 1, ?) = ?`
		args = append(args, len(f.Action), f.Action)
	}
	if f.Outcome != "" {
		q += ` AND outcome = ?`
		args = append(args, f.Outcome)
	}
	q += ` ORDER BY seq LIMIT ?`
	args = append(args, f.Limit)
	rows, err := l.st.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("audit: list: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var (
			e      Entry
			detail string
		)
		if err := rows.Scan(&e.Seq, &e.At, &e.Actor, &e.Action, &e.Target, &e.Outcome, &e.Reason, &e.Source, &detail); err != nil {
			return nil, fmt.Errorf("audit: list: %w", err)
		}
		if detail != "" && detail != "{}" {
			if err := json.Unmarshal([]byte(detail), &e.Detail); err != nil {
				return nil, fmt.Errorf("audit: entry %d: detail: %w", e.Seq, err)
			}
		}
		e.At = e.At.UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
