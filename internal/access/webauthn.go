package access

// # WebAuthn
//
// A person may register WebAuthn credentials (security keys, passkeys) and
// use one as the second factor after the password. Ward is the relying
// party; go-webauthn does the ceremony checks (origin, RP id hash, challenge,
// signature, flags); Ward keeps the state and the policy:
//
//   - Ceremony state (the challenge and what the library needs to check the
//     answer) lives in the table webauthn_ceremonies, one row per session,
//     for at most ceremonyTTL. Finish deletes it before checking anything,
//     so each challenge is answered at most once, and any node may finish a
//     ceremony another node began.
//   - Registering needs a session that is fully authenticated, or one that
//     is waiting for a second factor the person has not got yet ("enroll"):
//     a person who already holds a second factor must use it before adding
//     another, so a stolen password cannot add the thief's key.
//   - Logging in with a key completes a pending session's second factor
//     (Sessions.CompleteMFA with "password+webauthn").
//   - Each credential's signature counter must grow. An assertion whose
//     counter does not (a cloned authenticator, or a replay) is refused and
//     audited as webauthn.clone_suspected; the stored counter is advanced
//     with a compare-and-set, so two nodes cannot both accept one counter.
//   - A person cannot delete the last second factor of an account whose
//     roles need one.
//
// Nothing here is secret: credential ids and public keys may appear in the
// audit log; the private key never leaves the authenticator.

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/google/uuid"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// ceremonyTTL bounds how long a WebAuthn challenge may be answered.
const ceremonyTTL = 5 * time.Minute

// MethodPasswordWebAuthn is the session method after a password and a
// WebAuthn assertion.
const MethodPasswordWebAuthn = "password+webauthn"

const (
	ceremonyRegister = "register"
	ceremonyLogin    = "login"
	maxCredName      = 64
)

// WebAuthnConfig configures WebAuthn.
type WebAuthnConfig struct {
	Store    *store.Store
	Users    *Users
	Sessions *Sessions
	Audit    *audit.Log
	// RPID is the relying party id: the admin console's host name without
	// scheme or port, e.g. "ward.example-hospital.org".
	RPID string
	// RPOrigins are the origins the console is served at, e.g.
	// "https://ward.example-hospital.org:8443". An answer collected at any
	// other origin is refused.
	RPOrigins []string
	RPName    string           // shown by the authenticator; "" means "Ward"
	Now       func() time.Time // nil: time.Now
}

// WebAuthn runs WebAuthn registration and login ceremonies. It is safe for
// concurrent use.
type WebAuthn struct {
	st       *store.Store
	users    *Users
	sessions *Sessions
	audit    *audit.Log
	now      func() time.Time
	rp       *webauthn.WebAuthn
}

// NewWebAuthn checks cfg and returns the relying party.
func NewWebAuthn(cfg WebAuthnConfig) (*WebAuthn, error) {
	if cfg.Store == nil || cfg.Users == nil || cfg.Sessions == nil || cfg.Audit == nil {
		return nil, errors.New("access: webauthn: store, users, sessions and audit are required")
	}
	if cfg.RPID == "" || len(cfg.RPOrigins) == 0 {
		return nil, errors.New("access: webauthn: rp_id and at least one origin are required")
	}
	for _, o := range cfg.RPOrigins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("access: webauthn: origin %q: want scheme://host[:port]", o)
		}
		if h := u.Hostname(); h != cfg.RPID && !strings.HasSuffix(h, "."+cfg.RPID) {
			return nil, fmt.Errorf("access: webauthn: origin %q is not within rp_id %q", o, cfg.RPID)
		}
	}
	name := cfg.RPName
	if name == "" {
		name = "Ward"
	}
	rp, err := webauthn.New(&webauthn.Config{
		RPID:          cfg.RPID,
		RPDisplayName: name,
		RPOrigins:     cfg.RPOrigins,
		// A second factor after the password: user verification is
		// welcome but not required, and no attestation is asked for (no
		// authenticator model is trusted more than another here).
		AttestationPreference: protocol.PreferNoAttestation,
		AuthenticatorSelection: protocol.AuthenticatorSelection{
			ResidentKey:      protocol.ResidentKeyRequirementPreferred,
			UserVerification: protocol.VerificationPreferred,
		},
		Timeouts: webauthn.TimeoutsConfig{
			// Ward enforces ceremonyTTL itself, on its own clock.
			Login:        webauthn.TimeoutConfig{Timeout: ceremonyTTL, TimeoutUVD: ceremonyTTL},
			Registration: webauthn.TimeoutConfig{Timeout: ceremonyTTL, TimeoutUVD: ceremonyTTL},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("access: webauthn: %w", err)
	}
	w := &WebAuthn{st: cfg.Store, users: cfg.Users, sessions: cfg.Sessions, audit: cfg.Audit, now: cfg.Now, rp: rp}
	if w.now == nil {
		w.now = time.Now
	}
	cfg.Users.CountWebAuthn(w.count)
	return w, nil
}

// count is how many credentials a person has (User.WebAuthnCredentials).
func (w *WebAuthn) count(ctx context.Context, userID string) (int, error) {
	var n int
	if err := w.st.QueryRowContext(ctx, `SELECT COUNT(*) FROM webauthn_credentials WHERE user_id = ?`, userID).Scan(&n); err != nil {
		return 0, fmt.Errorf("access: webauthn: %w", err)
	}
	return n, nil
}

// WebAuthnCredential describes a registered credential. It holds no secret.
type WebAuthnCredential struct {
	ID             string     `json:"id" doc:"Credential id, unpadded base64url"`
	Name           string     `json:"name"`
	AAGUID         string     `json:"aaguid,omitempty" doc:"Authenticator model, when it says"`
	Transports     []string   `json:"transports"`
	BackupEligible bool       `json:"backup_eligible" doc:"A synced passkey rather than a device-bound key"`
	BackupState    bool       `json:"backup_state"`
	SignCount      uint32     `json:"sign_count"`
	CreatedAt      time.Time  `json:"created_at"`
	LastUsedAt     *time.Time `json:"last_used_at,omitempty"`
}

// CeremonyRequest is what a browser sends with each step of a ceremony:
// its session cookie, the session's CSRF token and its address.
type CeremonyRequest struct {
	Cookie string
	CSRF   string
	Source string
}

// waUser adapts a User and its credentials to the library.
type waUser struct {
	u     User
	creds []webauthn.Credential
}

func (w waUser) WebAuthnID() []byte                         { return []byte(w.u.ID) }
func (w waUser) WebAuthnName() string                       { return w.u.Username }
func (w waUser) WebAuthnCredentials() []webauthn.Credential { return w.creds }
func (w waUser) WebAuthnDisplayName() string {
	if w.u.DisplayName != "" {
		return w.u.DisplayName
	}
	return w.u.Username
}

// ceremony is what webauthn_ceremonies.data holds.
type ceremony struct {
	Session webauthn.SessionData `json:"session"`
	Name    string               `json:"name,omitempty"`
}

// session resolves the request's session and checks its CSRF token.
func (w *WebAuthn) session(ctx context.Context, req CeremonyRequest) (Session, User, error) {
	if req.Cookie == "" {
		return Session{}, User{}, ErrUnauthenticated
	}
	sess, u, err := w.sessions.Get(ctx, req.Cookie)
	if err != nil {
		return Session{}, User{}, err
	}
	if req.CSRF == "" || subtle.ConstantTimeCompare([]byte(req.CSRF), []byte(sess.CSRF)) != 1 {
		return Session{}, User{}, fmt.Errorf("%w: missing or wrong X-CSRF-Token", ErrForbidden)
	}
	return sess, u, nil
}

// mayRegister reports whether the session may add a credential: it has its
// second factor, or the person has none yet to give.
func mayRegister(sess Session, u User) bool {
	return sess.MFA || len(u.SecondFactors()) == 0
}

// webauthnMethod is the session's method once a WebAuthn assertion (or
// registration) completed its second factor: "password+webauthn" after a
// password.
func webauthnMethod(sess Session) string {
	if sess.Method == MethodPassword || sess.Method == "" {
		return MethodPasswordWebAuthn
	}
	return sess.Method + "+webauthn"
}

// BeginRegistration starts registering a new credential named name for the
// session's person and returns the options for
// navigator.credentials.create ({"publicKey": …}).
func (w *WebAuthn) BeginRegistration(ctx context.Context, req CeremonyRequest, name string) (json.RawMessage, error) {
	sess, u, err := w.session(ctx, req)
	if err != nil {
		return nil, err
	}
	if !mayRegister(sess, u) {
		return nil, fmt.Errorf("%w: use your current second factor before adding a security key", ErrForbidden)
	}
	name = strings.TrimSpace(name)
	if name == "" {
		name = "security key"
	}
	if len(name) > maxCredName {
		return nil, fmt.Errorf("%w: credential name: at most %d bytes", ErrInvalid, maxCredName)
	}
	creds, err := w.credentials(ctx, w.st, u.ID)
	if err != nil {
		return nil, err
	}
	excl := make([]protocol.CredentialDescriptor, 0, len(creds))
	for _, c := range creds {
		excl = append(excl, c.Descriptor())
	}
	opts, sd, err := w.rp.BeginRegistration(waUser{u: u, creds: creds}, webauthn.WithExclusions(excl))
	if err != nil {
		return nil, fmt.Errorf("access: webauthn: begin registration: %w", err)
	}
	if err := w.putCeremony(ctx, sess.ID, ceremonyRegister, ceremony{Session: *sd, Name: name}); err != nil {
		return nil, err
	}
	return json.Marshal(opts)
}

// FinishRegistration checks the authenticator's answer (the JSON of the
// PublicKeyCredential navigator.credentials.create returned) and stores the
// new credential. A session that was waiting to enroll its second factor
// has it afterwards.
func (w *WebAuthn) FinishRegistration(ctx context.Context, req CeremonyRequest, response []byte) (WebAuthnCredential, error) {
	sess, u, err := w.session(ctx, req)
	if err != nil {
		return WebAuthnCredential{}, err
	}
	c, err := w.takeCeremony(ctx, sess.ID, ceremonyRegister)
	if err != nil {
		return WebAuthnCredential{}, err
	}
	now := w.now().UTC()
	actor := "user:" + u.ID
	if !mayRegister(sess, u) {
		return WebAuthnCredential{}, fmt.Errorf("%w: use your current second factor before adding a security key", ErrForbidden)
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(response)
	if err != nil {
		return WebAuthnCredential{}, w.refuse(ctx, actor, "webauthn.register", u.ID, req.Source, err, "the security key's answer is malformed")
	}
	creds, err := w.credentials(ctx, w.st, u.ID)
	if err != nil {
		return WebAuthnCredential{}, err
	}
	cred, err := w.rp.CreateCredential(waUser{u: u, creds: creds}, c.Session, parsed)
	if err != nil {
		return WebAuthnCredential{}, w.refuse(ctx, actor, "webauthn.register", u.ID, req.Source, err, "the security key's answer was refused")
	}
	out := describeCredential(cred, c.Name, now, nil)
	transports, _ := json.Marshal(out.Transports)
	err = w.st.Tx(ctx, func(tx *store.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM webauthn_credentials WHERE id = ?`, cred.ID).Scan(&n); err != nil {
			return fmt.Errorf("access: webauthn: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("%w: this security key is already registered", ErrConflict)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO webauthn_credentials (id, user_id, public_key, attestation_type, attestation_fmt, aaguid, sign_count,
			transports, user_verified, backup_eligible, backup_state, attachment, name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			cred.ID, u.ID, cred.PublicKey, cred.AttestationType, cred.AttestationFormat, cred.Authenticator.AAGUID, int64(cred.Authenticator.SignCount),
			string(transports), cred.Flags.UserVerified, cred.Flags.BackupEligible, cred.Flags.BackupState, string(cred.Authenticator.Attachment), c.Name, now)
		if err != nil {
			return fmt.Errorf("access: webauthn: store credential: %w", err)
		}
		return w.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "webauthn.register", Target: "user:" + u.ID, Outcome: audit.Success, Source: req.Source,
			Detail: map[string]any{"credential": out.ID, "name": out.Name, "aaguid": out.AAGUID, "backup_eligible": out.BackupEligible}})
	})
	if err != nil {
		return WebAuthnCredential{}, err
	}
	if !sess.MFA {
		// The person had no second factor (mayRegister) and has just proved
		// presence with the new key, as they would by logging in with it;
		// without this, a session that was only allowed to enroll would
		// stay so, and one that was complete would need a factor it lacks.
		if _, err := w.sessions.CompleteMFA(ctx, req.Cookie, webauthnMethod(sess)); err != nil {
			return WebAuthnCredential{}, err
		}
	}
	return out, nil
}

// BeginLogin starts the second-factor step of a pending session and returns
// the options for navigator.credentials.get ({"publicKey": …}).
func (w *WebAuthn) BeginLogin(ctx context.Context, req CeremonyRequest) (json.RawMessage, error) {
	sess, u, err := w.session(ctx, req)
	if err != nil {
		return nil, err
	}
	if sess.MFA {
		return nil, fmt.Errorf("%w: this session already has its second factor", ErrConflict)
	}
	creds, err := w.credentials(ctx, w.st, u.ID)
	if err != nil {
		return nil, err
	}
	if len(creds) == 0 {
		return nil, fmt.Errorf("%w: no security key is registered for this account", ErrConflict)
	}
	opts, sd, err := w.rp.BeginLogin(waUser{u: u, creds: creds})
	if err != nil {
		return nil, fmt.Errorf("access: webauthn: begin login: %w", err)
	}
	if err := w.putCeremony(ctx, sess.ID, ceremonyLogin, ceremony{Session: *sd}); err != nil {
		return nil, err
	}
	return json.Marshal(opts)
}

// FinishLogin checks the authenticator's assertion (the JSON of the
// PublicKeyCredential navigator.credentials.get returned) and completes the
// session's second factor.
func (w *WebAuthn) FinishLogin(ctx context.Context, req CeremonyRequest, response []byte) (Session, error) {
	sess, u, err := w.session(ctx, req)
	if err != nil {
		return Session{}, err
	}
	c, err := w.takeCeremony(ctx, sess.ID, ceremonyLogin)
	if err != nil {
		return Session{}, err
	}
	actor := "user:" + u.ID
	if sess.MFA {
		return Session{}, fmt.Errorf("%w: this session already has its second factor", ErrConflict)
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes(response)
	if err != nil {
		return Session{}, w.refuse(ctx, actor, "webauthn.login", u.ID, req.Source, err, "the security key's answer is malformed")
	}
	creds, err := w.credentials(ctx, w.st, u.ID)
	if err != nil {
		return Session{}, err
	}
	var stored *webauthn.Credential
	for i := range creds {
		if subtle.ConstantTimeCompare(creds[i].ID, parsed.RawID) == 1 {
			stored = &creds[i]
		}
	}
	if stored == nil {
		// Someone else's key, or one removed since: the library would say
		// so too, but say it before any other check.
		return Session{}, w.refuse(ctx, actor, "webauthn.login", u.ID, req.Source, errors.New("credential is not registered to this account"), "the security key's answer was refused")
	}
	oldCount := stored.Authenticator.SignCount
	cred, err := w.rp.ValidateLogin(waUser{u: u, creds: creds}, c.Session, parsed)
	if err != nil {
		return Session{}, w.refuse(ctx, actor, "webauthn.login", u.ID, req.Source, err, "the security key's answer was refused")
	}
	credID := credID64(cred.ID)
	now := w.now().UTC()
	if cred.Authenticator.CloneWarning {
		_ = w.audit.Record(ctx, audit.Entry{At: now, Actor: actor, Action: "webauthn.clone_suspected", Target: "user:" + u.ID, Outcome: audit.Denied, Source: req.Source,
			Reason: "signature counter did not increase: the key may be cloned or the answer replayed",
			Detail: map[string]any{"credential": credID, "stored_count": oldCount, "presented_count": parsed.Response.AuthenticatorData.Counter}})
		return Session{}, fmt.Errorf("%w: the security key's signature counter went backwards; it may be cloned, so it is refused (an administrator can see this in the audit log)", ErrForbidden)
	}
	err = w.st.Tx(ctx, func(tx *store.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE webauthn_credentials SET sign_count = ?, backup_state = ?, user_verified = ?, last_used_at = ? WHERE id = ? AND user_id = ? AND sign_count = ?`,
			int64(cred.Authenticator.SignCount), cred.Flags.BackupState, cred.Flags.UserVerified, now, cred.ID, u.ID, int64(oldCount))
		if err != nil {
			return fmt.Errorf("access: webauthn: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return fmt.Errorf("%w: the security key was used at the same time elsewhere; try again", ErrConflict)
		}
		return w.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "webauthn.login", Target: "user:" + u.ID, Outcome: audit.Success, Source: req.Source,
			Detail: map[string]any{"credential": credID, "session": sess.ID}})
	})
	if err != nil {
		return Session{}, err
	}
	return w.sessions.CompleteMFA(ctx, req.Cookie, webauthnMethod(sess))
}

// Credentials lists a person's credentials, oldest first.
func (w *WebAuthn) Credentials(ctx context.Context, userID string) ([]WebAuthnCredential, error) {
	rows, err := w.st.QueryContext(ctx, `SELECT `+credColumns+` FROM webauthn_credentials WHERE user_id = ? ORDER BY created_at, id`, userID)
	if err != nil {
		return nil, fmt.Errorf("access: webauthn: %w", err)
	}
	defer rows.Close()
	out := []WebAuthnCredential{}
	for rows.Next() {
		c, name, created, used, err := scanCredential(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, describeCredential(&c, name, created, used))
	}
	return out, rows.Err()
}

// DeleteCredential removes one of a person's credentials on their own
// behalf. The last second factor of an account whose roles need one stays.
func (w *WebAuthn) DeleteCredential(ctx context.Context, userID, id, source string) error {
	raw, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(raw) == 0 {
		return fmt.Errorf("access: credential %q: %w", id, ErrNotFound)
	}
	u, err := w.users.Get(ctx, userID)
	if err != nil {
		return err
	}
	now := w.now().UTC()
	return w.st.Tx(ctx, func(tx *store.Tx) error {
		var name string
		err := tx.QueryRowContext(ctx, `SELECT name FROM webauthn_credentials WHERE id = ? AND user_id = ?`, raw, userID).Scan(&name)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("access: credential %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("access: webauthn: %w", err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM webauthn_credentials WHERE user_id = ?`, userID).Scan(&n); err != nil {
			return fmt.Errorf("access: webauthn: %w", err)
		}
		if n == 1 && !u.TOTPEnabled && u.NeedsSecondFactor() {
			return fmt.Errorf("%w: it is this account's last second factor and its roles need one; add another first", ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM webauthn_credentials WHERE id = ? AND user_id = ?`, raw, userID); err != nil {
			return fmt.Errorf("access: webauthn: %w", err)
		}
		return w.audit.Append(ctx, tx, audit.Entry{At: now, Actor: "user:" + userID, Action: "webauthn.delete", Target: "user:" + userID, Outcome: audit.Success, Source: source,
			Detail: map[string]any{"credential": id, "name": name}})
	})
}

// refuse audits a refused ceremony step and returns the error for the
// caller, which names no internals.
func (w *WebAuthn) refuse(ctx context.Context, actor, action, userID, source string, cause error, public string) error {
	reason := cause.Error()
	var pe *protocol.Error
	if errors.As(cause, &pe) {
		reason = strings.TrimSpace(pe.Details + " " + pe.DevInfo)
	}
	if err := w.audit.Record(ctx, audit.Entry{At: w.now().UTC(), Actor: actor, Action: action, Target: "user:" + userID, Outcome: audit.Denied, Source: source, Reason: reason}); err != nil {
		return fmt.Errorf("access: webauthn: audit: %w", err)
	}
	return fmt.Errorf("%w: %s", ErrForbidden, public)
}

// putCeremony records the session's ceremony, replacing any earlier one.
func (w *WebAuthn) putCeremony(ctx context.Context, sessionID, kind string, c ceremony) error {
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("access: webauthn: %w", err)
	}
	exp := w.now().UTC().Add(ceremonyTTL)
	_, err = w.st.ExecContext(ctx, `INSERT INTO webauthn_ceremonies (session_id, kind, data, expires_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (session_id) DO UPDATE SET kind = excluded.kind, data = excluded.data, expires_at = excluded.expires_at`,
		sessionID, kind, string(data), exp)
	if err != nil {
		return fmt.Errorf("access: webauthn: save ceremony: %w", err)
	}
	return nil
}

// takeCeremony removes the session's ceremony and returns it if it is of
// the given kind and not expired.
func (w *WebAuthn) takeCeremony(ctx context.Context, sessionID, kind string) (ceremony, error) {
	var (
		gotKind, data string
		exp           time.Time
	)
	err := w.st.Tx(ctx, func(tx *store.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT kind, data, expires_at FROM webauthn_ceremonies WHERE session_id = ?`, sessionID).Scan(&gotKind, &data, &exp)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("access: webauthn: %w", err)
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM webauthn_ceremonies WHERE session_id = ?`, sessionID)
		return err
	})
	if err != nil {
		return ceremony{}, err
	}
	if gotKind != kind || !w.now().Before(exp) {
		return ceremony{}, fmt.Errorf("%w: no security key %s is under way for this session, or it took longer than %s; begin again", ErrConflict, map[string]string{ceremonyRegister: "registration", ceremonyLogin: "login"}[kind], ceremonyTTL)
	}
	var c ceremony
	if err := json.Unmarshal([]byte(data), &c); err != nil {
		return ceremony{}, fmt.Errorf("access: webauthn: ceremony: %w", err)
	}
	return c, nil
}

const credColumns = `id, public_key, attestation_type, attestation_fmt, aaguid, sign_count, transports, user_verified, backup_eligible, backup_state, attachment, name, created_at, last_used_at`

func scanCredential(row interface{ Scan(...any) error }) (webauthn.Credential, string, time.Time, *time.Time, error) {
	var (
		c                  webauthn.Credential
		count              int64
		transports, attach string
		name               string
		uv, be, bs         bool
		created            time.Time
		used               sql.NullTime
	)
	if err := row.Scan(&c.ID, &c.PublicKey, &c.AttestationType, &c.AttestationFormat, &c.Authenticator.AAGUID, &count, &transports,
		&uv, &be, &bs, &attach, &name, &created, &used); err != nil {
		return webauthn.Credential{}, "", time.Time{}, nil, fmt.Errorf("access: webauthn: credential: %w", err)
	}
	c.Authenticator.SignCount = uint32(count)
	c.Authenticator.Attachment = protocol.AuthenticatorAttachment(attach)
	var ts []string
	if err := json.Unmarshal([]byte(transports), &ts); err != nil {
		return webauthn.Credential{}, "", time.Time{}, nil, fmt.Errorf("access: webauthn: credential transports: %w", err)
	}
	for _, t := range ts {
		c.Transport = append(c.Transport, protocol.AuthenticatorTransport(t))
	}
	var f protocol.AuthenticatorFlags
	if uv {
		f |= protocol.FlagUserVerified
	}
	if be {
		f |= protocol.FlagBackupEligible
	}
	if bs {
		f |= protocol.FlagBackupState
	}
	c.Flags = webauthn.NewCredentialFlags(f | protocol.FlagUserPresent)
	return c, name, created.UTC(), ptime(used), nil
}

// credentials loads a person's credentials in the library's shape.
func (w *WebAuthn) credentials(ctx context.Context, q store.Querier, userID string) ([]webauthn.Credential, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+credColumns+` FROM webauthn_credentials WHERE user_id = ? ORDER BY created_at, id`, userID)
	if err != nil {
		return nil, fmt.Errorf("access: webauthn: %w", err)
	}
	defer rows.Close()
	var out []webauthn.Credential
	for rows.Next() {
		c, _, _, _, err := scanCredential(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func describeCredential(c *webauthn.Credential, name string, created time.Time, used *time.Time) WebAuthnCredential {
	out := WebAuthnCredential{
		ID: credID64(c.ID), Name: name, Transports: []string{}, BackupEligible: c.Flags.BackupEligible, BackupState: c.Flags.BackupState,
		SignCount: c.Authenticator.SignCount, CreatedAt: created, LastUsedAt: used,
	}
	if id, err := uuid.FromBytes(c.Authenticator.AAGUID); err == nil && id != uuid.Nil {
		out.AAGUID = id.String()
	}
	for _, t := range c.Transport {
		out.Transports = append(out.Transports, string(t))
	}
	return out
}

func credID64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
