package access_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

var (
	sealKey   = []byte("0123456789abcdef0123456789abcdef")
	tinyArgon = access.Argon2Params{Memory: 64, Time: 1, Threads: 1}
)

const (
	alicePW = "alice's long passphrase 1"
	bobPW   = "bob's long passphrase 22"
)

func newUsers(t *testing.T, s *store.Store) (*access.Users, *access.Sessions, *audit.Log, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	log := audit.New(s, c.Now)
	u, err := access.NewUsers(access.UsersConfig{Store: s, Audit: log, SealKey: sealKey, Argon2: tinyArgon, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return u, access.NewSessions(access.SessionsConfig{Store: s, Users: u, Audit: log, Now: c.Now}), log, c
}

// auditText is every audit entry as JSON, to grep for secrets.
func auditText(t *testing.T, log *audit.Log) string {
	t.Helper()
	var b strings.Builder
	after := int64(0)
	for {
		es, err := log.List(context.Background(), audit.Filter{After: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			return b.String()
		}
		for _, e := range es {
			j, _ := json.Marshal(e)
			b.Write(j)
			b.WriteByte('\n')
			after = e.Seq
		}
	}
}

func TestUsersCreate(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		users, _, log, _ := newUsers(t, s)

		bad := []struct {
			name string
			nu   access.NewUser
			want error
		}{
			{"short password", access.NewUser{Username: "alice", Password: "short", Roles: []access.Role{access.RoleViewer}}, access.ErrInvalid},
			{"password is username", access.NewUser{Username: "alice.smith.ward", Password: "Alice.Smith.Ward", Roles: []access.Role{access.RoleViewer}}, access.ErrInvalid},
			{"too long", access.NewUser{Username: "alice", Password: strings.Repeat("x", 1025), Roles: []access.Role{access.RoleViewer}}, access.ErrInvalid},
			{"bad username", access.NewUser{Username: "alice smith", Password: alicePW, Roles: []access.Role{access.RoleViewer}}, access.ErrInvalid},
			{"no role", access.NewUser{Username: "alice", Password: alicePW}, access.ErrInvalid},
			{"unknown role", access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{"root"}}, access.ErrInvalid},
		}
		for _, c := range bad {
			if _, err := users.Create(ctx, boss, c.nu); !errors.Is(err, c.want) {
				t.Errorf("%s: %v, want %v", c.name, err, c.want)
			} else if strings.Contains(err.Error(), c.nu.Password) {
				t.Errorf("%s: error quotes the password: %v", c.name, err)
			}
		}
		// A creator cannot grant more than it holds, nor other sites.
		biomed := access.Principal{Kind: access.KindToken, ID: "b", Roles: []access.Role{access.RoleBiomed, access.RoleAdmin}, Sites: []string{"Main"}}
		if _, err := users.Create(ctx, access.Principal{Kind: access.KindToken, ID: "v", Roles: []access.Role{access.RoleViewer}},
			access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{access.RoleAdmin}}); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("viewer grants admin: %v", err)
		}
		if _, err := users.Create(ctx, biomed, access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{access.RoleBiomed}, Sites: []string{"Annex"}}); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("site outside the creator's: %v", err)
		}

		a, err := users.Create(ctx, boss, access.NewUser{Username: "Alice", DisplayName: "Alice Smith", Email: "alice@example.org", Password: alicePW, Roles: []access.Role{access.RoleAdmin}})
		if err != nil {
			t.Fatal(err)
		}
		if a.Username != "alice" || a.Disabled || a.TOTPEnabled || !a.NeedsSecondFactor() || a.External != "" || len(a.Sites) != 0 {
			t.Fatalf("created %+v", a)
		}
		if p := a.Principal(); p.Kind != access.KindUser || p.ID != a.ID || p.Name != "alice" || !p.Can(access.UsersManage) {
			t.Fatalf("principal %+v", p)
		}
		if _, err := users.Create(ctx, boss, access.NewUser{Username: "ALICE", Password: alicePW, Roles: []access.Role{access.RoleViewer}}); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("duplicate username: %v", err)
		}
		v, err := users.Create(ctx, biomed, access.NewUser{Username: "bob", Password: bobPW, Roles: []access.Role{access.RoleViewer}})
		if err != nil || len(v.Sites) != 1 || v.Sites[0] != "Main" || v.NeedsSecondFactor() {
			t.Fatalf("bob = %+v, %v (sites default to the creator's)", v, err)
		}
		var hash string
		if err := s.QueryRowContext(ctx, `SELECT password_hash FROM users WHERE id = ?`, a.ID).Scan(&hash); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(hash, "$argon2id$v=19$m=64,t=1,p=1$") || strings.Contains(hash, alicePW) {
			t.Fatalf("stored hash %q", hash)
		}
		for _, ref := range []string{a.ID, "alice", "ALICE"} {
			if g, err := users.Get(ctx, ref); err != nil || g.ID != a.ID {
				t.Fatalf("Get(%s) = %+v, %v", ref, g, err)
			}
		}
		if _, err := users.Get(ctx, "nobody"); !errors.Is(err, access.ErrNotFound) {
			t.Fatalf("Get(nobody): %v", err)
		}
		all, err := users.List(ctx)
		if err != nil || len(all) != 2 || all[0].Username != "alice" || all[1].Username != "bob" {
			t.Fatalf("List = %+v, %v", all, err)
		}

		// Password changes: own, others' (needs UsersManage and at least
		// the target's rights), policy, external accounts.
		if err := users.SetPassword(ctx, v.Principal(), a.ID, "a new long passphrase"); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("viewer sets admin's password: %v", err)
		}
		if err := users.SetPassword(ctx, v.Principal(), v.ID, "short"); !errors.Is(err, access.ErrInvalid) {
			t.Fatalf("short password: %v", err)
		}
		if err := users.SetPassword(ctx, v.Principal(), v.ID, "bob's newer passphrase"); err != nil {
			t.Fatal(err)
		}
		if _, err := users.CheckPassword(ctx, "bob", "bob's newer passphrase", "192.0.2.1"); err != nil {
			t.Fatal(err)
		}
		if err := users.SetPassword(ctx, biomed, a.ID, "a new long passphrase"); !errors.Is(err, access.ErrForbidden) {
			t.Fatalf("site-bound manager sets a global admin's password: %v", err)
		}

		// External accounts: created, updated, no password opens them.
		ext, err := users.UpsertExternal(ctx, "https://idp.example.org", "sub-1", access.ExternalProfile{Username: "carol@example.org", DisplayName: "Carol", Roles: []access.Role{access.RoleAuditor}})
		if err != nil || ext.External != "https://idp.example.org" || ext.Roles[0] != access.RoleAuditor {
			t.Fatalf("UpsertExternal = %+v, %v", ext, err)
		}
		ext2, err := users.UpsertExternal(ctx, "https://idp.example.org", "sub-1", access.ExternalProfile{Username: "carol@example.org", DisplayName: "Carol B", Roles: []access.Role{access.RoleViewer}, Sites: []string{"Main"}})
		if err != nil || ext2.ID != ext.ID || ext2.DisplayName != "Carol B" || ext2.Roles[0] != access.RoleViewer || ext2.Sites[0] != "Main" {
			t.Fatalf("UpsertExternal again = %+v, %v", ext2, err)
		}
		if _, err := users.UpsertExternal(ctx, "https://idp.example.org", "sub-2", access.ExternalProfile{Username: "alice"}); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("external takes a local username: %v", err)
		}
		if err := users.SetPassword(ctx, boss, ext.ID, "a long passphrase here"); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("password for an external account: %v", err)
		}
		if _, err := users.CheckPassword(ctx, "carol@example.org", "", "192.0.2.1"); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("external account with a password: %v", err)
		}

		// Disable; nobody disables themselves.
		if _, err := users.Disable(ctx, a.Principal(), a.ID); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("self-disable: %v", err)
		}
		d, err := users.Disable(ctx, a.Principal(), v.ID)
		if err != nil || !d.Disabled {
			t.Fatalf("Disable = %+v, %v", d, err)
		}
		if _, err := users.CheckPassword(ctx, "bob", "bob's newer passphrase", "192.0.2.1"); !errors.Is(err, access.ErrUnauthenticated) || err.Error() != "authentication required: invalid username or password" {
			t.Fatalf("disabled account logs in: %v", err)
		}

		text := auditText(t, log)
		for _, want := range []string{`"action":"user.create"`, `"action":"user.password"`, `"action":"user.disable"`, `"action":"user.external.create"`} {
			if !strings.Contains(text, want) {
				t.Errorf("audit lacks %s", want)
			}
		}
		for _, secret := range []string{alicePW, bobPW, "bob's newer passphrase", "a new long passphrase"} {
			if strings.Contains(text, secret) {
				t.Errorf("audit holds a password")
			}
		}
	})
}

func TestLoginSameForUnknownNames(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		users, _, _, _ := newUsers(t, s)
		if _, err := users.Create(ctx, boss, access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{access.RoleViewer}}); err != nil {
			t.Fatal(err)
		}
		n0 := users.HashCount()
		_, errKnown := users.CheckPassword(ctx, "alice", "wrong password!!", "192.0.2.1")
		n1 := users.HashCount()
		_, errUnknown := users.CheckPassword(ctx, "mallory", "wrong password!!", "192.0.2.1")
		n2 := users.HashCount()
		if !errors.Is(errKnown, access.ErrUnauthenticated) || errKnown.Error() != errUnknown.Error() {
			t.Fatalf("known: %v; unknown: %v", errKnown, errUnknown)
		}
		if n1-n0 != 1 || n2-n1 != 1 {
			t.Fatalf("argon2 computations: known %d, unknown %d; want 1 each", n1-n0, n2-n1)
		}
		if _, err := users.CheckPassword(ctx, "not a name!", "x", "192.0.2.1"); err.Error() != errKnown.Error() || users.HashCount()-n2 != 1 {
			t.Fatalf("malformed name: %v", err)
		}
		if u, err := users.CheckPassword(ctx, " Alice ", alicePW, "192.0.2.1"); err != nil || u.Username != "alice" {
			t.Fatalf("right password: %+v, %v", u, err)
		}
	})
}

func TestLockout(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		users, _, log, clk := newUsers(t, s)
		a, err := users.Create(ctx, boss, access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{access.RoleViewer}})
		if err != nil {
			t.Fatal(err)
		}
		// 12:00: five failures lock the name until 12:15, known or not.
		msgs := map[string]string{}
		for _, name := range []string{"alice", "mallory"} {
			for i := 0; i < access.MaxFailures; i++ {
				if _, err := users.CheckPassword(ctx, name, "wrong password!!", "192.0.2.1"); !errors.Is(err, access.ErrUnauthenticated) {
					t.Fatalf("%s failure %d: %v", name, i+1, err)
				}
			}
			n := users.HashCount()
			pw := alicePW
			_, err := users.CheckPassword(ctx, name, pw, "192.0.2.1")
			if !errors.Is(err, access.ErrLocked) {
				t.Fatalf("%s after %d failures: %v", name, access.MaxFailures, err)
			}
			if users.HashCount() != n {
				t.Fatalf("%s: a locked name still costs an argon2 computation", name)
			}
			msgs[name] = err.Error()
		}
		if msgs["alice"] != msgs["mallory"] || !strings.HasSuffix(msgs["alice"], "too many failed attempts; try again after 12:15 UTC") {
			t.Fatalf("locked messages differ or are wrong: %q", msgs)
		}
		if g, _ := users.Get(ctx, "alice"); g.LockedUntil == nil || !g.LockedUntil.Equal(clk.Now().Add(access.LockoutDuration)) {
			t.Fatalf("LockedUntil = %v", g.LockedUntil)
		}
		clk.Add(access.LockoutDuration - time.Second)
		if _, err := users.CheckPassword(ctx, "alice", alicePW, "192.0.2.1"); !errors.Is(err, access.ErrLocked) {
			t.Fatalf("at 12:14:59: %v", err)
		}
		clk.Add(time.Second)
		if _, err := users.CheckPassword(ctx, "alice", alicePW, "192.0.2.1"); err != nil {
			t.Fatalf("at 12:15: %v", err)
		}
		// Unknown names unlock at the same time.
		if _, err := users.CheckPassword(ctx, "mallory", "wrong password!!", "192.0.2.1"); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("mallory at 12:15: %v", err)
		}
		// A success resets the count: four failures, a success, four more
		// do not lock.
		for round := 0; round < 2; round++ {
			for i := 0; i < access.MaxFailures-1; i++ {
				_, _ = users.CheckPassword(ctx, "alice", "wrong password!!", "192.0.2.9")
			}
			if _, err := users.CheckPassword(ctx, "alice", alicePW, "192.0.2.9"); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		// An administrator unlocks early.
		for i := 0; i < access.MaxFailures; i++ {
			_, _ = users.CheckPassword(ctx, "alice", "wrong password!!", "192.0.2.9")
		}
		if _, err := users.CheckPassword(ctx, "alice", alicePW, "192.0.2.9"); !errors.Is(err, access.ErrLocked) {
			t.Fatal(err)
		}
		if u, err := users.Unlock(ctx, boss, a.ID); err != nil || u.LockedUntil != nil {
			t.Fatalf("Unlock = %+v, %v", u, err)
		}
		if _, err := users.CheckPassword(ctx, "alice", alicePW, "192.0.2.9"); err != nil {
			t.Fatal(err)
		}
		lockouts, err := log.List(ctx, audit.Filter{Action: "user.lockout"})
		if err != nil || len(lockouts) != 3 {
			t.Fatalf("lockout entries = %d, %v; want 3 (alice twice, mallory)", len(lockouts), err)
		}
		denied, _ := log.List(ctx, audit.Filter{Action: "user.login", Outcome: audit.Denied, Limit: 1000})
		if len(denied) < 2*access.MaxFailures {
			t.Fatalf("denied logins audited: %d", len(denied))
		}
		if strings.Contains(auditText(t, log), "wrong password!!") {
			t.Fatal("audit holds a tried password")
		}
	})
}

func TestSourceThrottle(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		users, _, _, clk := newUsers(t, s)
		if _, err := users.Create(ctx, boss, access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{access.RoleViewer}}); err != nil {
			t.Fatal(err)
		}
		// Spraying many names from one address: each name stays under its
		// own limit, the address does not.
		var err error
		n := 0
		for ; n < 100; n++ {
			_, err = users.CheckPassword(ctx, "user"+string(rune('a'+n%26))+string(rune('a'+n/26)), "wrong password!!", "198.51.100.7")
			if errors.Is(err, access.ErrLocked) {
				break
			}
		}
		if n != 30 || !strings.Contains(err.Error(), "from this address") {
			t.Fatalf("throttled after %d failures: %v", n, err)
		}
		// Even the right password is refused from there, not elsewhere.
		if _, err := users.CheckPassword(ctx, "alice", alicePW, "198.51.100.7"); !errors.Is(err, access.ErrLocked) {
			t.Fatalf("right password from a throttled address: %v", err)
		}
		if _, err := users.CheckPassword(ctx, "alice", alicePW, "198.51.100.8"); err != nil {
			t.Fatal(err)
		}
		clk.Add(10 * time.Second)
		if _, err := users.CheckPassword(ctx, "alice", alicePW, "198.51.100.7"); err != nil {
			t.Fatalf("after the bucket refills: %v", err)
		}
	})
}
