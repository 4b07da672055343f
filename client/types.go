package client

import "time"

// State is a device's lifecycle state.
type State string

// Device states.
const (
	StatePending        State = "pending"
	StateActive         State = "active"
	StateQuarantined    State = "quarantined"
	StateRevoked        State = "revoked"
	StateDecommissioned State = "decommissioned"
)

// Device is a device in Ward's registry.
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
	// Certificates is filled by Client.Device only.
	Certificates []Certificate `json:"certificates,omitempty"`
}

// Certificate is an operational certificate Ward issued to a device.
type Certificate struct {
	Serial    string     `json:"serial"`
	DeviceID  string     `json:"device_id"`
	IssuedAt  time.Time  `json:"issued_at"`
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// DeviceFilter selects devices for Client.Devices. Empty fields do not filter.
type DeviceFilter struct {
	State        State
	Manufacturer string // name or id
	Site, Unit   string
	After        string // Ward id to continue after
	Limit        int    // server default 100, at most 1000
}

// DeviceList is one page of devices.
type DeviceList struct {
	Items []Device `json:"items"`
	Next  string   `json:"next,omitempty"` // After for the next page; empty on the last
}

// Preregistration is a purchase record for Client.Preregister.
type Preregistration struct {
	Serial       string   `json:"serial"`
	Manufacturer string   `json:"manufacturer"` // name or id
	Model        string   `json:"model"`
	Site         string   `json:"site,omitempty"`
	Unit         string   `json:"unit,omitempty"`
	Tags         []string `json:"tags,omitempty"`
}

// Manufacturer is a device maker whose birth certificates Ward trusts.
type Manufacturer struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Fingerprint string    `json:"fingerprint"` // SHA256:<hex> of the first CA certificate
	CAPEM       string    `json:"ca_pem"`
	CreatedAt   time.Time `json:"created_at"`
	CreatedBy   string    `json:"created_by"`
}

// CertInfo describes one CA certificate.
type CertInfo struct {
	Subject     string    `json:"subject"`
	Serial      string    `json:"serial"`
	Fingerprint string    `json:"fingerprint"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	PEM         string    `json:"pem"`
}

// CAInfo describes Ward's CA.
type CAInfo struct {
	Root                             CertInfo `json:"root"`
	Issuer                           CertInfo `json:"issuer"`
	DeviceCertificateLifetime        string   `json:"device_certificate_lifetime"`
	DeviceCertificateLifetimeSeconds int64    `json:"device_certificate_lifetime_seconds"`
}

// AuditEntry is one audit record.
type AuditEntry struct {
	Seq     int64          `json:"seq"`
	At      time.Time      `json:"at"`
	Actor   string         `json:"actor"`
	Action  string         `json:"action"`
	Target  string         `json:"target,omitempty"`
	Outcome string         `json:"outcome"`
	Reason  string         `json:"reason,omitempty"`
	Source  string         `json:"source,omitempty"`
	Detail  map[string]any `json:"detail,omitempty"`
}

// AuditFilter selects audit entries for Client.Audit.
type AuditFilter struct {
	Target  string // exact, e.g. "device:<id>"
	Action  string // prefix, e.g. "device."
	Outcome string // success, denied, pending or failed
	After   int64  // entries with a greater Seq
	Limit   int    // server default 100, at most 1000
}

// Token describes an API token; it never holds the secret.
type Token struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Roles      []string   `json:"roles"`
	Sites      []string   `json:"sites"`
	CreatedAt  time.Time  `json:"created_at"`
	CreatedBy  string     `json:"created_by,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// TokenRequest asks for a new API token. The token holds at most what its
// creator holds.
type TokenRequest struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`           // e.g. ["viewer"]
	Sites []string `json:"sites,omitempty"` // empty: the creator's sites
	TTL   string   `json:"ttl,omitempty"`   // e.g. "720h"; empty: 90 days
}
