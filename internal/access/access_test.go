package access_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

var boss = access.Principal{Kind: access.KindToken, ID: "boss", Roles: []access.Role{access.RoleAdmin}}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTokens(t *testing.T, s *store.Store) (*access.Tokens, *audit.Log, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	log := audit.New(s, c.Now)
	return access.NewTokens(access.TokensConfig{Store: s, Audit: log, Now: c.Now}), log, c
}

var secretRE = regexp.MustCompile(`^ward_([a-z2-7]{16})_[A-Za-z0-9_-]{43}$`)

func TestTokens(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		tokens, log, clk := newTokens(t, s)

		secret, tok, err := tokens.Create(ctx, boss, access.TokenSpec{Name: "ci", Roles: []access.Role{access.RoleAdmin}})
		if err != nil {
			t.Fatal(err)
		}
		m := secretRE.FindStringSubmatch(secret)
		if m == nil || m[1] != tok.ID {
			t.Fatalf("secret %q does not have the form ward_<id>_<43 chars> for id %s", secret, tok.ID)
		}
		var stored []byte
		if err := s.QueryRowContext(ctx, `SELECT secret_hash FROM api_tokens WHERE id = ?`, tok.ID).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if len(stored) != 32 || strings.Contains(string(stored), secret[len(secret)-43:]) {
			t.Fatalf("stored hash is %d bytes; want the 32-byte SHA-256 only", len(stored))
		}

		got, err := tokens.Authenticate(ctx, secret)
		if err != nil || got.ID != tok.ID || got.Name != "ci" {
			t.Fatalf("Authenticate = %+v, %v", got, err)
		}
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(clk.Now()) {
			t.Fatalf("last used = %v, want %v", got.LastUsedAt, clk.Now())
		}
		// Within a minute the stored last_used_at does not move.
		clk.Add(30 * time.Second)
		if _, err := tokens.Authenticate(ctx, secret); err != nil {
			t.Fatal(err)
		}
		g, _ := tokens.Get(ctx, tok.ID)
		if !g.LastUsedAt.Equal(clk.Now().Add(-30 * time.Second)) {
			t.Fatalf("last used moved within a minute: %v", g.LastUsedAt)
		}
		clk.Add(31 * time.Second)
		if _, err := tokens.Authenticate(ctx, secret); err != nil {
			t.Fatal(err)
		}
		g, _ = tokens.Get(ctx, tok.ID)
		if !g.LastUsedAt.Equal(clk.Now()) {
			t.Fatalf("last used = %v, want %v", g.LastUsedAt, clk.Now())
		}

		bad := []string{
			"",
			"Bearer " + secret,
			secret[:len(secret)-1],
			secret[:len(secret)-1] + flip(secret[len(secret)-1]),
			"ward_" + strings.Repeat("a", 16) + secret[len("ward_")+16:],
			strings.ToUpper(secret),
			secret + "=",
		}
		for _, b := range bad {
			if _, err := tokens.Authenticate(ctx, b); !errors.Is(err, access.ErrUnauthenticated) {
				t.Errorf("Authenticate(%q) = %v, want ErrUnauthenticated", b, err)
			}
		}

		if _, _, err := tokens.Create(ctx, boss, access.TokenSpec{Name: "", Roles: []access.Role{access.RoleAdmin}}); !errors.Is(err, access.ErrInvalid) {
			t.Errorf("empty name: %v", err)
		}
		if _, _, err := tokens.Create(ctx, boss, access.TokenSpec{Name: "a\nb", Roles: []access.Role{access.RoleAdmin}}); !errors.Is(err, access.ErrInvalid) {
			t.Errorf("name with newline: %v", err)
		}

		// The last valid token cannot be revoked.
		if _, err := tokens.Revoke(ctx, "token:boss", tok.ID); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("revoke last token: %v, want ErrConflict", err)
		}
		_, other, err := tokens.Create(ctx, boss, access.TokenSpec{Name: "other", Roles: []access.Role{access.RoleAdmin}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := tokens.Revoke(ctx, other.Actor(), tok.ID)
		if err != nil || !r.Revoked() {
			t.Fatalf("Revoke = %+v, %v", r, err)
		}
		if _, err := tokens.Authenticate(ctx, secret); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("revoked token authenticates: %v", err)
		}
		if _, err := tokens.Revoke(ctx, other.Actor(), tok.ID); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("revoke twice: %v", err)
		}
		if _, err := tokens.Revoke(ctx, other.Actor(), "nosuchtoken"); !errors.Is(err, access.ErrNotFound) {
			t.Fatalf("revoke unknown: %v", err)
		}

		list, err := tokens.List(ctx)
		if err != nil || len(list) != 2 || list[0].ID != tok.ID || !list[0].Revoked() || list[1].Revoked() {
			t.Fatalf("List = %+v, %v", list, err)
		}

		entries, err := log.List(ctx, audit.Filter{Action: "token."})
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, e := range entries {
			actions = append(actions, e.Action+" "+e.Target)
			if strings.Contains(e.Reason, "ward_") || strings.Contains(e.Reason+stringify(e.Detail), secret[len(secret)-43:]) {
				t.Errorf("audit entry %d holds the secret", e.Seq)
			}
		}
		want := []string{"token.create token:" + tok.ID, "token.create token:" + other.ID, "token.revoke token:" + tok.ID}
		if strings.Join(actions, ",") != strings.Join(want, ",") {
			t.Fatalf("audit = %q, want %q", actions, want)
		}
	})
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

func stringify(m map[string]any) string {
	var b strings.Builder
	for k, v := range m {
		b.WriteString(k)
		if s, ok := v.(string); ok {
			b.WriteString(s)
		}
	}
	return b.String()
}

func TestBootstrap(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		tokens, log, _ := newTokens(t, s)
		path := filepath.Join(t.TempDir(), "data", "admin-token")

		secret, created, err := tokens.Bootstrap(ctx, path)
		if err != nil || !created {
			t.Fatalf("Bootstrap = %v, %v", created, err)
		}
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) != secret {
			t.Fatalf("token file = %q, %v", b, err)
		}
		for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
			fi, err := os.Stat(p)
			if err != nil || fi.Mode().Perm() != want {
				t.Errorf("%s: mode %v, %v; want %v", p, fi.Mode().Perm(), err, want)
			}
		}
		tok, err := tokens.Authenticate(ctx, secret)
		if err != nil || tok.Name != access.BootstrapName {
			t.Fatalf("bootstrap token: %+v, %v", tok, err)
		}

		// Once any token exists, Bootstrap does nothing, even without the file.
		os.Remove(path)
		if s2, created, err := tokens.Bootstrap(ctx, path); err != nil || created || s2 != "" {
			t.Fatalf("second Bootstrap = %q, %v, %v", s2, created, err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("second Bootstrap wrote the file: %v", err)
		}
		entries, _ := log.List(ctx, audit.Filter{Action: "token.bootstrap"})
		if len(entries) != 1 || entries[0].Actor != audit.System || entries[0].Target != tok.Actor() {
			t.Fatalf("audit = %+v", entries)
		}
	})
}

func TestBootstrapConcurrent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		tokens, _, _ := newTokens(t, s)
		dir := t.TempDir()
		var (
			wg sync.WaitGroup
			mu sync.Mutex
			n  int
		)
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, created, err := tokens.Bootstrap(ctx, filepath.Join(dir, "t", string(rune('a'+i))))
				if err != nil {
					t.Error(err)
				}
				if created {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if n != 1 {
			t.Fatalf("%d bootstraps created a token, want 1", n)
		}
	})
}
