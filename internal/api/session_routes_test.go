package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// sessionBrowser is a person at a browser: a cookie jar, and the CSRF token the
// last login answer gave.
type sessionBrowser struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
	seen bytes.Buffer // every answer, to grep for secrets
}

func newSessionBrowser(t *testing.T, e *apitest.Env) *sessionBrowser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &sessionBrowser{t: t, base: e.Server.URL, hc: &http.Client{Jar: jar}}
}

// do sends a request with the session cookie (from the jar) and, if csrf,
// the X-CSRF-Token header; it returns the status and the decoded answer.
func (b *sessionBrowser) do(method, path string, body any, csrf bool) (int, map[string]any) {
	b.t.Helper()
	var r io.Reader
	if body != nil {
		j, _ := json.Marshal(body)
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, b.base+path, r)
	if err != nil {
		b.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if csrf {
		req.Header.Set("X-CSRF-Token", b.csrf)
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	b.seen.Write(data)
	for _, c := range resp.Header.Values("Set-Cookie") {
		b.seen.WriteString("\n" + c + "\n") // cookies are checked separately
	}
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

func (b *sessionBrowser) login(user, pw string) (int, map[string]any) {
	b.t.Helper()
	st, out := b.do(http.MethodPost, "/api/v1/session", map[string]string{"username": user, "password": pw}, false)
	if st == http.StatusOK {
		b.csrf, _ = out["csrf"].(string)
	}
	return st, out
}

func (b *sessionBrowser) cookie() string {
	req, _ := http.NewRequest(http.MethodGet, b.base+"/", nil)
	for _, c := range b.hc.Jar.Cookies(req.URL) {
		if c.Name == access.SessionCookie {
			return c.Value
		}
	}
	return ""
}

func sessionTOTPCode(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	alicePassword = "alice has a long passphrase"
	bobPassword   = "bob has a long passphrase"
)

func TestSessionLogin(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		e := apitest.New(t, s, nil)
		alice, err := e.Client.CreateUser(ctx, client.UserRequest{Username: "alice", DisplayName: "Alice", Password: alicePassword, Roles: []string{"admin"}})
		if err != nil {
			t.Fatal(err)
		}
		bob, err := e.Client.CreateUser(ctx, client.UserRequest{Username: "bob", Password: bobPassword, Roles: []string{"viewer"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Client.CreateUser(ctx, client.UserRequest{Username: "weak", Password: "short", Roles: []string{"viewer"}}); statusOf(err) != 422 || strings.Contains(err.Error(), "short") && !strings.Contains(err.Error(), "characters") {
			t.Fatalf("weak password: %v", err)
		}

		b := newSessionBrowser(t, e)
		// Wrong password and unknown name: the same answer.
		st1, out1 := b.login("alice", "not the password")
		st2, out2 := b.login("nobody", "not the password")
		if st1 != 401 || st2 != 401 || out1["detail"] != "invalid username or password" || out2["detail"] != out1["detail"] {
			t.Fatalf("wrong password %d %v; unknown %d %v", st1, out1, st2, out2)
		}

		// Alice is an admin without a second factor: logging in gives a
		// session that may only enrol one.
		st, out := b.login("alice", alicePassword)
		if st != 200 || out["mfa_required"] != true || out["enroll_required"] != true || b.csrf == "" {
			t.Fatalf("login: %d %v", st, out)
		}
		cookie := b.cookie()
		if cookie == "" {
			t.Fatal("no session cookie")
		}
		if st, _ := b.do(http.MethodGet, "/api/v1/devices", nil, false); st != 401 {
			t.Fatalf("pending session reads devices: %d", st)
		}
		if st, _ := b.do(http.MethodPost, "/api/v1/users", map[string]any{"username": "eve", "password": "eve's long passphrase", "roles": []string{"admin"}}, true); st != 401 {
			t.Fatalf("pending session creates a user: %d", st)
		}
		if st, _ := b.do(http.MethodGet, "/api/v1/session", nil, false); st != 401 {
			t.Fatalf("pending session whoami: %d", st)
		}
		if st, _ := b.do(http.MethodPost, "/api/v1/session/totp/setup", nil, false); st != 403 {
			t.Fatalf("setup without CSRF token: %d", st)
		}
		st, out = b.do(http.MethodPost, "/api/v1/session/totp/setup", nil, true)
		secret, _ := out["secret"].(string)
		if st != 200 || len(secret) != 32 || !strings.HasPrefix(out["otpauth_url"].(string), "otpauth://totp/Ward:alice?") {
			t.Fatalf("setup: %d %v", st, out)
		}
		if st, out := b.do(http.MethodPost, "/api/v1/session/totp/confirm", map[string]string{"code": "000000"}, true); st != 401 || out["detail"] != "invalid TOTP code" {
			t.Fatalf("confirm with a wrong code: %d %v", st, out)
		}
		st, out = b.do(http.MethodPost, "/api/v1/session/totp/confirm", map[string]string{"code": sessionTOTPCode(t, secret, e.Clock.Now())}, true)
		if st != 200 || out["mfa_required"] != false {
			t.Fatalf("confirm: %d %v", st, out)
		}
		// The seed is sealed in the store.
		var sealed []byte
		if err := s.QueryRowContext(ctx, `SELECT totp_seed FROM users WHERE id = ?`, alice.ID).Scan(&sealed); err != nil || len(sealed) == 0 || bytes.Contains(sealed, []byte(secret)) {
			t.Fatalf("stored seed: %d bytes, %v", len(sealed), err)
		}

		// Live now. CSRF: a cookie-authenticated change needs the token.
		if st, _ := b.do(http.MethodGet, "/api/v1/users", nil, false); st != 200 {
			t.Fatalf("list users: %d", st)
		}
		carol := map[string]any{"username": "carol", "password": "carol's long passphrase", "roles": []string{"viewer"}}
		if st, out := b.do(http.MethodPost, "/api/v1/users", carol, false); st != 403 || !strings.Contains(out["detail"].(string), "X-CSRF-Token") {
			t.Fatalf("POST without CSRF token: %d %v", st, out)
		}
		b.csrf, cookie = strings.Repeat("x", 43), b.csrf
		if st, _ := b.do(http.MethodPost, "/api/v1/users", carol, true); st != 403 {
			t.Fatalf("POST with a wrong CSRF token: %d", st)
		}
		b.csrf = cookie
		if st, out := b.do(http.MethodPost, "/api/v1/users", carol, true); st != 201 || out["username"] != "carol" {
			t.Fatalf("POST with CSRF token: %d %v", st, out)
		}
		st, out = b.do(http.MethodGet, "/api/v1/session", nil, false)
		if p, _ := out["principal"].(map[string]any); st != 200 || p["id"] != alice.ID || p["kind"] != "user" || out["csrf"] != b.csrf {
			t.Fatalf("whoami: %d %v", st, out)
		}
		if st, _ := b.do(http.MethodDelete, "/api/v1/session", nil, false); st != 403 {
			t.Fatalf("logout without CSRF token: %d", st)
		}
		if st, _ := b.do(http.MethodDelete, "/api/v1/session", nil, true); st != 204 {
			t.Fatalf("logout: %d", st)
		}
		if st, _ := b.do(http.MethodGet, "/api/v1/users", nil, false); st != 401 {
			t.Fatalf("after logout: %d", st)
		}

		// Next login: TOTP is due; a code already used is refused, and
		// enrolling another factor first is not allowed.
		st, out = b.login("alice", alicePassword)
		if st != 200 || out["mfa_required"] != true || out["enroll_required"] != false || len(out["mfa_methods"].([]any)) != 1 {
			t.Fatalf("second login: %d %v", st, out)
		}
		if st, _ := b.do(http.MethodPost, "/api/v1/session/totp/setup", nil, true); st != 403 {
			t.Fatalf("enrol before giving the second factor: %d", st)
		}
		if st, _ := b.do(http.MethodPost, "/api/v1/session/totp", map[string]string{"code": sessionTOTPCode(t, secret, e.Clock.Now())}, true); st != 401 {
			t.Fatalf("replayed code: %d", st)
		}
		e.Clock.Add(30 * time.Second)
		if st, out := b.do(http.MethodPost, "/api/v1/session/totp", map[string]string{"code": sessionTOTPCode(t, secret, e.Clock.Now())}, false); st != 403 {
			t.Fatalf("code without CSRF token: %d %v", st, out)
		}
		st, out = b.do(http.MethodPost, "/api/v1/session/totp", map[string]string{"code": sessionTOTPCode(t, secret, e.Clock.Now())}, true)
		if sess, _ := out["session"].(map[string]any); st != 200 || out["mfa_required"] != false || sess["method"] != "password+totp" {
			t.Fatalf("TOTP login: %d %v", st, out)
		}
		if st, _ := b.do(http.MethodPost, "/api/v1/users/carol/unlock", nil, true); st != 200 {
			t.Fatalf("state change after TOTP: %d", st)
		}

		// Bob, a viewer, needs no second factor; he changes his own password
		// (with the current one) and his sessions end.
		bb := newSessionBrowser(t, e)
		if st, out := bb.login("bob", bobPassword); st != 200 || out["mfa_required"] != false {
			t.Fatalf("bob: %d %v", st, out)
		}
		if st, _ := bb.do(http.MethodGet, "/api/v1/devices", nil, false); st != 200 {
			t.Fatalf("bob reads devices: %d", st)
		}
		if st, _ := bb.do(http.MethodPost, "/api/v1/users/"+bob.ID+"/disable", nil, true); st != 403 {
			t.Fatalf("viewer disables: %d", st)
		}
		if st, _ := bb.do(http.MethodPost, "/api/v1/users/"+alice.ID+"/password", map[string]string{"password": "bob owns alice now"}, true); st != 403 {
			t.Fatalf("viewer sets another's password: %d", st)
		}
		if st, _ := bb.do(http.MethodPost, "/api/v1/users/bob/password", map[string]string{"password": "bob's second passphrase", "current_password": "wrong"}, true); st != 403 {
			t.Fatalf("own password with a wrong current one: %d", st)
		}
		if st, _ := bb.do(http.MethodPost, "/api/v1/users/bob/password", map[string]string{"password": "bob's second passphrase", "current_password": bobPassword}, true); st != 204 {
			t.Fatalf("own password: %d", st)
		}
		if st, _ := bb.do(http.MethodGet, "/api/v1/devices", nil, false); st != 401 {
			t.Fatalf("session after a password change: %d", st)
		}
		// A disabled sessionBrowser's sessions end.
		if st, _ := bb.login("bob", "bob's second passphrase"); st != 200 {
			t.Fatal(st)
		}
		if st, out := b.do(http.MethodPost, "/api/v1/users/bob/disable", nil, true); st != 200 || out["disabled"] != true {
			t.Fatalf("disable: %d %v", st, out)
		}
		if st, _ := bb.do(http.MethodGet, "/api/v1/devices", nil, false); st != 401 {
			t.Fatalf("disabled sessionBrowser's session: %d", st)
		}
		if st, out := bb.login("bob", "bob's second passphrase"); st != 401 || out["detail"] != "invalid username or password" {
			t.Fatalf("disabled sessionBrowser logs in: %d %v", st, out)
		}

		// Lockout: the fifth failure locks, known or unknown alike, with
		// the same message; an administrator unlocks.
		msgs := []string{}
		for _, name := range []string{"carol", "mallory"} {
			for i := 0; i < access.MaxFailures; i++ {
				if st, _ := bb.login(name, "not the password"); st != 401 {
					t.Fatalf("%s failure %d: %d", name, i, st)
				}
			}
			st, out := bb.login(name, "carol's long passphrase")
			if st != 429 {
				t.Fatalf("%s locked: %d %v", name, st, out)
			}
			msgs = append(msgs, out["detail"].(string))
		}
		if msgs[0] != msgs[1] || !strings.Contains(msgs[0], "too many failed attempts; try again after 12:16 UTC") {
			t.Fatalf("lockout messages: %q", msgs)
		}
		if u, err := e.Client.UnlockUser(ctx, "carol"); err != nil || u.LockedUntil != nil {
			t.Fatalf("unlock: %+v %v", u, err)
		}
		if st, _ := bb.login("carol", "carol's long passphrase"); st != 200 {
			t.Fatalf("after unlock: %d", st)
		}

		// No password, seed or cookie in the logs, the audit log, or any
		// answer but the one that shows the seed once.
		var text strings.Builder
		es, err := e.Audit.List(ctx, audit.Filter{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range es {
			j, _ := json.Marshal(en)
			text.Write(j)
		}
		// The setup answer shows the seed twice: secret and otpauth_url.
		if n := strings.Count(b.seen.String(), secret); n != 2 {
			t.Errorf("the TOTP seed appears %d times in answers; want 2 (once, in the setup answer)", n)
		}
		answers := strings.ReplaceAll(b.seen.String(), secret, "") + bb.seen.String()
		for _, sec := range []string{alicePassword, bobPassword, "bob's second passphrase", "carol's long passphrase", "not the password", secret, cookie} {
			if strings.Contains(e.Logs(), sec) || strings.Contains(text.String(), sec) {
				t.Errorf("a secret appears in the logs or the audit log")
			}
			if sec != cookie && strings.Contains(answers, sec) {
				t.Errorf("a secret appears in an API answer: %q", sec)
			}
		}
	})
}

// TestSessionCookieAttributes: HttpOnly, SameSite=Strict, Path=/ always;
// Secure exactly when the request came over TLS.
func TestSessionCookieAttributes(t *testing.T) {
	ctx := context.Background()
	e := apitest.New(t, storetest.Open(t, store.SQLite), nil)
	if _, err := e.Client.CreateUser(ctx, client.UserRequest{Username: "bob", Password: bobPassword, Roles: []string{"viewer"}}); err != nil {
		t.Fatal(err)
	}
	h, err := api.New(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := httptest.NewTLSServer(h)
	defer tlsSrv.Close()
	for _, c := range []struct {
		srv    *httptest.Server
		secure bool
	}{{e.Server, false}, {tlsSrv, true}} {
		body := strings.NewReader(`{"username":"bob","password":"` + bobPassword + `"}`)
		resp, err := c.srv.Client().Post(c.srv.URL+"/api/v1/session", "application/json", body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		sc := resp.Header.Get("Set-Cookie")
		if resp.StatusCode != 200 || !strings.HasPrefix(sc, access.SessionCookie+"=") || !strings.Contains(sc, "HttpOnly") ||
			!strings.Contains(sc, "SameSite=Strict") || !strings.Contains(sc, "Path=/") || strings.Contains(sc, "Secure") != c.secure {
			t.Errorf("TLS %v: %d, Set-Cookie %q", c.secure, resp.StatusCode, sc)
		}
	}
}
