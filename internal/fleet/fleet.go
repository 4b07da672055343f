// Package fleet is the device registry: which devices exist, who made them,
// what state each one is in, and which operational certificates Ward has
// issued to them.
//
// # Identity
//
// A device is born with a serial number and a birth certificate (IDevID)
// signed by its manufacturer's CA. Ward trusts a manufacturer once an admin
// registers that manufacturer's CA certificate(s). Inside Ward a device is
// named by its Ward id: 26 lowercase base32 characters, random, never reused,
// safe in URIs and MQTT topics. (manufacturer, serial) is unique.
//
// # States
//
//	         preregister / first enrollment attempt
//	                      │
//	                   pending ──reject──▶ revoked
//	                      │ approve (or preregistered) + certificate issued
//	                      ▼
//	quarantined ◀──────▶ active
//	      │                 │
//	      └──── revoke ─────┴──▶ revoked ──decommission──▶ decommissioned
//
// pending: known but not admitted; the device gets no certificate until the
// record is approved (a purchase record pre-registered by an admin counts as
// approval). active: admitted, holds an operational certificate.
// quarantined: admitted but restricted by the gateway (therapy is never
// stopped). revoked: every certificate revoked; refused on every listener.
// decommissioned: retired for good; refused on every listener. revoked and
// decommissioned are final except revoked → decommissioned.
//
// # Revocation
//
// Revoking or decommissioning a device revokes all of its unexpired
// certificates in the same transaction. The registry keeps the revoked
// serials in memory (loaded at start, updated on change and, on several
// nodes, from the bus through ReloadRevocations) so that every listener can
// check a certificate without a query; the CRL is built from the same rows.
package fleet

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
)

// State is a device's lifecycle state.
type State string

// Device states.
const (
	Pending        State = "pending"
	Active         State = "active"
	Quarantined    State = "quarantined"
	Revoked        State = "revoked"
	Decommissioned State = "decommissioned"
)

// Valid reports whether s is a known state.
func (s State) Valid() bool {
	switch s {
	case Pending, Active, Quarantined, Revoked, Decommissioned:
		return true
	}
	return false
}

// Admitted reports whether a device in state s may hold and use an
// operational certificate.
func (s State) Admitted() bool { return s == Active || s == Quarantined }

// Errors. Callers test with errors.Is; the API maps them to HTTP statuses.
var (
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("already exists")
	ErrInvalid   = errors.New("invalid")
	ErrState     = errors.New("not allowed in the device's state")
	ErrAmbiguous = errors.New("ambiguous device reference")
	ErrUntrusted = errors.New("not trusted")
)

// Device is one device in the registry.
type Device struct {
	ID                string     `json:"id"`
	ManufacturerID    string     `json:"manufacturer_id"`
	Manufacturer      string     `json:"manufacturer"`
	Serial            string     `json:"serial"`
	Model             string     `json:"model,omitempty"`
	Site              string     `json:"site,omitempty"`
	Unit              string     `json:"unit,omitempty"`
	Tags              []string   `json:"tags"`
	State             State      `json:"state"`
	StateReason       string     `json:"state_reason,omitempty"`
	ApprovedAt        *time.Time `json:"approved_at,omitempty"`
	ApprovedBy        string     `json:"approved_by,omitempty"`
	CreatedAt         time.Time  `json:"created_at"`
	UpdatedAt         time.Time  `json:"updated_at"`
	LastSeenAt        *time.Time `json:"last_seen_at,omitempty"`
	EnrollRequestedAt *time.Time `json:"enroll_requested_at,omitempty"`
	CertSerial        string     `json:"cert_serial,omitempty"`
	CertNotAfter      *time.Time `json:"cert_not_after,omitempty"`
}

// Approved reports whether the device may be issued a certificate.
func (d Device) Approved() bool { return d.ApprovedAt != nil }

// Manufacturer is a device maker whose birth certificates Ward trusts.
type Manufacturer struct {
	ID          string              `json:"id"`
	Name        string              `json:"name"`
	Fingerprint string              `json:"fingerprint"` // of the first CA certificate
	CAPEM       string              `json:"ca_pem"`
	CreatedAt   time.Time           `json:"created_at"`
	CreatedBy   string              `json:"created_by"`
	CAs         []*x509.Certificate `json:"-"`
	pool        *x509.CertPool      // CAs, for verification
}

// Config configures a Registry.
type Config struct {
	Store *store.Store
	Audit *audit.Log
	// OnRevoke, when set, is called after a transaction that revoked
	// certificates commits, with their serials (hex), so other nodes can
	// reload. It must not block.
	OnRevoke func(serials []string)
	// OnManufacturersChanged, when set, is called after a manufacturer is
	// added, so other nodes can drop their cached list. It must not block.
	OnManufacturersChanged func()
	// OnStateChange, when set, is called after a transaction that changed a
	// device's state commits (quarantine, release, revoke, reject,
	// decommission), so the gateway of every node can act on the device's
	// session. It must not block.
	OnStateChange func(deviceID string, state State)
	Now           func() time.Time
	Rand          io.Reader
}

// Registry is the device registry. It is safe for concurrent use.
type Registry struct {
	st       *store.Store
	audit    *audit.Log
	onRevoke func([]string)
	onState  func(string, State)
	now      func() time.Time
	rand     io.Reader

	revoked    sync.Map // cert serial (hex) → struct{}
	revokedGen atomic.Uint64

	onManufacturers func()
	mfrMu           sync.RWMutex
	mfrCache        []Manufacturer // nil: not loaded
	mfrReloaded     atomic.Int64   // unix nanoseconds of the last reload for an unknown issuer
}

// New returns the registry and loads the revocation set.
func New(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Store == nil || cfg.Audit == nil {
		return nil, errors.New("fleet: store and audit log are required")
	}
	r := &Registry{st: cfg.Store, audit: cfg.Audit, onRevoke: cfg.OnRevoke, onManufacturers: cfg.OnManufacturersChanged, onState: cfg.OnStateChange, now: cfg.Now, rand: cfg.Rand}
	if r.now == nil {
		r.now = time.Now
	}
	if r.rand == nil {
		r.rand = rand.Reader
	}
	if err := r.ReloadRevocations(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func (r *Registry) newID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(r.rand, b[:]); err != nil {
		return "", fmt.Errorf("fleet: id: %w", err)
	}
	return idEncoding.EncodeToString(b[:]), nil
}

var (
	serialRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$`)
	labelRE  = regexp.MustCompile(`^[\pL\pN][\pL\pN ._:/+-]{0,127}$`)
	idRE     = regexp.MustCompile(`^[a-z2-7]{26}$`)
)

// ValidSerial reports whether s is acceptable as a device serial number.
func ValidSerial(s string) bool { return serialRE.MatchString(s) }

// IsID reports whether s has the shape of a Ward device id.
func IsID(s string) bool { return idRE.MatchString(s) }

func checkLabel(field, v string, required bool) error {
	if v == "" {
		if required {
			return fmt.Errorf("%w: %s is required", ErrInvalid, field)
		}
		return nil
	}
	if !labelRE.MatchString(v) {
		return fmt.Errorf("%w: %s %q: use letters, digits, spaces and . _ : / + - (at most 128)", ErrInvalid, field, v)
	}
	return nil
}

const deviceColumns = `d.id, d.manufacturer_id, m.name, d.serial, d.model, d.site, d.unit, d.tags, d.state, d.state_reason,
	d.approved_at, d.approved_by, d.created_at, d.updated_at, d.last_seen_at, d.enroll_requested_at, d.cert_serial, d.cert_not_after`

const deviceFrom = ` FROM devices d JOIN manufacturers m ON m.id = d.manufacturer_id`

func scanDevice(row interface{ Scan(...any) error }) (Device, error) {
	var (
		d                                           Device
		tags                                        string
		approved, lastSeen, enrollReq, certNotAfter sql.NullTime
	)
	err := row.Scan(&d.ID, &d.ManufacturerID, &d.Manufacturer, &d.Serial, &d.Model, &d.Site, &d.Unit, &tags, &d.State, &d.StateReason,
		&approved, &d.ApprovedBy, &d.CreatedAt, &d.UpdatedAt, &lastSeen, &enrollReq, &d.CertSerial, &certNotAfter)
	if err != nil {
		return Device{}, err
	}
	if err := json.Unmarshal([]byte(tags), &d.Tags); err != nil {
		return Device{}, fmt.Errorf("fleet: device %s: tags: %w", d.ID, err)
	}
	if d.Tags == nil {
		d.Tags = []string{}
	}
	d.CreatedAt, d.UpdatedAt = d.CreatedAt.UTC(), d.UpdatedAt.UTC()
	d.ApprovedAt, d.LastSeenAt, d.EnrollRequestedAt, d.CertNotAfter = ptime(approved), ptime(lastSeen), ptime(enrollReq), ptime(certNotAfter)
	return d, nil
}

func ptime(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

// Get returns a device by Ward id or, failing that, by serial number. A
// serial shared by devices of several manufacturers is ErrAmbiguous.
func (r *Registry) Get(ctx context.Context, ref string) (Device, error) {
	return r.get(ctx, r.st, ref)
}

func (r *Registry) get(ctx context.Context, q store.Querier, ref string) (Device, error) {
	if ref == "" {
		return Device{}, fmt.Errorf("fleet: %w: empty device reference", ErrInvalid)
	}
	if IsID(ref) {
		d, err := scanDevice(q.QueryRowContext(ctx, `SELECT `+deviceColumns+deviceFrom+` WHERE d.id = ?`, ref))
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return Device{}, fmt.Errorf("fleet: device %s: %w", ref, err)
		}
	}
	rows, err := q.QueryContext(ctx, `SELECT `+deviceColumns+deviceFrom+` WHERE d.serial = ? LIMIT 2`, ref)
	if err != nil {
		return Device{}, fmt.Errorf("fleet: device %s: %w", ref, err)
	}
	defer rows.Close()
	var found []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return Device{}, err
		}
		found = append(found, d)
	}
	if err := rows.Err(); err != nil {
		return Device{}, fmt.Errorf("fleet: device %s: %w", ref, err)
	}
	switch len(found) {
	case 0:
		return Device{}, fmt.Errorf("fleet: device %q: %w", ref, ErrNotFound)
	case 1:
		return found[0], nil
	}
	return Device{}, fmt.Errorf("fleet: serial %q is used by devices of several manufacturers; use the Ward id: %w", ref, ErrAmbiguous)
}

// BySerial returns the device with the given manufacturer and serial.
func (r *Registry) BySerial(ctx context.Context, q store.Querier, manufacturerID, serial string) (Device, error) {
	d, err := scanDevice(q.QueryRowContext(ctx, `SELECT `+deviceColumns+deviceFrom+` WHERE d.manufacturer_id = ? AND d.serial = ?`, manufacturerID, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("fleet: device %s/%s: %w", manufacturerID, serial, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("fleet: device %s/%s: %w", manufacturerID, serial, err)
	}
	return d, nil
}

// ListFilter selects devices for List.
type ListFilter struct {
	State        State
	Manufacturer string // name or id
	Site, Unit   string
	Sites        []string // when set, only devices of these sites
	After        string   // Ward id to continue after (devices are listed by id)
	Limit        int      // default 100, at most 1000
}

// List returns devices ordered by Ward id.
func (r *Registry) List(ctx context.Context, f ListFilter) ([]Device, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	q := `SELECT ` + deviceColumns + deviceFrom + ` WHERE d.id > ?`
	args := []any{f.After}
	if f.State != "" {
		if !f.State.Valid() {
			return nil, fmt.Errorf("fleet: %w: unknown state %q", ErrInvalid, f.State)
		}
		q += ` AND d.state = ?`
		args = append(args, f.State)
	}
	if f.Manufacturer != "" {
		q += ` AND (m.name = ? OR m.id = ?)`
		args = append(args, f.Manufacturer, f.Manufacturer)
	}
	if f.Site != "" {
		q += ` AND d.site = ?`
		args = append(args, f.Site)
	}
	if f.Unit != "" {
		q += ` AND d.unit = ?`
		args = append(args, f.Unit)
	}
	if len(f.Sites) > 0 {
		q += ` AND d.site IN (?` + strings.Repeat(", ?", len(f.Sites)-1) + `)`
		for _, site := range f.Sites {
			args = append(args, site)
		}
	}
	q += ` ORDER BY d.id LIMIT ?`
	args = append(args, f.Limit)
	rows, err := r.st.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("fleet: list devices: %w", err)
	}
	defer rows.Close()
	out := []Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("fleet: list devices: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Counts returns the number of devices in each state.
func (r *Registry) Counts(ctx context.Context) (map[State]int, error) {
	rows, err := r.st.QueryContext(ctx, `SELECT state, COUNT(*) FROM devices GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("fleet: counts: %w", err)
	}
	defer rows.Close()
	out := map[State]int{}
	for rows.Next() {
		var (
			s State
			n int
		)
		if err := rows.Scan(&s, &n); err != nil {
			return nil, err
		}
		out[s] = n
	}
	return out, rows.Err()
}

// Preregistration is a purchase record: a device that will be admitted
// without a person's approval when it first enrolls.
type Preregistration struct {
	Serial       string   `json:"serial"`
	Manufacturer string   `json:"manufacturer"` // name or id
	Model        string   `json:"model"`
	Site         string   `json:"site,omitempty"`
	Unit         string   `json:"unit,omitempty"`
	Tags         []string `json:"tags,omitempty"`
}

func (p Preregistration) validate() error {
	if !ValidSerial(p.Serial) {
		return fmt.Errorf("%w: serial %q: 1 to 128 letters, digits and . _ : / + -", ErrInvalid, p.Serial)
	}
	if err := checkLabel("model", p.Model, true); err != nil {
		return err
	}
	if err := checkLabel("site", p.Site, false); err != nil {
		return err
	}
	if err := checkLabel("unit", p.Unit, false); err != nil {
		return err
	}
	if len(p.Tags) > 32 {
		return fmt.Errorf("%w: at most 32 tags", ErrInvalid)
	}
	for _, t := range p.Tags {
		if err := checkLabel("tag", t, true); err != nil {
			return err
		}
	}
	return nil
}

// Preregister records a purchase: the device is created pending and
// approved, so its first enrollment is admitted at once. Preregistering a
// device that already asked to enroll approves it and fills in its details.
func (r *Registry) Preregister(ctx context.Context, actor string, p Preregistration) (Device, error) {
	if err := p.validate(); err != nil {
		return Device{}, fmt.Errorf("fleet: preregister: %w", err)
	}
	m, err := r.Manufacturer(ctx, p.Manufacturer)
	if err != nil {
		return Device{}, fmt.Errorf("fleet: preregister: %w", err)
	}
	if p.Tags == nil {
		p.Tags = []string{}
	}
	tags, _ := json.Marshal(p.Tags)
	now := r.now().UTC()
	var id string
	err = r.st.Tx(ctx, func(tx *store.Tx) error {
		existing, err := r.BySerial(ctx, tx, m.ID, p.Serial)
		switch {
		case errors.Is(err, ErrNotFound):
			if id, err = r.newID(); err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO devices (id, manufacturer_id, serial, model, site, unit, tags, state, approved_at, approved_by, created_at, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				id, m.ID, p.Serial, p.Model, p.Site, p.Unit, string(tags), Pending, now, "preregistration by "+actor, now, now)
			if err != nil {
				return fmt.Errorf("fleet: preregister: %w", err)
			}
		case err != nil:
			return err
		case existing.State == Pending && !existing.Approved():
			id = existing.ID
			_, err = tx.ExecContext(ctx, `UPDATE devices SET model = ?, site = ?, unit = ?, tags = ?, approved_at = ?, approved_by = ?, updated_at = ? WHERE id = ?`,
				p.Model, p.Site, p.Unit, string(tags), now, "preregistration by "+actor, now, id)
			if err != nil {
				return fmt.Errorf("fleet: preregister: %w", err)
			}
		default:
			return fmt.Errorf("fleet: preregister: device %s/%s (%s, %s): %w", m.Name, p.Serial, existing.ID, existing.State, ErrConflict)
		}
		return r.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "device.preregister", Target: "device:" + id, Outcome: audit.Success,
			Detail: map[string]any{"serial": p.Serial, "manufacturer": m.Name, "model": p.Model}})
	})
	if err != nil {
		return Device{}, err
	}
	return r.Get(ctx, id)
}

// transition changes a device's state inside one transaction with its audit
// entry. allowed lists the states it may start from.
func (r *Registry) transition(ctx context.Context, actor, ref, action string, allowed []State, apply func(tx *store.Tx, d Device, now time.Time) error) (Device, error) {
	now := r.now().UTC()
	var (
		id         string
		from       State
		revokedNow []string
	)
	err := r.st.Tx(ctx, func(tx *store.Tx) error {
		d, err := r.get(ctx, tx, ref)
		if err != nil {
			return err
		}
		id, from = d.ID, d.State
		ok := false
		for _, s := range allowed {
			ok = ok || d.State == s
		}
		if !ok {
			return fmt.Errorf("fleet: %s device %s: %w (it is %s)", strings.TrimPrefix(action, "device."), d.ID, ErrState, d.State)
		}
		if err := apply(tx, d, now); err != nil {
			return err
		}
		if revokedNow, err = r.revokeCertificates(ctx, tx, d.ID, now); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return Device{}, err
	}
	r.markRevoked(revokedNow)
	d, err := r.Get(ctx, id)
	if err == nil && d.State != from {
		r.stateChanged(d.ID, d.State)
	}
	return d, err
}

// stateChanged tells OnStateChange, if set, about a committed change.
func (r *Registry) stateChanged(id string, s State) {
	if r.onState != nil {
		r.onState(id, s)
	}
}

// Approve admits a pending device: its next enrollment gets a certificate.
func (r *Registry) Approve(ctx context.Context, actor, ref string) (Device, error) {
	return r.transition(ctx, actor, ref, "device.approve", []State{Pending}, func(tx *store.Tx, d Device, now time.Time) error {
		if d.Approved() {
			return fmt.Errorf("fleet: approve device %s: %w (already approved)", d.ID, ErrState)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET approved_at = ?, approved_by = ?, updated_at = ? WHERE id = ?`, now, actor, now, d.ID); err != nil {
			return fmt.Errorf("fleet: approve: %w", err)
		}
		return r.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: "device.approve", Target: "device:" + d.ID, Outcome: audit.Success,
			Detail: map[string]any{"serial": d.Serial, "manufacturer": d.Manufacturer}})
	})
}

// Reject refuses a pending device for good: it becomes revoked, and its
// later enrollment attempts are refused rather than queued again.
func (r *Registry) Reject(ctx context.Context, actor, ref, reason string) (Device, error) {
	return r.setFinal(ctx, actor, ref, "device.reject", []State{Pending}, Revoked, "enrollment rejected", reason)
}

// Revoke revokes every certificate of the device and refuses it everywhere.
func (r *Registry) Revoke(ctx context.Context, actor, ref, reason string) (Device, error) {
	return r.setFinal(ctx, actor, ref, "device.revoke", []State{Pending, Active, Quarantined}, Revoked, "revoked", reason)
}

// Decommission retires the device for good and revokes its certificates.
func (r *Registry) Decommission(ctx context.Context, actor, ref, reason string) (Device, error) {
	return r.setFinal(ctx, actor, ref, "device.decommission", []State{Pending, Active, Quarantined, Revoked}, Decommissioned, "decommissioned", reason)
}

func (r *Registry) setFinal(ctx context.Context, actor, ref, action string, from []State, to State, what, reason string) (Device, error) {
	if len(reason) > 512 {
		return Device{}, fmt.Errorf("fleet: %w: reason longer than 512 bytes", ErrInvalid)
	}
	stateReason := what
	if reason != "" {
		stateReason += ": " + reason
	}
	return r.transition(ctx, actor, ref, action, from, func(tx *store.Tx, d Device, now time.Time) error {
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = ?, state_reason = ?, updated_at = ? WHERE id = ?`, to, stateReason, now, d.ID); err != nil {
			return fmt.Errorf("fleet: %s: %w", action, err)
		}
		return r.audit.Append(ctx, tx, audit.Entry{At: now, Actor: actor, Action: action, Target: "device:" + d.ID, Outcome: audit.Success, Reason: reason,
			Detail: map[string]any{"serial": d.Serial, "manufacturer": d.Manufacturer, "from": string(d.State), "to": string(to)}})
	})
}

// revokeCertificates marks every unrevoked certificate of a device in a
// final state as revoked, and returns their serials.
func (r *Registry) revokeCertificates(ctx context.Context, tx *store.Tx, deviceID string, now time.Time) ([]string, error) {
	var state State
	if err := tx.QueryRowContext(ctx, `SELECT state FROM devices WHERE id = ?`, deviceID).Scan(&state); err != nil {
		return nil, fmt.Errorf("fleet: revoke certificates: %w", err)
	}
	if state != Revoked && state != Decommissioned {
		return nil, nil
	}
	reason := reasonCessationOfOperation
	if state == Revoked {
		reason = reasonPrivilegeWithdrawn
	}
	rows, err := tx.QueryContext(ctx, `SELECT serial FROM certificates WHERE device_id = ? AND revoked_at IS NULL AND not_after > ?`, deviceID, now)
	if err != nil {
		return nil, fmt.Errorf("fleet: revoke certificates: %w", err)
	}
	var serials []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return nil, err
		}
		serials = append(serials, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE device_id = ? AND revoked_at IS NULL AND not_after > ?`,
		now, reason, deviceID, now); err != nil {
		return nil, fmt.Errorf("fleet: revoke certificates: %w", err)
	}
	return serials, nil
}

// CRL reason codes (RFC 5280 §5.3.1).
const (
	reasonCessationOfOperation = 5
	reasonPrivilegeWithdrawn   = 9
)
