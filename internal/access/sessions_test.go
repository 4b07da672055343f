package access_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func code(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTOTP(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		users, _, log, clk := newUsers(t, s)
		a, err := users.Create(ctx, boss, access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{access.RoleAdmin}})
		if err != nil {
			t.Fatal(err)
		}
		if err := users.VerifyTOTP(ctx, a.ID, "123456"); !errors.Is(err, access.ErrConflict) {
			t.Fatalf("verify before enrolling: %v", err)
		}
		secret, url, err := users.BeginTOTP(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		key, err := otp.NewKeyFromURL(url)
		if err != nil || key.Secret() != secret || key.Issuer() != "Ward" || key.AccountName() != "alice" || len(secret) != 32 {
			t.Fatalf("otpauth URL %q: %v", url, err)
		}
		if g, _ := users.Get(ctx, a.ID); g.TOTPEnabled {
			t.Fatal("TOTP enabled before confirmation")
		}
		// The seed is sealed at rest.
		var pending []byte
		if err := s.QueryRowContext(ctx, `SELECT totp_pending FROM users WHERE id = ?`, a.ID).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if len(pending) < 12+16+32 || strings.Contains(string(pending), secret) || strings.Contains(strings.ToUpper(string(pending)), secret[:16]) {
			t.Fatalf("pending seed is not sealed (%d bytes)", len(pending))
		}
		if err := users.ConfirmTOTP(ctx, a.ID, "000000"); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("confirm with a wrong code: %v", err)
		}
		c0 := code(t, secret, clk.Now())
		if err := users.ConfirmTOTP(ctx, a.ID, c0); err != nil {
			t.Fatal(err)
		}
		if g, _ := users.Get(ctx, a.ID); !g.TOTPEnabled || len(g.SecondFactors()) != 1 {
			t.Fatalf("after confirm: %+v", g)
		}
		var seed []byte
		if err := s.QueryRowContext(ctx, `SELECT totp_seed FROM users WHERE id = ?`, a.ID).Scan(&seed); err != nil {
			t.Fatal(err)
		}
		if !bytesEqual(seed, pending) || strings.Contains(string(seed), secret) {
			t.Fatal("confirmed seed is not the sealed pending one")
		}
		// The confirming code's step is spent: replay refused.
		if err := users.VerifyTOTP(ctx, a.ID, c0); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("replayed code: %v", err)
		}
		clk.Add(30 * time.Second)
		c1 := code(t, secret, clk.Now())
		if err := users.VerifyTOTP(ctx, a.ID, c1); err != nil {
			t.Fatal(err)
		}
		if err := users.VerifyTOTP(ctx, a.ID, c1); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("replayed code: %v", err)
		}
		// Skew: the next step's code is accepted now, an older one is not
		// (its step is before the last used).
		clk.Add(30 * time.Second)
		if err := users.VerifyTOTP(ctx, a.ID, code(t, secret, clk.Now().Add(30*time.Second))); err != nil {
			t.Fatalf("code of the next step: %v", err)
		}
		if err := users.VerifyTOTP(ctx, a.ID, code(t, secret, clk.Now())); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("code older than the last used: %v", err)
		}
		// Two steps away is outside the window.
		clk.Add(5 * time.Minute)
		if err := users.VerifyTOTP(ctx, a.ID, code(t, secret, clk.Now().Add(90*time.Second))); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("code two steps ahead: %v", err)
		}
		// Wrong codes count toward the lockout; a good code resets the
		// count. Since the last good one: two refused, three more lock.
		for i := 0; i < 3; i++ {
			_ = users.VerifyTOTP(ctx, a.ID, "000000")
		}
		clk.Add(30 * time.Second)
		if err := users.VerifyTOTP(ctx, a.ID, code(t, secret, clk.Now())); !errors.Is(err, access.ErrLocked) {
			t.Fatalf("after %d wrong codes: %v", access.MaxFailures, err)
		}
		// The seed opens only under its own user id and key.
		if _, err := s.ExecContext(ctx, `UPDATE users SET locked_until = NULL`); err != nil {
			t.Fatal(err)
		}
		b, err := users.Create(ctx, boss, access.NewUser{Username: "bob", Password: bobPW, Roles: []access.Role{access.RoleViewer}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ExecContext(ctx, `UPDATE users SET totp_seed = ? WHERE id = ?`, seed, b.ID); err != nil {
			t.Fatal(err)
		}
		if err := users.VerifyTOTP(ctx, b.ID, code(t, secret, clk.Now())); err == nil || strings.Contains(err.Error(), secret) {
			t.Fatalf("a seed copied to another account opened: %v", err)
		}
		if text := auditText(t, log); strings.Contains(text, secret) || strings.Contains(text, c1) && strings.Contains(text, `"code"`) {
			t.Fatal("audit holds the seed or a code")
		}
	})
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

func TestSessions(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		users, sessions, log, clk := newUsers(t, s)
		admin, err := users.Create(ctx, boss, access.NewUser{Username: "alice", Password: alicePW, Roles: []access.Role{access.RoleAdmin}})
		if err != nil {
			t.Fatal(err)
		}
		viewer, err := users.Create(ctx, boss, access.NewUser{Username: "bob", Password: bobPW, Roles: []access.Role{access.RoleViewer}})
		if err != nil {
			t.Fatal(err)
		}

		// A viewer needs no second factor: the session is live at once.
		vc, vs, err := sessions.Start(ctx, viewer.ID, false, access.MethodPassword, "192.0.2.1")
		if err != nil {
			t.Fatal(err)
		}
		if raw, err := base64.RawURLEncoding.DecodeString(vc); err != nil || len(raw) != 32 {
			t.Fatalf("cookie %q is not 32 bytes of base64url", vc)
		}
		var stored []byte
		if err := s.QueryRowContext(ctx, `SELECT cookie_hash FROM sessions WHERE id = ?`, vs.ID).Scan(&stored); err != nil || len(stored) != 32 || strings.Contains(string(stored), vc) {
			t.Fatalf("stored cookie: %d bytes, %v", len(stored), err)
		}
		p, csrf, err := sessions.Principal(ctx, vc)
		if err != nil || p.ID != viewer.ID || p.Kind != access.KindUser || csrf == "" || csrf != vs.CSRF {
			t.Fatalf("Principal = %+v, %q, %v", p, csrf, err)
		}

		// An admin's session is pending until the second factor.
		ac, as, err := sessions.Start(ctx, admin.ID, false, access.MethodPassword, "192.0.2.1")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := sessions.Principal(ctx, ac); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("pending admin session authenticates: %v", err)
		}
		if got, u, err := sessions.Get(ctx, ac); err != nil || got.ID != as.ID || u.ID != admin.ID || got.MFA {
			t.Fatalf("Get pending = %+v, %v", got, err)
		}
		if got, err := sessions.CompleteMFA(ctx, ac, access.MethodPasswordTOTP); err != nil || !got.MFA || got.Method != access.MethodPasswordTOTP {
			t.Fatalf("CompleteMFA = %+v, %v", got, err)
		}
		if p, _, err := sessions.Principal(ctx, ac); err != nil || p.ID != admin.ID {
			t.Fatalf("after MFA: %+v, %v", p, err)
		}
		if g, _ := users.Get(ctx, admin.ID); g.LastLoginAt == nil {
			t.Fatal("last login not recorded")
		}

		// Idle timeout: 29 minutes idle is fine (and touches the session),
		// 30 is not.
		clk.Add(29 * time.Minute)
		if _, _, err := sessions.Principal(ctx, vc); err != nil {
			t.Fatal(err)
		}
		clk.Add(29 * time.Minute)
		if _, _, err := sessions.Principal(ctx, vc); err != nil {
			t.Fatalf("touched 29 minutes ago: %v", err)
		}
		clk.Add(30 * time.Minute)
		if _, _, err := sessions.Principal(ctx, vc); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("idle 30 minutes: %v", err)
		}
		if _, _, err := sessions.Principal(ctx, ac); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("admin idle: %v", err)
		}

		// Absolute timeout: used every 20 minutes, still ends at 12 hours.
		vc, _, err = sessions.Start(ctx, viewer.ID, false, access.MethodPassword, "192.0.2.1")
		if err != nil {
			t.Fatal(err)
		}
		start := clk.Now()
		for clk.Now().Sub(start) < access.DefaultAbsolute-20*time.Minute {
			clk.Add(20 * time.Minute)
			if _, _, err := sessions.Principal(ctx, vc); err != nil {
				t.Fatalf("at +%s: %v", clk.Now().Sub(start), err)
			}
		}
		clk.Add(20 * time.Minute)
		if _, _, err := sessions.Principal(ctx, vc); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("past 12 hours: %v", err)
		}

		// End, EndAll, disabling, password change.
		c1, _, _ := sessions.Start(ctx, viewer.ID, false, access.MethodPassword, "")
		c2, _, _ := sessions.Start(ctx, viewer.ID, false, access.MethodPassword, "")
		if err := sessions.End(ctx, c1); err != nil {
			t.Fatal(err)
		}
		if _, _, err := sessions.Get(ctx, c1); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("ended session: %v", err)
		}
		if err := sessions.EndAll(ctx, viewer.ID); err != nil {
			t.Fatal(err)
		}
		if _, _, err := sessions.Get(ctx, c2); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("after EndAll: %v", err)
		}
		c3, _, _ := sessions.Start(ctx, viewer.ID, false, access.MethodPassword, "")
		if err := users.SetPassword(ctx, viewer.Principal(), viewer.ID, "bob's other passphrase"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := sessions.Get(ctx, c3); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("after a password change: %v", err)
		}
		c4, _, _ := sessions.Start(ctx, viewer.ID, false, access.MethodPassword, "")
		if _, err := users.Disable(ctx, boss, viewer.ID); err != nil {
			t.Fatal(err)
		}
		if _, _, err := sessions.Principal(ctx, c4); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("disabled user's session: %v", err)
		}
		if _, _, err := sessions.Start(ctx, viewer.ID, false, access.MethodPassword, ""); !errors.Is(err, access.ErrUnauthenticated) {
			t.Fatalf("session for a disabled user: %v", err)
		}
		if n, err := sessions.Sweep(ctx); err != nil || n != 0 {
			t.Fatalf("Sweep = %d, %v", n, err)
		}

		// The cookie.
		ck := sessions.Cookie("v", true, 0)
		if ck.Name != access.SessionCookie || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || ck.MaxAge != 0 {
			t.Fatalf("cookie %+v", ck)
		}
		if ck := sessions.Cookie("", false, -1); ck.MaxAge != -1 || ck.Secure {
			t.Fatalf("deleting cookie %+v", ck)
		}

		text := auditText(t, log)
		for _, c := range []string{vc, c1, c2, c3, c4, ac} {
			if strings.Contains(text, c) {
				t.Fatal("audit holds a session cookie")
			}
		}
		for _, want := range []string{"session.start", "session.mfa", "session.expire", "session.end", "session.end_all"} {
			if !strings.Contains(text, `"action":"`+want+`"`) {
				t.Errorf("audit lacks %s", want)
			}
		}
	})
}
