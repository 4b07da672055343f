// Package enroll is Ward's EST server (RFC 7030): how a device proves who
// made it, gets admitted to the fleet and obtains, then renews, the
// operational certificate it uses on every other device listener.
//
// # Parties and trust
//
//   - The device holds a key it generated itself and a birth certificate
//     (IDevID) signed by its manufacturer's CA, with its serial number in the
//     subject serialNumber attribute (OID 2.5.4.5) and ExtKeyUsage clientAuth.
//   - The manufacturer CA is trusted because an admin registered it in the
//     fleet registry (fleet.AddManufacturer). Nothing else vouches for a birth
//     certificate; Ward never trusts a manufacturer CA for anything but
//     enrollment.
//   - Ward's issuing CA (pki.Authority) signs the operational certificate
//     (LDevID): CN=<ward id>, serialNumber=<device serial>, URI SAN
//     ward://device/<ward id>, 7 days by default. It also signs the TLS
//     server certificate of the device listener and the CRL, so a device
//     needs only Ward's root to trust everything it is sent.
//
// # Endpoints
//
//	GET  /.well-known/est/cacerts         issuing CA + root, certs-only PKCS#7, base64
//	POST /.well-known/est/simpleenroll    TLS client cert = birth certificate
//	POST /.well-known/est/simplereenroll  TLS client cert = current LDevID
//	GET  /crl                             DER CRL of Ward's issuing CA
//
// Requests carry a base64 DER PKCS#10 body (Content-Type application/pkcs10);
// a certificate is returned as a base64 certs-only PKCS#7 holding the issued
// certificate only. docs/device-protocol.md is the public description.
//
// # TLS
//
// The listener speaks TLS 1.3 only and requests (does not require) a client
// certificate, so a device without one, or with one nobody trusts, gets a
// readable HTTP refusal and an audit record instead of an opaque handshake
// failure. The one thing refused during the handshake is a certificate that
// Ward issued and has revoked: that check reads the registry's in-memory
// revocation set and costs nothing for everyone else.
//
// # Decisions
//
// simpleenroll: the birth certificate must chain to a registered
// manufacturer CA and be valid now; the CSR must be well formed, correctly
// self-signed and name the same serial as the birth certificate. Then the
// device (manufacturer, serial) decides:
//
//	unknown                      → created pending, 202 + Retry-After
//	pending, not approved        → enrollment request noted, 202 + Retry-After
//	pending approved (preregistered or approved by a person),
//	active, quarantined          → certificate issued, 200; pending → active
//	revoked, decommissioned      → 403
//
// simplereenroll: the client certificate must be a valid, unrevoked LDevID
// of an admitted (active or quarantined) device, and the CSR must name that
// device's serial. The new certificate names the same Ward id.
//
// A certificate is signed outside any transaction; recording it and its
// audit entry is one transaction, which fails with nothing written if the
// device was revoked in the meantime. Every refusal writes one audit entry
// (outcome denied) and nothing else. Neither logs nor audit entries ever
// hold a CSR, a key or any other secret.
//
// # Errors
//
// Each refusal is an error wrapping one of the sentinel errors below;
// statusOf maps them to HTTP statuses, in one place:
//
//	ErrNoCertificate   401  no client certificate
//	ErrForbidden       403  certificate not trusted, expired, wrong kind; device refused
//	ErrBadRequest      400  body not base64, not a CSR, bad signature, wrong serial, weak key
//	ErrTooLarge        413  body over Config.MaxBody
//	ErrMediaType       415  Content-Type is not application/pkcs10
//	ErrRateLimited     429  too many requests from this source address
//	anything else      500  logged, never shown to the client
//
// Error responses are one line of text/plain meant for a person.
package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/ratelimit"
	"github.com/wardhq/ward/internal/store"
)

// Endpoint paths.
const (
	PathCACerts        = "/.well-known/est/cacerts"
	PathSimpleEnroll   = "/.well-known/est/simpleenroll"
	PathSimpleReenroll = "/.well-known/est/simplereenroll"
	PathCRL            = "/crl"
)

// Audit actions.
const (
	ActionSimpleEnroll   = "enroll.simpleenroll"
	ActionSimpleReenroll = "enroll.simplereenroll"
	ActionHandshake      = "enroll.handshake"
)

// Defaults.
const (
	DefaultMaxBody    = 16 << 10
	DefaultRetryAfter = 30 * time.Second
	DefaultRateLimit  = 20 // requests per second per source address
	DefaultRateBurst  = 40
)

// Config configures a Server.
type Config struct {
	CA     *pki.Authority
	Fleet  *fleet.Registry
	Store  *store.Store
	Audit  *audit.Log
	Logger *slog.Logger // nil: discard

	MaxBody    int64         // request body limit; 0: 16 KiB; larger → 413
	RetryAfter time.Duration // sent with 202 as Retry-After seconds; 0: 30s

	// RateLimit is how many enrollment POSTs per second one source IP
	// address may make, with bursts of RateBurst. 0: 20/s burst 40;
	// negative: no limit (benchmarks).
	RateLimit float64
	RateBurst int // 0: 2 × RateLimit

	Now func() time.Time // nil: time.Now
}

// Server is the EST server. It is safe for concurrent use.
type Server struct {
	ca         *pki.Authority
	fleet      *fleet.Registry
	st         *store.Store
	audit      *audit.Log
	log        *slog.Logger
	maxBody    int64
	retryAfter time.Duration
	now        func() time.Time

	limiter *ratelimit.Keyed    // nil: no limit
	quiet   *ratelimit.Throttle // how often floods are audited

	cacerts []byte // response body of /cacerts, built once
	crl     crlCache
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.CA == nil || cfg.Fleet == nil || cfg.Store == nil || cfg.Audit == nil {
		return nil, errors.New("enroll: CA, fleet, store and audit log are required")
	}
	if cfg.MaxBody < 0 || cfg.RetryAfter < 0 || cfg.RateBurst < 0 {
		return nil, errors.New("enroll: negative MaxBody, RetryAfter or RateBurst")
	}
	s := &Server{
		ca:         cfg.CA,
		fleet:      cfg.Fleet,
		st:         cfg.Store,
		audit:      cfg.Audit,
		log:        cfg.Logger,
		maxBody:    cfg.MaxBody,
		retryAfter: cfg.RetryAfter,
		now:        cfg.Now,
		quiet:      ratelimit.NewThrottle(time.Minute, 4096),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxBody == 0 {
		s.maxBody = DefaultMaxBody
	}
	if s.retryAfter == 0 {
		s.retryAfter = DefaultRetryAfter
	}
	if s.now == nil {
		s.now = time.Now
	}
	if cfg.RateLimit >= 0 {
		limit, burst := cfg.RateLimit, cfg.RateBurst
		if limit == 0 {
			limit, burst = DefaultRateLimit, DefaultRateBurst
		}
		if burst == 0 {
			burst = max(1, int(2*limit))
		}
		s.limiter = ratelimit.NewKeyed(limit, burst, 65536, 3*time.Minute)
	}
	body, err := certsOnly(cfg.CA.Issuer(), cfg.CA.Root())
	if err != nil {
		return nil, fmt.Errorf("enroll: cacerts: %w", err)
	}
	s.cacerts = body
	return s, nil
}

// Handler returns the EST and CRL endpoints. Other paths are 404, other
// methods 405.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathCACerts, s.serveCACerts)
	mux.HandleFunc("POST "+PathSimpleEnroll, func(w http.ResponseWriter, r *http.Request) {
		s.serveEnroll(w, r, ActionSimpleEnroll, s.simpleEnroll)
	})
	mux.HandleFunc("POST "+PathSimpleReenroll, func(w http.ResponseWriter, r *http.Request) {
		s.serveEnroll(w, r, ActionSimpleReenroll, s.simpleReenroll)
	})
	mux.HandleFunc("GET "+PathCRL, s.serveCRL)
	return mux
}

// TLSConfig returns the device listener's TLS configuration: TLS 1.3 only,
// client certificate requested but not required, and Ward-issued
// certificates that are revoked refused during the handshake.
func (s *Server) TLSConfig(serverCert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		MaxVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{serverCert},
		ClientAuth:       tls.RequestClientCert,
		VerifyConnection: s.verifyConnection,
	}
}

// errRevokedAtHandshake is what the TLS layer reports; the device sees a
// bad_certificate alert.
var errRevokedAtHandshake = errors.New("enroll: client certificate revoked")

func (s *Server) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	leaf := cs.PeerCertificates[0]
	serial := fleet.CertSerial(leaf)
	if !s.fleet.IsRevoked(serial) || !s.wardIssued(leaf) {
		return nil
	}
	// Refused before any HTTP request exists, so the source address is not
	// known here; a revoked device retrying in a loop is audited at most
	// once a minute per certificate.
	actor := "device:"
	if id, err := pki.DeviceIDFromCert(leaf); err == nil {
		actor += id
	} else {
		actor = "cert:" + pki.Fingerprint(leaf)
	}
	s.log.Info("enroll: revoked certificate refused at handshake", "actor", actor, "cert_serial", serial)
	if ok, suppressed := s.quiet.Allow("handshake:"+serial, time.Now()); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.record(ctx, audit.Entry{Actor: actor, Action: ActionHandshake, Target: targetOf(actor), Outcome: audit.Denied,
			Reason: "certificate revoked", Detail: map[string]any{"cert_serial": serial, "suppressed": suppressed}})
	}
	return errRevokedAtHandshake
}

// wardIssued reports whether c was signed by Ward's issuing CA. It costs a
// signature check only when the issuer name matches.
func (s *Server) wardIssued(c *x509.Certificate) bool {
	iss := s.ca.Issuer()
	if string(c.RawIssuer) != string(iss.RawSubject) {
		return false
	}
	return c.CheckSignatureFrom(iss) == nil
}

func targetOf(actor string) string {
	if len(actor) > len("device:") && actor[:len("device:")] == "device:" {
		return actor
	}
	return ""
}

// remoteIP returns the host part of r.RemoteAddr.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// record writes a decision that changes nothing else. A failure to write it
// is logged: the refusal stands either way.
func (s *Server) record(ctx context.Context, e audit.Entry) {
	if e.At.IsZero() {
		e.At = s.now().UTC()
	}
	if err := s.audit.Record(ctx, e); err != nil {
		s.log.Error("enroll: audit record failed", "action", e.Action, "actor", e.Actor, "err", err)
	}
}
