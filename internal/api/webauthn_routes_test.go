package api_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

const (
	waRPID   = "ward.test"
	waOrigin = "https://ward.test"
)

var b64u = base64.RawURLEncoding

// softKey is a software WebAuthn authenticator: one ECDSA P-256 credential,
// a signature counter, attestation "none".
type softKey struct {
	t      *testing.T
	rpID   string
	origin string
	key    *ecdsa.PrivateKey
	id     []byte
	count  uint32
	user   []byte // user handle, learnt at registration
}

func newSoftKey(t *testing.T) *softKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := make([]byte, 32)
	if _, err := rand.Read(id); err != nil {
		t.Fatal(err)
	}
	return &softKey{t: t, rpID: waRPID, origin: waOrigin, key: key, id: id}
}

// options is what begin answers: {"publicKey": {challenge, rp, user, …}}.
type options struct {
	PublicKey struct {
		Challenge string `json:"challenge"`
		RPID      string `json:"rpId"`
		RP        struct {
			ID string `json:"id"`
		} `json:"rp"`
		User struct {
			ID string `json:"id"`
		} `json:"user"`
		AllowCredentials []struct {
			ID string `json:"id"`
		} `json:"allowCredentials"`
		ExcludeCredentials []struct {
			ID string `json:"id"`
		} `json:"excludeCredentials"`
	} `json:"publicKey"`
}

func (k *softKey) clientData(typ, challenge string) []byte {
	b, err := json.Marshal(map[string]any{"type": typ, "challenge": challenge, "origin": k.origin, "crossOrigin": false})
	if err != nil {
		k.t.Fatal(err)
	}
	return b
}

// authData is rpIdHash ‖ flags ‖ signCount, plus attested credential data
// when attested.
func (k *softKey) authData(attested bool) []byte {
	rp := sha256.Sum256([]byte(k.rpID))
	flags := byte(0x01 | 0x04) // UP | UV
	if attested {
		flags |= 0x40 // AT
	}
	out := append(rp[:], flags)
	out = binary.BigEndian.AppendUint32(out, k.count)
	if !attested {
		return out
	}
	out = append(out, make([]byte, 16)...) // AAGUID: none
	out = binary.BigEndian.AppendUint16(out, uint16(len(k.id)))
	out = append(out, k.id...)
	pub, err := k.key.PublicKey.ECDH()
	if err != nil {
		k.t.Fatal(err)
	}
	raw := pub.Bytes() // 0x04 ‖ x ‖ y
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		k.t.Fatal(err)
	}
	cose, err := em.Marshal(map[int]any{1: 2, 3: -7, -1: 1, -2: raw[1:33], -3: raw[33:65]})
	if err != nil {
		k.t.Fatal(err)
	}
	return append(out, cose...)
}

// create answers registration options as navigator.credentials.create would.
func (k *softKey) create(opts []byte) []byte {
	k.t.Helper()
	var o options
	if err := json.Unmarshal(opts, &o); err != nil {
		k.t.Fatalf("registration options: %v: %s", err, opts)
	}
	if o.PublicKey.RP.ID != k.rpID {
		k.t.Fatalf("rp.id %q, want %q", o.PublicKey.RP.ID, k.rpID)
	}
	if k.user, _ = b64u.DecodeString(o.PublicKey.User.ID); len(k.user) == 0 {
		k.t.Fatalf("no user handle in %s", opts)
	}
	em, _ := cbor.CoreDetEncOptions().EncMode()
	att, err := em.Marshal(map[string]any{"fmt": "none", "attStmt": map[string]any{}, "authData": k.authData(true)})
	if err != nil {
		k.t.Fatal(err)
	}
	return k.credential(map[string]any{
		"clientDataJSON":    b64u.EncodeToString(k.clientData("webauthn.create", o.PublicKey.Challenge)),
		"attestationObject": b64u.EncodeToString(att),
		"transports":        []string{"usb"},
	})
}

// get answers login options as navigator.credentials.get would, after
// bumping the counter.
func (k *softKey) get(opts []byte) []byte {
	k.t.Helper()
	var o options
	if err := json.Unmarshal(opts, &o); err != nil {
		k.t.Fatalf("login options: %v: %s", err, opts)
	}
	k.count++
	return k.assert(o.PublicKey.Challenge)
}

func (k *softKey) assert(challenge string) []byte {
	ad := k.authData(false)
	cd := k.clientData("webauthn.get", challenge)
	h := sha256.Sum256(cd)
	digest := sha256.Sum256(append(append([]byte{}, ad...), h[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, k.key, digest[:])
	if err != nil {
		k.t.Fatal(err)
	}
	return k.credential(map[string]any{
		"clientDataJSON":    b64u.EncodeToString(cd),
		"authenticatorData": b64u.EncodeToString(ad),
		"signature":         b64u.EncodeToString(sig),
		"userHandle":        b64u.EncodeToString(k.user),
	})
}

func (k *softKey) credential(response map[string]any) []byte {
	b, err := json.Marshal(map[string]any{
		"id": b64u.EncodeToString(k.id), "rawId": b64u.EncodeToString(k.id), "type": "public-key",
		"clientExtensionResults": map[string]any{}, "response": response,
	})
	if err != nil {
		k.t.Fatal(err)
	}
	return b
}

// browser is a person's browser: a cookie jar and the session's CSRF token.
type browser struct {
	t    *testing.T
	e    *apitest.Env
	c    *http.Client
	csrf string
}

func newBrowser(t *testing.T, e *apitest.Env) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := *e.Server.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: t, e: e, c: &c}
}

// do sends a request with the session's CSRF token and returns the status
// and body.
func (b *browser) do(method, path string, body []byte) (int, []byte) {
	b.t.Helper()
	req, err := http.NewRequest(method, b.e.Server.URL+path, bytes.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if b.csrf != "" {
		req.Header.Set("X-CSRF-Token", b.csrf)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func (b *browser) must(want int, method, path string, body []byte) []byte {
	b.t.Helper()
	code, out := b.do(method, path, body)
	if code != want {
		b.t.Fatalf("%s %s: %d, want %d: %s", method, path, code, want, out)
	}
	return out
}

type loginAnswer struct {
	MFARequired    bool     `json:"mfa_required"`
	MFAMethods     []string `json:"mfa_methods"`
	EnrollRequired bool     `json:"enroll_required"`
	CSRF           string   `json:"csrf"`
	Session        struct {
		MFA    bool   `json:"mfa"`
		Method string `json:"method"`
	} `json:"session"`
}

func (b *browser) login(username, password string) loginAnswer {
	b.t.Helper()
	b.csrf = ""
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	var a loginAnswer
	if err := json.Unmarshal(b.must(http.StatusOK, http.MethodPost, api.Prefix+"/session", body), &a); err != nil {
		b.t.Fatal(err)
	}
	b.csrf = a.CSRF
	return a
}

const (
	waRegBegin    = api.Prefix + "/session/webauthn/register/begin"
	waRegFinish   = api.Prefix + "/session/webauthn/register/finish"
	waLoginBegin  = api.Prefix + "/session/webauthn/login/begin"
	waLoginFinish = api.Prefix + "/session/webauthn/login/finish"
	waPassword    = "a long enough password 1"
)

func webauthnEnv(t *testing.T, s *store.Store) *apitest.Env {
	t.Helper()
	var e *apitest.Env
	e = apitest.New(t, s, func(c *api.Config) {
		wa, err := access.NewWebAuthn(access.WebAuthnConfig{
			Store: s, Users: c.Users, Sessions: c.SessionStore, Audit: c.Audit,
			RPID: waRPID, RPOrigins: []string{waOrigin}, RPName: "Ward test",
			Now: func() time.Time { return e.Clock.Now() },
		})
		if err != nil {
			t.Fatal(err)
		}
		c.WebAuthn = wa
	})
	return e
}

func newPerson(t *testing.T, e *apitest.Env, name string, roles ...access.Role) access.User {
	t.Helper()
	u, err := e.Users.Create(context.Background(), access.Principal{Kind: "system", ID: "test", Roles: []access.Role{access.RoleAdmin}},
		access.NewUser{Username: name, Password: waPassword, Roles: roles})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// enroll logs name in for the first time and registers key.
func enroll(t *testing.T, e *apitest.Env, name string, key *softKey) {
	t.Helper()
	b := newBrowser(t, e)
	if a := b.login(name, waPassword); !a.EnrollRequired {
		t.Fatalf("first login of %s: %+v, want enroll_required", name, a)
	}
	opts := b.must(http.StatusOK, http.MethodPost, waRegBegin, []byte(`{"name":"badge key"}`))
	b.must(http.StatusCreated, http.MethodPost, waRegFinish, key.create(opts))
}

func auditHas(t *testing.T, e *apitest.Env, action, outcome string) audit.Entry {
	t.Helper()
	es, err := e.Audit.List(context.Background(), audit.Filter{Action: action, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range es {
		if en.Action == action && en.Outcome == outcome {
			return en
		}
	}
	t.Fatalf("no audit entry %s %s among %d", action, outcome, len(es))
	return audit.Entry{}
}

// lastDenied is the reason of the latest refused entry of action, so a test
// can tell that a refusal happened for the reason it provoked.
func lastDenied(t *testing.T, e *apitest.Env, action string) string {
	t.Helper()
	es, err := e.Audit.List(context.Background(), audit.Filter{Action: action, Outcome: audit.Denied, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) == 0 {
		t.Fatalf("no refused %s in the audit log", action)
	}
	return es[len(es)-1].Reason
}

func wantReason(t *testing.T, e *apitest.Env, action, want string) {
	t.Helper()
	if got := lastDenied(t, e, action); !strings.Contains(strings.ToLower(got), want) {
		t.Errorf("last refused %s: reason %q, want it to mention %q", action, got, want)
	}
}

func TestWebAuthnRegisterThenLogin(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		e := webauthnEnv(t, s)
		newPerson(t, e, "alice", access.RoleBiomed)
		key := newSoftKey(t)

		// First login: the password opens a session that may only enroll.
		b := newBrowser(t, e)
		a := b.login("alice", waPassword)
		if !a.MFARequired || !a.EnrollRequired {
			t.Fatalf("first login: %+v", a)
		}
		b.must(http.StatusUnauthorized, http.MethodGet, api.Prefix+"/devices", nil)

		// Without the CSRF token, nothing.
		csrf := b.csrf
		b.csrf = ""
		b.must(http.StatusForbidden, http.MethodPost, waRegBegin, nil)
		b.csrf = csrf

		opts := b.must(http.StatusOK, http.MethodPost, waRegBegin, []byte(`{"name":"badge key"}`))
		var cred access.WebAuthnCredential
		if err := json.Unmarshal(b.must(http.StatusCreated, http.MethodPost, waRegFinish, key.create(opts)), &cred); err != nil {
			t.Fatal(err)
		}
		if cred.ID != b64u.EncodeToString(key.id) || cred.Name != "badge key" {
			t.Errorf("registered %+v", cred)
		}
		// Enrolling finished the session's second factor.
		b.must(http.StatusOK, http.MethodGet, api.Prefix+"/devices", nil)
		var list struct{ Items []access.WebAuthnCredential }
		if err := json.Unmarshal(b.must(http.StatusOK, http.MethodGet, api.Prefix+"/me/credentials", nil), &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 || list.Items[0].ID != cred.ID {
			t.Fatalf("my credentials: %+v", list.Items)
		}
		auditHas(t, e, "webauthn.register", audit.Success)

		// Next login: pending until the key answers.
		b = newBrowser(t, e)
		a = b.login("alice", waPassword)
		if !a.MFARequired || a.EnrollRequired || len(a.MFAMethods) != 1 || a.MFAMethods[0] != "webauthn" {
			t.Fatalf("second login: %+v", a)
		}
		b.must(http.StatusUnauthorized, http.MethodGet, api.Prefix+"/devices", nil)
		// A pending session whose person has a key may not add another.
		b.must(http.StatusForbidden, http.MethodPost, waRegBegin, nil)
		opts = b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
		var done loginAnswer
		if err := json.Unmarshal(b.must(http.StatusOK, http.MethodPost, waLoginFinish, key.get(opts)), &done); err != nil {
			t.Fatal(err)
		}
		if done.MFARequired || !done.Session.MFA || done.Session.Method != access.MethodPasswordWebAuthn {
			t.Fatalf("after the key: %+v", done)
		}
		b.must(http.StatusOK, http.MethodGet, api.Prefix+"/devices", nil)
		auditHas(t, e, "webauthn.login", audit.Success)

		// The counter was stored.
		if err := json.Unmarshal(b.must(http.StatusOK, http.MethodGet, api.Prefix+"/me/credentials", nil), &list); err != nil {
			t.Fatal(err)
		}
		if list.Items[0].SignCount != key.count || list.Items[0].LastUsedAt == nil {
			t.Errorf("after login: %+v, want sign count %d and a last use", list.Items[0], key.count)
		}
		// The last second factor of a biomed cannot be removed.
		b.must(http.StatusConflict, http.MethodDelete, api.Prefix+"/me/credentials/"+cred.ID, nil)
		b.must(http.StatusNotFound, http.MethodDelete, api.Prefix+"/me/credentials/AAAA", nil)
	})
}

func TestWebAuthnRefusals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		e := webauthnEnv(t, s)
		newPerson(t, e, "alice", access.RoleBiomed)
		newPerson(t, e, "bob", access.RoleBiomed)
		alice, bob := newSoftKey(t), newSoftKey(t)
		enroll(t, e, "alice", alice)
		enroll(t, e, "bob", bob)

		pending := func() *browser {
			b := newBrowser(t, e)
			if a := b.login("alice", waPassword); !a.MFARequired {
				t.Fatalf("login: %+v", a)
			}
			return b
		}
		stillPending := func(b *browser) {
			t.Helper()
			b.must(http.StatusUnauthorized, http.MethodGet, api.Prefix+"/devices", nil)
		}

		t.Run("wrong origin", func(t *testing.T) {
			b := pending()
			opts := b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			phished := *alice
			phished.origin = "https://ward.test.evil.example"
			b.must(http.StatusForbidden, http.MethodPost, waLoginFinish, phished.get(opts))
			wantReason(t, e, "webauthn.login", "origin")
			stillPending(b)
			// The challenge was spent by the refused answer.
			b.must(http.StatusConflict, http.MethodPost, waLoginFinish, alice.get(opts))
		})
		t.Run("wrong origin at registration", func(t *testing.T) {
			newPerson(t, e, "carol", access.RoleBiomed)
			b := newBrowser(t, e)
			b.login("carol", waPassword)
			opts := b.must(http.StatusOK, http.MethodPost, waRegBegin, nil)
			k := newSoftKey(t)
			k.origin = "http://ward.test"
			b.must(http.StatusForbidden, http.MethodPost, waRegFinish, k.create(opts))
			wantReason(t, e, "webauthn.register", "origin")
			stillPending(b)
		})
		t.Run("wrong challenge", func(t *testing.T) {
			b := pending()
			b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			alice.count++
			b.must(http.StatusForbidden, http.MethodPost, waLoginFinish, alice.assert(b64u.EncodeToString([]byte("a challenge Ward never issued!!!"))))
			wantReason(t, e, "webauthn.login", "challenge")
			stillPending(b)
		})
		t.Run("replayed assertion", func(t *testing.T) {
			b := pending()
			opts := b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			answer := alice.get(opts)
			b.must(http.StatusOK, http.MethodPost, waLoginFinish, answer)

			// The same answer, recorded, played to a new login.
			b2 := pending()
			b2.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			b2.must(http.StatusForbidden, http.MethodPost, waLoginFinish, answer)
			wantReason(t, e, "webauthn.login", "challenge")
			stillPending(b2)
			// Or to the same session again: the challenge is spent.
			b.must(http.StatusConflict, http.MethodPost, waLoginFinish, answer)
		})
		t.Run("sign count regression", func(t *testing.T) {
			b := pending()
			opts := b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			clone := *alice
			clone.count -= 2 // get adds one: one below what Ward has seen
			b.must(http.StatusForbidden, http.MethodPost, waLoginFinish, clone.get(opts))
			stillPending(b)
			en := auditHas(t, e, "webauthn.clone_suspected", audit.Denied)
			if en.Actor == "" || en.Detail["credential"] != b64u.EncodeToString(alice.id) {
				t.Errorf("clone audit entry: %+v", en)
			}
			// The same counter as last time is refused too.
			opts = b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			clone.count = alice.count - 1
			b.must(http.StatusForbidden, http.MethodPost, waLoginFinish, clone.get(opts))
			// The genuine key, counting on, still works.
			opts = b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			b.must(http.StatusOK, http.MethodPost, waLoginFinish, alice.get(opts))
		})
		t.Run("another person's key", func(t *testing.T) {
			b := pending()
			opts := b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			b.must(http.StatusForbidden, http.MethodPost, waLoginFinish, bob.get(opts))
			wantReason(t, e, "webauthn.login", "not registered to this account")
			stillPending(b)
			// Even claiming to be alice's key: the signature is bob's.
			opts = b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			forged := *bob
			forged.id, forged.user = alice.id, alice.user
			b.must(http.StatusForbidden, http.MethodPost, waLoginFinish, forged.get(opts))
			wantReason(t, e, "webauthn.login", "signature")
			stillPending(b)
		})
		t.Run("expired ceremony", func(t *testing.T) {
			b := pending()
			opts := b.must(http.StatusOK, http.MethodPost, waLoginBegin, nil)
			e.Clock.Add(5*time.Minute + time.Second)
			b.must(http.StatusConflict, http.MethodPost, waLoginFinish, alice.get(opts))
			stillPending(b)
		})
		t.Run("no session", func(t *testing.T) {
			b := newBrowser(t, e)
			b.csrf = "whatever"
			b.must(http.StatusUnauthorized, http.MethodPost, waLoginBegin, nil)
			b.must(http.StatusUnauthorized, http.MethodPost, waRegBegin, nil)
		})
	})
}

func TestWebAuthnConfig(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	e := apitest.New(t, s, nil)
	for _, tc := range []struct {
		name    string
		rpID    string
		origins []string
	}{
		{"no rp id", "", []string{waOrigin}},
		{"no origin", waRPID, nil},
		{"origin outside the rp id", waRPID, []string{"https://evil.example"}},
		{"origin with a path", waRPID, []string{"https://ward.test/console"}},
	} {
		_, err := access.NewWebAuthn(access.WebAuthnConfig{Store: s, Users: e.Users, Sessions: e.Sessions, Audit: e.Audit, RPID: tc.rpID, RPOrigins: tc.origins})
		if err == nil || !strings.Contains(err.Error(), "webauthn") {
			t.Errorf("%s: %v, want an error", tc.name, err)
		}
	}
	// Without WebAuthn configured the routes say so.
	b := newBrowser(t, e)
	b.csrf = "x"
	if code, body := b.do(http.MethodPost, waLoginBegin, nil); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "not configured") {
		t.Errorf("unconfigured: %d %s", code, body)
	}
}
