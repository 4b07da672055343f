package access_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// vault is a tiny critical action for the tests: it adds the requested
// amount to a counter, or fails when asked to.
type vault struct {
	mu    sync.Mutex
	total int
	calls atomic.Int32
	by    []string
}

type vaultParams struct {
	Amount int  `json:"amount"`
	Fail   bool `json:"fail,omitempty"`
}

func (v *vault) kind() access.Kind {
	return access.Kind{
		Permission: access.UsersManage,
		Describe: func(raw json.RawMessage) string {
			var p vaultParams
			_ = json.Unmarshal(raw, &p)
			return fmt.Sprintf("add %d", p.Amount)
		},
		Execute: func(ctx context.Context, approver access.Principal, requester string, raw json.RawMessage) (any, error) {
			v.calls.Add(1)
			var p vaultParams
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, err
			}
			if p.Fail {
				return nil, fmt.Errorf("%w: the vault is sealed", access.ErrConflict)
			}
			v.mu.Lock()
			defer v.mu.Unlock()
			v.total += p.Amount
			v.by = append(v.by, approver.Actor()+"<"+requester)
			return map[string]int{"total": v.total}, nil
		},
	}
}

type approvalEnv struct {
	ap     *access.Approvals
	tokens *access.Tokens
	log    *audit.Log
	clk    *clock
	v      *vault
}

func newApprovals(t *testing.T, s *store.Store) approvalEnv {
	t.Helper()
	tokens, log, clk := newTokens(t, s)
	ap := access.NewApprovals(access.ApprovalsConfig{Store: s, Audit: log, Now: clk.Now})
	v := &vault{}
	ap.Register("vault.add", v.kind())
	return approvalEnv{ap: ap, tokens: tokens, log: log, clk: clk, v: v}
}

func apPerson(id string, roles ...access.Role) access.Principal {
	return access.Principal{Kind: access.KindUser, ID: id, Name: id, Roles: roles}
}

var (
	apAlice = apPerson("alice", access.RoleAdmin)
	apBob   = apPerson("bob", access.RoleAdmin)
	apVic   = apPerson("vic", access.RoleViewer)
)

// trail returns "action/outcome/actor" for every audit entry of an approval.
func apTrail(t *testing.T, log *audit.Log, id string) []string {
	t.Helper()
	es, err := log.List(context.Background(), audit.Filter{Target: "approval:" + id})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Action+"/"+e.Outcome+"/"+e.Actor)
	}
	return out
}

func wantApTrail(t *testing.T, log *audit.Log, id string, want ...string) {
	t.Helper()
	if got := apTrail(t, log, id); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("audit trail of %s:\n got  %v\n want %v", id, got, want)
	}
}

func TestApprovals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		e := newApprovals(t, s)

		req, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 5}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if req.State != access.ApprovalPending || req.Summary != "add 5" || req.RequestedBy != "user:alice" ||
			!req.Deadline.Equal(req.RequestedAt.Add(access.DefaultApprovalTTL)) {
			t.Fatalf("request = %+v", req)
		}

		// The requester cannot approve their own request.
		if _, err := e.ap.Approve(ctx, apAlice, req.ID); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("self-approval: %v", err)
		}
		// Someone without the kind's permission cannot either.
		if _, err := e.ap.Approve(ctx, apVic, req.ID); !errors.Is(err, access.ErrForbidden) || !strings.Contains(err.Error(), "users:manage") {
			t.Fatalf("approval without permission: %v", err)
		}
		// Nor can they reject it.
		if _, err := e.ap.Reject(ctx, apVic, req.ID, "no"); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("rejection without permission: %v", err)
		}
		if e.v.calls.Load() != 0 {
			t.Fatal("a refused approval executed the action")
		}

		// A second person approves: the action runs once, as the approver.
		got, err := e.ap.Approve(ctx, apBob, req.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != access.ApprovalApproved || got.DecidedBy != "user:bob" || got.DecidedAt == nil || got.ExecutedAt == nil ||
			string(got.Result) != `{"total":5}` {
			t.Fatalf("approved = %+v (result %s)", got, got.Result)
		}
		if e.v.total != 5 || e.v.by[0] != "user:bob<user:alice" {
			t.Fatalf("vault = %d by %v", e.v.total, e.v.by)
		}
		// A decided request cannot be decided again.
		if _, err := e.ap.Approve(ctx, apBob, req.ID); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("approve twice: %v", err)
		}
		if _, err := e.ap.Reject(ctx, apBob, req.ID, "late"); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("reject after approval: %v", err)
		}
		wantApTrail(t, e.log, req.ID,
			"approval.request/pending/user:alice",
			"approval.approve/denied/user:alice",
			"approval.approve/denied/user:vic",
			"approval.reject/denied/user:vic",
			"approval.approve/success/user:bob",
			"approval.execute/success/user:bob",
		)
		if _, err := e.ap.Get(ctx, "nope"); !errors.Is(err, access.ErrNotFound) {
			t.Fatalf("Get unknown: %v", err)
		}
		if _, err := e.ap.Approve(ctx, apBob, "nope"); !errors.Is(err, access.ErrNotFound) {
			t.Fatalf("Approve unknown: %v", err)
		}
	})
}

func TestApprovalTokensAndCreators(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		e := newApprovals(t, s)
		mint := func(creator access.Principal, name string) access.Principal {
			t.Helper()
			_, tok, err := e.tokens.Create(ctx, creator, access.TokenSpec{Name: name, Roles: []access.Role{access.RoleAdmin}})
			if err != nil {
				t.Fatal(err)
			}
			return tok.Principal()
		}
		aliceBot := mint(apAlice, "alice-bot")
		bobBot := mint(apBob, "bob-bot")

		// A token cannot approve a request made by its creator.
		r1, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 1}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.ap.Approve(ctx, aliceBot, r1.ID); !errors.Is(err, access.ErrForbidden) || !strings.Contains(err.Error(), "its creator") {
			t.Fatalf("token approving its creator's request: %v", err)
		}
		// The creator cannot approve a request made by their token.
		r2, err := e.ap.Request(ctx, aliceBot, "vault.add", vaultParams{Amount: 2}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.ap.Approve(ctx, apAlice, r2.ID); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("creator approving their token's request: %v", err)
		}
		if _, err := e.ap.Approve(ctx, aliceBot, r2.ID); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("token approving its own request: %v", err)
		}
		// Another person's token may.
		for _, id := range []string{r1.ID, r2.ID} {
			if got, err := e.ap.Approve(ctx, bobBot, id); err != nil || got.DecidedBy != bobBot.Actor() {
				t.Fatalf("bob's token approving %s: %+v, %v", id, got, err)
			}
		}
		if e.v.total != 3 {
			t.Fatalf("total = %d", e.v.total)
		}
	})
}

func TestApprovalDeadlines(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		e := newApprovals(t, s)
		for _, ttl := range []time.Duration{time.Second, access.MaxApprovalTTL + time.Hour, -time.Hour} {
			if _, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 1}, ttl); !errors.Is(err, access.ErrInvalid) {
				t.Errorf("ttl %s: %v", ttl, err)
			}
		}
		if _, err := e.ap.Request(ctx, apAlice, "vault.nope", nil, 0); !errors.Is(err, access.ErrInvalid) {
			t.Errorf("unknown kind: %v", err)
		}
		if _, err := e.ap.Request(ctx, apVic, "vault.add", vaultParams{Amount: 1}, 0); !errors.Is(err, access.ErrForbidden) {
			t.Errorf("request without permission: %v", err)
		}

		short, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 1}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		week, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 7}, access.MaxApprovalTTL)
		if err != nil {
			t.Fatal(err)
		}
		e.clk.Add(time.Hour) // exactly at the deadline: too late
		if got, _ := e.ap.Get(ctx, short.ID); got.State != access.ApprovalExpired {
			t.Fatalf("overdue request reads %s", got.State)
		}
		if ps, err := e.ap.List(ctx, access.ApprovalFilter{State: access.ApprovalPending}); err != nil || len(ps) != 1 || ps[0].ID != week.ID {
			t.Fatalf("pending = %+v, %v", ps, err)
		}
		if _, err := e.ap.Approve(ctx, apBob, short.ID); !errors.Is(err, access.ErrConflict) || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("approving an expired request: %v", err)
		}
		if e.v.calls.Load() != 0 {
			t.Fatal("an expired request executed")
		}
		if _, err := e.ap.Approve(ctx, apBob, short.ID); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("approving an expired request again: %v", err)
		}
		wantApTrail(t, e.log, short.ID,
			"approval.request/pending/user:alice",
			"approval.expire/success/system",
			"approval.approve/denied/user:bob",
			"approval.approve/denied/user:bob",
		)

		// The sweep expires what nobody touched.
		e.clk.Add(access.MaxApprovalTTL)
		if n, err := e.ap.ExpireOverdue(ctx); err != nil || n != 1 {
			t.Fatalf("ExpireOverdue = %d, %v", n, err)
		}
		if n, err := e.ap.ExpireOverdue(ctx); err != nil || n != 0 {
			t.Fatalf("ExpireOverdue again = %d, %v", n, err)
		}
		var state string
		if err := s.QueryRowContext(ctx, `SELECT state FROM approvals WHERE id = ?`, week.ID).Scan(&state); err != nil || state != "expired" {
			t.Fatalf("stored state %q, %v", state, err)
		}
		if ex, err := e.ap.List(ctx, access.ApprovalFilter{State: access.ApprovalExpired}); err != nil || len(ex) != 2 {
			t.Fatalf("expired = %d, %v", len(ex), err)
		}
	})
}

func TestApprovalRejectAndFailure(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		e := newApprovals(t, s)

		r, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 1}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.ap.Reject(ctx, apBob, r.ID, ""); !errors.Is(err, access.ErrInvalid) {
			t.Fatalf("reject without reason: %v", err)
		}
		got, err := e.ap.Reject(ctx, apBob, r.ID, "not during the night shift")
		if err != nil {
			t.Fatal(err)
		}
		if got.State != access.ApprovalRejected || got.Reason != "not during the night shift" || got.DecidedBy != "user:bob" {
			t.Fatalf("rejected = %+v", got)
		}
		if _, err := e.ap.Approve(ctx, apBob, r.ID); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("approve after rejection: %v", err)
		}
		es, _ := e.log.List(ctx, audit.Filter{Target: "approval:" + r.ID, Action: "approval.reject"})
		if len(es) != 1 || es[0].Reason != "not during the night shift" {
			t.Fatalf("reject audit = %+v", es)
		}

		// The requester may withdraw their own request.
		w, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 1}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := e.ap.Reject(ctx, apAlice, w.ID, "typo"); err != nil || got.State != access.ApprovalRejected {
			t.Fatalf("withdraw = %+v, %v", got, err)
		}

		// An execution that fails leaves the request failed, with the error.
		f, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 1, Fail: true}, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err = e.ap.Approve(ctx, apBob, f.ID)
		if !errors.Is(err, access.ErrConflict) || !strings.Contains(err.Error(), "sealed") {
			t.Fatalf("failing execution: %v", err)
		}
		if got.State != access.ApprovalFailed || !strings.Contains(got.Error, "the vault is sealed") || got.ExecutedAt == nil || got.Result != nil {
			t.Fatalf("failed = %+v", got)
		}
		if again, _ := e.ap.Get(ctx, f.ID); again.State != access.ApprovalFailed || again.Error != got.Error {
			t.Fatalf("stored failure = %+v", again)
		}
		wantApTrail(t, e.log, f.ID,
			"approval.request/pending/user:alice",
			"approval.approve/success/user:bob",
			"approval.execute/failed/user:bob",
		)
		if all, err := e.ap.List(ctx, access.ApprovalFilter{}); err != nil || len(all) != 3 {
			t.Fatalf("List = %d, %v", len(all), err)
		}
		if fs, err := e.ap.List(ctx, access.ApprovalFilter{State: access.ApprovalFailed, Kind: "vault.add"}); err != nil || len(fs) != 1 {
			t.Fatalf("List failed = %d, %v", len(fs), err)
		}
	})
}

// TestApprovalRace: two approvers at once execute the action once.
func TestApprovalRace(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		e := newApprovals(t, s)
		r, err := e.ap.Request(ctx, apAlice, "vault.add", vaultParams{Amount: 1}, 0)
		if err != nil {
			t.Fatal(err)
		}
		apCarol := apPerson("carol", access.RoleAdmin)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, p := range []access.Principal{apBob, apCarol} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = e.ap.Approve(ctx, p, r.ID)
			}()
		}
		wg.Wait()
		if e.v.calls.Load() != 1 || (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("calls = %d, errors %v", e.v.calls.Load(), errs)
		}
	})
}
