// Package api is Ward's admin REST API: what the CLI, the console and
// integrations call on the admin listener. It is plain net/http with huma v2
// describing every operation, so the OpenAPI 3.1 document at
// /api/v1/openapi.json is generated from the code that serves it.
//
// # Parties and trust
//
// Every operation under /api/v1 needs an API token (package access) sent as
// "Authorization: Bearer ward_…". The authentication check is a huma
// middleware that runs before every registered operation, so a new route is
// closed unless someone moves it out of huma on purpose; the only routes that
// are open are served outside huma: GET /healthz (liveness), GET /readyz
// (readiness, for load balancers) and GET /api/v1/openapi.json (the
// description). The acting party in the audit log and the registry is
// "token:<id>". A refused token is answered 401 and never echoed.
//
// # Errors
//
// Errors are RFC 9457 problem documents (application/problem+json). Domain
// errors become HTTP statuses in exactly one place, problem() in errors.go:
// not found 404, invalid 422, conflict or wrong state 409, unauthenticated
// 401; anything else is a 500 whose detail says nothing about the cause, which
// goes to the log.
//
// # Hardening
//
// Request bodies are capped at 256 KiB; unknown query parameters and unknown
// JSON fields are refused; every response carries nosniff, a
// Content-Security-Policy of default-src 'none' and frame-ancestors 'none',
// and /api responses are not cached. huma's documentation page is off: it
// loads scripts from a CDN.
package api

import (
	"context"
	"crypto"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/pki"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 256 << 10

// Prefix is where the versioned API lives.
const Prefix = "/api/v1"

// Config configures the admin API handler.
type Config struct {
	Fleet  *fleet.Registry
	Audit  *audit.Log
	Tokens *access.Tokens
	// Sessions authenticates people by session cookie; nil: tokens only.
	Sessions SessionAuth
	// Users holds people's accounts; nil: tokens only.
	Users *access.Users
	// SessionStore is the session manager behind the login routes
	// (/api/v1/session…); usually also Sessions. nil: no login routes.
	SessionStore *access.Sessions
	// WebAuthn runs security-key registration and login; nil: those
	// routes answer 503.
	WebAuthn *access.WebAuthn
	// OIDC is single sign-on through an identity provider; nil: the
	// /auth/oidc routes answer 503.
	OIDC *access.OIDC
	// Approvals keeps two-person requests for critical actions; the API
	// registers the kinds it serves. nil: critical actions answer 503.
	Approvals *access.Approvals
	// MassRevokeLimit is how many devices POST /api/v1/devices/revoke
	// revokes at once; more need a second person's approval. 0: 5.
	MassRevokeLimit int
	// AuditKey is the public key of Ward's audit checkpoint key, for GET
	// /api/v1/audit/verify; nil: checkpoint signatures are not checked.
	AuditKey crypto.PublicKey
	// CA may be nil while Ward's CA is not initialised; GET /api/v1/ca then
	// answers 503.
	CA *pki.Authority
	// History is the device connection history (package gateway); nil:
	// GET /api/v1/devices/{ref}/history answers 503.
	History *gateway.History
	// GatewayStatus reports this node's device gateway; nil: GET
	// /api/v1/gateway answers 503.
	GatewayStatus func() gateway.Status
	// Metrics gathers the node's metrics in Prometheus's text format
	// (package metrics); nil: GET /metrics answers 503.
	Metrics func() ([]byte, error)
	// Ready reports whether this node can serve (store reachable, …), for
	// /readyz. nil means always ready.
	Ready   func(ctx context.Context) error
	Logger  *slog.Logger // nil: discard
	Version string       // in the OpenAPI info
}

type server struct {
	cfg Config
	log *slog.Logger
	api huma.API
}

// New returns the admin API as one handler.
func New(cfg Config) (http.Handler, error) {
	h, _, err := build(cfg)
	return h, err
}

// build returns the handler and the huma API behind it, whose registered
// operations tests walk.
func build(cfg Config) (http.Handler, huma.API, error) {
	if cfg.Fleet == nil || cfg.Audit == nil || cfg.Tokens == nil {
		return nil, nil, errors.New("api: fleet, audit and tokens are required")
	}
	s := &server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	version := cfg.Version
	if version == "" {
		version = "dev"
	}

	hc := huma.DefaultConfig("Ward admin API", version)
	hc.Info.Description = "Admin API of Ward, the security control plane for connected medical devices. " +
		"Every operation needs an API token: Authorization: Bearer ward_…"
	hc.OpenAPIPath = "" // served below, under /api/v1
	hc.DocsPath = ""    // the docs page loads from a CDN
	hc.SchemasPath = ""
	hc.CreateHooks = nil // no $schema links in responses
	hc.RejectUnknownQueryParameters = true
	hc.Components.SecuritySchemes = map[string]*huma.SecurityScheme{
		"bearer": {Type: "http", Scheme: "bearer", Description: "An API token, ward_<id>_<secret>."},
	}
	hc.Security = []map[string][]string{{"bearer": {}}}

	mux := http.NewServeMux()
	s.api = humago.New(mux, hc)
	s.api.UseMiddleware(s.authenticate)
	s.routes()

	spec, err := json.Marshal(s.api.OpenAPI())
	if err != nil {
		return nil, nil, fmt.Errorf("api: openapi: %w", err)
	}
	mux.HandleFunc("GET "+Prefix+"/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(spec)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	return s.harden(mux), s.api, nil
}

// register adds an operation whose errors all go through problem(). Every
// operation declares the permission it needs in op.Metadata (use perm);
// one that does not is a programming error, caught at start.
func register[I, O any](s *server, op huma.Operation, h func(context.Context, *I) (*O, error)) {
	if _, ok := op.Metadata[permKey].(access.Permission); !ok && op.Metadata[publicKey] != true {
		panic("api: operation " + op.OperationID + " declares no permission")
	}
	op.MaxBodyBytes = MaxBodyBytes
	huma.Register(s.api, op, func(ctx context.Context, in *I) (*O, error) {
		out, err := h(ctx, in)
		if err != nil {
			return nil, s.problem(ctx, err)
		}
		return out, nil
	})
}

const (
	permKey   = "ward-permission"
	publicKey = "ward-public"
)

// perm is the metadata of an operation that needs p.
func perm(p access.Permission) map[string]any { return map[string]any{permKey: p} }

// public is the metadata of an operation anyone may call (logging in).
func public() map[string]any { return map[string]any{publicKey: true} }

// SessionAuth resolves a session cookie to the person behind it. It is
// implemented by access.Sessions.
type SessionAuth interface {
	// Principal returns the principal of a live, fully authenticated
	// session and the session's CSRF token.
	Principal(ctx context.Context, cookie string) (access.Principal, string, error)
}

type principalKey struct{}

// authenticate admits a request carrying a valid API token or session
// cookie whose principal holds the operation's permission. A request
// authenticated by cookie that changes anything must also carry the
// session's CSRF token in the X-CSRF-Token header.
func (s *server) authenticate(ctx huma.Context, next func(huma.Context)) {
	op := ctx.Operation()
	if op != nil && op.Metadata[publicKey] == true {
		next(ctx)
		return
	}
	p, err := s.principal(ctx)
	if err != nil {
		if errors.Is(err, access.ErrUnauthenticated) {
			ctx.SetHeader("WWW-Authenticate", `Bearer realm="ward"`)
		}
		se := s.problem(ctx.Context(), err)
		_ = huma.WriteErr(s.api, ctx, se.GetStatus(), se.Error())
		return
	}
	need, _ := op.Metadata[permKey].(access.Permission)
	if need == "" || !p.Can(need) {
		s.log.InfoContext(ctx.Context(), "api: permission denied", "actor", p.Actor(), "operation", op.OperationID, "needs", string(need))
		_ = huma.WriteErr(s.api, ctx, http.StatusForbidden, fmt.Sprintf("%s may not %s: it needs the %q permission", p.Actor(), op.OperationID, need))
		return
	}
	next(huma.WithValue(ctx, principalKey{}, p))
}

// principal authenticates the request by bearer token or session cookie.
func (s *server) principal(ctx huma.Context) (access.Principal, error) {
	if h := ctx.Header("Authorization"); h != "" {
		secret, ok := bearer(h)
		if !ok {
			return access.Principal{}, access.ErrUnauthenticated
		}
		tok, err := s.cfg.Tokens.Authenticate(ctx.Context(), secret)
		if err != nil {
			return access.Principal{}, err
		}
		return tok.Principal(), nil
	}
	if s.cfg.Sessions != nil {
		if c, err := huma.ReadCookie(ctx, access.SessionCookie); err == nil && c.Value != "" {
			p, csrf, err := s.cfg.Sessions.Principal(ctx.Context(), c.Value)
			if err != nil {
				return access.Principal{}, err
			}
			switch ctx.Method() {
			case http.MethodGet, http.MethodHead, http.MethodOptions:
			default:
				if got := ctx.Header("X-CSRF-Token"); got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(csrf)) != 1 {
					return access.Principal{}, fmt.Errorf("%w: missing or wrong X-CSRF-Token", access.ErrForbidden)
				}
			}
			return p, nil
		}
	}
	return access.Principal{}, access.ErrUnauthenticated
}

func bearer(h string) (string, bool) {
	scheme, cred, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	cred = strings.TrimSpace(cred)
	return cred, cred != ""
}

// caller is the authenticated principal of the request.
func caller(ctx context.Context) access.Principal {
	p, ok := ctx.Value(principalKey{}).(access.Principal)
	if !ok {
		// Unreachable behind authenticate; fail closed if it ever is not.
		panic("api: handler reached without an authenticated principal")
	}
	return p
}

// actor names the authenticated caller for the audit log.
func actor(ctx context.Context) string { return caller(ctx).Actor() }

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			s.log.WarnContext(r.Context(), "api: not ready", "err", err)
			writeProblem(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ready\n"))
}

// harden sets the security headers, caps the body and turns a panic into a
// generic 500.
func (s *server) harden(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=63072000")
		}
		if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/readyz" || r.URL.Path == "/healthz" || r.URL.Path == "/metrics" {
			h.Set("Cache-Control", "no-store")
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.ErrorContext(r.Context(), "api: panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
				writeProblem(w, http.StatusInternalServerError, internalDetail)
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// writeProblem answers outside huma with the same problem shape.
func writeProblem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(huma.ErrorModel{Title: http.StatusText(status), Status: status, Detail: detail})
}
