// Package gateway is Ward's device gateway: an MQTT 5 (and 3.1.1) broker
// on mutual TLS 1.3 that lets each device speak only for itself, records
// every connection, and cuts a device off or restricts it, fleet-wide, in
// about a second.
//
// # Parties and trust
//
// Devices connect with their operational certificate (LDevID) issued by
// Ward's issuing CA (package pki). The TLS handshake requires a client
// certificate and verifies it with pki.Authority.VerifyDevice and the
// registry's in-memory revocation set (fleet.Registry.IsRevoked): an
// untrusted, expired or revoked certificate never gets to MQTT. The server
// presents a certificate from the same CA (Config.Cert, read per
// handshake so it can be renewed).
//
// At CONNECT the client id must equal the device id the certificate names
// (reason 0x85 otherwise), and the device must be active or quarantined in
// the registry (0x87 otherwise; 0x8A "banned" when revoked or
// decommissioned). User name and password are ignored; Will messages are
// refused (0x87), since they would bypass the topic policy.
//
// # Topic policy (DESIGN.md §3, authorize in acl.go)
//
// A device publishes only to ward/v1/d/<id>/{telemetry,events,state,ack}
// and subscribes only to ward/v1/d/<id>/cmd: exact names, no wildcard, no
// shared subscription, no $SYS, no other device. Only state may be
// retained (0x9A otherwise). A quarantined device may publish only state
// and events and still receives cmd (security updates); therapy is never
// stopped by the gateway (DESIGN.md §4.1). Every refusal is counted per
// device (the history row's refusals) and per kind (Stats), and raised on
// the bus as a Violation (throttled to one event per device and kind per
// second, with a count).
//
// # Live orders
//
// Any node may change a device's state; fleet.Config.OnStateChange is
// published on bus.SubjectDeviceState and every gateway applies it to the
// device's session if it holds it: quarantine restricts the session at once
// (a device holds no subscription but its cmd topic), release lifts the
// restriction, revoke and decommission disconnect with 0x8A. Revoked
// certificate serials on bus.SubjectRevoked disconnect too (bulk
// revocations).
//
// # Connection history (history.go)
//
// Every connection attempt that completes TCP is a row of
// device_connections: remote address, certificate serial, TLS version and
// cipher, MQTT version, the software_version user property of CONNECT,
// times, duration and reason. Rows are written in batches by a background
// goroutine from a bounded queue, so the broker never waits for the store;
// when the queue is full, rows are dropped and counted. Refusals that come
// in floods (rate limits, garbage, repeated refused handshakes) are
// recorded and audited at most once a minute per source with the number
// suppressed.
//
// # Limits (limits.go)
//
// Source address connection rate and the node's connection count are
// checked before the TLS handshake; the device connection rate right after
// it; message rate and size at each PUBLISH. Sessions are sized for many
// small, mostly idle devices: at most Limits.MaxInflight unacknowledged
// messages each way, no topic aliases, no shared or wildcard
// subscriptions, QoS 1 at most, sessions kept an hour at most after their
// connection (broker.go).
//
// # The MQTT server (broker.go)
//
// A connection's TLS handshake and CONNECT run on a goroutine of its own;
// on Linux an established session is then served by an event loop
// (loop.go, poll_linux.go: epoll, one loop per processor), elsewhere by
// its goroutine. The MQTT packet codec is
// github.com/mochi-mqtt/server/v2/packets. There is no routing between
// devices: what a device publishes goes to ingest (AddHook), what it
// receives comes from commands.
package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/ratelimit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/protocol"
)

// Config configures a Gateway.
type Config struct {
	Addr     string       // e.g. ":8883"
	Listener net.Listener // optional: serve on this instead of Addr
	// Cert returns the server certificate; it is read at each handshake.
	Cert  func() *tls.Certificate
	CA    *pki.Authority
	Fleet *fleet.Registry
	Store *store.Store
	Audit *audit.Log
	// Conn is the bus: orders from any node, violations out. nil: no bus.
	Conn   *nats.Conn
	Node   string
	Limits Limits
	// History records connections; nil: one is made on Store with
	// HistoryRetention and run by Run.
	History          *History
	HistoryRetention time.Duration
	Logger           *slog.Logger
	Now              func() time.Time

	// noPoller serves every session on its goroutine, as where epoll is
	// not available (tests of that path).
	noPoller bool
}

// Gateway is the device MQTT server. Build it with New, add ingest and
// commands with AddHook, Run it.
type Gateway struct {
	cfg     Config
	lim     Limits
	log     *slog.Logger
	now     func() time.Time
	ingest  *Ingest
	cmds    *Commands
	ln      *listener
	hist    *History
	ownHist bool
	tlsCfg  *tls.Config

	devLim, srcLim *ratelimit.Keyed
	quiet          *ratelimit.Throttle // audit and history rows of floods
	vquiet         *ratelimit.Throttle // violation events

	mu       sync.RWMutex // guards byConn and byDevice; read on every message
	byConn   map[net.Conn]*session
	byDevice map[string]map[*session]struct{}

	pmu       sync.Mutex
	persisted map[string]persisted // device → its disconnected session
	pswept    time.Time

	running atomic.Bool
	closing atomic.Bool
	stats   counters
	started time.Time
}

// New checks cfg, binds the listener and builds the broker.
func New(cfg Config) (*Gateway, error) {
	if cfg.Cert == nil || cfg.CA == nil || cfg.Fleet == nil || cfg.Store == nil || cfg.Audit == nil {
		return nil, errors.New("gateway: Cert, CA, Fleet, Store and Audit are required")
	}
	g := &Gateway{
		cfg:       cfg,
		lim:       cfg.Limits.withDefaults(),
		log:       cfg.Logger,
		now:       cfg.Now,
		quiet:     ratelimit.NewThrottle(time.Minute, 16384),
		vquiet:    ratelimit.NewThrottle(time.Second, 16384),
		byConn:    map[net.Conn]*session{},
		byDevice:  map[string]map[*session]struct{}{},
		persisted: map[string]persisted{},
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if g.now == nil {
		g.now = time.Now
	}
	g.started = g.now().UTC()
	g.hist = cfg.History
	if g.hist == nil {
		g.hist = NewHistory(HistoryConfig{Store: cfg.Store, Retention: cfg.HistoryRetention, Logger: g.log, Now: g.now})
		g.ownHist = true
	}
	g.devLim = ratelimit.NewKeyed(g.lim.ConnectRatePerDevice, g.lim.ConnectBurstPerDevice, 1<<17, 10*time.Minute)
	g.srcLim = ratelimit.NewKeyed(g.lim.ConnectRatePerSource, g.lim.ConnectBurstPerSource, 1<<16, 10*time.Minute)
	g.tlsCfg = &tls.Config{
		MinVersion:       tls.VersionTLS13,
		MaxVersion:       tls.VersionTLS13,
		ClientAuth:       tls.RequireAnyClientCert,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cfg.Cert(), nil },
		VerifyConnection: g.verifyConnection,
	}
	ln := cfg.Listener
	if ln == nil {
		if cfg.Addr == "" {
			return nil, errors.New("gateway: Addr or Listener is required")
		}
		var err error
		if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("gateway: listen: %w", err)
		}
	}
	g.ln = &listener{g: g, ln: ln}
	return g, nil
}

// Hook is a part built on the gateway: *Ingest, which stores what devices
// publish, or *Commands, which sends them commands.
type Hook interface{ ID() string }

// AddHook adds ingest or commands. It must be called before Run.
func (g *Gateway) AddHook(h Hook) error {
	if g.running.Load() {
		return errors.New("gateway: AddHook after Run")
	}
	switch h := h.(type) {
	case *Ingest:
		g.ingest = h
	case *Commands:
		g.cmds = h
	default:
		return fmt.Errorf("gateway: unknown hook %s", h.ID())
	}
	return nil
}

// Addr returns the listener's address.
func (g *Gateway) Addr() net.Addr { return g.ln.ln.Addr() }

// History returns the connection history the gateway writes.
func (g *Gateway) History() *History { return g.hist }

// Connected reports whether the device has a session on this node.
func (g *Gateway) Connected(deviceID string) bool {
	for _, s := range g.sessionsOf(deviceID) {
		if s.phase.Load() == phaseOpen {
			return true
		}
	}
	return false
}

// ErrNotCommandTopic is returned by Publish for a topic that is not a
// device's cmd topic.
var ErrNotCommandTopic = errors.New("gateway: not a device command topic")

// Publish sends a message from Ward to a device's cmd topic (the only
// topic Ward publishes to), at QoS 0 or 1. It is delivered to the device
// if it is connected to this node with a subscription.
func (g *Gateway) Publish(topic string, payload []byte, qos byte) error {
	if _, k, err := protocol.ParseTopic(topic); err != nil || k != protocol.Cmd {
		return fmt.Errorf("%w: %q", ErrNotCommandTopic, topic)
	}
	if qos > 1 {
		return fmt.Errorf("gateway: publish: QoS %d not supported", qos)
	}
	id, _, _ := protocol.ParseTopic(topic)
	for _, s := range g.sessionsOf(id) {
		if _, err := s.send(payload, qos, nil); err != nil {
			return err
		}
	}
	return nil
}

// Run serves until ctx ends, then closes every connection and writes the
// remaining history.
func (g *Gateway) Run(ctx context.Context) error {
	if !g.running.CompareAndSwap(false, true) {
		return errors.New("gateway: Run called twice")
	}
	histCtx, histStop := context.WithCancel(context.Background())
	histDone := make(chan error, 1)
	if g.ownHist {
		go func() { histDone <- g.hist.Run(histCtx) }()
	} else {
		histDone <- nil
	}
	defer func() {
		histStop()
		<-histDone
	}()

	if g.cfg.Conn != nil {
		subs, err := g.subscribeOrders()
		for _, s := range subs {
			defer s.Unsubscribe()
		}
		if err != nil {
			g.ln.ln.Close()
			return err
		}
	}
	if !g.cfg.noPoller {
		g.ln.startPollers()
	}
	g.ln.wg.Go(g.ln.accept)
	g.log.Info("MQTT device gateway (mutual TLS 1.3)", "addr", g.Addr().String())
	<-ctx.Done()
	g.closing.Store(true)
	g.log.Info("gateway: shutting down", "connected", g.stats.connected.Load())
	g.ln.close() // no new connections; every session ends with 0x8B
	done := make(chan struct{})
	go func() { g.ln.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		g.log.Warn("gateway: connections still closing after 10s")
	}
	return nil
}

// ---- orders from the bus

func (g *Gateway) subscribeOrders() ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	s, err := g.cfg.Conn.Subscribe(bus.SubjectDeviceState, func(m *nats.Msg) {
		var ds bus.DeviceState
		if json.Unmarshal(m.Data, &ds) != nil || !protocol.ValidDeviceID(ds.ID) {
			return
		}
		g.ApplyState(ds.ID, fleet.State(ds.State))
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: subscribe: %w", err)
	}
	subs = append(subs, s)
	s, err = g.cfg.Conn.Subscribe(bus.SubjectRevoked, func(m *nats.Msg) {
		var serials []string
		if json.Unmarshal(m.Data, &serials) != nil {
			return
		}
		g.applyRevokedSerials(serials)
	})
	if err != nil {
		return subs, fmt.Errorf("gateway: subscribe: %w", err)
	}
	subs = append(subs, s)
	// Make sure the subscriptions are registered before we serve.
	_ = g.cfg.Conn.FlushTimeout(5 * time.Second)
	return subs, nil
}

// ApplyState applies a device's new lifecycle state to its sessions on
// this node: quarantined restricts, active lifts the restriction, revoked
// and decommissioned disconnect. The bus subscription calls it; the
// server may call it directly too.
func (g *Gateway) ApplyState(deviceID string, state fleet.State) {
	for _, s := range g.sessionsOf(deviceID) {
		s.order(state)
		switch state {
		case fleet.Quarantined:
			s.quarantined.Store(true)
		case fleet.Active:
			s.quarantined.Store(false)
		case fleet.Revoked, fleet.Decommissioned:
			g.kick(s, ReasonRevoked, packets.ErrBanned)
		}
	}
	if state == fleet.Quarantined || state == fleet.Active || state == fleet.Revoked || state == fleet.Decommissioned {
		g.log.Info("gateway: device state applied", "device", deviceID, "state", string(state))
	}
}

func (g *Gateway) applyRevokedSerials(serials []string) {
	set := make(map[string]bool, len(serials))
	for _, s := range serials {
		set[s] = true
	}
	g.mu.Lock()
	var hit []*session
	for _, s := range g.byConn {
		if set[s.serial] {
			hit = append(hit, s)
		}
	}
	g.mu.Unlock()
	for _, s := range hit {
		g.kick(s, ReasonRevoked, packets.ErrBanned)
	}
}

// kick ends a session: with a DISCONNECT carrying code once MQTT is up,
// by closing the connection before. It never waits for a device: a write
// under way (most often an ack) is let finish and the DISCONNECT follows
// it from another goroutine; a write still stuck after kickWait (a device
// that does not read) is cut short and the connection closed without
// DISCONNECT. Only a session's first kick acts: a revocation arrives both
// as a state and as a certificate serial, and the second must not close
// the connection under the first one's DISCONNECT.
func (g *Gateway) kick(s *session, reason string, code packets.Code) {
	s.setEnd(reason)
	if !s.kicked.CompareAndSwap(false, true) {
		return
	}
	if s.phase.Load() < phaseAdmitted || s.version < 5 {
		_ = s.conn.Close()
		return
	}
	if s.wmu.TryLock() {
		s.goodbye(code)
		return
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(kickWait))
	go func() {
		for deadline := time.Now().Add(kickWait); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if s.wmu.TryLock() {
				s.goodbye(code)
				return
			}
		}
		_ = s.conn.Close()
	}()
}

// kickWait bounds how long a kicked session's DISCONNECT waits for a write
// under way.
const kickWait = 500 * time.Millisecond

// goodbye writes a DISCONNECT with code, unlocks wmu (which the caller
// holds) and closes the connection.
func (s *session) goodbye(code packets.Code) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: code.Code, ProtocolVersion: 5}
	pk.Properties.ReasonString = code.Reason
	var buf bytes.Buffer
	if pk.DisconnectEncode(&buf) == nil {
		_ = s.conn.SetWriteDeadline(time.Now().Add(kickWait))
		_, _ = s.conn.Write(buf.Bytes())
	}
	s.wmu.Unlock()
	_ = s.conn.Close()
}

// ---- sessions

func (g *Gateway) addSession(s *session) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.byConn[s.conn] = s
	m := g.byDevice[s.deviceID]
	if m == nil {
		m = map[*session]struct{}{}
		g.byDevice[s.deviceID] = m
	}
	m[s] = struct{}{}
}

func (g *Gateway) removeSession(s *session) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.byConn, s.conn)
	if m := g.byDevice[s.deviceID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(g.byDevice, s.deviceID)
		}
	}
}

func (g *Gateway) sessionsOf(deviceID string) []*session {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make([]*session, 0, len(g.byDevice[deviceID]))
	for s := range g.byDevice[deviceID] {
		out = append(out, s)
	}
	return out
}

// ---- violations

// Violation is what the gateway raises on bus.SubjectGatewayViolation when
// a device breaks a rule or a limit.
type Violation struct {
	Device string    `json:"device,omitempty"` // empty when unknown (a source address flood)
	Kind   string    `json:"kind"`
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at"`
	Count  int       `json:"count"` // this one and those suppressed since the last event
}

// Violation kinds.
const (
	ViolationACLPublish    = "acl_publish"
	ViolationACLSubscribe  = "acl_subscribe"
	ViolationRetain        = "retain"
	ViolationPayloadSize   = "payload_size"
	ViolationPacketSize    = "packet_size"
	ViolationMsgRate       = "msg_rate"
	ViolationConnectDevice = "connect_rate_device"
	ViolationConnectSource = "connect_rate_source"
	ViolationClientID      = "client_id"
	ViolationWill          = "will"
)

// violation counts a violation and raises it on the bus, throttled.
func (g *Gateway) violation(device, source, kind, detail string) {
	g.stats.violation(kind)
	if g.cfg.Conn == nil {
		return
	}
	key := device
	if key == "" {
		key = "src:" + source
	}
	ok, suppressed := g.vquiet.Allow(key+"|"+kind, g.now())
	if !ok {
		return
	}
	b, _ := json.Marshal(Violation{Device: device, Kind: kind, Detail: clip(detail, 256), At: g.now().UTC(), Count: suppressed + 1})
	_ = g.cfg.Conn.Publish(bus.SubjectGatewayViolation, b)
}

// ---- refusals

// refusal is a connection refused before or at CONNECT.
type refusal struct {
	conn   Connection
	reason string
	detail string
	flood  bool // throttle rows and audit per source and reason
}

// refuse records a refused connection: a history row and an audit entry,
// both throttled per device (or source) and reason when flood is set, and
// always for audit.
func (g *Gateway) refuse(r refusal) {
	g.stats.refused(r.reason)
	now := g.now().UTC()
	key := r.conn.DeviceID
	if key == "" {
		key = "src:" + hostOf(r.conn.RemoteAddr)
	}
	ok, suppressed := g.quiet.Allow(key+"|"+r.reason+"|"+r.detail, now)
	detail := r.detail
	if suppressed > 0 {
		detail = fmt.Sprintf("%s (and %d more like it in the last minute)", detail, suppressed)
	}
	if ok || !r.flood {
		c := r.conn
		c.Node, c.ConnectedAt, c.Reason, c.Detail = g.cfg.Node, now, r.reason, detail
		g.hist.refused(c)
	}
	if !ok {
		return
	}
	actor, target := audit.Anonymous, ""
	if r.conn.DeviceID != "" {
		actor, target = "device:"+r.conn.DeviceID, "device:"+r.conn.DeviceID
	}
	d := map[string]any{"reason": r.reason, "node": g.cfg.Node, "suppressed": suppressed}
	if r.conn.CertSerial != "" {
		d["cert_serial"] = r.conn.CertSerial
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.cfg.Audit.Record(ctx, audit.Entry{At: now, Actor: actor, Action: "gateway.connect", Target: target, Outcome: audit.Denied,
		Reason: clip(r.detail, 256), Source: hostOf(r.conn.RemoteAddr), Detail: d}); err != nil {
		g.log.Error("gateway: audit", "err", err)
	}
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

// ---- stats

type counters struct {
	connected  atomic.Int64
	mu         sync.Mutex
	refusals   map[string]int64
	violations map[string]int64
}

func (c *counters) refused(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refusals == nil {
		c.refusals = map[string]int64{}
	}
	c.refusals[reason]++
}

func (c *counters) violation(kind string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.violations == nil {
		c.violations = map[string]int64{}
	}
	c.violations[kind]++
}

// Stats is a snapshot of the gateway's counters.
type Stats struct {
	Connected      int64            `json:"connected"`       // MQTT sessions on this node
	Refused        map[string]int64 `json:"refused"`         // refused connections by reason
	Violations     map[string]int64 `json:"violations"`      // refused messages, subscriptions and attempts by kind
	HistoryDropped int64            `json:"history_dropped"` // history rows lost to a full queue or a store error
}

// Status is a node's gateway at a glance: its sessions now, and what it
// refused and stored since it started (counters are per node and start at
// zero with it).
type Status struct {
	Node           string           `json:"node"`
	Address        string           `json:"address"`         // the MQTT listener
	Since          time.Time        `json:"since"`           // when the counters started
	Connected      int64            `json:"connected"`       // MQTT sessions on this node now
	Refused        map[string]int64 `json:"refused"`         // refused connections by reason
	Violations     map[string]int64 `json:"violations"`      // refused messages, subscriptions and attempts by kind
	HistoryDropped int64            `json:"history_dropped"` // history rows lost to a full queue or a store error
	Messages       IngestStats      `json:"messages"`        // what devices published (zero without ingest)
}

// Status returns the node's sessions and counters.
func (g *Gateway) Status() Status {
	st := g.Stats()
	s := Status{Node: g.cfg.Node, Address: g.Addr().String(), Since: g.started, Connected: st.Connected,
		Refused: st.Refused, Violations: st.Violations, HistoryDropped: st.HistoryDropped}
	if g.ingest != nil {
		s.Messages = g.ingest.Stats()
	}
	return s
}

// Stats returns the counters since New.
func (g *Gateway) Stats() Stats {
	g.stats.mu.Lock()
	defer g.stats.mu.Unlock()
	s := Stats{Connected: g.stats.connected.Load(), Refused: map[string]int64{}, Violations: map[string]int64{}, HistoryDropped: g.hist.Dropped()}
	for k, v := range g.stats.refusals {
		s.Refused[k] = v
	}
	for k, v := range g.stats.violations {
		s.Violations[k] = v
	}
	return s
}
