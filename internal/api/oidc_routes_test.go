package api_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

const (
	idpClientID     = "ward"
	idpClientSecret = "idp client secret for tests"
	// Ward's public callback URL as registered at the IdP; the test browser
	// takes the IdP's redirect to it and sends it to the test server.
	wardRedirect = "http://ward.test/auth/oidc/callback"
)

// idpPerson is who the next /authorize signs in.
type idpPerson struct {
	Subject, Username, Name, Email string
	Groups, AMR                    []string
	Nonce                          string // when set, sent instead of the one asked for
}

// testIdP is an OpenID provider: discovery, JWKS, /authorize (which signs
// in whoever Next says, at once) and /token (with PKCE S256 enforced).
type testIdP struct {
	t     *testing.T
	srv   *httptest.Server
	key   *ecdsa.PrivateKey
	now   func() time.Time
	mu    sync.Mutex
	next  idpPerson
	codes map[string]idpGrant
}

type idpGrant struct {
	person    idpPerson
	challenge string
	nonce     string
	redirect  string
}

func newTestIdP(t *testing.T, now func() time.Time) *testIdP {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &testIdP{t: t, key: key, now: now, codes: map[string]idpGrant{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		u := p.srv.URL
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer": u, "authorization_endpoint": u + "/authorize", "token_endpoint": u + "/token", "jwks_uri": u + "/jwks",
			"response_types_supported": []string{"code"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"ES256"}, "code_challenge_methods_supported": []string{"S256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (p *testIdP) signIn(who idpPerson) {
	p.mu.Lock()
	p.next = who
	p.mu.Unlock()
}

func (p *testIdP) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("response_type") != "code" || q.Get("client_id") != idpClientID || q.Get("code_challenge_method") != "S256" ||
		q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("nonce") == "" || !strings.Contains(q.Get("scope"), "openid") {
		http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
		return
	}
	code := rand.Text()
	p.mu.Lock()
	p.codes[code] = idpGrant{person: p.next, challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), redirect: q.Get("redirect_uri")}
	p.mu.Unlock()
	back, _ := url.Parse(q.Get("redirect_uri"))
	bq := url.Values{"code": {code}, "state": {q.Get("state")}, "session_state": {"idp-extra"}, "iss": {p.srv.URL}}
	back.RawQuery = bq.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

func (p *testIdP) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != idpClientID || secret != idpClientSecret {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	p.mu.Lock()
	g, ok := p.codes[r.PostForm.Get("code")]
	delete(p.codes, r.PostForm.Get("code"))
	p.mu.Unlock()
	if !ok || r.PostForm.Get("grant_type") != "authorization_code" || r.PostForm.Get("redirect_uri") != g.redirect {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "unknown code"})
		return
	}
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if b64u.EncodeToString(sum[:]) != g.challenge {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "PKCE verification failed"})
		return
	}
	nonce := g.nonce
	if g.person.Nonce != "" {
		nonce = g.person.Nonce
	}
	now := p.now()
	claims := map[string]any{
		"iss": p.srv.URL, "sub": g.person.Subject, "aud": idpClientID, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		"nonce": nonce, "preferred_username": g.person.Username, "name": g.person.Name, "email": g.person.Email,
		"groups": g.person.Groups, "amr": g.person.AMR,
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: p.key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		p.t.Error(err)
		return
	}
	payload, _ := json.Marshal(claims)
	jws, err := signer.Sign(payload)
	if err != nil {
		p.t.Error(err)
		return
	}
	raw, _ := jws.CompactSerialize()
	writeJSON(w, http.StatusOK, map[string]any{"access_token": rand.Text(), "token_type": "Bearer", "expires_in": 300, "id_token": raw})
}

type oidcOptions struct {
	trustMFA bool
	siteMap  map[string][]string
}

func oidcEnv(t *testing.T, s *store.Store, o oidcOptions) (*apitest.Env, *testIdP) {
	t.Helper()
	var e *apitest.Env
	now := func() time.Time { return e.Clock.Now() }
	idp := newTestIdP(t, now)
	e = apitest.New(t, s, func(c *api.Config) {
		oc, err := access.NewOIDC(access.OIDCConfig{
			Issuer: idp.srv.URL, ClientID: idpClientID, ClientSecret: idpClientSecret, RedirectURL: wardRedirect,
			RoleMap: map[string][]access.Role{
				"ward-biomed": {access.RoleBiomed},
				"ward-audit":  {access.RoleAuditor},
				"ward-admins": {access.RoleAdmin},
			},
			SiteMap: o.siteMap, TrustIdPMFA: o.trustMFA,
			Store: s, Users: c.Users, Sessions: c.SessionStore, Audit: c.Audit, HTTPClient: idp.srv.Client(), Now: now,
		})
		if err != nil {
			t.Fatal(err)
		}
		c.OIDC = oc
	})
	return e, idp
}

// oidcStart makes the browser open /auth/oidc/login and returns the IdP
// URL it is sent to.
func (b *browser) oidcStart() string {
	b.t.Helper()
	resp, err := b.c.Get(b.e.Server.URL + api.OIDCLoginPath)
	if err != nil {
		b.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		b.t.Fatalf("oidc login: %d", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

// atIdP follows the browser to the IdP and returns the callback URL the
// IdP sends it back to, pointed at the test server.
func (b *browser) atIdP(authURL string) *url.URL {
	b.t.Helper()
	resp, err := b.c.Get(authURL)
	if err != nil {
		b.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		b.t.Fatalf("idp authorize: %d", resp.StatusCode)
	}
	back, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || back.String() == "" || !strings.HasPrefix(back.String(), wardRedirect+"?") {
		b.t.Fatalf("idp sent the browser to %q", back)
	}
	srv, _ := url.Parse(b.e.Server.URL)
	back.Scheme, back.Host = srv.Scheme, srv.Host
	return back
}

// callback opens the callback URL and returns status and body.
func (b *browser) callback(u *url.URL) (int, string) {
	b.t.Helper()
	code, body := b.do(http.MethodGet, strings.TrimPrefix(u.String(), b.e.Server.URL), nil)
	return code, string(body)
}

// oidcLogin runs the whole flow and returns the callback's page.
func (b *browser) oidcLogin() string {
	b.t.Helper()
	code, page := b.callback(b.atIdP(b.oidcStart()))
	if code != http.StatusOK {
		b.t.Fatalf("oidc callback: %d %s", code, page)
	}
	return page
}

type whoami struct {
	Principal access.Principal `json:"principal"`
	User      access.User      `json:"user"`
	Session   access.Session   `json:"session"`
}

func (b *browser) whoami() whoami {
	b.t.Helper()
	var w whoami
	if err := json.Unmarshal(b.must(http.StatusOK, http.MethodGet, api.Prefix+"/session", nil), &w); err != nil {
		b.t.Fatal(err)
	}
	return w
}

var nurse = idpPerson{Subject: "00u1nurse", Username: "nina", Name: "Nina Nurse", Email: "nina@hospital.test"}

func TestOIDCLogin(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		e, idp := oidcEnv(t, s, oidcOptions{trustMFA: true, siteMap: map[string][]string{"ward-biomed": {"A"}, "ward-audit": {"A", "B"}}})

		who := nurse
		who.Groups, who.AMR = []string{"staff", "ward-biomed"}, []string{"pwd", "mfa"}
		idp.signIn(who)
		b := newBrowser(t, e)
		page := b.oidcLogin()
		if !strings.Contains(page, `url=/"`) || strings.Contains(page, "read-only") {
			t.Errorf("callback page: %s", page)
		}
		w := b.whoami()
		if !slices.Equal(w.Principal.Roles, []access.Role{access.RoleBiomed}) || !slices.Equal(w.Principal.Sites, []string{"A"}) {
			t.Errorf("principal: %+v", w.Principal)
		}
		if !w.Session.MFA || w.Session.Method != access.MethodOIDCMFA || w.User.Username != "nina" || w.User.Email != nurse.Email {
			t.Errorf("session %+v of %+v", w.Session, w.User)
		}
		b.must(http.StatusOK, http.MethodGet, api.Prefix+"/devices", nil)
		first := w.User.ID
		auditHas(t, e, "oidc.login", audit.Success)

		// Next time the IdP says other groups: the same account follows.
		who.Groups = []string{"ward-audit"}
		idp.signIn(who)
		b = newBrowser(t, e)
		b.oidcLogin()
		w = b.whoami()
		if w.User.ID != first || !slices.Equal(w.Principal.Roles, []access.Role{access.RoleAuditor}) || !slices.Equal(w.Principal.Sites, []string{"A", "B"}) {
			t.Errorf("second login: user %s (first %s), principal %+v", w.User.ID, first, w.Principal)
		}
		users, err := e.Users.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(users) != 1 {
			t.Errorf("%d accounts after two logins of one subject", len(users))
		}

		// The binding and state were spent: the same callback again fails.
		idp.signIn(who)
		b = newBrowser(t, e)
		back := b.atIdP(b.oidcStart())
		if code, _ := b.callback(back); code != http.StatusOK {
			t.Fatalf("callback: %d", code)
		}
		if code, body := b.callback(back); code != http.StatusForbidden {
			t.Errorf("replayed callback: %d %s", code, body)
		}
	})
}

func TestOIDCRefusals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		e, idp := oidcEnv(t, s, oidcOptions{trustMFA: true})
		who := nurse
		who.Groups, who.AMR = []string{"ward-biomed"}, []string{"mfa"}
		refused := func(t *testing.T, b *browser, u *url.URL, reason string) {
			t.Helper()
			code, body := b.callback(u)
			if code != http.StatusForbidden {
				t.Fatalf("callback: %d %s, want 403", code, body)
			}
			b.must(http.StatusUnauthorized, http.MethodGet, api.Prefix+"/session", nil)
			wantReason(t, e, "oidc.login", reason)
		}

		t.Run("wrong state", func(t *testing.T) {
			idp.signIn(who)
			b := newBrowser(t, e)
			back := b.atIdP(b.oidcStart())
			q := back.Query()
			q.Set("state", q.Get("state")+"x")
			back.RawQuery = q.Encode()
			refused(t, b, back, "state")
		})
		t.Run("callback in another browser", func(t *testing.T) {
			// Login CSRF: the attacker's own callback URL, opened in the
			// victim's browser, which lacks the attacker's binding.
			idp.signIn(who)
			attacker := newBrowser(t, e)
			back := attacker.atIdP(attacker.oidcStart())
			refused(t, newBrowser(t, e), back, "not started by this browser")
		})
		t.Run("wrong nonce", func(t *testing.T) {
			w := who
			w.Nonce = "a nonce from another login"
			idp.signIn(w)
			b := newBrowser(t, e)
			refused(t, b, b.atIdP(b.oidcStart()), "nonce")
		})
		t.Run("PKCE mismatch", func(t *testing.T) {
			// A code issued to one login, injected into another: Ward
			// redeems it with the other login's verifier, and the IdP
			// refuses.
			idp.signIn(who)
			victim := newBrowser(t, e)
			stolen := victim.atIdP(victim.oidcStart())
			attacker := newBrowser(t, e)
			own := attacker.atIdP(attacker.oidcStart())
			q := own.Query()
			q.Set("code", stolen.Query().Get("code"))
			own.RawQuery = q.Encode()
			refused(t, attacker, own, "pkce verification failed")
		})
		t.Run("unmapped group", func(t *testing.T) {
			w := who
			w.Subject, w.Username, w.Groups = "00u2cook", "carl", []string{"cafeteria", "staff"}
			idp.signIn(w)
			b := newBrowser(t, e)
			code, body := b.callback(b.atIdP(b.oidcStart()))
			if code != http.StatusForbidden || !strings.Contains(body, "none of your identity provider groups grants a Ward role") {
				t.Fatalf("unmapped: %d %s", code, body)
			}
			wantReason(t, e, "oidc.login", "no group maps to a ward role")
			if _, err := e.Users.Get(context.Background(), "carl"); err == nil {
				t.Error("an account was made for a person with no mapped group")
			}
		})
		t.Run("identity provider refuses", func(t *testing.T) {
			b := newBrowser(t, e)
			auth, _ := url.Parse(b.oidcStart())
			u, _ := url.Parse(b.e.Server.URL + api.OIDCCallbackPath)
			u.RawQuery = url.Values{"state": {auth.Query().Get("state")}, "error": {"access_denied"}, "error_description": {"user cancelled"}}.Encode()
			refused(t, b, u, "access_denied")
		})
		t.Run("expired login", func(t *testing.T) {
			idp.signIn(who)
			b := newBrowser(t, e)
			back := b.atIdP(b.oidcStart())
			e.Clock.Add(11 * time.Minute)
			refused(t, b, back, "expired")
		})
	})
}

func TestOIDCWithoutTrustedMFAIsReadOnly(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	e, idp := oidcEnv(t, s, oidcOptions{trustMFA: false})
	who := nurse
	who.Groups, who.AMR = []string{"ward-admins", "ward-audit"}, []string{"mfa"}
	idp.signIn(who)
	b := newBrowser(t, e)
	page := b.oidcLogin()
	if !strings.Contains(page, "read-only") || !strings.Contains(page, "admin") || strings.Contains(page, "http-equiv") {
		t.Errorf("callback page should say which roles were held back and wait: %s", page)
	}
	w := b.whoami()
	if !slices.Equal(w.Principal.Roles, []access.Role{access.RoleAuditor}) || w.Session.MFA || w.Session.Method != access.MethodOIDC {
		t.Errorf("principal %+v, session %+v", w.Principal, w.Session)
	}
	b.must(http.StatusOK, http.MethodGet, api.Prefix+"/devices", nil)
	b.must(http.StatusForbidden, http.MethodGet, api.Prefix+"/tokens", nil)

	// Only the admin group: a viewer.
	who.Groups = []string{"ward-admins"}
	idp.signIn(who)
	b = newBrowser(t, e)
	b.oidcLogin()
	if w := b.whoami(); !slices.Equal(w.Principal.Roles, []access.Role{access.RoleViewer}) {
		t.Errorf("admin group without MFA: %+v", w.Principal)
	}
}

func TestOIDCConfig(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	e := apitest.New(t, s, nil)
	base := access.OIDCConfig{Issuer: "https://idp.test", ClientID: "ward", RedirectURL: wardRedirect,
		RoleMap: map[string][]access.Role{"g": {access.RoleViewer}}, Store: s, Users: e.Users, Sessions: e.Sessions, Audit: e.Audit}
	if _, err := access.NewOIDC(base); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, edit := range map[string]func(*access.OIDCConfig){
		"no issuer":       func(c *access.OIDCConfig) { c.Issuer = "" },
		"relative issuer": func(c *access.OIDCConfig) { c.Issuer = "idp.test" },
		"no redirect":     func(c *access.OIDCConfig) { c.RedirectURL = "" },
		"empty role map":  func(c *access.OIDCConfig) { c.RoleMap = nil },
		"unknown role":    func(c *access.OIDCConfig) { c.RoleMap = map[string][]access.Role{"g": {"root"}} },
		"no store":        func(c *access.OIDCConfig) { c.Store = nil },
	} {
		c := base
		edit(&c)
		if _, err := access.NewOIDC(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Without OIDC configured the routes say so.
	b := newBrowser(t, e)
	if code, body := b.do(http.MethodGet, api.OIDCLoginPath, nil); code != http.StatusServiceUnavailable {
		t.Errorf("unconfigured: %d %s", code, body)
	}
	// An unreachable IdP is a 503, not a 500.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	c := base
	c.Issuer = dead.URL
	oc, err := access.NewOIDC(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oc.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "unavailable") {
		t.Errorf("dead IdP: %v", err)
	}
}
