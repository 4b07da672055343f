package load

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/wardhq/ward/agent"
	"github.com/wardhq/ward/protocol"
)

// Modes of the load generator.
const (
	// Connect opens fresh connections (TCP, mutual TLS 1.3, CONNECT,
	// CONNACK) and closes each at once (DISCONNECT), from Workers
	// concurrent clients, until Count connections or Duration.
	Connect = "connect"
	// Hold connects Count clients (Workers at a time), reports them held,
	// keeps them until Hold passes or Release is closed, then disconnects.
	Hold = "hold"
	// Publish connects Publishers clients; each publishes QoS 1 messages to
	// its own telemetry topic, one at a time (publish → PUBACK), for Warmup
	// plus Duration; only the Duration window is counted. With Windows, the
	// clients stay connected and publish one such window each time Windows
	// delivers, until it is closed.
	Publish = "publish"
)

// Config is one run of the load generator.
type Config struct {
	Mode       string
	Addr       string         // broker host:port, on 127.0.0.0/8
	ServerCA   *x509.CertPool // verifies the broker's certificate once; the leaf is then pinned
	ServerName string         // the name the broker's certificate carries
	Devices    []Device
	Sources    []net.IP // local addresses in 127.0.0.0/8, used in turn; none: the kernel's choice

	Workers    int           // concurrent connection attempts (connect, hold)
	Count      int           // connect: at most this many; hold: this many clients (0: every device)
	Duration   time.Duration // connect: at most this long; publish: the measured window
	Warmup     time.Duration // publish: not counted
	Hold       time.Duration // hold: at most this long once all are connected
	Release    <-chan struct{}
	Held       func(Result) // hold: called once every client has connected (or failed)
	Publishers int
	Payload    int // publish: bytes per message (a JSON object with "v": 1)
	// OneWrite sends each packet in one write (agent.NewPacketConn, as
	// Ward's agent does) instead of paho's several.
	OneWrite bool
	// Windows, for publish, gates the windows: Connected is called once
	// the publishers are connected, Window with each window's result.
	Windows   <-chan struct{}
	Connected func(Result)
	Window    func(Result)
	KeepAlive uint16 // seconds; 0: 300
	Progress  io.Writer
}

// Result is what a run measured.
type Result struct {
	Mode       string  `json:"mode"`
	Event      string  `json:"event,omitempty"` // "held" on the line a hold run prints once connected; "connected", "window" for gated publish
	Clients    int     `json:"clients,omitempty"`
	OK         int64   `json:"ok"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Drops      int64   `json:"drops,omitempty"` // hold: connections the broker closed while held
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"rate"` // connect: connections/s; hold: connects/s while connecting; publish: msg/s
	Latency    Hist    `json:"latency,omitempty"`
	// CPUSeconds is the CPU time the load generator spent in the measured
	// phase (connect: the whole run; hold: connecting; publish: the window
	// and warm-up).
	CPUSeconds float64 `json:"cpu_seconds"`
}

// P50 and P99 are the latency quantiles (connect: CONNECT→CONNACK including
// TCP and TLS; publish: PUBLISH→PUBACK).
func (r Result) P50() time.Duration { return r.Latency.Quantile(0.50) }

// P99 is the 99th percentile latency.
func (r Result) P99() time.Duration { return r.Latency.Quantile(0.99) }

// Run performs one bounded run; it returns when the run is over and every
// connection it opened is closed.
func Run(ctx context.Context, cfg Config) (Result, error) {
	g, err := newGen(ctx, cfg)
	if err != nil {
		return Result{Mode: cfg.Mode}, err
	}
	switch cfg.Mode {
	case Connect:
		return g.connect(ctx), nil
	case Hold:
		return g.hold(ctx), nil
	case Publish:
		return g.publish(ctx), nil
	}
	return Result{Mode: cfg.Mode}, fmt.Errorf("load: unknown mode %q", cfg.Mode)
}

type gen struct {
	cfg    Config
	leaf   []byte // the broker's certificate, pinned
	source atomic.Uint64

	errs     atomic.Int64
	firstErr atomic.Value
}

func newGen(ctx context.Context, cfg Config) (*gen, error) {
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("load: address: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return nil, fmt.Errorf("load: refusing %s: the load generator targets only 127.0.0.0/8", cfg.Addr)
	}
	for _, s := range cfg.Sources {
		if !s.IsLoopback() || s.To4() == nil {
			return nil, fmt.Errorf("load: source %s is not in 127.0.0.0/8", s)
		}
	}
	if len(cfg.Devices) == 0 {
		return nil, errors.New("load: no devices")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 300
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if cfg.Mode == Hold && (cfg.Count <= 0 || cfg.Count > len(cfg.Devices)) {
		cfg.Count = len(cfg.Devices)
	}
	if cfg.Mode == Publish && (cfg.Publishers <= 0 || cfg.Publishers > len(cfg.Devices)) {
		return nil, fmt.Errorf("load: %d publishers need as many devices (have %d)", cfg.Publishers, len(cfg.Devices))
	}
	if cfg.Mode == Connect && cfg.Count <= 0 && cfg.Duration <= 0 {
		return nil, errors.New("load: connect needs a count or a duration")
	}
	g := &gen{cfg: cfg}
	// Verify the broker's chain once, then pin its leaf: the generator
	// shares the machine's cores with the broker and should not spend them
	// re-verifying the same chain for every simulated device.
	raw, err := g.dialTCP(ctx)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: cfg.ServerCA, ServerName: cfg.ServerName,
		Certificates: []tls.Certificate{cfg.Devices[0].Cert},
	})
	defer tc.Close()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("load: broker certificate: %w", err)
	}
	g.leaf = tc.ConnectionState().PeerCertificates[0].Raw
	return g, nil
}

func (g *gen) fail(err error) {
	g.errs.Add(1)
	g.firstErr.CompareAndSwap(nil, err.Error())
}

func (g *gen) result(mode string) Result {
	r := Result{Mode: mode, Errors: g.errs.Load()}
	if s, ok := g.firstErr.Load().(string); ok {
		r.FirstError = s
	}
	return r
}

func (g *gen) dialTCP(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, Control: bindNoPort}
	if n := len(g.cfg.Sources); n > 0 {
		d.LocalAddr = &net.TCPAddr{IP: g.cfg.Sources[int(g.source.Add(1)%uint64(n))]}
	}
	return d.DialContext(ctx, "tcp", g.cfg.Addr)
}

// tlsConfig is a device's TLS: its certificate, TLS 1.3 only, X25519 (as
// embedded TLS stacks offer today), no session resumption, the broker's
// certificate pinned.
func (g *gen) tlsConfig(d Device) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		Certificates:       []tls.Certificate{d.Cert},
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, g.leaf) {
				return errors.New("broker certificate is not the pinned one")
			}
			return nil
		},
	}
}

// receiveMaximum bounds what the broker may send unacknowledged; paho
// sizes a per-client channel by it (65,535 slots by default, 512 KiB per
// client).
var receiveMaximum uint16 = 16

// dial connects one device: TCP, TLS 1.3 handshake, CONNECT, CONNACK.
func (g *gen) dial(ctx context.Context, d Device, lost func()) (*paho.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := g.dialTCP(ctx)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, g.tlsConfig(d))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	var once sync.Once
	onLost := func() {
		if lost != nil {
			once.Do(lost)
		}
	}
	// paho writes a packet in several Writes and pings from its own
	// goroutine: the lock keeps a PINGREQ out of another packet.
	conn := packets.NewThreadSafeConn(tc)
	if g.cfg.OneWrite {
		conn = agent.NewPacketConn(tc)
	}
	c := paho.NewClient(paho.ClientConfig{
		Conn:               conn,
		OnClientError:      func(error) { onLost() },
		OnServerDisconnect: func(*paho.Disconnect) { onLost() },
	})
	ack, err := c.Connect(ctx, &paho.Connect{
		ClientID:   d.ID,
		KeepAlive:  g.cfg.KeepAlive,
		CleanStart: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &receiveMaximum},
	})
	if err != nil {
		tc.Close()
		if ack != nil {
			return nil, fmt.Errorf("connack %d %s: %w", ack.ReasonCode, reason(ack.Properties), err)
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	if ack.ReasonCode != 0 {
		tc.Close()
		return nil, fmt.Errorf("connack %d %s", ack.ReasonCode, reason(ack.Properties))
	}
	return c, nil
}

func reason(p *paho.ConnackProperties) string {
	if p == nil {
		return ""
	}
	return p.ReasonString
}

func (g *gen) connect(ctx context.Context) Result {
	cfg := g.cfg
	var deadline time.Time
	if cfg.Duration > 0 {
		deadline = time.Now().Add(cfg.Duration)
	}
	var (
		next atomic.Int64
		ok   atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		hist = Hist{}
	)
	stop := progress(cfg.Progress, "connect", &ok, &g.errs)
	start, cpu0 := time.Now(), cpuTime()
	for range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := Hist{}
			defer func() { mu.Lock(); hist.Merge(local); mu.Unlock() }()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if cfg.Count > 0 && i >= cfg.Count || !deadline.IsZero() && time.Now().After(deadline) {
					return
				}
				t0 := time.Now()
				c, err := g.dial(ctx, cfg.Devices[i%len(cfg.Devices)], nil)
				if err != nil {
					g.fail(err)
					continue
				}
				local.Add(time.Since(t0))
				ok.Add(1)
				_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
			}
		}()
	}
	wg.Wait()
	stop()
	r := g.result(Connect)
	r.CPUSeconds = (cpuTime() - cpu0).Seconds()
	r.Seconds = time.Since(start).Seconds()
	r.OK = ok.Load()
	r.Rate = float64(r.OK) / r.Seconds
	r.Latency = hist
	r.Clients = cfg.Workers
	return r
}

func (g *gen) hold(ctx context.Context) Result {
	cfg := g.cfg
	var (
		next    atomic.Int64
		ok      atomic.Int64
		drops   atomic.Int64
		holding atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		hist    = Hist{}
	)
	clients := make([]*paho.Client, cfg.Count)
	lost := func() {
		if holding.Load() {
			drops.Add(1)
		}
	}
	stop := progress(cfg.Progress, "hold", &ok, &g.errs)
	start, cpu0 := time.Now(), cpuTime()
	for range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := Hist{}
			defer func() { mu.Lock(); hist.Merge(local); mu.Unlock() }()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= cfg.Count {
					return
				}
				t0 := time.Now()
				c, err := g.dial(ctx, cfg.Devices[i], lost)
				if err != nil {
					g.fail(err)
					continue
				}
				local.Add(time.Since(t0))
				clients[i] = c
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	stop()
	r := g.result(Hold)
	r.CPUSeconds = (cpuTime() - cpu0).Seconds()
	r.Seconds = time.Since(start).Seconds()
	r.OK = ok.Load()
	r.Rate = float64(r.OK) / r.Seconds
	r.Clients = cfg.Count
	r.Latency = hist
	holding.Store(true)
	if cfg.Held != nil {
		held := r
		held.Event = "held"
		cfg.Held(held)
	}
	timer := time.NewTimer(cfg.Hold)
	select {
	case <-timer.C:
	case <-cfg.Release:
	case <-ctx.Done():
	}
	timer.Stop()
	holding.Store(false)
	r.Drops = drops.Load()
	// Disconnect in parallel, Workers at a time.
	sem := make(chan struct{}, cfg.Workers)
	for _, c := range clients {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}()
	}
	wg.Wait()
	return r
}

// payload is a v1 telemetry message of n bytes (at least its fixed part).
func payload(n int) []byte {
	b := []byte(`{"v":1,"kind":"vitals","hr":72,"spo2":98,"rate_ml_h":12.5,"pad":""}`)
	if pad := n - len(b); pad > 0 {
		b = append(b[:len(b)-2], []byte(strings.Repeat("x", pad)+`"}`)...)
	}
	return b
}

func (g *gen) publish(ctx context.Context) Result {
	cfg := g.cfg
	var wg sync.WaitGroup
	// Connect the publishers first, Workers at a time.
	clients := make([]*paho.Client, cfg.Publishers)
	sem := make(chan struct{}, cfg.Workers)
	for i := range clients {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := g.dial(ctx, cfg.Devices[i], nil)
			if err != nil {
				g.fail(err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range clients {
			if c != nil {
				_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
			}
		}
	}()
	if cfg.Windows == nil {
		return g.publishWindow(ctx, clients)
	}
	r := g.result(Publish)
	r.Event, r.Clients = "connected", cfg.Publishers
	if cfg.Connected != nil {
		cfg.Connected(r)
	}
	for {
		select {
		case <-ctx.Done():
			return r
		case _, ok := <-cfg.Windows:
			if !ok {
				return r
			}
		}
		r = g.publishWindow(ctx, clients)
		r.Event = "window"
		if cfg.Window != nil {
			cfg.Window(r)
		}
	}
}

// publishWindow has every connected client publish, one message at a time,
// for Warmup and then Duration, and counts the Duration window.
func (g *gen) publishWindow(ctx context.Context, clients []*paho.Client) Result {
	cfg := g.cfg
	var (
		ok   atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		hist = Hist{}
	)
	body := payload(cfg.Payload)
	stop := progress(cfg.Progress, "publish", &ok, &g.errs)
	errs0 := g.errs.Load()
	cpu0 := cpuTime()
	from := time.Now().Add(cfg.Warmup)
	until := from.Add(cfg.Duration)
	for i, c := range clients {
		if c == nil {
			continue
		}
		topic := protocol.Topic(cfg.Devices[i].ID, protocol.Telemetry)
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := Hist{}
			defer func() { mu.Lock(); hist.Merge(local); mu.Unlock() }()
			for ctx.Err() == nil {
				t0 := time.Now()
				if t0.After(until) {
					return
				}
				resp, err := c.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: body})
				if err == nil && resp != nil && resp.ReasonCode >= 0x80 {
					err = fmt.Errorf("puback reason %d", resp.ReasonCode)
				}
				counted := t0.After(from)
				if err != nil {
					if counted {
						g.fail(err)
					}
					select {
					case <-c.Done(): // the connection is gone
						return
					default:
					}
					continue
				}
				if counted {
					local.Add(time.Since(t0))
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	stop()
	r := g.result(Publish)
	r.Errors -= errs0 // this window's (FirstError stays the run's first)
	r.CPUSeconds = (cpuTime() - cpu0).Seconds()
	r.Clients = cfg.Publishers
	r.Seconds = cfg.Duration.Seconds()
	r.OK = ok.Load()
	r.Rate = float64(r.OK) / r.Seconds
	r.Latency = hist
	return r
}

// progress prints a line every five seconds until stopped.
func progress(w io.Writer, what string, ok, errs *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				fmt.Fprintf(w, "mqttload: %s: %d ok, %d errors after %s\n", what, ok.Load(), errs.Load(), now.Sub(start).Round(time.Second))
			}
		}
	}()
	return func() { close(done); <-finished }
}
