package sim

// The fleet runner: a plan's devices as agents of package agent, in one
// process, against one Ward node (`ward sim`, `ward demo`, bench/sim).
//
// For each Spec the runner plays the factory, then the device:
//
//   - Factory. The device's key store is <Dir>/devices/<serial>/
//     (agent.FileKeyStore): the key is generated there, on the "device",
//     and never leaves it; the manufacturer CA signs a birth certificate
//     for its public key (pki.MintBirthCertificate). A state directory is
//     reused: a key and a birth certificate from the same manufacturer CA
//     are kept, and so is an operational certificate that chains to this
//     Ward's root (one from another Ward is discarded, so the device
//     enrolls again instead of being refused at every handshake).
//   - Device. The model (New) is the product behind agent.Device (its
//     State, Idle and Telemetry are the agent's); one goroutine steps every
//     model each second and hands each Event to the device's agent
//     (Agent.Event, kind = the event type) and calls StateChanged when the
//     mode changed. Each agent runs with its own source address: when Ward
//     is on loopback the devices are spread over 127.0.0.1–254, so that
//     10,000 connections do not crowd one address's ports or Ward's per
//     source limits.
//
// Devices start in plan order, at most MaxStarting at a time: a start slot
// is held from the factory step until the agent is connected, pending (a
// person must approve it), refused, or a minute passed. So thousands of
// devices enroll at the pace Ward answers, not in one storm.
//
// # Misbehaving devices
//
// A device whose Spec.Misbehave is set behaves until it has been connected
// for MisbehaveAfter, then acts like a compromised device for one bounded
// bout, using its own valid credentials (its key and operational
// certificate) with a raw MQTT 5 client, its agent stopped meanwhile:
//
//   - Flood: publishes telemetry at FloodRate (10 times Ward's default
//     per-device limit) for FloodDuration, every 25th message larger than
//     protocol.MaxPayload. Ward refuses the excess (PUBACK 0x96, 0x95):
//     msg_rate and payload_size violations, counted in the connection's
//     history row; a device that keeps at it is disconnected (rate_limit).
//   - Probe: subscribes to wildcards, $SYS and other devices' topics,
//     publishes on other devices' topics and $SYS, then connects once with
//     another device's client id: acl_subscribe, acl_publish and client_id
//     violations, a refused_client_id history row.
//   - AddressHop: connects Hops times, from a different 127.0.0.x address
//     each time (on loopback), faster than Ward's per-device connection
//     rate: history rows from many addresses, connect_rate_device
//     violations and rate_limit refusals.
//
// Then its agent runs again, and the bout repeats every MisbehaveEvery
// (negative: once). A bout never ends the runner: its errors are logged,
// and a panic in it is recovered.
//
// Events of a device's model that happen while its agent is replaced or
// stopped are dropped; so are those buffered in an agent that is stopped
// for a bout (a compromised device is not expected to keep its records).

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardhq/ward/agent"
	"github.com/wardhq/ward/internal/pki"
)

// Defaults of FleetConfig.
const (
	DefaultMaxStarting      = 200
	DefaultProgressInterval = time.Second
	DefaultMisbehaveAfter   = 10 * time.Second
	DefaultMisbehaveEvery   = 10 * time.Minute
	DefaultFloodRate        = 500 // messages per second: 10 × Ward's default per-device limit
	DefaultFloodDuration    = 10 * time.Second
	DefaultHops             = 12
	DefaultBackoffMax       = 30 * time.Second
	// startTimeout releases a start slot whose agent has not reached a
	// resting phase (connected, pending, refused) in this time.
	startTimeout = time.Minute
)

// FleetConfig configures a Fleet. Specs, Dir, Manufacturer,
// ManufacturerKey, Roots, Server and MQTT are required.
type FleetConfig struct {
	Specs []Spec
	// Dir holds the devices' key stores, <Dir>/devices/<serial>/.
	Dir string
	// Manufacturer and ManufacturerKey are the manufacturer CA that signs
	// the birth certificates; Ward must trust it (a registered
	// manufacturer).
	Manufacturer    *x509.Certificate
	ManufacturerKey crypto.Signer
	// Roots holds Ward's root CA certificate: the devices' trust anchor.
	Roots *x509.CertPool
	// Server and MQTT are host:port of Ward's device (EST) and MQTT
	// listeners. ServerName, if set, is the name their certificates are
	// checked against (default: the host part of each).
	Server, MQTT, ServerName string
	// SourceAddrs are the local addresses the devices' connections come
	// from, assigned in turn. nil: 127.0.0.1–127.0.0.254 when Server is on
	// IPv4 loopback, else the system's choice. An empty, non-nil slice
	// also leaves the choice to the system.
	SourceAddrs []netip.Addr
	// MaxStarting bounds the devices starting at once (default 200).
	MaxStarting int
	// Progress, if set, is called every ProgressInterval (default 1 s)
	// while Run runs, and once more when it ends.
	Progress         func(Progress)
	ProgressInterval time.Duration
	// MisbehaveAfter is how long a misbehaving device behaves once
	// connected before its bout (default 10 s); MisbehaveEvery is the time
	// between bouts (default 10 min; negative: one bout only).
	MisbehaveAfter, MisbehaveEvery time.Duration
	// FloodRate and FloodDuration shape a Flood bout (default 500
	// messages/s for 10 s); Hops is the number of connections of an
	// AddressHop bout (default 12).
	FloodRate     float64
	FloodDuration time.Duration
	Hops          int
	// BackoffMax bounds the agents' retry delays (default 30 s, shorter
	// than a real device's 5 min so that a simulated fleet recovers
	// quickly).
	BackoffMax time.Duration
	// Logger is the runner's log; AgentLogger, if set, receives every
	// agent's log with a "serial" field (default: discarded; 10,000 agents
	// say a lot).
	Logger, AgentLogger *slog.Logger
	// Now is the clock of the models and the agents; default time.Now.
	Now func() time.Time
}

// Progress counts the fleet's devices by phase. Waiting, Starting,
// Enrolling, Pending, Refused, Enrolled, Connected, Misbehaving and Failed
// add up to Total.
type Progress struct {
	Total       int `json:"total"`
	Waiting     int `json:"waiting"`     // not started yet (bounded start)
	Starting    int `json:"starting"`    // factory step: key and birth certificate
	Enrolling   int `json:"enrolling"`   // asking Ward for an operational certificate
	Pending     int `json:"pending"`     // waiting for a person at Ward to approve it
	Refused     int `json:"refused"`     // Ward refused enrollment; retried slowly
	Enrolled    int `json:"enrolled"`    // holds a certificate, not connected
	Connected   int `json:"connected"`   // MQTT session up
	Misbehaving int `json:"misbehaving"` // in a misbehaviour bout
	Failed      int `json:"failed"`      // could not be provisioned (see the log)
	// EverConnected counts devices that have been connected at least once
	// during this run.
	EverConnected int `json:"ever_connected"`
	// Bouts counts misbehaviour bouts done.
	Bouts int `json:"bouts"`
	// Events counts model events handed to agents; Delivered, Dropped and
	// Rejected are the agents' (Ward acknowledged, buffer overflow,
	// refused for good).
	Events    uint64 `json:"events"`
	Delivered uint64 `json:"delivered"`
	Dropped   uint64 `json:"dropped"`
	Rejected  uint64 `json:"rejected"`
	// Elapsed is the time since Run started; AllConnected is when every
	// device had been connected at least once (0 until then).
	Elapsed      time.Duration `json:"elapsed_ns"`
	AllConnected time.Duration `json:"all_connected_ns,omitempty"`
}

// DeviceStatus is one device of the fleet.
type DeviceStatus struct {
	Spec        Spec
	Status      agent.Status // of its current agent; Phase "" before it started
	Misbehaving bool         // in a bout now
	Err         string       // why it could not be provisioned
}

// Fleet runs a plan's devices. Build it with NewFleet, run it with Run.
type Fleet struct {
	cfg  FleetConfig
	log  *slog.Logger
	now  func() time.Time
	devs []*device

	start        atomic.Pointer[time.Time] // set by Run
	allConnected atomic.Int64              // ns since start; 0: not yet
	bouts        atomic.Int64
	events       atomic.Uint64
	running      atomic.Bool
}

// device is one simulated device. The stepper goroutine alone reads and
// writes mode; the rest is guarded by mu.
type device struct {
	spec  Spec
	model Device
	dir   string
	local net.Addr // nil: the system's choice
	mode  string

	mu          sync.Mutex
	keys        *agent.FileKeyStore
	ag          *agent.Agent // current agent; nil while stopped
	phase       phase
	misbehaving bool
	ever        bool // connected at least once
	err         string
	// counts of agents that ended (one per bout)
	delivered, dropped, rejected uint64
}

type phase int

const (
	phaseWaiting phase = iota
	phaseStarting
	phaseRunning // see the agent's status
	phaseFailed
)

// NewFleet checks cfg and builds the devices' models. It opens no
// connection and writes nothing.
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	switch {
	case len(cfg.Specs) == 0:
		return nil, fmt.Errorf("%w: fleet: no devices", ErrInvalid)
	case cfg.Dir == "":
		return nil, fmt.Errorf("%w: fleet: no state directory", ErrInvalid)
	case cfg.Manufacturer == nil || cfg.ManufacturerKey == nil:
		return nil, fmt.Errorf("%w: fleet: no manufacturer CA", ErrInvalid)
	case cfg.Roots == nil:
		return nil, fmt.Errorf("%w: fleet: no Ward root CA", ErrInvalid)
	}
	for _, a := range []string{cfg.Server, cfg.MQTT} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%w: fleet: address %q: %w", ErrInvalid, a, err)
		}
	}
	if cfg.MaxStarting <= 0 {
		cfg.MaxStarting = DefaultMaxStarting
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if cfg.MisbehaveAfter <= 0 {
		cfg.MisbehaveAfter = DefaultMisbehaveAfter
	}
	if cfg.MisbehaveEvery == 0 {
		cfg.MisbehaveEvery = DefaultMisbehaveEvery
	}
	if cfg.FloodRate <= 0 {
		cfg.FloodRate = DefaultFloodRate
	}
	if cfg.FloodDuration <= 0 {
		cfg.FloodDuration = DefaultFloodDuration
	}
	if cfg.Hops <= 0 {
		cfg.Hops = DefaultHops
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SourceAddrs == nil && onLoopback4(cfg.Server) {
		cfg.SourceAddrs = LoopbackAddrs()
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger, now: cfg.Now}
	seen := make(map[string]bool, len(cfg.Specs))
	start := cfg.Now()
	for i, s := range cfg.Specs {
		dir := fileName(s.Serial)
		if seen[dir] {
			return nil, fmt.Errorf("%w: fleet: serial %q twice", ErrInvalid, s.Serial)
		}
		seen[dir] = true
		m, err := New(s, start)
		if err != nil {
			return nil, fmt.Errorf("fleet: %s: %w", s.Serial, err)
		}
		d := &device{spec: s, model: m, dir: filepath.Join(cfg.Dir, "devices", dir)}
		if n := len(cfg.SourceAddrs); n > 0 {
			d.local = &net.TCPAddr{IP: cfg.SourceAddrs[i%n].AsSlice()}
		}
		f.devs = append(f.devs, d)
	}
	return f, nil
}

// LoopbackAddrs returns 127.0.0.1 to 127.0.0.254: on Linux the whole of
// 127.0.0.0/8 is the loopback interface, so a simulator can connect from
// many source addresses without configuring anything.
func LoopbackAddrs() []netip.Addr {
	out := make([]netip.Addr, 0, 254)
	for i := 1; i <= 254; i++ {
		out = append(out, netip.AddrFrom4([4]byte{127, 0, 0, byte(i)}))
	}
	return out
}

// onLoopback4 reports whether addr's host is an IPv4 loopback address,
// "localhost" or empty (all interfaces, reached on 127.0.0.1).
func onLoopback4(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "" || host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Is4() && ip.IsLoopback()
}

// fileName maps a serial to a directory name: anything but letters,
// digits, '.', '_' and '-' becomes '_', and a leading '.' too.
func fileName(serial string) string {
	s := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			return r
		}
		return '_'
	}, serial)
	if strings.HasPrefix(s, ".") {
		s = "_" + s[1:]
	}
	return s
}

// Run provisions and starts the devices and runs them until ctx ends; it
// returns when every agent stopped. It fails only if the fleet cannot
// start at all (its state directory): a device that cannot be provisioned
// is logged and counted (Progress.Failed).
func (f *Fleet) Run(ctx context.Context) error {
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("sim: fleet already running")
	}
	if err := os.MkdirAll(filepath.Join(f.cfg.Dir, "devices"), 0o700); err != nil {
		return fmt.Errorf("sim: fleet: %w", err)
	}
	start := f.now()
	f.start.Store(&start)
	var bg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(ctx)
	bg.Go(func() { f.stepLoop(bgCtx) })
	if f.cfg.Progress != nil {
		bg.Go(func() { f.progressLoop(bgCtx) })
	}

	var devs sync.WaitGroup
	slots := make(chan struct{}, f.cfg.MaxStarting)
starting:
	for _, d := range f.devs {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break starting
		}
		var once sync.Once
		release := func() { once.Do(func() { <-slots }) }
		devs.Go(func() {
			defer release()
			f.runDevice(ctx, d, release)
		})
	}
	devs.Wait()
	stopBG()
	bg.Wait()
	if f.cfg.Progress != nil {
		f.cfg.Progress(f.Progress())
	}
	return nil
}

// runDevice provisions d and runs it until ctx ends. release frees its
// start slot.
func (f *Fleet) runDevice(ctx context.Context, d *device, release func()) {
	d.setPhase(phaseStarting)
	if err := f.provision(d); err != nil {
		d.mu.Lock()
		d.phase, d.err = phaseFailed, err.Error()
		d.mu.Unlock()
		f.log.Error("sim: cannot provision the device", "serial", d.spec.Serial, "err", err)
		return
	}
	if d.spec.Misbehave == "" {
		a, done, err := f.startAgent(ctx, d)
		if err != nil {
			return
		}
		f.waitResting(ctx, a)
		release()
		<-done
		return
	}
	f.runMisbehaving(ctx, d, release)
}

// runMisbehaving alternates good behaviour and bouts of misbehaviour.
func (f *Fleet) runMisbehaving(ctx context.Context, d *device, release func()) {
	behave := f.cfg.MisbehaveAfter
	for ctx.Err() == nil {
		actx, stop := context.WithCancel(ctx)
		a, done, err := f.startAgent(actx, d)
		if err != nil {
			stop()
			return
		}
		f.waitResting(ctx, a)
		release()
		// Behave while connected for a while, then stop the agent.
		if f.waitConnected(ctx, a) {
			sleepCtx(ctx, behave)
		}
		stop()
		<-done
		f.retire(d)
		if ctx.Err() != nil {
			return
		}
		f.bout(ctx, d)
		if f.cfg.MisbehaveEvery < 0 {
			if _, done, err := f.startAgent(ctx, d); err == nil {
				<-done
			}
			return
		}
		behave = f.cfg.MisbehaveEvery
	}
}

// startAgent starts a new agent for d; done closes when its Run returns.
func (f *Fleet) startAgent(ctx context.Context, d *device) (*agent.Agent, <-chan struct{}, error) {
	logger := slog.New(slog.DiscardHandler)
	if f.cfg.AgentLogger != nil {
		logger = f.cfg.AgentLogger.With("serial", d.spec.Serial)
	}
	cfg := agent.Config{
		Server: f.cfg.Server, MQTT: f.cfg.MQTT, ServerName: f.cfg.ServerName,
		Roots: f.cfg.Roots, Keys: d.keys, Serial: d.spec.Serial,
		Device:            d.model,
		SoftwareVersion:   d.model.SoftwareVersion(),
		TelemetryInterval: d.model.TelemetryInterval(),
		BackoffMax:        f.cfg.BackoffMax,
		Logger:            logger,
		Now:               f.now,
	}
	if d.local != nil {
		cfg.LocalAddr = d.local
	}
	a, err := agent.New(cfg)
	if err != nil {
		d.mu.Lock()
		d.phase, d.err = phaseFailed, err.Error()
		d.mu.Unlock()
		f.log.Error("sim: cannot start the device's agent", "serial", d.spec.Serial, "err", err)
		return nil, nil, err
	}
	d.mu.Lock()
	d.ag, d.phase, d.misbehaving = a, phaseRunning, false
	d.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx)
	}()
	return a, done, nil
}

// retire forgets d's stopped agent, keeping its counts.
func (f *Fleet) retire(d *device) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ag == nil {
		return
	}
	s := d.ag.Status()
	d.delivered += s.Delivered
	d.dropped += s.Dropped
	d.rejected += s.Rejected
	d.ever = d.ever || s.Connects > 0
	d.ag = nil
}

// waitResting polls a until it is connected, pending or refused, for at
// most startTimeout.
func (f *Fleet) waitResting(ctx context.Context, a *agent.Agent) {
	f.poll(ctx, startTimeout, func() bool {
		switch a.Status().Phase {
		case agent.PhaseConnected, agent.PhasePending, agent.PhaseRefused:
			return true
		}
		return false
	})
}

// waitConnected polls a until it is connected; false if ctx ended first.
func (f *Fleet) waitConnected(ctx context.Context, a *agent.Agent) bool {
	return f.poll(ctx, 0, func() bool { return a.Status().Connected })
}

// poll calls ok every 100 ms until it reports true (then poll does too),
// ctx ends or timeout (if > 0) passes.
func (f *Fleet) poll(ctx context.Context, timeout time.Duration, ok func() bool) bool {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var deadline <-chan time.Time
	if timeout > 0 {
		tm := time.NewTimer(timeout)
		defer tm.Stop()
		deadline = tm.C
	}
	for {
		if ok() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-t.C:
		}
	}
}

// provision is the factory: the device's key store, its key, a birth
// certificate from the manufacturer CA; and it discards an operational
// certificate of another Ward.
func (f *Fleet) provision(d *device) error {
	ks, err := agent.NewFileKeyStore(d.dir)
	if err != nil {
		return err
	}
	key, err := ks.Signer()
	if err != nil {
		return err
	}
	birth, err := ks.Certificate(agent.CertBirth)
	if err != nil && !errors.Is(err, agent.ErrNoCertificate) {
		return err
	}
	if len(birth) == 0 || !f.ownBirth(birth[0], key) {
		c, _, err := pki.MintBirthCertificate(pki.BirthConfig{
			CA: f.cfg.Manufacturer, CAKey: f.cfg.ManufacturerKey,
			Serial: d.spec.Serial, Model: d.spec.Model, Key: key, Now: f.now,
		})
		if err != nil {
			return err
		}
		if err := ks.PutCertificate(agent.CertBirth, []*x509.Certificate{c}); err != nil {
			return err
		}
	}
	if op, err := ks.Certificate(agent.CertOperational); err == nil && !f.fromThisWard(op) {
		// FileKeyStore's documented layout: operational.pem.
		if err := os.Remove(filepath.Join(d.dir, agent.CertOperational+".pem")); err != nil {
			return fmt.Errorf("discard an operational certificate of another Ward: %w", err)
		}
		f.log.Info("sim: discarded an operational certificate from another Ward", "serial", d.spec.Serial)
	}
	d.mu.Lock()
	d.keys = ks
	d.mu.Unlock()
	return nil
}

// ownBirth reports whether c is a birth certificate for key from the
// configured manufacturer CA.
func (f *Fleet) ownBirth(c *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey) && c.CheckSignatureFrom(f.cfg.Manufacturer) == nil &&
		c.Subject.SerialNumber != "" && f.cfg.Manufacturer.Subject.String() == c.Issuer.String()
}

// fromThisWard reports whether the operational chain op was issued under
// Ward's root (checked at the middle of its lifetime: expiry is the
// agent's business).
func (f *Fleet) fromThisWard(op []*x509.Certificate) bool {
	inter := x509.NewCertPool()
	for _, c := range op[1:] {
		inter.AddCert(c)
	}
	mid := op[0].NotBefore.Add(op[0].NotAfter.Sub(op[0].NotBefore) / 2)
	_, err := op[0].Verify(x509.VerifyOptions{Roots: f.cfg.Roots, Intermediates: inter, CurrentTime: mid,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

// stepLoop steps every started model once a second and hands its events
// to the device's agent.
func (f *Fleet) stepLoop(ctx context.Context) {
	t := time.NewTicker(Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := f.now()
		for _, d := range f.devs {
			d.mu.Lock()
			a, started := d.ag, d.phase == phaseRunning
			d.mu.Unlock()
			if !started {
				continue
			}
			evs := d.model.Step(now)
			changed := false
			for _, ev := range evs {
				if ev.Mode != d.mode {
					d.mode, changed = ev.Mode, true
				}
				if a == nil {
					continue
				}
				if err := a.Event(string(ev.Type), ev); err != nil {
					f.log.Warn("sim: event not sent", "serial", d.spec.Serial, "type", ev.Type, "err", err)
					continue
				}
				f.events.Add(1)
			}
			if changed && a != nil {
				a.StateChanged()
			}
		}
	}
}

func (f *Fleet) progressLoop(ctx context.Context) {
	t := time.NewTicker(f.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.cfg.Progress(f.Progress())
		}
	}
}

// Progress counts the devices by phase now.
func (f *Fleet) Progress() Progress {
	p := Progress{Total: len(f.devs), Bouts: int(f.bouts.Load()), Events: f.events.Load()}
	if start := f.start.Load(); start != nil {
		p.Elapsed = f.now().Sub(*start)
	}
	for _, d := range f.devs {
		d.mu.Lock()
		a, ph, mis := d.ag, d.phase, d.misbehaving
		p.Delivered += d.delivered
		p.Dropped += d.dropped
		p.Rejected += d.rejected
		var s agent.Status
		if a != nil {
			s = a.Status()
			d.ever = d.ever || s.Connects > 0
		}
		if d.ever {
			p.EverConnected++
		}
		d.mu.Unlock()
		p.Delivered += s.Delivered
		p.Dropped += s.Dropped
		p.Rejected += s.Rejected
		switch {
		case ph == phaseWaiting:
			p.Waiting++
		case ph == phaseStarting:
			p.Starting++
		case ph == phaseFailed:
			p.Failed++
		case mis || a == nil:
			p.Misbehaving++
		default:
			switch s.Phase {
			case agent.PhaseConnected:
				p.Connected++
			case agent.PhaseEnrolled:
				p.Enrolled++
			case agent.PhasePending:
				p.Pending++
			case agent.PhaseRefused:
				p.Refused++
			default:
				p.Enrolling++
			}
		}
	}
	if p.EverConnected == p.Total && p.Total > 0 {
		f.allConnected.CompareAndSwap(0, int64(max(p.Elapsed, 1)))
	}
	p.AllConnected = time.Duration(f.allConnected.Load())
	return p
}

// Devices returns every device's status, in plan order.
func (f *Fleet) Devices() []DeviceStatus {
	out := make([]DeviceStatus, 0, len(f.devs))
	for _, d := range f.devs {
		d.mu.Lock()
		ds := DeviceStatus{Spec: d.spec, Misbehaving: d.misbehaving, Err: d.err}
		a := d.ag
		d.mu.Unlock()
		if a != nil {
			ds.Status = a.Status()
		}
		out = append(out, ds)
	}
	return out
}

func (d *device) setPhase(p phase) {
	d.mu.Lock()
	d.phase = p
	d.mu.Unlock()
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
