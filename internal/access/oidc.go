package access

// # OIDC single sign-on
//
// Ward is an OpenID Connect relying party using the authorization-code flow
// with PKCE (S256). The parties: the browser, Ward, and the hospital's
// identity provider (IdP). The trust: the IdP's signing keys (published at
// its jwks_uri, found through its discovery document at
// <issuer>/.well-known/openid-configuration) and Ward's client secret.
//
//  1. GET /auth/oidc/login: Ward draws a state, a nonce, a PKCE verifier and
//     a browser binding, keeps the first three in oidc_logins (named by the
//     SHA-256 of the state, bound by the SHA-256 of the binding) for
//     oidcLoginTTL, sets the binding as an HttpOnly cookie and redirects to
//     the IdP with state, nonce and the S256 challenge.
//  2. GET /auth/oidc/callback?state&code: Ward deletes the row the state
//     names (so a state is used once) and checks that this browser holds its
//     binding — a callback URL taken from another browser's login, the
//     classic login CSRF, is refused. It redeems the code with the verifier
//     (the IdP refuses a code whose verifier does not match), verifies the ID
//     token (signature, issuer, audience, expiry) and compares its nonce.
//  3. The groups claim decides the roles (RoleMap) and the sites (SiteMap).
//     Deny by default: no mapped group, no account. An ID token whose amr
//     says the IdP used a second factor ("mfa", "otp" or "hwk") counts as
//     multi-factor only when TrustIdPMFA is set; otherwise every role that
//     changes anything is dropped for this login and the person keeps read
//     permissions only (OIDCLogin.Dropped says which). The account is
//     created or updated (UpsertExternal, keyed by issuer and subject), so
//     roles follow the groups at every login.
//  4. A session starts with method "oidc" (or "oidc+mfa").
//
// Refusals are audited as oidc.login, outcome denied, with the reason;
// the code, the tokens and the verifier are never logged.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// ErrUnavailable means a service Ward depends on (the identity provider)
// cannot be reached now; trying later may work.
var ErrUnavailable = errors.New("unavailable")

// MethodOIDCMFA is the session method of an OIDC login whose provider
// vouched for a second factor (MethodOIDC, in sessions.go, otherwise).
const MethodOIDCMFA = "oidc+mfa"

// OIDCBindingCookie carries the browser binding of an OIDC login under way.
const OIDCBindingCookie = "ward_oidc"

const (
	oidcLoginTTL       = 10 * time.Minute
	oidcDiscoveryRetry = 10 * time.Second
)

// mfaAMR are the amr values (RFC 8176) that say the IdP used more than a
// password.
var mfaAMR = []string{"mfa", "otp", "hwk"}

// OIDCConfig configures OIDC.
type OIDCConfig struct {
	Issuer       string // the IdP's issuer URL, exactly as its tokens name it
	ClientID     string
	ClientSecret string // "" for a public client (PKCE only)
	RedirectURL  string // Ward's callback: https://<admin host>/auth/oidc/callback
	Scopes       []string
	// GroupsClaim names the ID token claim listing the person's groups;
	// "" means "groups".
	GroupsClaim string
	// RoleMap gives each IdP group the Ward roles it grants. A person whose
	// groups map to no role is refused.
	RoleMap map[string][]Role
	// SiteMap gives each IdP group the sites it grants. Empty: every person
	// acts on every site. Not empty: a person whose groups map to no site is
	// refused.
	SiteMap map[string][]string
	// TrustIdPMFA counts an IdP login as multi-factor when the ID token's
	// amr claim holds "mfa", "otp" or "hwk". Otherwise OIDC logins keep only
	// roles that change nothing.
	TrustIdPMFA bool

	Store    *store.Store
	Users    *Users
	Sessions *Sessions
	Audit    *audit.Log
	// HTTPClient talks to the IdP; nil: a client with a 15-second timeout.
	HTTPClient *http.Client
	Now        func() time.Time // nil: time.Now
	Rand       io.Reader        // nil: crypto/rand.Reader
}

// OIDC signs people in through an OpenID Connect provider. It is safe for
// concurrent use.
type OIDC struct {
	cfg  OIDCConfig
	now  func() time.Time
	rand io.Reader
	hc   *http.Client

	mu       sync.Mutex
	provider *oidc.Provider
	lastTry  time.Time
}

// NewOIDC checks cfg. It does not contact the IdP: discovery happens at the
// first login, and again after a failure, so Ward starts while the IdP is
// down.
func NewOIDC(cfg OIDCConfig) (*OIDC, error) {
	if cfg.Store == nil || cfg.Users == nil || cfg.Sessions == nil || cfg.Audit == nil {
		return nil, errors.New("access: oidc: store, users, sessions and audit are required")
	}
	if cfg.Issuer == "" || cfg.ClientID == "" || cfg.RedirectURL == "" {
		return nil, errors.New("access: oidc: issuer, client_id and redirect_url are required")
	}
	for name, raw := range map[string]string{"issuer": cfg.Issuer, "redirect_url": cfg.RedirectURL} {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("access: oidc: %s %q: want an absolute http(s) URL", name, raw)
		}
	}
	if len(cfg.RoleMap) == 0 {
		return nil, errors.New("access: oidc: role_map is empty, so nobody could log in")
	}
	for g, roles := range cfg.RoleMap {
		for _, r := range roles {
			if !r.Valid() {
				return nil, fmt.Errorf("access: oidc: role_map[%q]: unknown role %q (roles: %v)", g, r, Roles())
			}
		}
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = "groups"
	}
	if !slices.Contains(cfg.Scopes, oidc.ScopeOpenID) {
		cfg.Scopes = append([]string{oidc.ScopeOpenID}, cfg.Scopes...)
	}
	if len(cfg.Scopes) == 1 {
		cfg.Scopes = append(cfg.Scopes, "profile", "email")
	}
	o := &OIDC{cfg: cfg, now: cfg.Now, rand: cfg.Rand, hc: cfg.HTTPClient}
	if o.now == nil {
		o.now = time.Now
	}
	if o.rand == nil {
		o.rand = rand.Reader
	}
	if o.hc == nil {
		o.hc = &http.Client{Timeout: 15 * time.Second}
	}
	return o, nil
}

// SecureCookies reports whether Ward's cookies for this flow must be
// Secure: the callback is served over HTTPS.
func (o *OIDC) SecureCookies() bool { return strings.HasPrefix(o.cfg.RedirectURL, "https:") }

// discover returns the IdP's provider, fetching its discovery document the
// first time and after a failure (at most every oidcDiscoveryRetry).
func (o *OIDC) discover(ctx context.Context) (*oidc.Provider, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.provider != nil {
		return o.provider, nil
	}
	now := o.now()
	if !o.lastTry.IsZero() && now.Sub(o.lastTry) < oidcDiscoveryRetry {
		return nil, fmt.Errorf("access: oidc: %w: the identity provider did not answer; try again in a few seconds", ErrUnavailable)
	}
	o.lastTry = now
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// The provider keeps the client (not the context) for fetching the
	// IdP's keys later.
	p, err := oidc.NewProvider(oidc.ClientContext(dctx, o.hc), o.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("access: oidc: %w: discovery at %s: %v", ErrUnavailable, o.cfg.Issuer, err)
	}
	o.provider = p
	return p, nil
}

func (o *OIDC) oauth(p *oidc.Provider) *oauth2.Config {
	return &oauth2.Config{
		ClientID: o.cfg.ClientID, ClientSecret: o.cfg.ClientSecret, RedirectURL: o.cfg.RedirectURL,
		Endpoint: p.Endpoint(), Scopes: o.cfg.Scopes,
	}
}

func (o *OIDC) random() (string, error) {
	var b [32]byte
	if _, err := io.ReadFull(o.rand, b[:]); err != nil {
		return "", fmt.Errorf("access: oidc: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func sha(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// OIDCStart is where to send the browser to log in, and the binding to set
// as its OIDCBindingCookie.
type OIDCStart struct {
	URL     string
	Binding string
	MaxAge  time.Duration
}

// Start begins a login.
func (o *OIDC) Start(ctx context.Context) (OIDCStart, error) {
	p, err := o.discover(ctx)
	if err != nil {
		return OIDCStart{}, err
	}
	var vals [4]string
	for i := range vals {
		if vals[i], err = o.random(); err != nil {
			return OIDCStart{}, err
		}
	}
	state, nonce, verifier, binding := vals[0], vals[1], vals[2], vals[3]
	now := o.now().UTC()
	err = o.cfg.Store.Tx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM oidc_logins WHERE expires_at < ?`, now); err != nil {
			return fmt.Errorf("access: oidc: %w", err)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO oidc_logins (state_hash, binding_hash, nonce, verifier, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
			sha(state), sha(binding), nonce, verifier, now, now.Add(oidcLoginTTL))
		if err != nil {
			return fmt.Errorf("access: oidc: %w", err)
		}
		return nil
	})
	if err != nil {
		return OIDCStart{}, err
	}
	u := o.oauth(p).AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))
	return OIDCStart{URL: u, Binding: binding, MaxAge: oidcLoginTTL}, nil
}

// OIDCCallback is what the IdP's redirect brings back.
type OIDCCallback struct {
	State, Code             string
	Error, ErrorDescription string // set when the IdP refused
	Binding                 string // the browser's OIDCBindingCookie
	Source                  string // the browser's address
}

// OIDCLogin is a finished login.
type OIDCLogin struct {
	Cookie  string // the new session's cookie value
	Session Session
	User    User
	// Dropped lists the roles the groups grant but this login does not
	// hold, because the IdP's login does not count as multi-factor.
	Dropped []Role
}

// Callback finishes a login.
func (o *OIDC) Callback(ctx context.Context, cb OIDCCallback) (OIDCLogin, error) {
	now := o.now().UTC()
	deny := func(actor, reason string, detail map[string]any, public error) (OIDCLogin, error) {
		if err := o.cfg.Audit.Record(ctx, audit.Entry{At: now, Actor: actor, Action: "oidc.login", Target: "oidc:" + o.cfg.Issuer,
			Outcome: audit.Denied, Reason: reason, Source: cb.Source, Detail: detail}); err != nil {
			return OIDCLogin{}, fmt.Errorf("access: oidc: audit: %w", err)
		}
		return OIDCLogin{}, public
	}
	if cb.State == "" {
		return deny(audit.Anonymous, "callback without state", nil, fmt.Errorf("%w: the sign-in answer has no state; start again at /auth/oidc/login", ErrForbidden))
	}
	var (
		nonce, verifier string
		binding         []byte
		expires         time.Time
	)
	err := o.cfg.Store.Tx(ctx, func(tx *store.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT binding_hash, nonce, verifier, expires_at FROM oidc_logins WHERE state_hash = ?`, sha(cb.State)).
			Scan(&binding, &nonce, &verifier, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("access: oidc: %w", err)
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM oidc_logins WHERE state_hash = ?`, sha(cb.State))
		return err
	})
	if err != nil {
		return OIDCLogin{}, err
	}
	if binding == nil || !now.Before(expires) {
		return deny(audit.Anonymous, "unknown, used or expired state", nil, fmt.Errorf("%w: this sign-in is unknown, was already used or took longer than %s; start again at /auth/oidc/login", ErrForbidden, oidcLoginTTL))
	}
	if cb.Binding == "" || subtle.ConstantTimeCompare(sha(cb.Binding), binding) != 1 {
		return deny(audit.Anonymous, "state not started by this browser", nil, fmt.Errorf("%w: this sign-in was not started by this browser; start again at /auth/oidc/login", ErrForbidden))
	}
	if cb.Error != "" {
		return deny(audit.Anonymous, "identity provider refused: "+clipOIDC(cb.Error+": "+cb.ErrorDescription, 256), nil,
			fmt.Errorf("%w: the identity provider refused the sign-in (%s)", ErrForbidden, clipOIDC(cb.Error, 64)))
	}
	if cb.Code == "" {
		return deny(audit.Anonymous, "callback without code", nil, fmt.Errorf("%w: the sign-in answer has no code; start again at /auth/oidc/login", ErrForbidden))
	}
	p, err := o.discover(ctx)
	if err != nil {
		return OIDCLogin{}, err
	}
	tok, err := o.oauth(p).Exchange(oidc.ClientContext(ctx, o.hc), cb.Code, oauth2.VerifierOption(verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return deny(audit.Anonymous, "token endpoint refused the code: "+clipOIDC(re.ErrorCode+" "+re.ErrorDescription, 256), nil,
				fmt.Errorf("%w: the identity provider refused to redeem the sign-in; start again at /auth/oidc/login", ErrForbidden))
		}
		return OIDCLogin{}, fmt.Errorf("access: oidc: %w: token endpoint: %v", ErrUnavailable, err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return deny(audit.Anonymous, "token response without id_token", nil, fmt.Errorf("%w: the identity provider sent no ID token", ErrForbidden))
	}
	idt, err := o.verifier(p).Verify(ctx, raw)
	if err != nil {
		return deny(audit.Anonymous, "ID token refused: "+clipOIDC(err.Error(), 256), nil, fmt.Errorf("%w: the identity provider's ID token was refused", ErrForbidden))
	}
	if idt.Nonce == "" || subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		return deny(audit.Anonymous, "ID token nonce does not match", map[string]any{"subject": idt.Subject}, fmt.Errorf("%w: the ID token does not belong to this sign-in", ErrForbidden))
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return deny(audit.Anonymous, "ID token claims: "+clipOIDC(err.Error(), 256), nil, fmt.Errorf("%w: the identity provider's ID token was refused", ErrForbidden))
	}
	groups := stringsClaim(claims[o.cfg.GroupsClaim])
	amr := stringsClaim(claims["amr"])
	who := map[string]any{"subject": idt.Subject, "groups": groups}

	roles, sites := o.mapGroups(groups)
	if len(roles) == 0 {
		return deny(audit.Anonymous, "no group maps to a Ward role", who,
			fmt.Errorf("%w: none of your identity provider groups grants a Ward role; ask a Ward administrator to map one of them", ErrForbidden))
	}
	if len(o.cfg.SiteMap) > 0 && len(sites) == 0 {
		return deny(audit.Anonymous, "no group maps to a site", who,
			fmt.Errorf("%w: none of your identity provider groups grants a Ward site; ask a Ward administrator to map one of them", ErrForbidden))
	}
	mfa := o.cfg.TrustIdPMFA && slices.ContainsFunc(amr, func(a string) bool { return slices.Contains(mfaAMR, a) })
	var dropped []Role
	if !mfa {
		roles, dropped = readOnlyRoles(roles)
	}
	prof := ExternalProfile{Username: stringClaim(claims, "preferred_username"), DisplayName: stringClaim(claims, "name"),
		Email: stringClaim(claims, "email"), Roles: roles, Sites: sites}
	if prof.Username == "" {
		prof.Username = prof.Email
	}
	u, err := o.cfg.Users.UpsertExternal(ctx, o.cfg.Issuer, idt.Subject, prof)
	if err != nil {
		return OIDCLogin{}, err
	}
	if u.Disabled {
		return deny("user:"+u.ID, "account disabled", who, fmt.Errorf("%w: this account is disabled", ErrForbidden))
	}
	method := MethodOIDC
	if mfa {
		method = MethodOIDCMFA
	}
	cookie, sess, err := o.cfg.Sessions.Start(ctx, u.ID, mfa, method, cb.Source)
	if err != nil {
		return OIDCLogin{}, err
	}
	detail := map[string]any{"subject": idt.Subject, "groups": groups, "roles": roles, "sites": sites, "mfa": mfa, "session": sess.ID}
	if len(dropped) > 0 {
		detail["dropped_roles"] = dropped
	}
	if err := o.cfg.Audit.Record(ctx, audit.Entry{At: now, Actor: "user:" + u.ID, Action: "oidc.login", Target: "user:" + u.ID,
		Outcome: audit.Success, Source: cb.Source, Detail: detail}); err != nil {
		return OIDCLogin{}, fmt.Errorf("access: oidc: audit: %w", err)
	}
	return OIDCLogin{Cookie: cookie, Session: sess, User: u, Dropped: dropped}, nil
}

// verifier checks an ID token's signature (with the IdP's published keys,
// by the asymmetric algorithms it announces), issuer, audience and expiry.
func (o *OIDC) verifier(p *oidc.Provider) *oidc.IDTokenVerifier {
	return p.Verifier(&oidc.Config{ClientID: o.cfg.ClientID, Now: o.now})
}

// mapGroups returns the roles and sites the groups grant, sorted, once each.
func (o *OIDC) mapGroups(groups []string) ([]Role, []string) {
	var (
		roles []Role
		sites []string
	)
	for _, g := range groups {
		for _, r := range o.cfg.RoleMap[g] {
			if !slices.Contains(roles, r) {
				roles = append(roles, r)
			}
		}
		for _, s := range o.cfg.SiteMap[g] {
			if !slices.Contains(sites, s) {
				sites = append(sites, s)
			}
		}
	}
	slices.Sort(roles)
	slices.Sort(sites)
	return roles, sites
}

// readOnlyRoles keeps the roles that change nothing; if that leaves none,
// the person is a viewer.
func readOnlyRoles(roles []Role) (kept, dropped []Role) {
	for _, r := range roles {
		if r.Changes() {
			dropped = append(dropped, r)
		} else {
			kept = append(kept, r)
		}
	}
	if len(kept) == 0 {
		kept = []Role{RoleViewer}
	}
	return kept, dropped
}

// stringsClaim reads a claim that is a string or a list of strings.
func stringsClaim(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func stringClaim(claims map[string]any, name string) string {
	s, _ := claims[name].(string)
	return strings.TrimSpace(s)
}

func clipOIDC(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
