// Package config turns a configuration file, WARD_* environment variables
// and command-line flags into one validated, typed Config for ward serve.
//
// Precedence, lowest first: built-in defaults, the YAML file (--config or
// WARD_CONFIG), environment variables, flags the user actually set. Unknown
// keys in the file are an error, so a misspelt setting never silently falls
// back to its default. ward.reference.yaml next to this file documents
// every key and is checked by a test to load cleanly.
//
// Secrets are never part of Config's printable form: the CA passphrase is
// read from WARD_CA_PASSPHRASE or a file named here, at the moment it is
// needed, and never logged.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is everything ward serve needs to start.
type Config struct {
	// Data is the directory for the SQLite store, the embedded bus, the CA
	// and the bootstrap admin token.
	Data string `yaml:"data"`
	// Store is a PostgreSQL URL, or empty for SQLite in Data.
	Store string `yaml:"store"`
	// Bus is a nats:// URL, or empty for the embedded NATS server in Data.
	Bus string `yaml:"bus"`
	// NodeName names this node in logs, the bus and connection history.
	NodeName string `yaml:"node_name"`

	DeviceAddr string `yaml:"device_addr"`
	MQTTAddr   string `yaml:"mqtt_addr"`
	AdminAddr  string `yaml:"admin_addr"`
	// AdminTLS configures TLS on the admin listener. Off a loopback address
	// the admin listener always serves TLS.
	AdminTLS AdminTLS `yaml:"admin_tls"`

	// DeviceNames are the DNS names and IP addresses devices use to reach
	// Ward; they go into the device listener's TLS certificate.
	DeviceNames []string `yaml:"device_names"`

	Log     Log     `yaml:"log"`
	CA      CA      `yaml:"ca"`
	Enroll  Enroll  `yaml:"enroll"`
	Access  Access  `yaml:"access"`
	Audit   Audit   `yaml:"audit"`
	Gateway Gateway `yaml:"gateway"`
}

// Gateway configures the device MQTT gateway on MQTTAddr.
type Gateway struct {
	// MsgRate and MsgBurst bound each device's messages per second.
	MsgRate  float64 `yaml:"msg_rate"`
	MsgBurst int     `yaml:"msg_burst"`
	// MaxPayload bounds one device message, in bytes.
	MaxPayload int `yaml:"max_payload"`
	// ConnectRatePerDevice and ConnectRatePerSource bound connection
	// attempts per second.
	ConnectRatePerDevice float64 `yaml:"connect_rate_per_device"`
	ConnectRatePerSource float64 `yaml:"connect_rate_per_source"`
	// MaxConnections bounds concurrent device connections on this node
	// (each takes an open file; see docs/operations.md).
	MaxConnections int `yaml:"max_connections"`
	// HistoryRetention is how long connection history is kept.
	HistoryRetention Duration `yaml:"history_retention"`
	// MessageRetention is how long device messages stay in the bus stream.
	MessageRetention Duration `yaml:"message_retention"`
}

// Access configures how people and integrations sign in and what needs a
// second person.
type Access struct {
	// SealKeyFile holds the 32-byte key that seals TOTP seeds at rest;
	// created on first start. Every node needs the same file. Default:
	// <data>/seal.key.
	SealKeyFile string `yaml:"seal_key_file"`
	// MassRevokeLimit is how many devices one request may revoke without a
	// second person's approval.
	MassRevokeLimit int `yaml:"mass_revoke_limit"`
	// SessionIdle and SessionAbsolute bound a person's session.
	SessionIdle     Duration `yaml:"session_idle"`
	SessionAbsolute Duration `yaml:"session_absolute"`
	WebAuthn        WebAuthn `yaml:"webauthn"`
	OIDC            OIDC     `yaml:"oidc"`
}

// WebAuthn configures security keys and passkeys as a second factor. Off
// when RPID is empty.
type WebAuthn struct {
	RPID    string   `yaml:"rp_id"`
	Origins []string `yaml:"origins"`
}

// OIDC configures single sign-on. Off when Issuer is empty.
type OIDC struct {
	Issuer           string              `yaml:"issuer"`
	ClientID         string              `yaml:"client_id"`
	ClientSecretFile string              `yaml:"client_secret_file"`
	RedirectURL      string              `yaml:"redirect_url"`
	Scopes           []string            `yaml:"scopes"`
	GroupsClaim      string              `yaml:"groups_claim"`
	RoleMap          map[string][]string `yaml:"role_map"`
	SiteMap          map[string][]string `yaml:"site_map"`
	TrustIdPMFA      bool                `yaml:"trust_idp_mfa"`
}

// Audit configures the audit chain.
type Audit struct {
	// CheckpointEvery is how often a signed checkpoint of the chain's head
	// is written when entries were added.
	CheckpointEvery Duration `yaml:"checkpoint_every"`
}

// AdminTLS configures TLS on the admin listener.
type AdminTLS struct {
	// Enabled serves TLS even on a loopback address.
	Enabled bool `yaml:"enabled"`
	// CertFile and KeyFile name a PEM certificate chain and key to serve.
	// When both are empty, Ward issues the admin listener a certificate
	// from its own CA for AdminNames.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Names are the DNS names and IP addresses people use to reach the
	// admin listener; default: DeviceNames.
	Names []string `yaml:"names"`
}

// Log configures structured logging.
type Log struct {
	Format string `yaml:"format"` // text or json
	Level  string `yaml:"level"`  // debug, info, warn, error
}

// CA configures Ward's certificate authority.
type CA struct {
	// PassphraseFile holds the passphrase of the issuing CA key. When empty,
	// WARD_CA_PASSPHRASE is used; when that is empty too, a demo CA's
	// passphrase file in <data>/ca is used.
	PassphraseFile string `yaml:"passphrase_file"`
	// CertLifetime is the lifetime of device operational certificates.
	CertLifetime Duration `yaml:"cert_lifetime"`
	// Name is the organisation named in a CA created by ward serve.
	Name string `yaml:"name"`
}

// Enroll configures the EST endpoints.
type Enroll struct {
	MaxBodyBytes int64    `yaml:"max_body_bytes"`
	RetryAfter   Duration `yaml:"retry_after"`
	// RateLimit is enrollment requests per second per source address;
	// 0 keeps the default, a negative value turns the limit off.
	RateLimit float64 `yaml:"rate_limit"`
}

// Duration is a time.Duration written as "168h" or "30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// String formats the duration like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// Set parses a flag value.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Type names the flag type.
func (d *Duration) Type() string { return "duration" }

// Default returns the built-in configuration: one node, everything embedded.
func Default() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "ward"
	}
	return Config{
		Data:       "./ward-data",
		NodeName:   host,
		DeviceAddr: ":8443",
		MQTTAddr:   ":8883",
		AdminAddr:  "127.0.0.1:8080",
		Log:        Log{Format: "text", Level: "info"},
		CA:         CA{CertLifetime: Duration(7 * 24 * time.Hour), Name: "Ward"},
		Enroll:     Enroll{MaxBodyBytes: 16 << 10, RetryAfter: Duration(30 * time.Second)},
		Access: Access{MassRevokeLimit: 5, SessionIdle: Duration(30 * time.Minute), SessionAbsolute: Duration(12 * time.Hour),
			OIDC: OIDC{Scopes: []string{"openid", "profile", "email"}, GroupsClaim: "groups"}},
		Audit: Audit{CheckpointEvery: Duration(time.Minute)},
		Gateway: Gateway{MsgRate: 50, MsgBurst: 100, MaxPayload: 64 << 10, ConnectRatePerDevice: 1, ConnectRatePerSource: 20,
			MaxConnections: 19000, HistoryRetention: Duration(90 * 24 * time.Hour), MessageRetention: Duration(7 * 24 * time.Hour)},
	}
}

// LoadFile applies a YAML file on top of c. Unknown keys are an error.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty file
		return fmt.Errorf("config: %s: %w", path, err)
	}
	return nil
}

// Env lists the environment variables Config reads, for help text.
var Env = []string{
	"WARD_CONFIG", "WARD_DATA", "WARD_STORE", "WARD_BUS", "WARD_NODE_NAME",
	"WARD_DEVICE_ADDR", "WARD_MQTT_ADDR", "WARD_ADMIN_ADDR", "WARD_DEVICE_NAMES",
	"WARD_LOG_FORMAT", "WARD_LOG_LEVEL", "WARD_CA_PASSPHRASE_FILE", "WARD_CERT_LIFETIME",
}

// LoadEnv applies WARD_* variables on top of c, using getenv.
func (c *Config) LoadEnv(getenv func(string) string) error {
	str := map[string]*string{
		"WARD_DATA":               &c.Data,
		"WARD_STORE":              &c.Store,
		"WARD_BUS":                &c.Bus,
		"WARD_NODE_NAME":          &c.NodeName,
		"WARD_DEVICE_ADDR":        &c.DeviceAddr,
		"WARD_MQTT_ADDR":          &c.MQTTAddr,
		"WARD_ADMIN_ADDR":         &c.AdminAddr,
		"WARD_LOG_FORMAT":         &c.Log.Format,
		"WARD_LOG_LEVEL":          &c.Log.Level,
		"WARD_CA_PASSPHRASE_FILE": &c.CA.PassphraseFile,
	}
	for k, p := range str {
		if v := getenv(k); v != "" {
			*p = v
		}
	}
	if v := getenv("WARD_DEVICE_NAMES"); v != "" {
		c.DeviceNames = splitList(v)
	}
	if v := getenv("WARD_CERT_LIFETIME"); v != "" {
		if err := c.CA.CertLifetime.Set(v); err != nil {
			return fmt.Errorf("config: WARD_CERT_LIFETIME: %w", err)
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Validate checks the configuration and fills in derived defaults.
func (c *Config) Validate() error {
	var errs []error
	if c.Data == "" {
		errs = append(errs, errors.New("data: a data directory is required"))
	}
	if c.Store != "" && !strings.HasPrefix(c.Store, "postgres://") && !strings.HasPrefix(c.Store, "postgresql://") && !strings.HasPrefix(c.Store, "sqlite://") {
		errs = append(errs, errors.New("store: want postgres://…, sqlite://… or empty for SQLite in the data directory"))
	}
	if c.Bus != "" && !strings.HasPrefix(c.Bus, "nats://") && !strings.HasPrefix(c.Bus, "tls://") {
		errs = append(errs, errors.New("bus: want nats://… or empty for the embedded NATS server"))
	}
	for name, addr := range map[string]string{"device_addr": c.DeviceAddr, "mqtt_addr": c.MQTTAddr, "admin_addr": c.AdminAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q: %v", name, addr, err))
		}
	}
	if (c.AdminTLS.CertFile == "") != (c.AdminTLS.KeyFile == "") {
		errs = append(errs, errors.New("admin_tls: cert_file and key_file go together"))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q: want text or json", c.Log.Format))
	}
	if _, err := c.LogLevel(); err != nil {
		errs = append(errs, err)
	}
	if lt := time.Duration(c.CA.CertLifetime); lt < 5*time.Minute || lt > 398*24*time.Hour {
		errs = append(errs, fmt.Errorf("ca.cert_lifetime: %s: want between 5m and 398 days", lt))
	}
	if c.Enroll.MaxBodyBytes < 1024 || c.Enroll.MaxBodyBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("enroll.max_body_bytes: %d: want 1024 to 1048576", c.Enroll.MaxBodyBytes))
	}
	if ra := time.Duration(c.Enroll.RetryAfter); ra < time.Second || ra > 24*time.Hour {
		errs = append(errs, fmt.Errorf("enroll.retry_after: %s: want 1s to 24h", ra))
	}
	if c.NodeName == "" {
		errs = append(errs, errors.New("node_name: empty"))
	}
	if c.Access.MassRevokeLimit < 1 || c.Access.MassRevokeLimit > 10000 {
		errs = append(errs, fmt.Errorf("access.mass_revoke_limit: %d: want 1 to 10000", c.Access.MassRevokeLimit))
	}
	if i, a := time.Duration(c.Access.SessionIdle), time.Duration(c.Access.SessionAbsolute); i < time.Minute || a < i || a > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("access.session_idle %s / session_absolute %s: want 1m ≤ idle ≤ absolute ≤ 168h", i, a))
	}
	if w := c.Access.WebAuthn; w.RPID != "" && len(w.Origins) == 0 {
		errs = append(errs, errors.New("access.webauthn: origins are required with rp_id (e.g. https://ward.example:8080)"))
	}
	if o := c.Access.OIDC; o.Issuer != "" {
		if o.ClientID == "" || o.RedirectURL == "" || len(o.RoleMap) == 0 {
			errs = append(errs, errors.New("access.oidc: issuer needs client_id, redirect_url and a role_map"))
		}
	}
	if g := c.Gateway; g.MsgRate <= 0 || g.MsgBurst < 1 || g.MaxPayload < 256 || g.MaxPayload > 1<<20 ||
		g.ConnectRatePerDevice <= 0 || g.ConnectRatePerSource <= 0 || g.MaxConnections < 1 {
		errs = append(errs, errors.New("gateway: rates, burst, max_payload (256 B to 1 MiB) and max_connections must be positive"))
	}
	if r := time.Duration(c.Gateway.HistoryRetention); r < time.Hour {
		errs = append(errs, fmt.Errorf("gateway.history_retention: %s: at least 1h", r))
	}
	if r := time.Duration(c.Gateway.MessageRetention); r < time.Hour {
		errs = append(errs, fmt.Errorf("gateway.message_retention: %s: at least 1h", r))
	}
	if ce := time.Duration(c.Audit.CheckpointEvery); ce < time.Second || ce > 24*time.Hour {
		errs = append(errs, fmt.Errorf("audit.checkpoint_every: %s: want 1s to 24h", ce))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if abs, err := filepath.Abs(c.Data); err == nil {
		c.Data = abs
	}
	if len(c.DeviceNames) == 0 {
		c.DeviceNames = []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil && h != "" {
			c.DeviceNames = append(c.DeviceNames, h)
		}
	}
	if host, _, err := net.SplitHostPort(c.AdminAddr); err == nil && !isLoopback(host) {
		c.AdminTLS.Enabled = true // never plain HTTP off this host
	}
	if c.AdminTLS.CertFile != "" {
		c.AdminTLS.Enabled = true
	}
	if len(c.AdminTLS.Names) == 0 {
		c.AdminTLS.Names = c.DeviceNames
	}
	return nil
}

// AdminScheme is "https" when the admin listener serves TLS, else "http".
func (c *Config) AdminScheme() string {
	if c.AdminTLS.Enabled {
		return "https"
	}
	return "http"
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LogLevel parses Log.Level.
func (c *Config) LogLevel() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.Log.Level)); err != nil {
		return 0, fmt.Errorf("log.level: %q: want debug, info, warn or error", c.Log.Level)
	}
	return l, nil
}

// StoreURL is the store to open: Store, or SQLite in the data directory.
func (c *Config) StoreURL() string {
	if c.Store != "" {
		return c.Store
	}
	return "sqlite://" + filepath.Join(c.Data, "ward.db")
}

// CADir is where the CA's certificates and keys live.
func (c *Config) CADir() string { return filepath.Join(c.Data, "ca") }

// AdminTokenPath is where the bootstrap admin token is written.
func (c *Config) AdminTokenPath() string { return filepath.Join(c.Data, "admin-token") }

// SealKeyPath is the file holding the key that seals secrets at rest.
func (c *Config) SealKeyPath() string {
	if c.Access.SealKeyFile != "" {
		return c.Access.SealKeyFile
	}
	return filepath.Join(c.Data, "seal.key")
}

// AuditKeyPath is the file holding the audit checkpoint signing key.
func (c *Config) AuditKeyPath() string { return filepath.Join(c.Data, "audit-checkpoint.key") }

// BusDir is where the embedded NATS server keeps JetStream.
func (c *Config) BusDir() string { return filepath.Join(c.Data, "bus") }
