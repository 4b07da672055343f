// Package access decides who may use Ward's admin API. This first part holds
// API tokens; accounts, MFA, SSO, roles and two-person approvals build on it.
//
// # Tokens
//
// An API token is a bearer secret handed to a person or an integration. It
// reads
//
//	ward_<id>_<secret>
//
// where <id> is 16 lowercase base32 characters naming the token (not
// secret: it appears in the audit log as the actor "token:<id>") and <secret>
// is 32 random bytes in unpadded base64url (43 characters). The whole string
// is shown once, when the token is created, and never again.
//
// Ward keeps only the SHA-256 of the whole string (api_tokens.secret_hash).
// The secret has 256 bits of entropy, so a plain hash is enough: there is
// nothing to brute-force, and a stolen database yields no usable token.
// Authenticate looks the token up by id and compares hashes in constant
// time; a malformed, unknown, mismatched or revoked token is
// ErrUnauthenticated, with no hint which.
//
// # States
//
//	created ──Revoke──▶ revoked (final)
//
// Revoke refuses to revoke the last token that is not revoked, so an
// installation can never lock its administrators out by accident.
//
// # Bootstrap
//
// On a fresh installation no token exists. Bootstrap, called by the server at
// start, creates "bootstrap-admin" and writes its secret to a file (mode
// 0600, in a directory of mode 0700, written atomically) for the CLI to find.
// Once any token exists — even a revoked one — Bootstrap does nothing, so
// deleting the file never mints a new credential.
//
// # Audit
//
// Creating, revoking and bootstrapping a token are written to the audit log in
// the same transaction, naming the token by id and name, never by secret.
// last_used_at is updated at most once a minute per token, so that reads do
// not turn into a write per request.
package access

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// Errors. Callers test with errors.Is; the API maps them to HTTP statuses.
var (
	ErrUnauthenticated = errors.New("authentication required")
	ErrForbidden       = errors.New("forbidden")
	ErrLocked          = errors.New("locked out")
	ErrNotFound        = errors.New("not found")
	ErrInvalid         = errors.New("invalid")
	ErrConflict        = errors.New("conflict")
)

// SessionCookie is the name of the cookie that carries a person's session.
const SessionCookie = "ward_session"

// BootstrapName is the name of the token Bootstrap creates.
const BootstrapName = "bootstrap-admin"

const (
	secretPrefix   = "ward_"
	idLen          = 16 // base32 characters of 10 random bytes
	secretBytes    = 32
	secretLen      = 43 // base64url, unpadded, of 32 bytes
	lastUsedPeriod = time.Minute
	maxNameLen     = 128
)

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Token describes an API token. It never holds the secret.
type Token struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Roles      []Role     `json:"roles"`
	Sites      []string   `json:"sites"`
	CreatedAt  time.Time  `json:"created_at"`
	CreatedBy  string     `json:"created_by,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// Actor is the name of the token's holder in the audit log: "token:<id>".
func (t Token) Actor() string { return "token:" + t.ID }

// Revoked reports whether the token was revoked.
func (t Token) Revoked() bool { return t.RevokedAt != nil }

// Principal is the token as a caller of the API.
func (t Token) Principal() Principal {
	return Principal{Kind: KindToken, ID: t.ID, Name: t.Name, Roles: t.Roles, Sites: t.Sites}
}

// TokenSpec describes a token to create.
type TokenSpec struct {
	Name  string        `json:"name"`
	Roles []Role        `json:"roles"`         // at least one; each within the creator's own
	Sites []string      `json:"sites"`         // empty: every site the creator may act on
	TTL   time.Duration `json:"ttl,omitempty"` // 0: DefaultTokenTTL
}

// Token lifetimes.
const (
	DefaultTokenTTL = 90 * 24 * time.Hour
	MaxTokenTTL     = 366 * 24 * time.Hour
)

// checkScope refuses a token that would hold more than its creator: a role
// with a permission the creator lacks, or a site outside the creator's.
func checkScope(creator Principal, spec *TokenSpec) error {
	if len(spec.Roles) == 0 {
		return fmt.Errorf("%w: a token needs at least one role", ErrInvalid)
	}
	for _, r := range spec.Roles {
		if !r.Valid() {
			return fmt.Errorf("%w: unknown role %q (roles: %v)", ErrInvalid, r, Roles())
		}
		for _, p := range r.Permissions() {
			if !creator.Can(p) {
				return fmt.Errorf("%w: role %s needs %q, which %s does not hold", ErrForbidden, r, p, creator.Actor())
			}
		}
	}
	if len(creator.Sites) > 0 {
		if len(spec.Sites) == 0 {
			spec.Sites = slicesClone(creator.Sites)
		}
		for _, site := range spec.Sites {
			if !creator.InSite(site) {
				return fmt.Errorf("%w: site %q is outside %s's sites", ErrForbidden, site, creator.Actor())
			}
		}
	}
	switch {
	case spec.TTL == 0:
		spec.TTL = DefaultTokenTTL
	case spec.TTL < time.Minute || spec.TTL > MaxTokenTTL:
		return fmt.Errorf("%w: token lifetime %s: want 1m to %s", ErrInvalid, spec.TTL, MaxTokenTTL)
	}
	return nil
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// TokensConfig configures Tokens.
type TokensConfig struct {
	Store *store.Store
	Audit *audit.Log
	Now   func() time.Time // nil: time.Now
	Rand  io.Reader        // nil: crypto/rand.Reader
}

// Tokens manages API tokens. It is safe for concurrent use.
type Tokens struct {
	st    *store.Store
	audit *audit.Log
	now   func() time.Time
	rand  io.Reader
}

// NewTokens returns the token manager. Store and Audit are required; a
// missing one is a programming error and panics.
func NewTokens(cfg TokensConfig) *Tokens {
	if cfg.Store == nil || cfg.Audit == nil {
		panic("access: NewTokens needs a store and an audit log")
	}
	t := &Tokens{st: cfg.Store, audit: cfg.Audit, now: cfg.Now, rand: cfg.Rand}
	if t.now == nil {
		t.now = time.Now
	}
	if t.rand == nil {
		t.rand = rand.Reader
	}
	return t
}

// newSecret returns a fresh token id and its full secret string.
func (t *Tokens) newSecret() (id, secret string, err error) {
	var b [10 + secretBytes]byte
	if _, err := io.ReadFull(t.rand, b[:]); err != nil {
		return "", "", fmt.Errorf("access: token: %w", err)
	}
	id = idEncoding.EncodeToString(b[:10])
	secret = secretPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(b[10:])
	return id, secret, nil
}

// parseSecret returns the id inside a well-formed secret.
func parseSecret(secret string) (string, bool) {
	rest, ok := strings.CutPrefix(secret, secretPrefix)
	if !ok || len(rest) != idLen+1+secretLen || rest[idLen] != '_' {
		return "", false
	}
	id := rest[:idLen]
	if _, err := idEncoding.DecodeString(id); err != nil || strings.ToLower(id) != id {
		return "", false
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(rest[idLen+1:])
	if err != nil || len(raw) != secretBytes {
		return "", false
	}
	return id, true
}

func hashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: token name is required", ErrInvalid)
	}
	if len(name) > maxNameLen || !utf8.ValidString(name) {
		return fmt.Errorf("%w: token name: at most %d bytes of UTF-8", ErrInvalid, maxNameLen)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: token name has non-printable characters", ErrInvalid)
		}
	}
	if strings.TrimSpace(name) != name {
		return fmt.Errorf("%w: token name has leading or trailing space", ErrInvalid)
	}
	return nil
}

// insert writes a new token in tx and returns it with its secret. A zero
// ttl means the token does not expire (the bootstrap token only).
func (t *Tokens) insert(ctx context.Context, tx *store.Tx, spec TokenSpec, createdBy string, now time.Time) (string, Token, error) {
	id, secret, err := t.newSecret()
	if err != nil {
		return "", Token{}, err
	}
	tk := Token{ID: id, Name: spec.Name, Roles: spec.Roles, Sites: spec.Sites, CreatedAt: now, CreatedBy: createdBy}
	if tk.Sites == nil {
		tk.Sites = []string{}
	}
	if spec.TTL > 0 {
		exp := now.Add(spec.TTL)
		tk.ExpiresAt = &exp
	}
	roles, _ := json.Marshal(tk.Roles)
	sites, _ := json.Marshal(tk.Sites)
	_, err = tx.ExecContext(ctx, `INSERT INTO api_tokens (id, name, secret_hash, created_at, roles, sites, expires_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		id, spec.Name, hashSecret(secret), now, string(roles), string(sites), tk.ExpiresAt, createdBy)
	if err != nil {
		return "", Token{}, fmt.Errorf("access: create token: %w", err)
	}
	return secret, tk, nil
}

// Create makes a new token on behalf of creator and returns its secret,
// which is never available again. The token holds at most what its creator
// holds.
func (t *Tokens) Create(ctx context.Context, creator Principal, spec TokenSpec) (string, Token, error) {
	if err := checkName(spec.Name); err != nil {
		return "", Token{}, fmt.Errorf("access: create token: %w", err)
	}
	if err := checkScope(creator, &spec); err != nil {
		return "", Token{}, fmt.Errorf("access: create token: %w", err)
	}
	actor, name := creator.Actor(), spec.Name
	now := t.now().UTC()
	var (
		secret string
		tok    Token
	)
	err := t.st.Tx(ctx, func(tx *store.Tx) error {
		var err error
		if secret, tok, err = t.insert(ctx, tx, spec, actor, now); err != nil {
			return err
		}
		return t.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "token.create", Target: tok.Actor(), Outcome: audit.Success,
			Detail: map[string]any{"name": name, "roles": tok.Roles, "sites": tok.Sites, "expires_at": tok.ExpiresAt}})
	})
	if err != nil {
		return "", Token{}, err
	}
	return secret, tok, nil
}

const tokenColumns = `id, name, created_at, revoked_at, last_used_at, roles, sites, expires_at, created_by`

func scanToken(row interface{ Scan(...any) error }, extra ...any) (Token, error) {
	var (
		tk                        Token
		revoked, lastUse, expires sql.NullTime
		roles, sites              string
	)
	dest := append(extra, &tk.ID, &tk.Name, &tk.CreatedAt, &revoked, &lastUse, &roles, &sites, &expires, &tk.CreatedBy)
	if err := row.Scan(dest...); err != nil {
		return Token{}, err
	}
	if err := json.Unmarshal([]byte(roles), &tk.Roles); err != nil {
		return Token{}, fmt.Errorf("access: token %s: roles: %w", tk.ID, err)
	}
	if err := json.Unmarshal([]byte(sites), &tk.Sites); err != nil {
		return Token{}, fmt.Errorf("access: token %s: sites: %w", tk.ID, err)
	}
	tk.CreatedAt = tk.CreatedAt.UTC()
	tk.RevokedAt, tk.LastUsedAt, tk.ExpiresAt = ptime(revoked), ptime(lastUse), ptime(expires)
	return tk, nil
}

func ptime(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

// List returns every token, revoked ones included, oldest first.
func (t *Tokens) List(ctx context.Context) ([]Token, error) {
	rows, err := t.st.QueryContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("access: list tokens: %w", err)
	}
	defer rows.Close()
	out := []Token{}
	for rows.Next() {
		tk, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("access: list tokens: %w", err)
		}
		out = append(out, tk)
	}
	return out, rows.Err()
}

// Get returns a token by id.
func (t *Tokens) Get(ctx context.Context, id string) (Token, error) {
	tk, err := scanToken(t.st.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, fmt.Errorf("access: token %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Token{}, fmt.Errorf("access: token %q: %w", id, err)
	}
	return tk, nil
}

// Revoke revokes a token on behalf of actor. Revoking an unknown token is
// ErrNotFound; a revoked one, or the last one still valid, ErrConflict.
func (t *Tokens) Revoke(ctx context.Context, actor, id string) (Token, error) {
	now := t.now().UTC()
	err := t.st.Tx(ctx, func(tx *store.Tx) error {
		if err := lockTokens(ctx, tx); err != nil {
			return err
		}
		tk, err := scanToken(tx.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("access: token %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("access: revoke token: %w", err)
		}
		if tk.Revoked() {
			return fmt.Errorf("access: token %s: %w: already revoked", id, ErrConflict)
		}
		var live int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`, now).Scan(&live); err != nil {
			return fmt.Errorf("access: revoke token: %w", err)
		}
		if live <= 1 {
			return fmt.Errorf("access: token %s: %w: it is the last valid token; create another first", id, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = ? WHERE id = ?`, now, id); err != nil {
			return fmt.Errorf("access: revoke token: %w", err)
		}
		return t.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "token.revoke", Target: tk.Actor(), Outcome: audit.Success,
			Detail: map[string]any{"name": tk.Name}})
	})
	if err != nil {
		return Token{}, err
	}
	return t.Get(ctx, id)
}

// Authenticate returns the token whose secret this is. Every failure is
// ErrUnauthenticated.
func (t *Tokens) Authenticate(ctx context.Context, secret string) (Token, error) {
	id, ok := parseSecret(secret)
	if !ok {
		return Token{}, ErrUnauthenticated
	}
	var hash []byte
	tk, err := scanToken(t.st.QueryRowContext(ctx, `SELECT secret_hash, `+tokenColumns+` FROM api_tokens WHERE id = ?`, id), &hash)
	if errors.Is(err, sql.ErrNoRows) {
		// Spend the same time as a comparison, for good measure.
		subtle.ConstantTimeCompare(hashSecret(secret), make([]byte, sha256.Size))
		return Token{}, ErrUnauthenticated
	}
	if err != nil {
		return Token{}, fmt.Errorf("access: authenticate: %w", err)
	}
	if subtle.ConstantTimeCompare(hashSecret(secret), hash) != 1 || tk.Revoked() {
		return Token{}, ErrUnauthenticated
	}
	if tk.ExpiresAt != nil && !t.now().Before(*tk.ExpiresAt) {
		return Token{}, ErrUnauthenticated
	}
	now := t.now().UTC()
	if tk.LastUsedAt == nil || now.Sub(*tk.LastUsedAt) >= lastUsedPeriod {
		// Best effort: a failed bookkeeping write does not refuse the caller.
		if _, err := t.st.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)`,
			now, id, now.Add(-lastUsedPeriod)); err == nil {
			tk.LastUsedAt = &now
		}
	}
	return tk, nil
}

// Bootstrap creates the first admin token if no token exists at all, writes
// its secret to path and returns it with created=true. Otherwise it returns
// created=false and touches nothing.
func (t *Tokens) Bootstrap(ctx context.Context, path string) (secret string, created bool, err error) {
	if path == "" {
		return "", false, errors.New("access: bootstrap: no token file path")
	}
	now := t.now().UTC()
	err = t.st.Tx(ctx, func(tx *store.Tx) error {
		if err := lockTokens(ctx, tx); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens`).Scan(&n); err != nil {
			return fmt.Errorf("access: bootstrap: %w", err)
		}
		if n > 0 {
			return nil
		}
		s, tk, err := t.insert(ctx, tx, TokenSpec{Name: BootstrapName, Roles: []Role{RoleAdmin}}, audit.System, now)
		if err != nil {
			return err
		}
		if err := t.audit.Append(ctx, tx, audit.Entry{At: now, Actor: audit.System, Action: "token.bootstrap", Target: tk.Actor(), Outcome: audit.Success,
			Detail: map[string]any{"name": tk.Name, "file": path}}); err != nil {
			return err
		}
		// Write the file before committing: if the commit fails, the file
		// holds a secret that opens nothing and the next start overwrites it;
		// the reverse order could leave a token nobody holds.
		if err := writeSecretFile(path, s); err != nil {
			return err
		}
		secret, created = s, true
		return nil
	})
	if err != nil {
		return "", false, err
	}
	return secret, created, nil
}

// lockTokens serialises token bootstrap and revocation across nodes. On
// SQLite every write transaction is already exclusive.
func lockTokens(ctx context.Context, tx *store.Tx) error {
	if tx.Dialect() != store.Postgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("access: lock tokens: %w", err)
	}
	return nil
}

// writeSecretFile writes secret and a newline to path, mode 0600, through a
// synced temporary file renamed into place.
func writeSecretFile(path, secret string) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("access: token file: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("access: token file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("access: token file: %w", err)
	}
	if _, err = f.WriteString(secret + "\n"); err != nil {
		return fmt.Errorf("access: token file: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("access: token file: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("access: token file: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("access: token file: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
