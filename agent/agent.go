package agent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/wardhq/ward/protocol"
)

// Defaults of Config.
const (
	DefaultBackoffMin        = time.Second
	DefaultBackoffMax        = 5 * time.Minute
	DefaultBufferLimit       = 1000
	DefaultTelemetryInterval = 10 * time.Second
	DefaultQuarantineProbe   = time.Minute
	DefaultPublishRate       = 20 // messages per second; Ward allows 50/s by default
	DefaultPublishBurst      = 40
	DefaultKeepAlive         = 60 * time.Second
	DefaultPacketTimeout     = 10 * time.Second
)

// Certificate names in a KeyStore.
const (
	// CertBirth is the birth certificate (IDevID) chain, written at the
	// factory: leaf first, then any manufacturer intermediates.
	CertBirth = "birth"
	// CertOperational is the operational certificate (LDevID) chain that
	// Ward issued: leaf first, then Ward's issuing CA.
	CertOperational = "operational"
)

// Device is what the product code implements: the agent reads the device's
// state and measurements through it and never tells it to stop (see
// "Safe by default" in the package doc). Its methods are called from the
// agent's goroutines and must be safe for concurrent use with the product's
// own; they should return quickly.
type Device interface {
	// State is the device's current state as a JSON object, published
	// retained on the state topic when the agent connects, when the product
	// calls Agent.StateChanged, and otherwise at most once per
	// TelemetryInterval when it differs from the last one published (so a
	// field that changes every second costs one message per interval, not
	// one per second). protocol.StatePayload is the
	// recommended shape. The agent sets "v" to 1 when it is absent or 0;
	// nil reports nothing.
	State() any
	// Idle reports whether it is safe to install an update now (no
	// therapy running). Reserved: the agent consults it before applying
	// updates, which arrive with the update issue.
	Idle() bool
	// Telemetry is the current measurements as a JSON object, published on
	// the telemetry topic every Config.TelemetryInterval; nil skips one
	// round. The agent sets "v" to 1 when it is absent or 0.
	Telemetry() any
}

// Commander is implemented by a Device that runs commands. Reserved: the
// agent will call it only with commands whose signed envelope it verified
// (addressed to this device, fresh, not replayed, signed by Ward's command
// key), which arrives with the command-signing issue. Until then the agent
// never calls it; see Config.OnCommand.
type Commander interface {
	Command(ctx context.Context, cmd Command) error
}

// Updater is implemented by a Device that installs software or drug
// libraries. Reserved: the agent will call it only with TUF-verified
// targets and only while Device.Idle reports true, which arrives with the
// update issue. Until then the agent never calls it.
type Updater interface {
	ApplyUpdate(ctx context.Context, u Update) error
}

// Command is a command from Ward, as received on the device's cmd topic:
// {"v":1,"id":…,"expires_at":…,"body":"<base64>"}.
type Command struct {
	ID        string    // Ward's command id; a repeat carries the same id
	ExpiresAt time.Time // the agent does not deliver an expired command
	Body      []byte    // the command itself, opaque: NOT VERIFIED by this version
	Raw       []byte    // the whole message as received
}

// Update names content to install. Reserved for the update issue; its
// fields may grow.
type Update struct {
	Kind    string // "software" or "druglib"
	Version string
	Path    string // the verified file, on the device
}

// Config configures an Agent. Server, MQTT, Roots, Keys and Device are
// required; everything else has a default.
type Config struct {
	// Server is host:port of Ward's device listener (EST).
	Server string
	// MQTT is host:port of Ward's MQTT listener.
	MQTT string
	// ServerName is the name the listeners' certificates are checked
	// against; default the host part of Server (for EST) and of MQTT.
	ServerName string
	// Roots holds Ward's root CA certificate, provisioned at installation.
	// It is the only trust anchor: the agent never replaces it with what
	// /cacerts says.
	Roots *x509.CertPool
	// Keys holds the device key and certificates. Its birth certificate
	// (or an operational certificate) must be present.
	Keys KeyStore
	// Serial is the device serial; default the serialNumber of the birth
	// certificate's subject.
	Serial string
	// Device is the product.
	Device Device
	// SoftwareVersion is sent in CONNECT (user property software_version).
	SoftwareVersion string

	// OnCommand, if set, receives every command that arrives on the cmd
	// topic, UNVERIFIED: this version of the agent does not check
	// signatures, addressing or freshness of command bodies yet (the
	// command-signing issue adds that and then calls Commander instead).
	// Only simulators and tests should set it; product code must not act on
	// a command body it received here. The agent drops expired commands and
	// repeats of a command it already answered, and answers each command on
	// the ack topic: {"v":1,"command":<id>,"status":"done"|"failed"|
	// "refused"|"expired","error":…}. Without OnCommand every command is
	// answered "refused".
	OnCommand func(ctx context.Context, cmd Command) error

	Logger *slog.Logger     // default: discard
	Now    func() time.Time // default time.Now; also the clock of TLS verification
	Rand   io.Reader        // default crypto/rand.Reader: jitter, CSR signatures

	// RenewBefore renews the operational certificate when this much of its
	// lifetime remains. Default: a third of its lifetime, that is when two
	// thirds have passed (day 5 of 7), as docs/device-protocol.md advises.
	RenewBefore time.Duration
	// BackoffMin and BackoffMax bound the delays between attempts
	// (enrollment, connection, refused publishes): exponential with full
	// jitter, never below BackoffMin. Defaults 1 s and 5 min.
	BackoffMin, BackoffMax time.Duration
	// BufferLimit bounds the events kept while they cannot be delivered;
	// beyond it the oldest is dropped and counted (Status.Dropped).
	// Default 1000.
	BufferLimit int
	// TelemetryInterval is the period of telemetry; default 10 s,
	// negative disables telemetry.
	TelemetryInterval time.Duration
	// QuarantineProbe is how often telemetry is tried while Ward refuses
	// it because the device is quarantined (to learn of the release);
	// default 1 min.
	QuarantineProbe time.Duration
	// PublishRate and PublishBurst pace the agent's own publishes, below
	// Ward's per-device limit (50/s, burst 100). Defaults 20/s, 40.
	PublishRate  float64
	PublishBurst int
	// KeepAlive is the MQTT keepalive; default 60 s.
	KeepAlive time.Duration
	// PacketTimeout bounds each network exchange (an EST request, CONNECT,
	// a PUBACK); default 10 s.
	PacketTimeout time.Duration

	// LocalAddr, if set, is the source address of every connection (a
	// simulator spreads its devices over 127.0.0.x).
	LocalAddr net.Addr
	// Dial, if set, opens the TCP connections instead of a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Phase is where the agent is in its life.
type Phase string

// Phases, in order. An agent moves forward through them and goes back to
// enrolled when its connection drops, to enrolling when its certificate
// expired or was refused.
const (
	PhaseNew       Phase = "new"       // not started
	PhaseEnrolling Phase = "enrolling" // asking for an operational certificate
	PhasePending   Phase = "pending"   // Ward answered 202: a person has to approve the device
	PhaseRefused   Phase = "refused"   // Ward refused enrollment (403): needs a person; retried slowly
	PhaseEnrolled  Phase = "enrolled"  // holds a valid operational certificate, not connected
	PhaseConnected Phase = "connected" // MQTT session up
)

// Status is a snapshot of the agent.
type Status struct {
	Phase        Phase
	DeviceID     string    // empty until enrolled
	Enrolled     bool      // holds an operational certificate that is valid now
	Connected    bool      // MQTT session up
	CertNotAfter time.Time // of the operational certificate
	Quarantined  bool      // Ward refuses telemetry because the device is quarantined
	Buffered     int       // events waiting to be delivered
	Delivered    uint64    // events Ward acknowledged
	Dropped      uint64    // events dropped because the buffer was full
	Rejected     uint64    // events Ward refused for good (too large, bad format)
	Renewals     uint64    // successful re-enrollments
	Connects     uint64    // successful MQTT connections
	LastError    string    // the last failure, for a device log; never holds a secret
}

// Agent runs the device's side of Ward: enrollment, renewal and the MQTT
// session. Create it with New, run it with Run.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	serial string

	rngMu   sync.Mutex // guards reads from cfg.Rand
	limiter *rate.Limiter

	mu          sync.Mutex
	phase       Phase
	deviceID    string
	op          []*x509.Certificate // operational chain in use
	opRefused   bool                // Ward refused op at a handshake: do not use it again
	connected   bool
	quarantined bool
	out         outbox
	acks        [][]byte // answers to commands, waiting to be published
	seen        seenCommands
	delivered   uint64
	rejected    uint64
	renewals    uint64
	connects    uint64
	lastErr     string
	boot        string // random, per Agent: with seq, names an event uniquely
	seq         uint64

	renewRetryAt time.Time // agent clock: no renewal attempt before
	renewAttempt int

	wake         chan struct{} // an event was queued, or the state changed
	stateChanged chan struct{}
	runOnce      sync.Once
}

// Errors.
var (
	// ErrConfig is returned by New for an incomplete Config.
	ErrConfig = errors.New("agent: config")
	// ErrBadEvent is returned by Event for a body that cannot be sent.
	ErrBadEvent = errors.New("agent: event")
)

// New checks cfg and returns an agent, ready to Run. It loads the
// certificates from the key store but opens no connection.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Server == "":
		return nil, fmt.Errorf("%w: no Server (EST device listener host:port)", ErrConfig)
	case cfg.MQTT == "":
		return nil, fmt.Errorf("%w: no MQTT (host:port)", ErrConfig)
	case cfg.Roots == nil:
		return nil, fmt.Errorf("%w: no Roots (Ward's root CA)", ErrConfig)
	case cfg.Keys == nil:
		return nil, fmt.Errorf("%w: no Keys", ErrConfig)
	case cfg.Device == nil:
		return nil, fmt.Errorf("%w: no Device", ErrConfig)
	}
	for _, addr := range []string{cfg.Server, cfg.MQTT} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: address %q: %w", ErrConfig, addr, err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = cfg.BackoffMin
	}
	if cfg.BufferLimit <= 0 {
		cfg.BufferLimit = DefaultBufferLimit
	}
	if cfg.TelemetryInterval == 0 {
		cfg.TelemetryInterval = DefaultTelemetryInterval
	}
	if cfg.QuarantineProbe <= 0 {
		cfg.QuarantineProbe = DefaultQuarantineProbe
	}
	if cfg.PublishRate <= 0 {
		cfg.PublishRate = DefaultPublishRate
	}
	if cfg.PublishBurst <= 0 {
		cfg.PublishBurst = DefaultPublishBurst
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.PacketTimeout <= 0 {
		cfg.PacketTimeout = DefaultPacketTimeout
	}
	if cfg.RenewBefore < 0 {
		return nil, fmt.Errorf("%w: negative RenewBefore", ErrConfig)
	}
	a := &Agent{
		cfg: cfg, log: cfg.Logger, now: cfg.Now,
		phase:        PhaseNew,
		out:          outbox{limit: cfg.BufferLimit},
		wake:         make(chan struct{}, 1),
		stateChanged: make(chan struct{}, 1),
		limiter:      rate.NewLimiter(rate.Limit(cfg.PublishRate), cfg.PublishBurst),
	}
	var bootID [8]byte
	if _, err := io.ReadFull(cfg.Rand, bootID[:]); err != nil {
		return nil, fmt.Errorf("agent: rand: %w", err)
	}
	a.boot = hex.EncodeToString(bootID[:])
	birth, err := cfg.Keys.Certificate(CertBirth)
	if err != nil && !errors.Is(err, ErrNoCertificate) {
		return nil, fmt.Errorf("agent: birth certificate: %w", err)
	}
	op, err := cfg.Keys.Certificate(CertOperational)
	if err != nil && !errors.Is(err, ErrNoCertificate) {
		return nil, fmt.Errorf("agent: operational certificate: %w", err)
	}
	if len(birth) == 0 && len(op) == 0 {
		return nil, fmt.Errorf("%w: the key store holds neither a birth nor an operational certificate", ErrConfig)
	}
	a.serial = cfg.Serial
	if a.serial == "" && len(birth) > 0 {
		a.serial = birth[0].Subject.SerialNumber
	}
	if a.serial == "" && len(op) > 0 {
		a.serial = op[0].Subject.SerialNumber
	}
	if a.serial == "" {
		return nil, fmt.Errorf("%w: no Serial and no serialNumber in the birth certificate", ErrConfig)
	}
	if len(op) > 0 {
		id, err := DeviceIDOf(op[0])
		if err != nil {
			a.log.Warn("agent: ignoring the stored operational certificate", "err", err)
		} else {
			a.op, a.deviceID = op, id
		}
	}
	return a, nil
}

// DeviceID returns the device's Ward id, or "" before the first enrollment.
func (a *Agent) DeviceID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.deviceID
}

// Status returns a snapshot of the agent.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{
		Phase: a.phase, DeviceID: a.deviceID, Connected: a.connected, Quarantined: a.quarantined,
		Buffered: a.out.len(), Delivered: a.delivered, Dropped: a.out.dropped, Rejected: a.rejected,
		Renewals: a.renewals, Connects: a.connects, LastError: a.lastErr,
	}
	if len(a.op) > 0 {
		s.CertNotAfter = a.op[0].NotAfter
		now := a.now()
		s.Enrolled = !a.opRefused && !now.Before(a.op[0].NotBefore) && now.Before(a.op[0].NotAfter)
	}
	return s
}

// Event queues an event for the events topic: {"v":1,"kind":<kind>,
// "boot":<hex>,"seq":<n>,"at":<time>,"data":<body>}. boot is random for
// each Agent (each start of the device) and seq counts its events from 1:
// together they let Ward recognise a repeat (delivery is at least once). Events
// wait in a bounded buffer while the agent is offline or Ward refuses them
// for a while; when the buffer is full the oldest event is dropped and
// counted. Event returns an error only for a body that can never be sent
// (not JSON-encodable, or too large).
func (a *Agent) Event(kind string, body any) error {
	if kind == "" {
		return fmt.Errorf("%w: empty kind", ErrBadEvent)
	}
	data, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadEvent, kind, err)
	}
	a.mu.Lock()
	a.seq++
	seq := a.seq
	a.mu.Unlock()
	b, err := json.Marshal(eventPayload{V: 1, Kind: kind, Boot: a.boot, Seq: seq, At: a.now().UTC(), Data: data})
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadEvent, kind, err)
	}
	if err := protocol.CheckPayload(b); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadEvent, kind, err)
	}
	a.mu.Lock()
	dropped := a.out.push(b)
	total := a.out.dropped
	a.mu.Unlock()
	if dropped && total&(total-1) == 0 { // 1, 2, 4, 8, …: no flood of logs
		a.log.Warn("agent: event buffer full, dropped the oldest event", "limit", a.cfg.BufferLimit, "dropped_total", total)
	}
	notify(a.wake)
	return nil
}

// StateChanged tells the agent that Device.State changed, so it publishes
// it now rather than at the next telemetry round.
func (a *Agent) StateChanged() { notify(a.stateChanged) }

type eventPayload struct {
	V    int             `json:"v"`
	Kind string          `json:"kind"`
	Boot string          `json:"boot"`
	Seq  uint64          `json:"seq"`
	At   time.Time       `json:"at"`
	Data json.RawMessage `json:"data"`
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (a *Agent) setPhase(p Phase) {
	a.mu.Lock()
	a.phase = p
	a.mu.Unlock()
}

func (a *Agent) setErr(err error) {
	a.mu.Lock()
	if err == nil {
		a.lastErr = ""
	} else {
		a.lastErr = err.Error()
	}
	a.mu.Unlock()
}

func validID(id string) bool { return protocol.ValidDeviceID(id) }
