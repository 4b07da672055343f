// Package apitest runs a real admin API for tests: the real store (SQLite or
// PostgreSQL), fleet registry, audit log, tokens and CA behind an httptest
// server, with a pinned clock and deterministic randomness so that ids and
// times, and so CLI output, are reproducible.
package apitest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
)

// T0 is the pinned time every Env starts at.
var T0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// Passphrase is the CA passphrase of every Env.
const Passphrase = "correct horse battery staple"

// SealKey seals the TOTP seeds of every Env.
var SealKey = []byte("apitest seal key, 32 bytes long!")

// TestArgon2 are tiny argon2id parameters, so tests do not spend 64 MiB per
// password.
var TestArgon2 = access.Argon2Params{Memory: 64, Time: 1, Threads: 1}

// Clock is a settable clock.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Add moves the clock.
func (c *Clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// Rand is a deterministic, concurrency-safe io.Reader.
type Rand struct {
	mu sync.Mutex
	r  *rand.ChaCha8
}

// NewRand returns a reader producing the same bytes for the same seed.
func NewRand(seed byte) *Rand {
	var s [32]byte
	s[0] = seed
	return &Rand{r: rand.NewChaCha8(s)}
}

func (r *Rand) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r.Read(p)
}

// Env is a running admin API and the parts behind it.
type Env struct {
	Store  *store.Store
	Audit  *audit.Log
	Fleet  *fleet.Registry
	Tokens *access.Tokens
	// Approvals keeps two-person requests; MassRevokeLimit is left at its
	// default (5).
	Approvals *access.Approvals
	// Users and Sessions are people's accounts (tiny argon2 parameters,
	// SealKey) and their sessions; Config.Sessions is Sessions.
	Users    *access.Users
	Sessions *access.Sessions
	CA       *pki.Authority
	CADir    string
	Clock    *Clock
	Config   api.Config

	// Token is the secret of an admin token ("test-admin").
	Token  string
	Server *httptest.Server
	Client *client.Client

	logMu sync.Mutex
	logs  bytes.Buffer
}

// Logs returns what the API logged so far.
func (e *Env) Logs() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

type lockedWriter struct{ e *Env }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.e.logMu.Lock()
	defer w.e.logMu.Unlock()
	return w.e.logs.Write(p)
}

// New starts an Env on s. edit, if not nil, may change the API config before
// the handler is built.
func New(t testing.TB, s *store.Store, edit func(*api.Config)) *Env {
	t.Helper()
	ctx := context.Background()
	e := &Env{Store: s, Clock: &Clock{t: T0}}
	rnd := NewRand(1)
	e.Audit = audit.New(s, e.Clock.Now)
	var err error
	if e.Fleet, err = fleet.New(ctx, fleet.Config{Store: s, Audit: e.Audit, Now: e.Clock.Now, Rand: rnd}); err != nil {
		t.Fatal(err)
	}
	e.Tokens = access.NewTokens(access.TokensConfig{Store: s, Audit: e.Audit, Now: e.Clock.Now, Rand: rnd})
	e.Approvals = access.NewApprovals(access.ApprovalsConfig{Store: s, Audit: e.Audit, Now: e.Clock.Now, Rand: rnd})
	e.CADir = filepath.Join(t.TempDir(), "ca")
	if err := pki.Init(pki.InitConfig{Dir: e.CADir, Passphrase: []byte(Passphrase), Name: "Test Hospital", Now: e.Clock.Now, Rand: rnd}); err != nil {
		t.Fatal(err)
	}
	if e.CA, err = pki.Open(pki.Config{Dir: e.CADir, Passphrase: []byte(Passphrase), Now: e.Clock.Now}); err != nil {
		t.Fatal(err)
	}
	if e.Token, _, err = e.Tokens.Create(ctx, access.Principal{Kind: "system", ID: "test", Roles: []access.Role{access.RoleAdmin}}, access.TokenSpec{Name: "test-admin", Roles: []access.Role{access.RoleAdmin}, TTL: access.MaxTokenTTL}); err != nil {
		t.Fatal(err)
	}
	// Their own randomness, so that the ids and keys drawn above stay as
	// they were before people existed.
	urnd := NewRand(2)
	if e.Users, err = access.NewUsers(access.UsersConfig{Store: s, Audit: e.Audit, SealKey: SealKey, Argon2: TestArgon2, Now: e.Clock.Now, Rand: urnd}); err != nil {
		t.Fatal(err)
	}
	e.Sessions = access.NewSessions(access.SessionsConfig{Store: s, Users: e.Users, Audit: e.Audit, Now: e.Clock.Now, Rand: urnd})
	e.Config = api.Config{
		Fleet: e.Fleet, Audit: e.Audit, Tokens: e.Tokens, CA: e.CA,
		Users: e.Users, SessionStore: e.Sessions, Sessions: e.Sessions,
		Approvals: e.Approvals,
		Logger:    slog.New(slog.NewTextHandler(lockedWriter{e}, nil)),
		Version:   "test",
	}
	if edit != nil {
		edit(&e.Config)
	}
	h, err := api.New(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	e.Server = httptest.NewServer(h)
	t.Cleanup(e.Server.Close)
	if e.Client, err = client.New(e.Server.URL, e.Token, client.WithHTTPClient(e.Server.Client())); err != nil {
		t.Fatal(err)
	}
	return e
}

// ManufacturerCA mints a manufacturer CA at the Env's time.
func (e *Env) ManufacturerCA(t testing.TB, name string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	c, key, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: name, Now: e.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

var _ io.Reader = (*Rand)(nil)
