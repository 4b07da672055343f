package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
)

// Login and the second factor, for people (see docs/access.md).
//
// POST /api/v1/session checks a username and password and sets the session
// cookie. When the person must give a second factor the session is pending:
// it opens no other route than the second-factor ones below, which are public
// to the authentication middleware and check the pending session's cookie
// and CSRF token themselves. A person with no second factor yet, whose roles
// need one, may enrol TOTP from the pending session (first login).

// requestMeta captures what a handler needs of the HTTP request itself.
type requestMeta struct {
	remote string // client IP, for throttling and the audit log
	tls    bool   // the request came over TLS: the cookie is Secure
	csrf   string // X-CSRF-Token
}

func (m *requestMeta) Resolve(ctx huma.Context) []error {
	m.remote = ctx.RemoteAddr()
	if h, _, err := net.SplitHostPort(m.remote); err == nil {
		m.remote = h
	}
	m.tls = ctx.TLS() != nil
	m.csrf = ctx.Header("X-CSRF-Token")
	return nil
}

type loginInput struct {
	requestMeta
	Body struct {
		Username string `json:"username" minLength:"1" maxLength:"256"`
		// No length constraints here: a validation error would quote the
		// value back. CheckPassword and the policy bound it.
		Password string `json:"password" doc:"Never logged nor echoed"`
	}
}

// sessionBody is what login and the second-factor steps answer.
type sessionBody struct {
	User           access.User    `json:"user"`
	Session        access.Session `json:"session"`
	MFARequired    bool           `json:"mfa_required" doc:"A second factor is still due; until then the session opens only /api/v1/session/…"`
	MFAMethods     []string       `json:"mfa_methods" doc:"Second factors the person can give: totp, webauthn"`
	EnrollRequired bool           `json:"enroll_required" doc:"The person's roles need a second factor and none is enrolled: enrol one (TOTP or WebAuthn) to finish logging in"`
	CSRF           string         `json:"csrf" doc:"Send as X-CSRF-Token on every request that changes anything"`
}

type loginOutput struct {
	SetCookie http.Cookie `header:"Set-Cookie"`
	Body      sessionBody
}

type sessionOutput struct {
	Body sessionBody
}

type cookieInput struct {
	requestMeta
	Cookie string `cookie:"ward_session" doc:"The session cookie"`
}

type codeInput struct {
	requestMeta
	Cookie string `cookie:"ward_session" doc:"The session cookie"`
	Body   struct {
		Code string `json:"code" minLength:"6" maxLength:"6" pattern:"^[0-9]{6}$" doc:"Six-digit TOTP code"`
	}
}

type totpSetupOutput struct {
	Body struct {
		Secret     string `json:"secret" doc:"Base32 TOTP seed, shown this once; Ward keeps it sealed"`
		OTPAuthURL string `json:"otpauth_url" doc:"otpauth:// URL for an authenticator app (a QR code)"`
	}
}

type whoamiOutput struct {
	Body struct {
		Principal access.Principal `json:"principal"`
		User      *access.User     `json:"user,omitempty"`
		Session   *access.Session  `json:"session,omitempty"`
		CSRF      string           `json:"csrf,omitempty"`
	}
}

type logoutOutput struct {
	SetCookie http.Cookie `header:"Set-Cookie"`
}

func sessionView(sess access.Session, u access.User) sessionBody {
	live := access.Live(sess, u)
	methods := u.SecondFactors()
	return sessionBody{User: u, Session: sess, MFARequired: !live, MFAMethods: methods, EnrollRequired: !live && len(methods) == 0, CSRF: sess.CSRF}
}

// loginError answers a refused login: the same message for every unknown
// name, wrong password or disabled account.
func loginError(err error, msg string) error {
	if errors.Is(err, access.ErrUnauthenticated) {
		return huma.Error401Unauthorized(msg)
	}
	return err
}

// pendingSession resolves a cookie to its session, live or pending, and
// checks the CSRF token: the second-factor routes are public to the
// middleware and authenticate here.
func (s *server) pendingSession(ctx context.Context, cookie, csrf string) (access.Session, access.User, error) {
	if cookie == "" {
		return access.Session{}, access.User{}, access.ErrUnauthenticated
	}
	sess, u, err := s.cfg.SessionStore.Get(ctx, cookie)
	if err != nil {
		return access.Session{}, access.User{}, err
	}
	if csrf == "" || subtle.ConstantTimeCompare([]byte(csrf), []byte(sess.CSRF)) != 1 {
		return access.Session{}, access.User{}, fmt.Errorf("%w: missing or wrong X-CSRF-Token", access.ErrForbidden)
	}
	return sess, u, nil
}

// mayEnroll reports whether a session may enrol a second factor: it has
// given one, or the person has none to give. So a stolen password alone
// cannot add the thief's factor to an account that has one.
func mayEnroll(sess access.Session, u access.User) bool {
	return sess.MFA || len(u.SecondFactors()) == 0
}

func withTOTP(method string) string {
	if method == access.MethodPassword || method == "" {
		return access.MethodPasswordTOTP
	}
	return method + "+totp"
}

func (s *server) sessionRoutes() {
	if s.cfg.Users == nil || s.cfg.SessionStore == nil {
		return
	}
	tags := []string{"session"}
	register(s, huma.Operation{
		OperationID: "login", Metadata: public(), Method: http.MethodPost, Path: Prefix + "/session",
		Summary: "Log in with a username and password; sets the session cookie", Tags: tags, Security: []map[string][]string{},
	}, func(ctx context.Context, in *loginInput) (*loginOutput, error) {
		const msg = "invalid username or password"
		if len(in.Body.Password) > 4*access.MaxPasswordLen {
			return nil, huma.Error401Unauthorized(msg)
		}
		u, err := s.cfg.Users.CheckPassword(ctx, in.Body.Username, in.Body.Password, in.remote)
		if err != nil {
			return nil, loginError(err, msg)
		}
		cookie, sess, err := s.cfg.SessionStore.Start(ctx, u.ID, false, access.MethodPassword, in.remote)
		if err != nil {
			return nil, loginError(err, msg)
		}
		out := &loginOutput{Body: sessionView(sess, u)}
		out.SetCookie = *s.cfg.SessionStore.Cookie(cookie, in.tls, 0)
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "login-totp", Metadata: public(), Method: http.MethodPost, Path: Prefix + "/session/totp",
		Summary: "Give a TOTP code as the second factor of a pending session", Tags: tags, Security: []map[string][]string{},
	}, func(ctx context.Context, in *codeInput) (*sessionOutput, error) {
		sess, u, err := s.pendingSession(ctx, in.Cookie, in.csrf)
		if err != nil {
			return nil, err
		}
		if sess.MFA {
			return nil, fmt.Errorf("%w: this session's second factor is done already", access.ErrConflict)
		}
		if err := s.cfg.Users.VerifyTOTP(ctx, u.ID, in.Body.Code); err != nil {
			return nil, loginError(err, "invalid TOTP code")
		}
		if sess, err = s.cfg.SessionStore.CompleteMFA(ctx, in.Cookie, withTOTP(sess.Method)); err != nil {
			return nil, err
		}
		return &sessionOutput{Body: sessionView(sess, u)}, nil
	})
	register(s, huma.Operation{
		OperationID: "totp-setup", Metadata: public(), Method: http.MethodPost, Path: Prefix + "/session/totp/setup",
		Summary: "Begin enrolling TOTP for the session's person; the answer holds the seed, once", Tags: tags, Security: []map[string][]string{},
	}, func(ctx context.Context, in *cookieInput) (*totpSetupOutput, error) {
		sess, u, err := s.pendingSession(ctx, in.Cookie, in.csrf)
		if err != nil {
			return nil, err
		}
		if !mayEnroll(sess, u) {
			return nil, fmt.Errorf("%w: give your second factor before enrolling another", access.ErrForbidden)
		}
		secret, url, err := s.cfg.Users.BeginTOTP(ctx, u.ID)
		if err != nil {
			return nil, err
		}
		out := &totpSetupOutput{}
		out.Body.Secret, out.Body.OTPAuthURL = secret, url
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "totp-confirm", Metadata: public(), Method: http.MethodPost, Path: Prefix + "/session/totp/confirm",
		Summary: "Confirm TOTP enrolment with a code; completes a pending session's second factor", Tags: tags, Security: []map[string][]string{},
	}, func(ctx context.Context, in *codeInput) (*sessionOutput, error) {
		sess, u, err := s.pendingSession(ctx, in.Cookie, in.csrf)
		if err != nil {
			return nil, err
		}
		if !mayEnroll(sess, u) {
			return nil, fmt.Errorf("%w: give your second factor before enrolling another", access.ErrForbidden)
		}
		if err := s.cfg.Users.ConfirmTOTP(ctx, u.ID, in.Body.Code); err != nil {
			return nil, loginError(err, "invalid TOTP code")
		}
		if !sess.MFA {
			if sess, err = s.cfg.SessionStore.CompleteMFA(ctx, in.Cookie, withTOTP(sess.Method)); err != nil {
				return nil, err
			}
		}
		if u, err = s.cfg.Users.Get(ctx, u.ID); err != nil {
			return nil, err
		}
		return &sessionOutput{Body: sessionView(sess, u)}, nil
	})
	register(s, huma.Operation{
		OperationID: "whoami", Metadata: perm(access.SelfService), Method: http.MethodGet, Path: Prefix + "/session",
		Summary: "Who is calling: the principal, and for a person the account and session", Tags: tags,
	}, func(ctx context.Context, in *cookieInput) (*whoamiOutput, error) {
		p := caller(ctx)
		out := &whoamiOutput{}
		out.Body.Principal = p
		if p.Kind == access.KindUser && in.Cookie != "" {
			sess, u, err := s.cfg.SessionStore.Get(ctx, in.Cookie)
			if err != nil {
				return nil, err
			}
			out.Body.User, out.Body.Session, out.Body.CSRF = &u, &sess, sess.CSRF
		}
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "logout", Metadata: perm(access.SelfService), Method: http.MethodDelete, Path: Prefix + "/session", DefaultStatus: http.StatusNoContent,
		Summary: "Log out: end the session and clear its cookie", Tags: tags,
	}, func(ctx context.Context, in *cookieInput) (*logoutOutput, error) {
		if caller(ctx).Kind != access.KindUser || in.Cookie == "" {
			return nil, fmt.Errorf("%w: no session to end (API tokens are revoked instead)", access.ErrConflict)
		}
		if err := s.cfg.SessionStore.End(ctx, in.Cookie); err != nil {
			return nil, err
		}
		return &logoutOutput{SetCookie: *s.cfg.SessionStore.Cookie("", in.tls, -1)}, nil
	})
}
