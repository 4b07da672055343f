package access

// # People
//
// A person has an account (table users): a username (lower case, unique), a
// display name, an e-mail address, roles and sites like a token's, and either
// a password (a local account) or a link to an OIDC provider (issuer and
// subject; no password, see UpsertExternal). The id is 16 lowercase base32
// characters and names the person in the audit log as "user:<id>".
//
// Passwords are hashed with argon2id (password.go), PHC-encoded with their
// parameters and salt, compared in constant time. Policy: 12 to 1024
// characters, not the username.
//
// A person holding any role that changes state (Role.Changes) must log in
// with a second factor: TOTP (totp.go) or WebAuthn (webauthn.go). Until it is
// done the session is pending and opens nothing but the second-factor routes
// (sessions.go).
//
// # Throttling and lockout
//
// Five consecutive failed logins for a username lock it for 15 minutes. A
// failure is a wrong password or a wrong TOTP code. Unknown usernames are
// counted the same way in a bounded in-memory map, so the answers — "invalid
// username or password", "too many failed attempts; try again after HH:MM
// UTC" — and the work done (one argon2id computation, against a dummy hash
// for an unknown name) are the same whether or not the name exists. Counters
// of known names live in the store and are shared by every node; counters of
// unknown names are per node.
//
// Each source address may also fail only so often (a token bucket of
// sourceBurst failures refilled one per sourceEvery), which bounds password
// spraying across many names. Every failure and every lockout is audited, by
// name, never with the password.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// Lockout policy.
const (
	MaxFailures     = 5
	LockoutDuration = 15 * time.Minute

	sourceBurst   = 30               // failures a source address may have in a row
	sourceEvery   = 10 * time.Second // one more failure allowed per period
	maxTracked    = 10000            // unknown names, and source addresses, tracked at once
	maxUsernameLn = 64
)

// Messages of a refused login. They are the same for every username, known
// or not.
const (
	msgInvalidLogin = "invalid username or password"
)

// User is a person's account. It never holds a password hash or a TOTP seed.
type User struct {
	ID          string   `json:"id"`
	Username    string   `json:"username"`
	DisplayName string   `json:"display_name,omitempty"`
	Email       string   `json:"email,omitempty"`
	Roles       []Role   `json:"roles"`
	Sites       []string `json:"sites"`
	Disabled    bool     `json:"disabled"`
	TOTPEnabled bool     `json:"totp_enabled"`
	// WebAuthnCredentials counts the person's registered WebAuthn
	// credentials; filled by the counter set with Users.CountWebAuthn.
	WebAuthnCredentials int `json:"webauthn_credentials"`
	// External is "" for a local account, else the OIDC issuer it is
	// linked to.
	External    string     `json:"external,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	LastLoginAt *time.Time `json:"last_login_at,omitempty"`
	LockedUntil *time.Time `json:"locked_until,omitempty"`
}

// Actor names the person in the audit log: "user:<id>".
func (u User) Actor() string { return KindUser + ":" + u.ID }

// Principal is the person as a caller of the API.
func (u User) Principal() Principal {
	return Principal{Kind: KindUser, ID: u.ID, Name: u.Username, Roles: slices.Clone(u.Roles), Sites: slices.Clone(u.Sites)}
}

// NeedsSecondFactor reports whether any of the person's roles changes state,
// so that a login needs a second factor.
func (u User) NeedsSecondFactor() bool {
	for _, r := range u.Roles {
		if r.Changes() {
			return true
		}
	}
	return false
}

// SecondFactors lists the second factors the person has enrolled: "totp",
// "webauthn".
func (u User) SecondFactors() []string {
	out := []string{}
	if u.TOTPEnabled {
		out = append(out, "totp")
	}
	if u.WebAuthnCredentials > 0 {
		out = append(out, "webauthn")
	}
	return out
}

// UsersConfig configures Users.
type UsersConfig struct {
	Store *store.Store
	Audit *audit.Log
	// SealKey is the 32-byte AES-256-GCM key that seals TOTP seeds at rest.
	SealKey []byte
	Argon2  Argon2Params     // zero fields: DefaultArgon2
	Now     func() time.Time // nil: time.Now
	Rand    io.Reader        // nil: crypto/rand.Reader
}

// Users manages people's accounts. It is safe for concurrent use.
type Users struct {
	st      *store.Store
	audit   *audit.Log
	sealKey []byte
	argon   Argon2Params
	now     func() time.Time
	rand    io.Reader

	dummyHash string       // spent on unknown names, so they cost what known ones do
	hashes    atomic.Int64 // argon2id computations, for tests

	mu       sync.Mutex
	unknown  map[string]*failures // unknown usernames' failure counters
	sources  map[string]*rate.Limiter
	webauthn func(ctx context.Context, userID string) (int, error)
}

type failures struct {
	n           int
	last        time.Time
	lockedUntil time.Time
}

// NewUsers returns the account manager. Store, Audit and a 32-byte SealKey
// are required.
func NewUsers(cfg UsersConfig) (*Users, error) {
	if cfg.Store == nil || cfg.Audit == nil {
		return nil, errors.New("access: NewUsers needs a store and an audit log")
	}
	if len(cfg.SealKey) != 32 {
		return nil, errors.New("access: NewUsers needs a 32-byte seal key")
	}
	u := &Users{
		st: cfg.Store, audit: cfg.Audit, sealKey: slices.Clone(cfg.SealKey), argon: cfg.Argon2.withDefaults(),
		now: cfg.Now, rand: cfg.Rand, unknown: map[string]*failures{}, sources: map[string]*rate.Limiter{},
	}
	if u.now == nil {
		u.now = time.Now
	}
	if u.rand == nil {
		u.rand = rand.Reader
	}
	var err error
	if u.dummyHash, err = hashPassword(u.argon, u.rand, "ward dummy password for unknown names"); err != nil {
		return nil, err
	}
	return u, nil
}

// CountWebAuthn sets how Get and List learn a person's number of WebAuthn
// credentials (User.WebAuthnCredentials). The WebAuthn component calls it
// once at start; until then the count is 0.
func (u *Users) CountWebAuthn(f func(ctx context.Context, userID string) (int, error)) {
	u.mu.Lock()
	u.webauthn = f
	u.mu.Unlock()
}

// NewUser describes a local account to create.
type NewUser struct {
	Username    string   `json:"username"`
	DisplayName string   `json:"display_name,omitempty"`
	Email       string   `json:"email,omitempty"`
	Password    string   `json:"-"`
	Roles       []Role   `json:"roles"`
	Sites       []string `json:"sites,omitempty"`
}

// ExternalProfile is what an identity provider says about a person, with the
// roles and sites its group mapping gives.
type ExternalProfile struct {
	Username, DisplayName, Email string
	Roles                        []Role
	Sites                        []string
}

var usernameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._@-]*$`)

// normUsername lower-cases and checks a username.
func normUsername(name string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" || len(n) > maxUsernameLn || !usernameRE.MatchString(n) {
		return "", fmt.Errorf("%w: username: 1 to %d of a-z 0-9 . _ @ -, starting with a letter or digit", ErrInvalid, maxUsernameLn)
	}
	return n, nil
}

func checkProfile(display, email string) error {
	if len(display) > maxNameLen || strings.ContainsFunc(display, isControl) {
		return fmt.Errorf("%w: display name: at most %d printable bytes", ErrInvalid, maxNameLen)
	}
	if len(email) > 254 || strings.ContainsFunc(email, isControl) || (email != "" && !strings.Contains(email, "@")) {
		return fmt.Errorf("%w: e-mail address is malformed", ErrInvalid)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// checkGrant refuses to give roles or sites the actor does not hold itself.
func checkGrant(actor Principal, roles []Role, sites []string) error {
	for _, r := range roles {
		if !r.Valid() {
			return fmt.Errorf("%w: unknown role %q (roles: %v)", ErrInvalid, r, Roles())
		}
		for _, p := range r.Permissions() {
			if !actor.Can(p) {
				return fmt.Errorf("%w: role %s needs %q, which %s does not hold", ErrForbidden, r, p, actor.Actor())
			}
		}
	}
	if len(actor.Sites) > 0 {
		if len(sites) == 0 {
			return fmt.Errorf("%w: %s may grant only its own sites %v", ErrForbidden, actor.Actor(), actor.Sites)
		}
		for _, s := range sites {
			if !actor.InSite(s) {
				return fmt.Errorf("%w: site %q is outside %s's sites", ErrForbidden, s, actor.Actor())
			}
		}
	}
	return nil
}

// checkOver refuses an actor acting on an account that holds more than the
// actor: resetting its password would hand the actor those rights.
func checkOver(actor Principal, target User) error {
	if err := checkGrant(actor, target.Roles, target.Sites); err != nil {
		return fmt.Errorf("%w: %s holds more than %s", ErrForbidden, target.Actor(), actor.Actor())
	}
	return nil
}

func checkSites(sites []string) ([]string, error) {
	out := []string{}
	for _, s := range sites {
		if s == "" || len(s) > 128 || strings.ContainsFunc(s, isControl) {
			return nil, fmt.Errorf("%w: site names: 1 to 128 printable bytes", ErrInvalid)
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

func (u *Users) newID() (string, error) {
	var b [10]byte
	if _, err := io.ReadFull(u.rand, b[:]); err != nil {
		return "", fmt.Errorf("access: id: %w", err)
	}
	return idEncoding.EncodeToString(b[:]), nil
}

func (u *Users) hash(password string) (string, error) {
	u.hashes.Add(1)
	return hashPassword(u.argon, u.rand, password)
}

func (u *Users) verify(encoded, password string) (ok, stale bool) {
	u.hashes.Add(1)
	ok, stale, err := verifyPassword(encoded, password, u.argon)
	if err != nil {
		// A malformed stored hash: spend the time anyway, admit nobody.
		_, _, _ = verifyPassword(u.dummyHash, password, u.argon)
		return false, false
	}
	return ok, stale
}

// Create makes a local account on behalf of creator, who must hold every
// permission of each role granted and every site.
func (u *Users) Create(ctx context.Context, creator Principal, nu NewUser) (User, error) {
	name, err := normUsername(nu.Username)
	if err != nil {
		return User{}, fmt.Errorf("access: create user: %w", err)
	}
	if err := checkProfile(nu.DisplayName, nu.Email); err != nil {
		return User{}, fmt.Errorf("access: create user: %w", err)
	}
	if len(nu.Roles) == 0 {
		return User{}, fmt.Errorf("access: create user: %w: a user needs at least one role", ErrInvalid)
	}
	sites, err := checkSites(nu.Sites)
	if err != nil {
		return User{}, fmt.Errorf("access: create user: %w", err)
	}
	if len(sites) == 0 && len(creator.Sites) > 0 {
		sites = slices.Clone(creator.Sites)
	}
	if err := checkGrant(creator, nu.Roles, sites); err != nil {
		return User{}, fmt.Errorf("access: create user: %w", err)
	}
	if err := checkPassword(name, nu.Password); err != nil {
		return User{}, fmt.Errorf("access: create user: %w", err)
	}
	// Hash outside the transaction: it takes tens of milliseconds.
	hash, err := u.hash(nu.Password)
	if err != nil {
		return User{}, err
	}
	id, err := u.newID()
	if err != nil {
		return User{}, err
	}
	now := u.now().UTC()
	roles, _ := json.Marshal(nu.Roles)
	sitesJSON, _ := json.Marshal(sites)
	err = u.st.Tx(ctx, func(tx *store.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO users (id, username, display_name, email, password_hash, roles, sites, created_at, created_by, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, id, name, nu.DisplayName, nu.Email, hash, string(roles), string(sitesJSON), now, creator.Actor(), now)
		if store.IsUniqueViolation(err) {
			return fmt.Errorf("access: create user: %w: username %q is taken", ErrConflict, name)
		}
		if err != nil {
			return fmt.Errorf("access: create user: %w", err)
		}
		return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: creator.Actor(), Action: "user.create", Target: KindUser + ":" + id, Outcome: audit.Success,
			Detail: map[string]any{"username": name, "roles": nu.Roles, "sites": sites}})
	})
	if err != nil {
		return User{}, err
	}
	return u.Get(ctx, id)
}

const userColumns = `id, username, display_name, email, roles, sites, disabled, totp_seed IS NOT NULL, external_issuer, created_at, last_login_at, locked_until`

func (u *Users) scanUser(row interface{ Scan(...any) error }, extra ...any) (User, error) {
	var (
		x            User
		roles, sites string
		last, locked sql.NullTime
	)
	dest := append(extra, &x.ID, &x.Username, &x.DisplayName, &x.Email, &roles, &sites, &x.Disabled, &x.TOTPEnabled, &x.External, &x.CreatedAt, &last, &locked)
	if err := row.Scan(dest...); err != nil {
		return User{}, err
	}
	if err := json.Unmarshal([]byte(roles), &x.Roles); err != nil {
		return User{}, fmt.Errorf("access: user %s: roles: %w", x.ID, err)
	}
	if err := json.Unmarshal([]byte(sites), &x.Sites); err != nil {
		return User{}, fmt.Errorf("access: user %s: sites: %w", x.ID, err)
	}
	x.CreatedAt = x.CreatedAt.UTC()
	x.LastLoginAt = ptime(last)
	if l := ptime(locked); l != nil && u.now().Before(*l) {
		x.LockedUntil = l
	}
	return x, nil
}

func (u *Users) fill(ctx context.Context, x *User) error {
	u.mu.Lock()
	f := u.webauthn
	u.mu.Unlock()
	if f == nil {
		return nil
	}
	n, err := f(ctx, x.ID)
	if err != nil {
		return fmt.Errorf("access: user %s: webauthn credentials: %w", x.ID, err)
	}
	x.WebAuthnCredentials = n
	return nil
}

// Get returns an account by id or username.
func (u *Users) Get(ctx context.Context, idOrUsername string) (User, error) {
	x, err := u.scanUser(u.st.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE id = ?`, idOrUsername))
	if errors.Is(err, sql.ErrNoRows) {
		x, err = u.scanUser(u.st.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE username = ?`, strings.ToLower(idOrUsername)))
	}
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("access: user %q: %w", idOrUsername, ErrNotFound)
	}
	if err != nil {
		return User{}, fmt.Errorf("access: user %q: %w", idOrUsername, err)
	}
	if err := u.fill(ctx, &x); err != nil {
		return User{}, err
	}
	return x, nil
}

// List returns every account, by username.
func (u *Users) List(ctx context.Context) ([]User, error) {
	rows, err := u.st.QueryContext(ctx, `SELECT `+userColumns+` FROM users ORDER BY username`)
	if err != nil {
		return nil, fmt.Errorf("access: list users: %w", err)
	}
	out := []User{}
	for rows.Next() {
		x, err := u.scanUser(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("access: list users: %w", err)
		}
		out = append(out, x)
	}
	err = errors.Join(rows.Err(), rows.Close())
	if err != nil {
		return nil, fmt.Errorf("access: list users: %w", err)
	}
	for i := range out {
		if err := u.fill(ctx, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// endSessions deletes every session of the user, in tx.
func endSessions(ctx context.Context, tx *store.Tx, userID string) (int64, error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE user_id = ?`, userID)
	if err != nil {
		return 0, fmt.Errorf("access: end sessions: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// SetPassword sets a local account's password. A person may set their own
// (the API checks the current one first); anyone else needs UsersManage and
// must hold at least what the account holds. Every session of the account
// ends.
func (u *Users) SetPassword(ctx context.Context, actor Principal, id, newPassword string) error {
	target, err := u.Get(ctx, id)
	if err != nil {
		return err
	}
	self := actor.Kind == KindUser && actor.ID == target.ID
	if !self {
		if !actor.Can(UsersManage) {
			return fmt.Errorf("access: set password: %w: %s may set only its own password", ErrForbidden, actor.Actor())
		}
		if err := checkOver(actor, target); err != nil {
			return fmt.Errorf("access: set password: %w", err)
		}
	}
	if target.External != "" {
		return fmt.Errorf("access: set password: %w: %s signs in through %s and has no password here", ErrConflict, target.Username, target.External)
	}
	if err := checkPassword(target.Username, newPassword); err != nil {
		return fmt.Errorf("access: set password: %w", err)
	}
	hash, err := u.hash(newPassword)
	if err != nil {
		return err
	}
	now := u.now().UTC()
	return u.st.Tx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE users SET password_hash = ?, failed_logins = 0, locked_until = NULL, updated_at = ? WHERE id = ?`, hash, now, target.ID); err != nil {
			return fmt.Errorf("access: set password: %w", err)
		}
		n, err := endSessions(ctx, tx, target.ID)
		if err != nil {
			return err
		}
		return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor.Actor(), Action: "user.password", Target: target.Actor(), Outcome: audit.Success,
			Detail: map[string]any{"username": target.Username, "sessions_ended": n}})
	})
}

// SetRoles replaces an account's roles and sites. The actor must hold both
// what the account holds now and what it is given. Every session of the
// account ends. The two-person rule is applied by the caller.
func (u *Users) SetRoles(ctx context.Context, actor Principal, id string, roles []Role, sites []string) (User, error) {
	target, err := u.Get(ctx, id)
	if err != nil {
		return User{}, err
	}
	if len(roles) == 0 {
		return User{}, fmt.Errorf("access: set roles: %w: a user needs at least one role", ErrInvalid)
	}
	if sites, err = checkSites(sites); err != nil {
		return User{}, fmt.Errorf("access: set roles: %w", err)
	}
	if err := checkOver(actor, target); err != nil {
		return User{}, fmt.Errorf("access: set roles: %w", err)
	}
	if err := checkGrant(actor, roles, sites); err != nil {
		return User{}, fmt.Errorf("access: set roles: %w", err)
	}
	now := u.now().UTC()
	rj, _ := json.Marshal(roles)
	sj, _ := json.Marshal(sites)
	err = u.st.Tx(ctx, func(tx *store.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE users SET roles = ?, sites = ?, updated_at = ? WHERE id = ?`, string(rj), string(sj), now, target.ID); err != nil {
			return fmt.Errorf("access: set roles: %w", err)
		}
		n, err := endSessions(ctx, tx, target.ID)
		if err != nil {
			return err
		}
		return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor.Actor(), Action: "user.roles", Target: target.Actor(), Outcome: audit.Success,
			Detail: map[string]any{"username": target.Username, "from_roles": target.Roles, "from_sites": target.Sites, "roles": roles, "sites": sites, "sessions_ended": n}})
	})
	if err != nil {
		return User{}, err
	}
	return u.Get(ctx, target.ID)
}

// Disable disables an account and ends its sessions. Nobody can disable
// their own account.
func (u *Users) Disable(ctx context.Context, actor Principal, id string) (User, error) {
	return u.change(ctx, actor, id, "user.disable", func(ctx context.Context, tx *store.Tx, target User, now time.Time) (map[string]any, error) {
		if actor.Kind == KindUser && actor.ID == target.ID {
			return nil, fmt.Errorf("access: disable %s: %w: nobody can disable their own account", target.Username, ErrConflict)
		}
		if target.Disabled {
			return nil, fmt.Errorf("access: disable %s: %w: already disabled", target.Username, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE users SET disabled = ?, updated_at = ? WHERE id = ?`, true, now, target.ID); err != nil {
			return nil, err
		}
		n, err := endSessions(ctx, tx, target.ID)
		return map[string]any{"sessions_ended": n}, err
	})
}

// Unlock clears an account's failed-login counter and lockout.
func (u *Users) Unlock(ctx context.Context, actor Principal, id string) (User, error) {
	return u.change(ctx, actor, id, "user.unlock", func(ctx context.Context, tx *store.Tx, target User, now time.Time) (map[string]any, error) {
		_, err := tx.ExecContext(ctx, `UPDATE users SET failed_logins = 0, locked_until = NULL, updated_at = ? WHERE id = ?`, now, target.ID)
		return nil, err
	})
}

// change runs an administrative change of one account with its audit entry.
func (u *Users) change(ctx context.Context, actor Principal, id, action string, fn func(context.Context, *store.Tx, User, time.Time) (map[string]any, error)) (User, error) {
	target, err := u.Get(ctx, id)
	if err != nil {
		return User{}, err
	}
	if !actor.Can(UsersManage) {
		return User{}, fmt.Errorf("access: %s: %w: needs %q", action, ErrForbidden, UsersManage)
	}
	if err := checkOver(actor, target); err != nil {
		return User{}, fmt.Errorf("access: %s: %w", action, err)
	}
	now := u.now().UTC()
	err = u.st.Tx(ctx, func(tx *store.Tx) error {
		detail, err := fn(ctx, tx, target, now)
		if err != nil {
			if errors.Is(err, ErrConflict) {
				return err
			}
			return fmt.Errorf("access: %s: %w", action, err)
		}
		if detail == nil {
			detail = map[string]any{}
		}
		detail["username"] = target.Username
		return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor.Actor(), Action: action, Target: target.Actor(), Outcome: audit.Success, Detail: detail})
	})
	if err != nil {
		return User{}, err
	}
	return u.Get(ctx, target.ID)
}

// lockedError is the refusal of a locked name.
func lockedError(until time.Time) error {
	// Round up, so that "after HH:MM" is true.
	t := until.UTC().Add(time.Minute - time.Nanosecond).Truncate(time.Minute)
	return fmt.Errorf("%w: too many failed attempts; try again after %s UTC", ErrLocked, t.Format("15:04"))
}

// errInvalidLogin is the refusal of a wrong name or password.
var errInvalidLogin = fmt.Errorf("%w: %s", ErrUnauthenticated, msgInvalidLogin)

// sourceAllowed reports whether source may still fail; it does not spend.
func (u *Users) sourceAllowed(source string, now time.Time) bool {
	if source == "" {
		return true
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	l := u.sources[source]
	return l == nil || l.TokensAt(now) >= 1
}

// sourceFailed spends one failure of source's budget.
func (u *Users) sourceFailed(source string, now time.Time) {
	if source == "" {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	l := u.sources[source]
	if l == nil {
		if len(u.sources) >= maxTracked {
			for k, v := range u.sources {
				if v.TokensAt(now) >= sourceBurst {
					delete(u.sources, k)
				}
			}
			for k := range u.sources {
				if len(u.sources) < maxTracked {
					break
				}
				delete(u.sources, k)
			}
		}
		l = rate.NewLimiter(rate.Every(sourceEvery), sourceBurst)
		u.sources[source] = l
	}
	l.AllowN(now, 1)
}

// unknownLocked reports until when an unknown name is locked.
func (u *Users) unknownLocked(name string, now time.Time) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f := u.unknown[name]
	if f != nil && now.Before(f.lockedUntil) {
		return f.lockedUntil, true
	}
	return time.Time{}, false
}

// unknownFailed counts a failure of an unknown name and returns the end of
// its lockout, if this failure locks it.
func (u *Users) unknownFailed(name string, now time.Time) (time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f := u.unknown[name]
	if f == nil || now.Sub(f.last) > LockoutDuration && !now.Before(f.lockedUntil) {
		if len(u.unknown) >= maxTracked {
			for k, v := range u.unknown {
				if now.Sub(v.last) > LockoutDuration && !now.Before(v.lockedUntil) {
					delete(u.unknown, k)
				}
			}
			for k := range u.unknown {
				if len(u.unknown) < maxTracked {
					break
				}
				delete(u.unknown, k)
			}
		}
		f = &failures{}
		u.unknown[name] = f
	}
	f.n++
	f.last = now
	if f.n >= MaxFailures {
		f.n = 0
		f.lockedUntil = now.Add(LockoutDuration)
		return f.lockedUntil, true
	}
	return time.Time{}, false
}

// CheckPassword checks a login. It returns the account, or an error wrapping
// ErrUnauthenticated ("invalid username or password") or ErrLocked ("too many
// failed attempts; …"), the same for known and unknown names. source is the
// caller's address, for throttling and the audit log.
func (u *Users) CheckPassword(ctx context.Context, username, password, source string) (User, error) {
	now := u.now().UTC()
	name := strings.ToLower(strings.TrimSpace(username))
	if len(name) > maxUsernameLn || !usernameRE.MatchString(name) {
		// Cannot be an account; still spend the work of one.
		u.verify(u.dummyHash, password)
		u.sourceFailed(source, now)
		return User{}, errInvalidLogin
	}
	if !u.sourceAllowed(source, now) {
		u.record(ctx, audit.Entry{At: now, Actor: audit.Anonymous, Action: "user.login", Target: "username:" + name, Outcome: audit.Denied,
			Reason: "too many failed logins from this address", Source: source, Detail: map[string]any{"username": name}})
		return User{}, fmt.Errorf("%w: too many failed attempts from this address; try again later", ErrLocked)
	}

	var (
		hash, external string
		disabled       bool
		locked         sql.NullTime
		id             string
	)
	err := u.st.QueryRowContext(ctx, `SELECT id, password_hash, external_issuer, disabled, locked_until FROM users WHERE username = ?`, name).
		Scan(&id, &hash, &external, &disabled, &locked)
	if errors.Is(err, sql.ErrNoRows) {
		if until, ok := u.unknownLocked(name, now); ok {
			u.sourceFailed(source, now)
			u.record(ctx, audit.Entry{At: now, Actor: audit.Anonymous, Action: "user.login", Target: "username:" + name, Outcome: audit.Denied,
				Reason: "locked", Source: source, Detail: map[string]any{"username": name}})
			return User{}, lockedError(until)
		}
		u.verify(u.dummyHash, password)
		u.sourceFailed(source, now)
		until, lockedNow := u.unknownFailed(name, now)
		u.record(ctx, audit.Entry{At: now, Actor: audit.Anonymous, Action: "user.login", Target: "username:" + name, Outcome: audit.Denied,
			Reason: "unknown username", Source: source, Detail: map[string]any{"username": name}})
		if lockedNow {
			u.record(ctx, audit.Entry{At: now, Actor: audit.System, Action: "user.lockout", Target: "username:" + name, Outcome: audit.Success,
				Reason: fmt.Sprintf("%d failed logins", MaxFailures), Source: source, Detail: map[string]any{"username": name, "until": until}})
		}
		return User{}, errInvalidLogin
	}
	if err != nil {
		return User{}, fmt.Errorf("access: login: %w", err)
	}
	target := KindUser + ":" + id
	if locked.Valid && now.Before(locked.Time) {
		u.sourceFailed(source, now)
		u.record(ctx, audit.Entry{At: now, Actor: audit.Anonymous, Action: "user.login", Target: target, Outcome: audit.Denied,
			Reason: "locked", Source: source, Detail: map[string]any{"username": name}})
		return User{}, lockedError(locked.Time)
	}
	if hash == "" {
		hash = u.dummyHash // an external account: no password opens it
	}
	ok, stale := u.verify(hash, password)
	if !ok || disabled || external != "" {
		u.sourceFailed(source, now)
		reason := "wrong password"
		switch {
		case disabled:
			reason = "account disabled"
		case external != "":
			reason = "account signs in through " + external
		}
		if err := u.failed(ctx, id, name, reason, source, now); err != nil {
			return User{}, err
		}
		return User{}, errInvalidLogin
	}
	var newHash string
	if stale {
		newHash, _ = u.hash(password)
	}
	if _, err := u.st.ExecContext(ctx, `UPDATE users SET failed_logins = 0, password_hash = CASE WHEN ? = '' THEN password_hash ELSE ? END WHERE id = ?`,
		newHash, newHash, id); err != nil {
		return User{}, fmt.Errorf("access: login: %w", err)
	}
	return u.Get(ctx, id)
}

// failed counts a failed login (password or second factor) of a known
// account, locks it at MaxFailures, and audits both.
func (u *Users) failed(ctx context.Context, id, name, reason, source string, now time.Time) error {
	target := KindUser + ":" + id
	err := u.st.Tx(ctx, func(tx *store.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `UPDATE users SET failed_logins = failed_logins + 1 WHERE id = ? RETURNING failed_logins`, id).Scan(&n); err != nil {
			return fmt.Errorf("access: login: %w", err)
		}
		if err := u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: audit.Anonymous, Action: "user.login", Target: target, Outcome: audit.Denied,
			Reason: reason, Source: source, Detail: map[string]any{"username": name, "failures": n}}); err != nil {
			return err
		}
		if n < MaxFailures {
			return nil
		}
		until := now.Add(LockoutDuration)
		if _, err := tx.ExecContext(ctx, `UPDATE users SET failed_logins = 0, locked_until = ? WHERE id = ?`, until, id); err != nil {
			return fmt.Errorf("access: login: %w", err)
		}
		return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: audit.System, Action: "user.lockout", Target: target, Outcome: audit.Success,
			Reason: fmt.Sprintf("%d failed logins", MaxFailures), Source: source, Detail: map[string]any{"username": name, "until": until}})
	})
	return err
}

// record writes a refusal to the audit log; a failure to do so is not the
// caller's problem, whose answer is a refusal either way.
func (u *Users) record(ctx context.Context, e audit.Entry) {
	_ = u.audit.Record(ctx, e)
}

// UpsertExternal creates or updates the account linked to (issuer, subject)
// at an OIDC login: profile, roles and sites become what the provider and
// the group mapping say. A username already taken by another account is
// ErrConflict.
func (u *Users) UpsertExternal(ctx context.Context, issuer, subject string, p ExternalProfile) (User, error) {
	if issuer == "" || subject == "" || len(subject) > 255 || len(issuer) > 512 {
		return User{}, fmt.Errorf("access: external user: %w: issuer and subject are required", ErrInvalid)
	}
	name, err := normUsername(p.Username)
	if err != nil {
		return User{}, fmt.Errorf("access: external user: %w", err)
	}
	if err := checkProfile(p.DisplayName, p.Email); err != nil {
		return User{}, fmt.Errorf("access: external user: %w", err)
	}
	for _, r := range p.Roles {
		if !r.Valid() {
			return User{}, fmt.Errorf("access: external user: %w: unknown role %q", ErrInvalid, r)
		}
	}
	if p.Roles == nil {
		p.Roles = []Role{}
	}
	sites, err := checkSites(p.Sites)
	if err != nil {
		return User{}, fmt.Errorf("access: external user: %w", err)
	}
	newID, err := u.newID()
	if err != nil {
		return User{}, err
	}
	now := u.now().UTC()
	rj, _ := json.Marshal(p.Roles)
	sj, _ := json.Marshal(sites)
	var id string
	err = u.st.Tx(ctx, func(tx *store.Tx) error {
		var (
			oldRoles, oldSites, oldName string
		)
		err := tx.QueryRowContext(ctx, `SELECT id, username, roles, sites FROM users WHERE external_issuer = ? AND external_subject = ?`, issuer, subject).
			Scan(&id, &oldName, &oldRoles, &oldSites)
		action := "user.external.update"
		switch {
		case errors.Is(err, sql.ErrNoRows):
			id, action = newID, "user.external.create"
			_, err = tx.ExecContext(ctx, `INSERT INTO users (id, username, display_name, email, roles, sites, external_issuer, external_subject, created_at, created_by, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, id, name, p.DisplayName, p.Email, string(rj), string(sj), issuer, subject, now, audit.System, now)
		case err != nil:
			return fmt.Errorf("access: external user: %w", err)
		default:
			if oldName == name && oldRoles == string(rj) && oldSites == string(sj) {
				_, err = tx.ExecContext(ctx, `UPDATE users SET display_name = ?, email = ? WHERE id = ?`, p.DisplayName, p.Email, id)
				if err != nil {
					return fmt.Errorf("access: external user: %w", err)
				}
				return nil
			}
			_, err = tx.ExecContext(ctx, `UPDATE users SET username = ?, display_name = ?, email = ?, roles = ?, sites = ?, updated_at = ? WHERE id = ?`,
				name, p.DisplayName, p.Email, string(rj), string(sj), now, id)
		}
		if store.IsUniqueViolation(err) {
			return fmt.Errorf("access: external user: %w: username %q is taken by another account", ErrConflict, name)
		}
		if err != nil {
			return fmt.Errorf("access: external user: %w", err)
		}
		return u.audit.Append(ctx, tx, audit.Entry{At: now, Actor: audit.System, Action: action, Target: KindUser + ":" + id, Outcome: audit.Success,
			Detail: map[string]any{"username": name, "issuer": issuer, "subject": subject, "roles": p.Roles, "sites": sites}})
	})
	if err != nil {
		return User{}, err
	}
	return u.Get(ctx, id)
}
