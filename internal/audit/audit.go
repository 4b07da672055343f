// Package audit records who did what to which object, when, and with what
// outcome: every enrollment decision, admin action, approval and security
// action, accepted or refused, as one entry of a tamper-evident,
// append-only hash chain.
//
// # Entries and transactions
//
// An entry is written in the same transaction as the change it records
// (Append with the caller's store.Tx), so a change never lands without its
// entry and a refused request leaves its entry and nothing else (Record, in a
// transaction of its own). A rolled-back transaction takes its entry with
// it, and the next Append continues the chain from the last committed entry.
//
// Actors are named "<kind>:<id>": "token:<id>" for an admin API token,
// "user:<id>" for a person, "device:<ward id>" for a device with an
// operational certificate, "birthcert:<fingerprint>" for a device presenting
// its birth certificate, "system" for Ward itself and "anonymous" when nobody
// was authenticated. The request an entry belongs to (its id and the
// client's address) comes from the context: the API and EST handlers call
// WithRequest, and Append fills RequestID and Source from it when the entry
// leaves them empty.
//
// Entries never hold secrets: no token, key, passphrase or CSR body goes into
// Reason or Detail.
//
// # The chain
//
// Append numbers entries itself: seq is 1 for the first entry and one more
// than the last entry for every other, without gaps. Each entry stores the
// hash of the entry before it (prev_hash; 64 zeros for entry 1, GenesisHash)
// and its own hash, both lowercase hex SHA-256. Appending reads the head
// (last seq and hash) and inserts the next entry inside the caller's
// transaction, so appenders must be serialised: on SQLite every write
// transaction already holds the one write connection; on PostgreSQL Append
// first takes the transaction-scoped advisory lock 0x7761726461756474
// ("wardaudt"), so two nodes never fork the chain (and the primary key on
// seq would refuse a fork anyway). That lock is held until commit, so
// callers append late in their transaction.
//
// An entry's hash is SHA-256 over the ASCII text "ward-audit-entry v1\n"
// followed by eleven fields, each written as its length in bytes (8-byte
// big-endian unsigned integer) and then its UTF-8 bytes:
//
//  1. seq, in decimal
//  2. at, in UTC, RFC 3339 as Go's time.RFC3339Nano writes it (trailing
//     zeros of the fraction dropped, no fraction when zero, "Z"); times are
//     kept to the microsecond
//  3. actor
//  4. action
//  5. target
//  6. outcome
//  7. reason
//  8. source
//  9. request_id
//  10. detail, as canonical JSON: RFC 8785 (JCS), except that integers that
//     fit 64 bits are written in full; "{}" when there is none
//  11. prev_hash, as 64 lowercase hex digits
//
// An absent field is the empty string (length 0).
//
// The store keeps detail as that exact canonical text, and a JSON-lines
// export carries it verbatim as the value of "detail", so a verifier hashes
// the bytes it reads. Verifying needs nothing but the rows (or an export)
// and this description; Export's test re-implements it independently.
//
// # Checkpoints
//
// A hash chain alone proves nothing against someone who can write the
// database: they can edit an entry and recompute every hash after it. A
// Checkpointer therefore signs the head of the chain with Ward's checkpoint
// key (Ed25519 by default, see NewCheckpointKey; ECDSA P-256 works too)
// every minute when entries were appended since the last checkpoint, and
// once more when it stops. A checkpoint row (seq, hash, at, key_id,
// signature) signs the statement
//
//	ward-audit-checkpoint v1\n<seq>\n<hash>\n<at, RFC3339Nano UTC>
//
// with Ed25519 over the statement itself or ECDSA over its SHA-256 (ASN.1
// signature). key_id is "SHA256:" and the hex SHA-256 of the public key's
// PKIX DER (KeyID). Checkpointing takes the appenders' lock, so a head is
// signed once even with several nodes each running a Checkpointer.
//
// # What Verify detects, and what it cannot
//
// Verify streams the chain in seq order a page at a time and stops at the
// first problem, naming it: an edited entry (its hash no longer matches its
// content), a deleted entry (a gap in seq), reordered or swapped rows (an
// entry whose hash and link both fail), a rewritten entry whose hash was
// recomputed (the next entry's prev_hash no longer matches), a tail
// rewritten with valid hashes up to or past a checkpoint (the checkpoint's
// hash differs), a truncated tail (a checkpoint that points past the last
// entry) and a forged checkpoint (its signature fails under the checkpoint
// key given to Verify).
//
// It cannot detect what leaves a consistent chain and consistent signed
// checkpoints behind: entries after the last checkpoint deleted from the
// end, or rewritten together with every entry after them; checkpoints
// deleted together with the entries they cover; or a whole-table rewrite by
// someone who holds the checkpoint key. Keep the key out of the database
// host's reach (encrypted with a passphrase), and ship entries to a SIEM as
// they come (a CEF export carries each entry's hash), so a copy outside
// Ward pins the chain.
//
// Chains start with migration 00003 on a fresh install: entries written
// before it have no hash, and Verify reports such a store as broken at
// entry 1.
package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
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

// Entry is one audit record. Seq, PrevHash and Hash are set by Append;
// whatever the caller puts there is ignored.
type Entry struct {
	Seq       int64          `json:"seq"`
	At        time.Time      `json:"at"`
	Actor     string         `json:"actor"`
	Action    string         `json:"action"`
	Target    string         `json:"target,omitempty"`
	Outcome   string         `json:"outcome"`
	Reason    string         `json:"reason,omitempty"`
	Source    string         `json:"source,omitempty"`
	RequestID string         `json:"request_id,omitempty"`
	Detail    map[string]any `json:"detail,omitempty"`
	PrevHash  string         `json:"prev_hash,omitempty"`
	Hash      string         `json:"hash,omitempty"`
}

// Log is the audit log in the store.
type Log struct {
	st      *store.Store
	now     func() time.Time
	version string
}

// Option is an optional setting of a Log.
type Option func(*Log)

// WithVersion names Ward's version in exports (the CEF header).
func WithVersion(v string) Option { return func(l *Log) { l.version = v } }

// New returns the audit log kept in st. now may be nil.
func New(st *store.Store, now func() time.Time, opts ...Option) *Log {
	if now == nil {
		now = time.Now
	}
	l := &Log{st: st, now: now, version: "dev"}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Limits on stored fields, in bytes.
const (
	maxReason    = 1024
	maxSource    = 256
	maxRequestID = 128
)

// Append writes e as part of the caller's transaction, as the next link of
// the chain. On PostgreSQL it takes the chain's advisory lock, held until
// the transaction ends: append late in a transaction, after its other
// writes, so that appenders queue for as short a time as possible.
func (l *Log) Append(ctx context.Context, tx *store.Tx, e Entry) error {
	if e.Actor == "" || e.Action == "" || e.Outcome == "" {
		return errEmptyEntry
	}
	if ri, ok := RequestFrom(ctx); ok {
		if e.RequestID == "" {
			e.RequestID = ri.ID
		}
		if e.Source == "" {
			e.Source = ri.Source
		}
	}
	if e.At.IsZero() {
		e.At = l.now()
	}
	// PostgreSQL keeps microseconds: hash what the store gives back.
	e.At = e.At.UTC().Truncate(time.Microsecond)
	r := record{Entry: e}
	r.Actor, r.Action, r.Target, r.Outcome = clean(e.Actor, 0), clean(e.Action, 0), clean(e.Target, 0), clean(e.Outcome, 0)
	r.Reason, r.Source, r.RequestID = clean(e.Reason, maxReason), clean(e.Source, maxSource), clean(e.RequestID, maxRequestID)
	var err error
	if r.detail, err = canonicalJSON(e.Detail); err != nil {
		return fmt.Errorf("audit: %s: detail: %w", e.Action, err)
	}

	if tx.Dialect() == store.Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, chainLockKey); err != nil {
			return fmt.Errorf("audit: append %s: lock the chain: %w", e.Action, err)
		}
	}
	r.Seq, r.PrevHash, err = head(ctx, tx)
	if err != nil {
		return fmt.Errorf("audit: append %s: %w", e.Action, err)
	}
	r.Seq++
	r.Hash = r.hash()
	_, err = tx.ExecContext(ctx,
		`INSERT INTO audit_events (seq, at, actor, action, target, outcome, reason, source, request_id, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Seq, r.At, r.Actor, r.Action, r.Target, r.Outcome, r.Reason, r.Source, r.RequestID, r.detail, r.PrevHash, r.Hash)
	if err != nil {
		return fmt.Errorf("audit: append %s: %w", e.Action, err)
	}
	return nil
}

// head returns the last entry's seq and hash, or 0 and GenesisHash.
func head(ctx context.Context, q store.Querier) (int64, string, error) {
	var (
		seq  int64
		hash string
	)
	err := q.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, GenesisHash, nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("read the chain's head: %w", err)
	}
	return seq, hash, nil
}

// Record writes e in a transaction of its own: for refusals and other
// decisions that change nothing else.
func (l *Log) Record(ctx context.Context, e Entry) error {
	return l.st.Tx(ctx, func(tx *store.Tx) error { return l.Append(ctx, tx, e) })
}

// Filter selects entries for List and Export.
type Filter struct {
	Target  string // exact match when set
	Action  string // prefix match when set, e.g. "enroll."
	Outcome string
	After   int64 // entries with Seq > After
	Limit   int   // List: default 100, at most 1000; Export: 0 means all
}

// List returns entries in sequence order.
func (l *Log) List(ctx context.Context, f Filter) ([]Entry, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	var out []Entry
	err := l.scan(ctx, f, f.Limit, true, func(r *record) error {
		out = append(out, r.Entry)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: list: %w", err)
	}
	return out, nil
}

const entryColumns = `seq, at, actor, action, target, outcome, reason, source, request_id, detail, prev_hash, hash`

// scan calls fn for up to limit entries matching f, in sequence order.
func (l *Log) scan(ctx context.Context, f Filter, limit int, parseDetail bool, fn func(*record) error) error {
	q := `SELECT ` + entryColumns + ` FROM audit_events WHERE seq > ?`
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
	args = append(args, limit)
	return l.rows(ctx, q, args, parseDetail, fn)
}

// rows runs an entry query selecting entryColumns and calls fn per row,
// with Detail parsed from the stored text if parseDetail.
func (l *Log) rows(ctx context.Context, q string, args []any, parseDetail bool, fn func(*record) error) error {
	rows, err := l.st.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var r record
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Action, &r.Target, &r.Outcome, &r.Reason, &r.Source, &r.RequestID, &r.detail, &r.PrevHash, &r.Hash); err != nil {
			return err
		}
		r.At = r.At.UTC()
		if parseDetail && r.detail != "" && r.detail != "{}" {
			// A detail that does not parse is left out of Detail; Verify
			// still hashes the text as stored.
			_ = json.Unmarshal([]byte(r.detail), &r.Detail)
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	return rows.Err()
}
