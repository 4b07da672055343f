package access

// # Two-person rule
//
// A critical action — removing a manufacturer (revoking trust in its CA),
// revoking many devices at once, changing a person's roles, and later
// publishing a release or a drug library — is never carried out by the
// request that asks for it. Request records it as a pending approval; a
// second, different party holding the kind's permission approves it
// (which executes it) or rejects it, before its deadline.
//
//	pending ──Approve──▶ approved (executed; result kept)
//	   │         └──────▶ failed   (execution returned an error; kept)
//	   ├──Reject───────▶ rejected (with a reason)
//	   └──deadline─────▶ expired  (Approve or Reject after the deadline,
//	                               or the Run sweep)
//
// Every state but pending is final. "Different" means: the approver is not
// the requester, not the creator of the requesting token, and not a token
// the requester created. (Two tokens made by the same third party are
// different parties: an installation run on tokens alone mints every token
// from the bootstrap one.)
//
// Approve claims the request (pending → approved, with the approver) in one
// transaction, so two approvers racing execute it once; then runs the kind's
// Execute, which makes its change in transactions of its own; then records
// the result, or the error and the state failed, in a third. A crash between
// the claim and the record leaves an approved request without executed_at:
// the audit log of the action itself says whether it happened.
//
// Every step — request, approval, rejection, expiry, execution, and every
// refused attempt to approve or reject — is an audit entry with the target
// "approval:<id>", written in the transaction that makes the change.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// ApprovalState is where a two-person request stands.
type ApprovalState string

// Approval states.
const (
	ApprovalPending  ApprovalState = "pending"
	ApprovalApproved ApprovalState = "approved"
	ApprovalRejected ApprovalState = "rejected"
	ApprovalExpired  ApprovalState = "expired"
	ApprovalFailed   ApprovalState = "failed"
)

// Valid reports whether s is a known state.
func (s ApprovalState) Valid() bool {
	switch s {
	case ApprovalPending, ApprovalApproved, ApprovalRejected, ApprovalExpired, ApprovalFailed:
		return true
	}
	return false
}

// Approval deadlines.
const (
	DefaultApprovalTTL = 24 * time.Hour
	MaxApprovalTTL     = 7 * 24 * time.Hour
	minApprovalTTL     = time.Minute
	maxParamsBytes     = 64 << 10
	maxReasonLen       = 512
)

// Approval is one two-person request.
type Approval struct {
	ID          string          `json:"id"`
	Kind        string          `json:"kind"`
	Params      json.RawMessage `json:"params"`
	Summary     string          `json:"summary"`
	RequestedBy string          `json:"requested_by"`
	RequestedAt time.Time       `json:"requested_at"`
	Deadline    time.Time       `json:"deadline"`
	State       ApprovalState   `json:"state"`
	DecidedBy   string          `json:"decided_by,omitempty"`
	DecidedAt   *time.Time      `json:"decided_at,omitempty"`
	Reason      string          `json:"reason,omitempty" doc:"Why it was rejected"`
	Result      json.RawMessage `json:"result,omitempty" doc:"What the executed action returned"`
	Error       string          `json:"error,omitempty" doc:"Why the execution failed"`
	ExecutedAt  *time.Time      `json:"executed_at,omitempty"`

	requesterCreator string
}

// Kind is a kind of critical action, registered by the composition root.
type Kind struct {
	// Permission is what requesting and approving need.
	Permission Permission
	// Execute carries the action out on behalf of approver, who approved a
	// request made by requester (an actor name). It makes its own
	// transactions and audit entries.
	Execute func(ctx context.Context, approver Principal, requester string, params json.RawMessage) (result any, err error)
	// Describe says in one line what the request would do, for people.
	Describe func(params json.RawMessage) string
	// Check, if set, refuses a principal who may not request or approve
	// these particular params (e.g. devices outside its sites).
	Check func(ctx context.Context, p Principal, params json.RawMessage) error
}

// ApprovalsConfig configures Approvals.
type ApprovalsConfig struct {
	Store  *store.Store
	Audit  *audit.Log
	Now    func() time.Time // nil: time.Now
	Rand   io.Reader        // nil: crypto/rand.Reader
	Logger *slog.Logger     // nil: discard; used by Run
}

// Approvals keeps two-person requests. It is safe for concurrent use.
type Approvals struct {
	st    *store.Store
	audit *audit.Log
	now   func() time.Time
	rand  io.Reader
	log   *slog.Logger

	mu    sync.RWMutex
	kinds map[string]Kind
}

// NewApprovals returns the approval keeper. Store and Audit are required.
func NewApprovals(cfg ApprovalsConfig) *Approvals {
	if cfg.Store == nil || cfg.Audit == nil {
		panic("access: NewApprovals needs a store and an audit log")
	}
	a := &Approvals{st: cfg.Store, audit: cfg.Audit, now: cfg.Now, rand: cfg.Rand, log: cfg.Logger, kinds: map[string]Kind{}}
	if a.now == nil {
		a.now = time.Now
	}
	if a.rand == nil {
		a.rand = rand.Reader
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a
}

// Register adds a kind of critical action; registering a name again
// replaces it (an API handler built twice on one Approvals). A kind without
// name, permission, Execute or Describe is a programming error and panics.
func (a *Approvals) Register(name string, k Kind) {
	if name == "" || k.Permission == "" || k.Execute == nil || k.Describe == nil {
		panic("access: approval kind " + name + " needs a name, a permission, Execute and Describe")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.kinds[name] = k
}

// Kinds lists the registered kinds, sorted.
func (a *Approvals) Kinds() []string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]string, 0, len(a.kinds))
	for k := range a.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (a *Approvals) kind(name string) (Kind, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	k, ok := a.kinds[name]
	return k, ok
}

func approvalTarget(id string) string { return "approval:" + id }

// Request records a pending request by requester to carry out an action of
// kind with params, open for ttl (0: DefaultApprovalTTL; at most
// MaxApprovalTTL).
func (a *Approvals) Request(ctx context.Context, requester Principal, kind string, params any, ttl time.Duration) (Approval, error) {
	k, ok := a.kind(kind)
	if !ok {
		return Approval{}, fmt.Errorf("access: approval: %w: unknown kind %q", ErrInvalid, kind)
	}
	switch {
	case ttl == 0:
		ttl = DefaultApprovalTTL
	case ttl < minApprovalTTL || ttl > MaxApprovalTTL:
		return Approval{}, fmt.Errorf("access: approval: %w: deadline %s: want %s to %s", ErrInvalid, ttl, minApprovalTTL, MaxApprovalTTL)
	}
	if !requester.Can(k.Permission) {
		return Approval{}, fmt.Errorf("access: approval: %w: %s may not request %s: it needs the %q permission", ErrForbidden, requester.Actor(), kind, k.Permission)
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return Approval{}, fmt.Errorf("access: approval: params: %w", err)
	}
	if len(raw) > maxParamsBytes {
		return Approval{}, fmt.Errorf("access: approval: %w: params larger than %d bytes", ErrInvalid, maxParamsBytes)
	}
	if k.Check != nil {
		if err := k.Check(ctx, requester, raw); err != nil {
			return Approval{}, err
		}
	}
	creator, err := a.creatorOf(ctx, a.st, requester)
	if err != nil {
		return Approval{}, err
	}
	id, err := a.newID()
	if err != nil {
		return Approval{}, err
	}
	now := a.now().UTC()
	ap := Approval{
		ID: id, Kind: kind, Params: raw, Summary: k.Describe(raw), RequestedBy: requester.Actor(), RequestedAt: now,
		Deadline: now.Add(ttl), State: ApprovalPending, requesterCreator: creator,
	}
	err = a.st.Tx(ctx, func(tx *store.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO approvals (id, kind, params, summary, requested_by, requester_creator, requested_at, deadline, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			ap.ID, ap.Kind, string(ap.Params), ap.Summary, ap.RequestedBy, creator, ap.RequestedAt, ap.Deadline, ap.State)
		if err != nil {
			return fmt.Errorf("access: approval: %w", err)
		}
		return a.audit.Append(ctx, tx, audit.Entry{At: now, Actor: ap.RequestedBy, Action: "approval.request", Target: approvalTarget(id), Outcome: audit.Pending,
			Detail: map[string]any{"kind": kind, "summary": ap.Summary, "deadline": ap.Deadline}})
	})
	if err != nil {
		return Approval{}, err
	}
	return ap, nil
}

// creatorOf returns who created p if p is a token ("" otherwise, and for
// tokens Ward made itself).
func (a *Approvals) creatorOf(ctx context.Context, q store.Querier, p Principal) (string, error) {
	if p.Kind != KindToken {
		return "", nil
	}
	var by string
	err := q.QueryRowContext(ctx, `SELECT created_by FROM api_tokens WHERE id = ?`, p.ID).Scan(&by)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("access: approval: token %s: %w", p.ID, err)
	}
	if by == audit.System {
		by = ""
	}
	return by, nil
}

func (a *Approvals) newID() (string, error) {
	var b [10]byte
	if _, err := io.ReadFull(a.rand, b[:]); err != nil {
		return "", fmt.Errorf("access: approval id: %w", err)
	}
	return idEncoding.EncodeToString(b[:]), nil
}

// sameParty reports why approver may not decide on ap, or "".
func (a *Approvals) sameParty(ctx context.Context, approver Principal, ap Approval) (string, error) {
	me := approver.Actor()
	switch {
	case me == ap.RequestedBy:
		return "the requester may not approve their own request", nil
	case ap.requesterCreator != "" && me == ap.requesterCreator:
		return "the creator of the requesting token may not approve its request", nil
	}
	creator, err := a.creatorOf(ctx, a.st, approver)
	if err != nil {
		return "", err
	}
	if creator != "" && creator == ap.RequestedBy {
		return "a token may not approve a request made by its creator", nil
	}
	return "", nil
}

// refuse records a refused decision and returns err.
func (a *Approvals) refuse(ctx context.Context, p Principal, action string, ap Approval, err error) error {
	if rerr := a.audit.Record(ctx, audit.Entry{At: a.now().UTC(), Actor: p.Actor(), Action: action, Target: approvalTarget(ap.ID), Outcome: audit.Denied,
		Reason: approvalText(err), Detail: map[string]any{"kind": ap.Kind}}); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// approvalText is err's message without the "access: " prefixes wrapping
// adds.
func approvalText(err error) string { return strings.ReplaceAll(err.Error(), "access: ", "") }

// open returns the pending request id for a decision by p, expiring it
// (and returning an error) if its deadline has passed.
func (a *Approvals) open(ctx context.Context, p Principal, action, id string) (Approval, Kind, error) {
	ap, err := a.Get(ctx, id)
	if err != nil {
		return Approval{}, Kind{}, err
	}
	k, ok := a.kind(ap.Kind)
	if !ok {
		return Approval{}, Kind{}, fmt.Errorf("access: approval %s: %w: kind %q is not known to this server", id, ErrConflict, ap.Kind)
	}
	if ap.State == ApprovalExpired || (ap.State == ApprovalPending && !a.now().Before(ap.Deadline)) {
		if _, err := a.expire(ctx, id); err != nil {
			return Approval{}, Kind{}, err
		}
		return Approval{}, Kind{}, a.refuse(ctx, p, action, ap, fmt.Errorf("access: approval %s: %w: it expired at %s", id, ErrConflict, ap.Deadline.Format(time.RFC3339)))
	}
	if ap.State != ApprovalPending {
		return Approval{}, Kind{}, fmt.Errorf("access: approval %s: %w: it is already %s", id, ErrConflict, ap.State)
	}
	return ap, k, nil
}

// Approve approves a pending request on behalf of approver and executes it.
// It refuses the requester (and the requesting token's creator, and tokens
// the requester created), an approver without the kind's permission, and a
// request past its deadline, which becomes expired. If the execution fails
// the request is failed, the error is kept on it, and Approve returns it
// wrapped.
func (a *Approvals) Approve(ctx context.Context, approver Principal, id string) (Approval, error) {
	ap, k, err := a.open(ctx, approver, "approval.approve", id)
	if err != nil {
		return Approval{}, err
	}
	why, err := a.sameParty(ctx, approver, ap)
	if err != nil {
		return Approval{}, err
	}
	if why != "" {
		return Approval{}, a.refuse(ctx, approver, "approval.approve", ap, fmt.Errorf("access: approval %s: %w: %s", id, ErrForbidden, why))
	}
	if !approver.Can(k.Permission) {
		return Approval{}, a.refuse(ctx, approver, "approval.approve", ap,
			fmt.Errorf("access: approval %s: %w: approving %s needs the %q permission", id, ErrForbidden, ap.Kind, k.Permission))
	}
	if k.Check != nil {
		if err := k.Check(ctx, approver, ap.Params); err != nil {
			return Approval{}, a.refuse(ctx, approver, "approval.approve", ap, err)
		}
	}

	// From the claim on, finish even if the caller goes away: a claimed
	// request must end executed or failed.
	ctx = context.WithoutCancel(ctx)
	// Claim: exactly one approver gets past this.
	now := a.now().UTC()
	err = a.st.Tx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE approvals SET state = ?, decided_by = ?, decided_at = ? WHERE id = ? AND state = ? AND deadline > ?`,
			ApprovalApproved, approver.Actor(), now, id, ApprovalPending, now)
		if err != nil {
			return fmt.Errorf("access: approve %s: %w", id, err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return fmt.Errorf("access: approval %s: %w: it was decided or expired meanwhile", id, ErrConflict)
		}
		return a.audit.Append(ctx, tx, audit.Entry{At: now, Actor: approver.Actor(), Action: "approval.approve", Target: approvalTarget(id), Outcome: audit.Success,
			Detail: map[string]any{"kind": ap.Kind, "summary": ap.Summary, "requested_by": ap.RequestedBy}})
	})
	if err != nil {
		return Approval{}, err
	}

	result, execErr := k.Execute(ctx, approver, ap.RequestedBy, ap.Params)
	done := a.now().UTC()
	err = a.st.Tx(ctx, func(tx *store.Tx) error {
		if execErr != nil {
			msg := approvalText(execErr)
			if _, err := tx.ExecContext(ctx, `UPDATE approvals SET state = ?, error = ?, executed_at = ? WHERE id = ?`, ApprovalFailed, clipApproval(msg, 1024), done, id); err != nil {
				return fmt.Errorf("access: approval %s: record failure: %w", id, err)
			}
			return a.audit.Append(ctx, tx, audit.Entry{At: done, Actor: approver.Actor(), Action: "approval.execute", Target: approvalTarget(id), Outcome: audit.Failed,
				Reason: msg, Detail: map[string]any{"kind": ap.Kind}})
		}
		raw, err := json.Marshal(result)
		if err != nil {
			raw = []byte(`null`)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE approvals SET result = ?, executed_at = ? WHERE id = ?`, string(raw), done, id); err != nil {
			return fmt.Errorf("access: approval %s: record result: %w", id, err)
		}
		return a.audit.Append(ctx, tx, audit.Entry{At: done, Actor: approver.Actor(), Action: "approval.execute", Target: approvalTarget(id), Outcome: audit.Success,
			Detail: map[string]any{"kind": ap.Kind, "summary": ap.Summary}})
	})
	if err != nil {
		return Approval{}, errors.Join(execErr, err)
	}
	got, err := a.Get(ctx, id)
	if err != nil {
		return Approval{}, err
	}
	if execErr != nil {
		return got, fmt.Errorf("access: approval %s: approved, but the action failed: %w", id, execErr)
	}
	return got, nil
}

// Reject rejects a pending request with a reason. The requester may
// withdraw their own request this way; anyone else needs the kind's
// permission.
func (a *Approvals) Reject(ctx context.Context, p Principal, id, reason string) (Approval, error) {
	if reason == "" || len(reason) > maxReasonLen {
		return Approval{}, fmt.Errorf("access: reject approval %s: %w: a reason of 1 to %d bytes is required", id, ErrInvalid, maxReasonLen)
	}
	ap, k, err := a.open(ctx, p, "approval.reject", id)
	if err != nil {
		return Approval{}, err
	}
	if p.Actor() != ap.RequestedBy {
		if !p.Can(k.Permission) {
			return Approval{}, a.refuse(ctx, p, "approval.reject", ap,
				fmt.Errorf("access: approval %s: %w: rejecting %s needs the %q permission", id, ErrForbidden, ap.Kind, k.Permission))
		}
		if k.Check != nil {
			if err := k.Check(ctx, p, ap.Params); err != nil {
				return Approval{}, a.refuse(ctx, p, "approval.reject", ap, err)
			}
		}
	}
	now := a.now().UTC()
	err = a.st.Tx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, reason = ? WHERE id = ? AND state = ?`,
			ApprovalRejected, p.Actor(), now, reason, id, ApprovalPending)
		if err != nil {
			return fmt.Errorf("access: reject approval %s: %w", id, err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return fmt.Errorf("access: approval %s: %w: it was decided meanwhile", id, ErrConflict)
		}
		return a.audit.Append(ctx, tx, audit.Entry{At: now, Actor: p.Actor(), Action: "approval.reject", Target: approvalTarget(id), Outcome: audit.Success,
			Reason: reason, Detail: map[string]any{"kind": ap.Kind, "summary": ap.Summary, "requested_by": ap.RequestedBy}})
	})
	if err != nil {
		return Approval{}, err
	}
	return a.Get(ctx, id)
}

// expire marks one overdue pending request expired, with its audit entry.
func (a *Approvals) expire(ctx context.Context, id string) (bool, error) {
	now := a.now().UTC()
	var done bool
	err := a.st.Tx(ctx, func(tx *store.Tx) error {
		var kind, summary string
		err := tx.QueryRowContext(ctx, `SELECT kind, summary FROM approvals WHERE id = ? AND state = ? AND deadline <= ?`, id, ApprovalPending, now).Scan(&kind, &summary)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("access: expire approval %s: %w", id, err)
		}
		res, err := tx.ExecContext(ctx, `UPDATE approvals SET state = ?, decided_at = ? WHERE id = ? AND state = ?`, ApprovalExpired, now, id, ApprovalPending)
		if err != nil {
			return fmt.Errorf("access: expire approval %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return nil
		}
		done = true
		return a.audit.Append(ctx, tx, audit.Entry{At: now, Actor: audit.System, Action: "approval.expire", Target: approvalTarget(id), Outcome: audit.Success,
			Detail: map[string]any{"kind": kind, "summary": summary}})
	})
	return done && err == nil, err
}

// ExpireOverdue marks every pending request past its deadline expired and
// returns how many it marked.
func (a *Approvals) ExpireOverdue(ctx context.Context) (int, error) {
	rows, err := a.st.QueryContext(ctx, `SELECT id FROM approvals WHERE state = ? AND deadline <= ? ORDER BY deadline`, ApprovalPending, a.now().UTC())
	if err != nil {
		return 0, fmt.Errorf("access: expire approvals: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("access: expire approvals: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("access: expire approvals: %w", err)
	}
	n := 0
	for _, id := range ids {
		ok, err := a.expire(ctx, id)
		if err != nil {
			return n, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// Run expires overdue requests every minute until ctx ends. On several
// nodes each may run it: expiring is idempotent.
func (a *Approvals) Run(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if _, err := a.ExpireOverdue(ctx); err != nil && ctx.Err() == nil {
			a.log.WarnContext(ctx, "access: expiring approvals", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

const approvalColumns = `id, kind, params, summary, requested_by, requester_creator, requested_at, deadline, state, decided_by, decided_at, reason, result, error, executed_at`

func (a *Approvals) scan(row interface{ Scan(...any) error }) (Approval, error) {
	var (
		ap                Approval
		params            string
		result            sql.NullString
		decided, executed sql.NullTime
	)
	if err := row.Scan(&ap.ID, &ap.Kind, &params, &ap.Summary, &ap.RequestedBy, &ap.requesterCreator, &ap.RequestedAt, &ap.Deadline, &ap.State,
		&ap.DecidedBy, &decided, &ap.Reason, &result, &ap.Error, &executed); err != nil {
		return Approval{}, err
	}
	ap.Params = json.RawMessage(params)
	if result.Valid {
		ap.Result = json.RawMessage(result.String)
	}
	ap.RequestedAt, ap.Deadline = ap.RequestedAt.UTC(), ap.Deadline.UTC()
	ap.DecidedAt, ap.ExecutedAt = ptime(decided), ptime(executed)
	// A pending request past its deadline is expired, whether or not the
	// sweep has written so yet.
	if ap.State == ApprovalPending && !a.now().Before(ap.Deadline) {
		ap.State = ApprovalExpired
	}
	return ap, nil
}

// Get returns one request.
func (a *Approvals) Get(ctx context.Context, id string) (Approval, error) {
	ap, err := a.scan(a.st.QueryRowContext(ctx, `SELECT `+approvalColumns+` FROM approvals WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Approval{}, fmt.Errorf("access: approval %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Approval{}, fmt.Errorf("access: approval %q: %w", id, err)
	}
	return ap, nil
}

// ApprovalFilter selects requests for List.
type ApprovalFilter struct {
	State ApprovalState // "": every state
	Kind  string
	Limit int // default 100, at most 1000
}

// List returns requests, newest first.
func (a *Approvals) List(ctx context.Context, f ApprovalFilter) ([]Approval, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	if f.State != "" && !f.State.Valid() {
		return nil, fmt.Errorf("access: approvals: %w: unknown state %q", ErrInvalid, f.State)
	}
	now := a.now().UTC()
	q := `SELECT ` + approvalColumns + ` FROM approvals WHERE 1 = 1`
	var args []any
	switch f.State {
	case "":
	case ApprovalPending:
		q += ` AND state = ? AND deadline > ?`
		args = append(args, ApprovalPending, now)
	case ApprovalExpired:
		q += ` AND (state = ? OR (state = ? AND deadline <= ?))`
		args = append(args, ApprovalExpired, ApprovalPending, now)
	default:
		q += ` AND state = ?`
		args = append(args, f.State)
	}
	if f.Kind != "" {
		q += ` AND kind = ?`
		args = append(args, f.Kind)
	}
	q += ` ORDER BY requested_at DESC, id LIMIT ?`
	args = append(args, f.Limit)
	rows, err := a.st.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("access: approvals: %w", err)
	}
	defer rows.Close()
	out := []Approval{}
	for rows.Next() {
		ap, err := a.scan(rows)
		if err != nil {
			return nil, fmt.Errorf("access: approvals: %w", err)
		}
		out = append(out, ap)
	}
	return out, rows.Err()
}

func clipApproval(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
