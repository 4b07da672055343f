package api

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
)

// OIDC single sign-on. The two routes sit outside /api/v1 because browsers
// navigate to them (the IdP redirects back to the callback), but they are
// huma operations like every other, declared public(): they authenticate
// nobody by cookie or token, they start the login. Being in huma keeps them
// in the OpenAPI document, behind the same body limits, headers and
// problem() error mapping, and in the route walk that proves no operation is
// left undeclared. The callback skips huma's parameter validation: identity
// providers add query parameters of their own (iss, session_state, …), which
// the API's "unknown query parameter" rule would refuse.
//
// The callback answers with a small page that moves to "/" by a meta
// refresh rather than with a 302: the session cookie is SameSite=Strict,
// and browsers withhold such a cookie on the next request of a redirect
// chain that began at another site (the IdP). When roles were held back
// because the IdP did not vouch for a second factor, the page says so and
// waits for a click instead.

// OIDCLoginPath and OIDCCallbackPath are where the flow lives; the
// callback is the redirect URL to register at the identity provider.
const (
	OIDCLoginPath    = "/auth/oidc/login"
	OIDCCallbackPath = "/auth/oidc/callback"
)

type oidcLoginOutput struct {
	Status       int
	Location     string      `header:"Location"`
	CacheControl string      `header:"Cache-Control"`
	SetCookie    http.Cookie `header:"Set-Cookie"`
}

type oidcLoginInput struct {
	requestMeta
}

type oidcCallbackInput struct {
	requestMeta
	State            string `query:"state"`
	Code             string `query:"code"`
	Error            string `query:"error"`
	ErrorDescription string `query:"error_description"`
	Binding          string `cookie:"ward_oidc"`
}

type oidcCallbackOutput struct {
	ContentType  string        `header:"Content-Type"`
	CacheControl string        `header:"Cache-Control"`
	SetCookie    []http.Cookie `header:"Set-Cookie"`
	Body         []byte
}

var oidcDonePage = template.Must(template.New("done").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ward: signed in</title>
{{if not .Dropped}}<meta http-equiv="refresh" content="0;url=/">{{end}}</head>
<body><p>Signed in as {{.User}}.</p>
{{if .Dropped}}<p>Your identity provider did not report a second factor for this sign-in, so Ward gives you read-only access:
the roles {{.Dropped}} are not active in this session. Sign in with multi-factor authentication at your identity provider to use them.</p>{{end}}
<p><a href="/">Continue to Ward</a></p></body></html>
`))

func (s *server) oidc() (*access.OIDC, *access.Sessions, error) {
	if s.cfg.OIDC == nil || s.cfg.SessionStore == nil {
		return nil, nil, fmt.Errorf("%w: single sign-on is not configured on this server (oidc.issuer)", access.ErrUnavailable)
	}
	return s.cfg.OIDC, s.cfg.SessionStore, nil
}

func (s *server) oidcRoutes() {
	tags := []string{"session"}
	register(s, huma.Operation{
		OperationID: "oidc-login", Metadata: public(), Security: []map[string][]string{}, Method: http.MethodGet, Path: OIDCLoginPath, DefaultStatus: http.StatusFound,
		Summary:     "Sign in through the identity provider (browser)",
		Description: "Redirects to the identity provider with state, nonce and a PKCE S256 challenge.",
		Tags:        tags,
	}, func(ctx context.Context, in *oidcLoginInput) (*oidcLoginOutput, error) {
		o, _, err := s.oidc()
		if err != nil {
			return nil, err
		}
		st, err := o.Start(ctx)
		if err != nil {
			return nil, err
		}
		return &oidcLoginOutput{
			Status: http.StatusFound, Location: st.URL, CacheControl: "no-store",
			// Lax, not Strict: the callback arrives as a top-level
			// navigation from the identity provider's site.
			SetCookie: http.Cookie{Name: access.OIDCBindingCookie, Value: st.Binding, Path: "/auth/oidc/", MaxAge: int(st.MaxAge.Seconds()),
				HttpOnly: true, Secure: o.SecureCookies() || in.tls, SameSite: http.SameSiteLaxMode},
		}, nil
	})
	register(s, huma.Operation{
		OperationID: "oidc-callback", Metadata: public(), Security: []map[string][]string{}, Method: http.MethodGet, Path: OIDCCallbackPath,
		Summary:     "Where the identity provider sends the browser back (browser)",
		Description: "Checks the state, redeems the code with the PKCE verifier, verifies the ID token and its nonce, maps groups to roles and starts a session.",
		Tags:        tags, SkipValidateParams: true,
	}, func(ctx context.Context, in *oidcCallbackInput) (*oidcCallbackOutput, error) {
		o, sessions, err := s.oidc()
		if err != nil {
			return nil, err
		}
		login, err := o.Callback(ctx, access.OIDCCallback{
			State: in.State, Code: in.Code, Error: in.Error, ErrorDescription: in.ErrorDescription,
			Binding: in.Binding, Source: in.remote,
		})
		if err != nil {
			return nil, err
		}
		var page strings.Builder
		dropped := make([]string, len(login.Dropped))
		for i, r := range login.Dropped {
			dropped[i] = string(r)
		}
		if err := oidcDonePage.Execute(&page, map[string]any{"User": login.User.Username, "Dropped": strings.Join(dropped, ", ")}); err != nil {
			return nil, err
		}
		secure := o.SecureCookies() || in.tls
		return &oidcCallbackOutput{
			ContentType: "text/html; charset=utf-8", CacheControl: "no-store",
			SetCookie: []http.Cookie{
				*sessions.Cookie(login.Cookie, secure, 0),
				{Name: access.OIDCBindingCookie, Value: "", Path: "/auth/oidc/", MaxAge: -1, HttpOnly: true, Secure: secure, SameSite: http.SameSiteLaxMode},
			},
			Body: []byte(page.String()),
		}, nil
	})
}
