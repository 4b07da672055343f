package access

// # Sessions
//
// A person who logs in gets a session, carried by the cookie ward_session:
// 32 random bytes in unpadded base64url, HttpOnly, SameSite=Strict, Path=/,
// Secure over TLS. Ward keeps only its SHA-256 (sessions.cookie_hash); the
// session's public name is a separate id ("session:<id>" in the audit log).
//
// The session's CSRF token is HMAC-SHA256(cookie, "ward csrf v1") in
// base64url: the login answer gives it to the page, which sends it back in
// X-CSRF-Token on every request that changes anything. Another site can
// neither read it nor (SameSite=Strict) make the browser send the cookie.
//
// States:
//
//	pending (password done, second factor due) ──CompleteMFA──▶ live
//	pending, live ──End, EndAll, idle 30m, absolute 12h, user disabled──▶ gone
//
// A session is "live" when its MFA is done, or its user holds no role that
// needs one and has enrolled none. Only live sessions authenticate API calls (Principal). A
// pending session opens only the second-factor routes, and, if the person
// has no second factor yet, the routes to enrol one.
//
// last_seen_at moves at most once a minute, so reads are not turned into a
// write per request; the idle timeout is therefore exact to a minute.
// Password changes, role changes and disabling end every session of the
// person in the same transaction.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// Session lifetimes.
const (
	DefaultIdle     = 30 * time.Minute
	DefaultAbsolute = 12 * time.Hour
	lastSeenPeriod  = time.Minute
)

// Session methods (MethodPasswordWebAuthn is in webauthn.go).
const (
	MethodPassword     = "password"
	MethodPasswordTOTP = "password+totp"
	MethodOIDC         = "oidc"
)

// Session is a person's login. It never holds the cookie.
type Session struct {
	ID         string    `json:"id"`
	UserID     string    `json:"user_id"`
	CSRF       string    `json:"-"`
	CreatedAt  time.Time `json:"created_at"`
	LastSeenAt time.Time `json:"last_seen_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	MFA        bool      `json:"mfa"`
	Method     string    `json:"method"`
}

// SessionsConfig configures Sessions.
type SessionsConfig struct {
	Store    *store.Store
	Users    *Users
	Audit    *audit.Log
	Idle     time.Duration    // 0: DefaultIdle
	Absolute time.Duration    // 0: DefaultAbsolute
	Now      func() time.Time // nil: time.Now
	Rand     io.Reader        // nil: crypto/rand.Reader
}

// Sessions manages people's sessions. It is safe for concurrent use.
type Sessions struct {
	st       *store.Store
	users    *Users
	audit    *audit.Log
	idle     time.Duration
	absolute time.Duration
	now      func() time.Time
	rand     io.Reader
}

// NewSessions returns the session manager. Store, Users and Audit are
// required; a missing one is a programming error and panics.
func NewSessions(cfg SessionsConfig) *Sessions {
	if cfg.Store == nil || cfg.Users == nil || cfg.Audit == nil {
		panic("access: NewSessions needs a store, users and an audit log")
	}
	s := &Sessions{st: cfg.Store, users: cfg.Users, audit: cfg.Audit, idle: cfg.Idle, absolute: cfg.Absolute, now: cfg.Now, rand: cfg.Rand}
	if s.idle <= 0 {
		s.idle = DefaultIdle
	}
	if s.absolute <= 0 {
		s.absolute = DefaultAbsolute
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	return s
}

// Absolute is the longest a session lives.
func (s *Sessions) Absolute() time.Duration { return s.absolute }

func csrfToken(cookie string) string {
	m := hmac.New(sha256.New, []byte(cookie))
	m.Write([]byte("ward csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Start opens a session for the user after a first factor (or an OIDC
// login, mfa telling whether the provider vouched for a second factor). It
// returns the cookie value, which is never available again.
func (s *Sessions) Start(ctx context.Context, userID string, mfa bool, method, source string) (string, Session, error) {
	u, err := s.users.Get(ctx, userID)
	if err != nil {
		return "", Session{}, err
	}
	if u.Disabled {
		return "", Session{}, fmt.Errorf("access: session: %w", ErrUnauthenticated)
	}
	var b [10 + 32]byte
	if _, err := io.ReadFull(s.rand, b[:]); err != nil {
		return "", Session{}, fmt.Errorf("access: session: %w", err)
	}
	cookie := base64.RawURLEncoding.EncodeToString(b[10:])
	now := s.now().UTC()
	sess := Session{ID: idEncoding.EncodeToString(b[:10]), UserID: u.ID, CSRF: csrfToken(cookie), CreatedAt: now, LastSeenAt: now,
		ExpiresAt: now.Add(s.absolute), MFA: mfa, Method: method}
	live := Live(sess, u)
	err = s.st.Tx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO sessions (id, cookie_hash, user_id, created_at, last_seen_at, expires_at, mfa, method, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			sess.ID, hashSecret(cookie), u.ID, now, now, sess.ExpiresAt, mfa, method, clipString(source, 256)); err != nil {
			return fmt.Errorf("access: session: %w", err)
		}
		if live {
			if _, err := tx.ExecContext(ctx, `UPDATE users SET last_login_at = ? WHERE id = ?`, now, u.ID); err != nil {
				return fmt.Errorf("access: session: %w", err)
			}
		}
		return s.audit.Append(ctx, tx, audit.Entry{At: now, Actor: u.Actor(), Action: "session.start", Target: "session:" + sess.ID, Outcome: audit.Success,
			Source: source, Detail: map[string]any{"username": u.Username, "method": method, "mfa": mfa, "second_factor_due": !live}})
	})
	if err != nil {
		return "", Session{}, err
	}
	return cookie, sess, nil
}

func clipString(v string, n int) string {
	if len(v) > n {
		return v[:n]
	}
	return v
}

// Get returns the session of cookie and its user, whether or not its second
// factor is done. An unknown, expired or idle session, or one whose user is
// disabled, is ErrUnauthenticated.
func (s *Sessions) Get(ctx context.Context, cookie string) (Session, User, error) {
	if cookie == "" || len(cookie) > 64 {
		return Session{}, User{}, ErrUnauthenticated
	}
	var sess Session
	err := s.st.QueryRowContext(ctx, `SELECT id, user_id, created_at, last_seen_at, expires_at, mfa, method FROM sessions WHERE cookie_hash = ?`, hashSecret(cookie)).
		Scan(&sess.ID, &sess.UserID, &sess.CreatedAt, &sess.LastSeenAt, &sess.ExpiresAt, &sess.MFA, &sess.Method)
	if errors.Is(err, sql.ErrNoRows) {
		return Session{}, User{}, ErrUnauthenticated
	}
	if err != nil {
		return Session{}, User{}, fmt.Errorf("access: session: %w", err)
	}
	sess.CreatedAt, sess.LastSeenAt, sess.ExpiresAt = sess.CreatedAt.UTC(), sess.LastSeenAt.UTC(), sess.ExpiresAt.UTC()
	sess.CSRF = csrfToken(cookie)
	now := s.now().UTC()
	if !now.Before(sess.ExpiresAt) || now.Sub(sess.LastSeenAt) >= s.idle {
		reason := "idle"
		if !now.Before(sess.ExpiresAt) {
			reason = "expired"
		}
		s.expire(ctx, sess, reason, now)
		return Session{}, User{}, ErrUnauthenticated
	}
	u, err := s.users.Get(ctx, sess.UserID)
	if errors.Is(err, ErrNotFound) {
		return Session{}, User{}, ErrUnauthenticated
	}
	if err != nil {
		return Session{}, User{}, err
	}
	if u.Disabled {
		return Session{}, User{}, ErrUnauthenticated
	}
	if now.Sub(sess.LastSeenAt) >= lastSeenPeriod {
		// Best effort: a failed bookkeeping write does not refuse the person.
		if _, err := s.st.ExecContext(ctx, `UPDATE sessions SET last_seen_at = ? WHERE id = ? AND last_seen_at < ?`, now, sess.ID, now); err == nil {
			sess.LastSeenAt = now
		}
	}
	return sess, u, nil
}

// expire deletes a timed-out session and audits it.
func (s *Sessions) expire(ctx context.Context, sess Session, reason string, now time.Time) {
	_ = s.st.Tx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, sess.ID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		return s.audit.Append(ctx, tx, audit.Entry{At: now, Actor: audit.System, Action: "session.expire", Target: "session:" + sess.ID, Outcome: audit.Success,
			Reason: reason, Detail: map[string]any{"user": KindUser + ":" + sess.UserID}})
	})
}

// Live reports whether a session authenticates its user's API calls: its
// second factor is done, or the user needs none and has enrolled none (a
// person who enrolled a factor must use it, whatever their roles).
func Live(sess Session, u User) bool {
	return sess.MFA || (!u.NeedsSecondFactor() && len(u.SecondFactors()) == 0)
}

// CompleteMFA marks the session's second factor done, by method (e.g.
// "password+totp"). The caller has checked the factor.
func (s *Sessions) CompleteMFA(ctx context.Context, cookie, method string) (Session, error) {
	sess, u, err := s.Get(ctx, cookie)
	if err != nil {
		return Session{}, err
	}
	now := s.now().UTC()
	err = s.st.Tx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE sessions SET mfa = ?, method = ?, last_seen_at = ? WHERE id = ?`, true, method, now, sess.ID); err != nil {
			return fmt.Errorf("access: session: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE users SET last_login_at = ? WHERE id = ?`, now, u.ID); err != nil {
			return fmt.Errorf("access: session: %w", err)
		}
		return s.audit.Append(ctx, tx, audit.Entry{At: now, Actor: u.Actor(), Action: "session.mfa", Target: "session:" + sess.ID, Outcome: audit.Success,
			Detail: map[string]any{"username": u.Username, "method": method}})
	})
	if err != nil {
		return Session{}, err
	}
	sess.MFA, sess.Method, sess.LastSeenAt = true, method, now
	return sess, nil
}

// End ends the session of cookie (logout).
func (s *Sessions) End(ctx context.Context, cookie string) error {
	if cookie == "" {
		return ErrUnauthenticated
	}
	now := s.now().UTC()
	return s.st.Tx(ctx, func(tx *store.Tx) error {
		var id, userID string
		err := tx.QueryRowContext(ctx, `SELECT id, user_id FROM sessions WHERE cookie_hash = ?`, hashSecret(cookie)).Scan(&id, &userID)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrUnauthenticated
		}
		if err != nil {
			return fmt.Errorf("access: session: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, id); err != nil {
			return fmt.Errorf("access: session: %w", err)
		}
		return s.audit.Append(ctx, tx, audit.Entry{At: now, Actor: KindUser + ":" + userID, Action: "session.end", Target: "session:" + id, Outcome: audit.Success})
	})
}

// EndAll ends every session of a user.
func (s *Sessions) EndAll(ctx context.Context, userID string) error {
	now := s.now().UTC()
	return s.st.Tx(ctx, func(tx *store.Tx) error {
		n, err := endSessions(ctx, tx, userID)
		if err != nil {
			return err
		}
		return s.audit.Append(ctx, tx, audit.Entry{At: now, Actor: audit.System, Action: "session.end_all", Target: KindUser + ":" + userID, Outcome: audit.Success,
			Detail: map[string]any{"sessions_ended": n}})
	})
}

// Sweep deletes sessions past their absolute or idle timeout, returning how
// many. The server runs it now and then; Get refuses such sessions anyway.
func (s *Sessions) Sweep(ctx context.Context) (int64, error) {
	now := s.now().UTC()
	res, err := s.st.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?`, now, now.Add(-s.idle))
	if err != nil {
		return 0, fmt.Errorf("access: sweep sessions: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// Principal resolves a cookie for the API (it implements api.SessionAuth):
// the principal and CSRF token of a live session of an enabled user whose
// second factor is done or not needed. Anything else is ErrUnauthenticated.
func (s *Sessions) Principal(ctx context.Context, cookie string) (Principal, string, error) {
	sess, u, err := s.Get(ctx, cookie)
	if err != nil {
		return Principal{}, "", err
	}
	if !Live(sess, u) {
		return Principal{}, "", ErrUnauthenticated
	}
	return u.Principal(), sess.CSRF, nil
}

// Cookie returns the session cookie to set: HttpOnly, SameSite=Strict,
// Path=/, Secure when secure. maxAge 0 makes a browser-session cookie; a
// negative one deletes the cookie.
func (s *Sessions) Cookie(value string, secure bool, maxAge time.Duration) *http.Cookie {
	c := &http.Cookie{Name: SessionCookie, Value: value, Path: "/", HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode}
	switch {
	case maxAge < 0:
		c.MaxAge = -1
	case maxAge > 0:
		c.MaxAge = int(maxAge / time.Second)
	}
	return c
}
