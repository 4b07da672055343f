// Package server is Ward's one composition root. It builds every component
// from a validated config.Config, in dependency order, and runs their loops
// and listeners as one task list until the context ends:
//
//	store ─┬─ audit ─┬─ fleet ─┬─ enroll ─────────── device listener (EST over HTTPS, mTLS, TLS 1.3)
//	bus ───┤         │         ├─ gateway ─ ingest ── MQTT listener (MQTT over mTLS, TLS 1.3)
//	       │         │         │          └ commands
//	pki ───┘         ├─ access ┴─ api ─────────────── admin listener (HTTP on loopback, else TLS)
//	                 └─ checkpointer (signed audit checkpoints)
//
// On a fresh data directory it creates a demonstration CA and a bootstrap
// admin token, and says so loudly. Shutdown is graceful: listeners stop
// accepting, in-flight requests finish (up to ShutdownTimeout), then the bus
// and the store close.
package server

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/enroll"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/metrics"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
)

// ShutdownTimeout bounds how long in-flight requests may take at shutdown.
const ShutdownTimeout = 15 * time.Second

// demoPassphraseFile holds the passphrase of a CA that ward serve created
// on its own. Production CAs are made with ward ca init instead.
const demoPassphraseFile = "demo-passphrase"

// Server is a built Ward node, ready to Run.
type Server struct {
	cfg    config.Config
	log    *slog.Logger
	store  *store.Store
	bus    *bus.Bus
	ca     *pki.Authority
	fleet  *fleet.Registry
	enroll *enroll.Server
	admin  http.Handler

	gateway  *gateway.Gateway
	ingest   *gateway.Ingest
	commands *gateway.Commands
	history  *gateway.History

	checkpoints *audit.Checkpointer
	auditKey    crypto.Signer
	sessions    *access.Sessions
	approvals   *access.Approvals

	serverCert atomic.Pointer[tls.Certificate]
	adminCert  atomic.Pointer[tls.Certificate] // nil: the admin listener serves plain HTTP (loopback only)

	deviceLn, adminLn, mqttLn net.Listener
	// Ready is closed once both listeners accept connections.
	ready chan struct{}
}

// Option adjusts a Server for tests.
type Option func(*options)

type options struct {
	notice     io.Writer
	now        func() time.Time
	listenHook func(deviceAddr, adminAddr net.Addr)
	mqttHook   func(mqttAddr net.Addr)
}

// WithMQTTHook is told the MQTT listener's address once it is bound.
func WithMQTTHook(f func(mqttAddr net.Addr)) Option { return func(o *options) { o.mqttHook = f } }

// WithNotice sends the one-time notices meant for the person starting Ward
// (the bootstrap admin token) to w instead of standard error.
func WithNotice(w io.Writer) Option { return func(o *options) { o.notice = w } }

// WithClock pins the time for everything that issues or expires.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithListenHook is told the listeners' addresses once they are bound
// (useful with port 0).
func WithListenHook(f func(deviceAddr, adminAddr net.Addr)) Option {
	return func(o *options) { o.listenHook = f }
}

// New builds every component. It opens the store and the bus, and creates
// the CA and the bootstrap admin token on a fresh data directory.
func New(ctx context.Context, cfg config.Config, log *slog.Logger, opts ...Option) (_ *Server, err error) {
	o := options{now: time.Now, notice: os.Stderr}
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, fmt.Errorf("server: data directory: %w", err)
	}
	s := &Server{cfg: cfg, log: log, ready: make(chan struct{})}
	defer func() {
		if err != nil {
			s.close()
		}
	}()

	if s.store, err = store.Open(ctx, cfg.StoreURL()); err != nil {
		return nil, err
	}
	log.Info("store open", "store", s.store.String())

	if s.bus, err = bus.Open(bus.Config{URL: cfg.Bus, Dir: cfg.BusDir(), Name: cfg.NodeName, Logger: log.With("component", "bus")}); err != nil {
		return nil, err
	}
	log.Info("bus connected", "embedded", s.bus.Embedded())

	var caPass []byte
	if s.ca, caPass, err = openCA(cfg, log, o.now); err != nil {
		return nil, err
	}

	auditLog := audit.New(s.store, o.now, audit.WithVersion(Version))
	if s.checkpoints, s.auditKey, err = openCheckpointer(cfg, log, auditLog, caPass, o.now); err != nil {
		return nil, err
	}
	s.fleet, err = fleet.New(ctx, fleet.Config{
		Store: s.store, Audit: auditLog, Now: o.now,
		OnRevoke: func(serials []string) {
			b, _ := json.Marshal(serials)
			if err := s.bus.Conn.Publish(bus.SubjectRevoked, b); err != nil {
				log.Error("publish revocation", "err", err)
			}
		},
		OnManufacturersChanged: func() {
			if err := s.bus.Conn.Publish(bus.SubjectManufacturers, nil); err != nil {
				log.Error("publish manufacturer change", "err", err)
			}
		},
		OnStateChange: func(id string, state fleet.State) {
			b, _ := json.Marshal(bus.DeviceState{ID: id, State: string(state)})
			if err := s.bus.Conn.Publish(bus.SubjectDeviceState, b); err != nil {
				log.Error("publish device state", "err", err)
			}
		},
	})
	if err != nil {
		return nil, err
	}

	tokens := access.NewTokens(access.TokensConfig{Store: s.store, Audit: auditLog, Now: o.now})
	secret, created, err := tokens.Bootstrap(ctx, cfg.AdminTokenPath())
	if err != nil {
		return nil, err
	}
	if created {
		log.Warn("created the bootstrap admin token; it is shown once here and kept in the data directory (mode 0600) for ward commands on this host",
			"token_file", cfg.AdminTokenPath())
		fmt.Fprintf(o.notice, "\n  Bootstrap admin token (shown once): %s\n  Also written to %s\n\n", secret, cfg.AdminTokenPath())
	}

	if s.enroll, err = enroll.New(enroll.Config{
		CA: s.ca, Fleet: s.fleet, Store: s.store, Audit: auditLog,
		Logger:     log.With("component", "enroll"),
		MaxBody:    cfg.Enroll.MaxBodyBytes,
		RetryAfter: time.Duration(cfg.Enroll.RetryAfter),
		RateLimit:  cfg.Enroll.RateLimit,
		Now:        o.now,
	}); err != nil {
		return nil, err
	}

	if err := s.renewServerCert(); err != nil {
		return nil, err
	}
	if s.mqttLn, err = net.Listen("tcp", cfg.MQTTAddr); err != nil {
		return nil, fmt.Errorf("server: MQTT listener: %w", err)
	}
	if err := s.openGateway(ctx, auditLog, o.now); err != nil {
		return nil, err
	}

	people, err := openAccess(ctx, cfg, log, s.store, auditLog, o.now)
	if err != nil {
		return nil, err
	}
	s.sessions, s.approvals = people.sessions, people.approvals
	reg, err := metrics.New(metrics.Config{Node: cfg.NodeName, Version: Version, Gateway: s.gateway.Status})
	if err != nil {
		return nil, err
	}
	if s.admin, err = api.New(api.Config{
		Fleet: s.fleet, Audit: auditLog, Tokens: tokens, CA: s.ca,
		Users: people.users, SessionStore: people.sessions, Sessions: people.sessions,
		WebAuthn: people.webauthn, OIDC: people.oidc,
		Approvals: people.approvals, MassRevokeLimit: cfg.Access.MassRevokeLimit,
		AuditKey:      s.auditKey.Public(),
		History:       s.history,
		GatewayStatus: s.gateway.Status,
		Metrics:       reg.Text,
		Ready:         s.readyCheck,
		Logger:        log.With("component", "api"),
		Version:       Version,
	}); err != nil {
		return nil, err
	}

	if err := s.loadAdminCert(); err != nil {
		return nil, err
	}

	if s.deviceLn, err = net.Listen("tcp", cfg.DeviceAddr); err != nil {
		return nil, fmt.Errorf("server: device listener: %w", err)
	}
	if s.adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
		return nil, fmt.Errorf("server: admin listener: %w", err)
	}
	if o.listenHook != nil {
		o.listenHook(s.deviceLn.Addr(), s.adminLn.Addr())
	}
	if o.mqttHook != nil {
		o.mqttHook(s.mqttLn.Addr())
	}
	return s, nil
}

// openCA opens the CA in the data directory, creating a demonstration CA
// when there is none.
func openCA(cfg config.Config, log *slog.Logger, now func() time.Time) (*pki.Authority, []byte, error) {
	dir := cfg.CADir()
	demoFile := filepath.Join(dir, demoPassphraseFile)
	if !pki.Initialised(dir) {
		pass, err := pki.ReadPassphrase("WARD_CA_PASSPHRASE", cfg.CA.PassphraseFile)
		if err != nil {
			// No passphrase given: a demo CA whose passphrase sits beside it.
			var b [32]byte
			if _, err := rand.Read(b[:]); err != nil {
				return nil, nil, err
			}
			pass = []byte(base64.RawURLEncoding.EncodeToString(b[:]))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, nil, fmt.Errorf("server: %w", err)
			}
			if err := os.WriteFile(demoFile, pass, 0o600); err != nil {
				return nil, nil, fmt.Errorf("server: %w", err)
			}
		}
		if err := pki.Init(pki.InitConfig{Dir: dir, Passphrase: pass, Name: cfg.CA.Name, Now: now}); err != nil {
			return nil, nil, err
		}
		log.Warn(strings.Repeat("*", 72))
		log.Warn("created a NEW certificate authority in the data directory; its root key is on this server",
			"dir", dir)
		log.Warn("for production, create the CA with `ward ca init --root-key-out` and keep the root key offline (docs/operations.md)")
		log.Warn(strings.Repeat("*", 72))
	}
	pass, err := pki.ReadPassphrase("WARD_CA_PASSPHRASE", cfg.CA.PassphraseFile)
	if err != nil {
		b, ferr := os.ReadFile(demoFile)
		if ferr != nil {
			return nil, nil, fmt.Errorf("server: the CA key passphrase is needed: set WARD_CA_PASSPHRASE or ca.passphrase_file")
		}
		log.Warn("using the demonstration CA passphrase stored beside the CA key; not for production", "file", demoFile)
		pass = b
	}
	ca, err := pki.Open(pki.Config{Dir: dir, Passphrase: pass, Lifetime: time.Duration(cfg.CA.CertLifetime), Now: now})
	if err != nil {
		return nil, nil, err
	}
	log.Info("CA ready", "root", pki.Fingerprint(ca.Root()), "issuer", ca.Issuer().Subject.CommonName,
		"device_cert_lifetime", time.Duration(cfg.CA.CertLifetime).String())
	return ca, pass, nil
}

// renewServerCert issues the device listener's TLS certificate.
func (s *Server) renewServerCert() error {
	c, err := s.issueServer(s.cfg.DeviceNames)
	if err != nil {
		return fmt.Errorf("server: device listener certificate: %w", err)
	}
	s.serverCert.Store(&c)
	return nil
}

// loadAdminCert loads the admin listener's certificate from the configured
// files, or issues one from Ward's CA, when the admin listener serves TLS.
func (s *Server) loadAdminCert() error {
	at := s.cfg.AdminTLS
	if !at.Enabled {
		return nil
	}
	var (
		c   tls.Certificate
		err error
	)
	if at.CertFile != "" {
		c, err = tls.LoadX509KeyPair(at.CertFile, at.KeyFile)
	} else {
		c, err = s.issueServer(at.Names)
	}
	if err != nil {
		return fmt.Errorf("server: admin listener certificate: %w", err)
	}
	s.adminCert.Store(&c)
	return nil
}

func (s *Server) issueServer(names []string) (tls.Certificate, error) {
	var (
		dns []string
		ips []net.IP
	)
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	return s.ca.IssueServer(dns, ips)
}

// readyCheck reports whether the store and the bus answer. /readyz is
// open to anyone who can reach the admin listener, so the reasons it gives
// are fixed words; the underlying errors go to the log.
func (s *Server) readyCheck(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var errs []error
	if err := s.store.Ping(ctx); err != nil {
		s.log.Warn("readiness: store", "err", err)
		errs = append(errs, errors.New("store not answering"))
	}
	if err := s.bus.Ping(ctx); err != nil {
		s.log.Warn("readiness: bus", "err", err)
		errs = append(errs, errors.New("bus not answering"))
	}
	return errors.Join(errs...)
}

// Ready is closed when both listeners serve.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx ends, then shuts down gracefully and closes
// everything New opened.
func (s *Server) Run(ctx context.Context) error {
	defer s.close()
	errLog := slog.NewLogLogger(s.log.With("component", "http").Handler(), slog.LevelWarn)

	tlsCfg := s.enroll.TLSConfig(tls.Certificate{})
	tlsCfg.Certificates = nil
	tlsCfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.serverCert.Load(), nil }
	device := &http.Server{
		Handler:           audit.Requests(s.enroll.Handler()),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          errLog,
	}
	admin := &http.Server{
		Handler:           audit.Requests(s.admin),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          errLog,
	}

	sub, err := s.bus.Conn.Subscribe(bus.SubjectRevoked, func(*nats.Msg) {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.fleet.ReloadRevocations(rctx); err != nil {
			s.log.Error("reload revocations", "err", err)
		}
	})
	if err != nil {
		return fmt.Errorf("server: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	mfrSub, err := s.bus.Conn.Subscribe(bus.SubjectManufacturers, func(*nats.Msg) { s.fleet.InvalidateManufacturers() })
	if err != nil {
		return fmt.Errorf("server: subscribe: %w", err)
	}
	defer mfrSub.Unsubscribe()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		s.log.Info("device listener (EST over mutual TLS 1.3)", "addr", s.deviceLn.Addr().String())
		if err := device.ServeTLS(s.deviceLn, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("server: device listener: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		var err error
		if s.adminCert.Load() != nil {
			admin.TLSConfig = &tls.Config{
				MinVersion:     tls.VersionTLS12,
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.adminCert.Load(), nil },
			}
			s.log.Info("admin listener (API, TLS)", "addr", "https://"+s.adminLn.Addr().String())
			err = admin.ServeTLS(s.adminLn, "", "")
		} else {
			s.log.Info("admin listener (API)", "addr", "http://"+s.adminLn.Addr().String())
			err = admin.Serve(s.adminLn)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("server: admin listener: %w", err)
		}
		return nil
	})
	g.Go(func() error { return s.renewLoop(gctx) })
	g.Go(func() error { return s.approvals.Run(gctx) })
	g.Go(func() error { return s.sweepSessions(gctx) })
	// The checkpointer signs a last checkpoint when asked to stop, so it
	// gets a context of its own that ends only after the listeners closed.
	cpCtx, cpStop := context.WithCancel(context.Background())
	cpDone := make(chan error, 1)
	go func() { cpDone <- s.checkpoints.Run(cpCtx) }()
	defer func() {
		cpStop()
		if err := <-cpDone; err != nil {
			s.log.Error("audit checkpoint", "err", err)
		}
	}()
	// The connection history is the server's (the API reads it) and
	// written by its own task, whose context ends only after the gateway
	// recorded how its last sessions ended.
	histCtx, histStop := context.WithCancel(context.Background())
	histDone := make(chan error, 1)
	go func() { histDone <- s.history.Run(histCtx) }()
	defer func() {
		histStop()
		if err := <-histDone; err != nil {
			s.log.Error("connection history", "err", err)
		}
	}()
	g.Go(func() error { return s.gateway.Run(gctx) })
	g.Go(func() error { return s.ingest.Run(gctx) })
	g.Go(func() error { return s.commands.Run(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		s.log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		return errors.Join(device.Shutdown(sctx), admin.Shutdown(sctx))
	})
	close(s.ready)
	err = g.Wait()
	s.log.Info("stopped")
	return err
}

// renewLoop re-issues the device listener's certificate well before it
// expires.
func (s *Server) renewLoop(ctx context.Context) error {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			c := s.serverCert.Load()
			if c.Leaf != nil && time.Until(c.Leaf.NotAfter) < 30*24*time.Hour {
				if err := s.renewServerCert(); err != nil {
					s.log.Error("renew device listener certificate", "err", err)
				}
			}
			if a := s.adminCert.Load(); a != nil && s.cfg.AdminTLS.CertFile == "" && a.Leaf != nil && time.Until(a.Leaf.NotAfter) < 30*24*time.Hour {
				if err := s.loadAdminCert(); err != nil {
					s.log.Error("renew admin listener certificate", "err", err)
				}
			}
		}
	}
}

func (s *Server) close() {
	if s.deviceLn != nil {
		s.deviceLn.Close()
	}
	if s.adminLn != nil {
		s.adminLn.Close()
	}
	if s.mqttLn != nil {
		s.mqttLn.Close()
	}
	if s.bus != nil {
		if err := s.bus.Close(); err != nil {
			s.log.Warn("bus close", "err", err)
		}
	}
	if s.store != nil {
		s.store.Close()
	}
}
