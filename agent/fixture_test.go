package agent_test

// A real Ward node in-process for the agent's tests: SQLite in a temporary
// data directory, its own CA, a NATS server (JetStream on disk) that the
// test also reads the device stream from, the EST device listener and the
// MQTT gateway on fixed loopback ports so that a restarted node is found at
// the same place.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardhq/ward/agent"
	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/server"
	"github.com/wardhq/ward/protocol"
)

type ward struct {
	cfg   config.Config
	api   *client.Client
	js    jetstream.JetStream
	mfr   string
	mint  func(serial string, keys agent.KeyStore) error
	roots *x509.CertPool
	// skew moves the clock of the node and of every agent forward (time
	// passes for everyone); it never goes back.
	skew atomic.Int64

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

// Opening Ward's CA costs a deliberately slow key derivation (seconds under
// the race detector), so the tests share one node; a test that stops it
// starts it again before it ends.
var (
	sharedOnce    sync.Once
	shared        *ward
	sharedErr     error
	sharedCleanup []func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(sharedCleanup) - 1; i >= 0; i-- {
		sharedCleanup[i]()
	}
	os.Exit(code)
}

// node returns the shared Ward node, started.
func node(t *testing.T) *ward {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = newWard() })
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	if !shared.running() {
		if err := shared.start(); err != nil {
			t.Fatal(err)
		}
	}
	return shared
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// newWard starts a node with a registered manufacturer.
func newWard() (*ward, error) {
	tmp, err := os.MkdirTemp("", "ward-agent-test-")
	if err != nil {
		return nil, err
	}
	sharedCleanup = append(sharedCleanup, func() { os.RemoveAll(tmp) })
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(tmp, "nats"), NoSigs: true, NoLog: true})
	if err != nil {
		return nil, err
	}
	ns.Start()
	sharedCleanup = append(sharedCleanup, ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		return nil, errors.New("nats not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return nil, err
	}
	sharedCleanup = append(sharedCleanup, nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}

	cfg := config.Default()
	cfg.Data, cfg.Bus, cfg.NodeName = filepath.Join(tmp, "data"), ns.ClientURL(), "agent-test"
	for _, a := range []*string{&cfg.DeviceAddr, &cfg.MQTTAddr, &cfg.AdminAddr} {
		if *a, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	cfg.Enroll.RetryAfter = config.Duration(time.Second)
	cfg.Gateway.ConnectRatePerDevice, cfg.Gateway.ConnectRatePerSource = 1000, 1000
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := &ward{cfg: cfg, js: js}
	if err := w.start(); err != nil {
		return nil, err
	}
	sharedCleanup = append(sharedCleanup, func() { _ = w.stop() })

	root, err := pki.ReadRoot(cfg.CADir())
	if err != nil {
		return nil, err
	}
	w.roots = x509.NewCertPool()
	w.roots.AddCert(root)

	w.mfr = "Acme Medical"
	ca, key, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: w.mfr})
	if err != nil {
		return nil, err
	}
	if _, err := w.api.AddManufacturer(context.Background(), w.mfr, pki.EncodeCertificates(ca)); err != nil {
		return nil, err
	}
	// The factory: a birth certificate for the key the device made itself.
	w.mint = func(serial string, keys agent.KeyStore) error {
		signer, err := keys.Signer()
		if err != nil {
			return err
		}
		birth, _, err := pki.MintBirthCertificate(pki.BirthConfig{CA: ca, CAKey: key, Serial: serial, Model: "LVP 3000", Key: signer})
		if err != nil {
			return err
		}
		return keys.PutCertificate(agent.CertBirth, []*x509.Certificate{birth})
	}
	return w, nil
}

// now is the shared clock.
func (w *ward) now() time.Time { return time.Now().Add(time.Duration(w.skew.Load())) }

// advance moves the shared clock forward by d.
func (w *ward) advance(d time.Duration) { w.skew.Add(int64(d)) }

func (w *ward) running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cancel != nil
}

// start runs the node on its data directory and ports.
func (w *ward) start() error {
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var srv *server.Server
	var err error
	// The ports are the previous run's: wait until the kernel lets go.
	for deadline := time.Now().Add(10 * time.Second); ; {
		srv, err = server.New(ctx, w.cfg, log, server.WithNotice(io.Discard), server.WithClock(w.now))
		if err == nil || time.Now().After(deadline) || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		cancel()
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()
	w.mu.Lock()
	w.cancel, w.done = cancel, done
	w.mu.Unlock()
	if w.api == nil {
		tok, err := os.ReadFile(w.cfg.AdminTokenPath())
		if err != nil {
			return err
		}
		if w.api, err = client.New("http://"+w.cfg.AdminAddr, strings.TrimSpace(string(tok))); err != nil {
			return err
		}
	}
	return nil
}

// stop shuts the node down gracefully.
func (w *ward) stop() error {
	w.mu.Lock()
	cancel, done := w.cancel, w.done
	w.cancel = nil
	w.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		return errors.New("node did not stop within 20s")
	}
}

// outage stops the node; the returned function starts it again (also
// run at the end of the test if the test did not).
func (w *ward) outage(t *testing.T) (restart func()) {
	t.Helper()
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	restart = func() {
		t.Helper()
		if !w.running() {
			if err := w.start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(restart)
	return restart
}

var serialN atomic.Int64

// device makes a key store with a birth certificate for a new serial,
// preregistered at Ward if prereg.
func (w *ward) device(t *testing.T, prereg bool) (*agent.FileKeyStore, string) {
	t.Helper()
	serial := fmt.Sprintf("LVP-%d-%d", time.Now().UnixNano()%1e6, serialN.Add(1))
	keys, err := agent.NewFileKeyStore(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.mint(serial, keys); err != nil {
		t.Fatal(err)
	}
	if prereg {
		if _, err := w.api.Preregister(context.Background(), client.Preregistration{Serial: serial, Manufacturer: w.mfr, Model: "LVP 3000"}); err != nil {
			t.Fatal(err)
		}
	}
	return keys, serial
}

// agentConfig is a Config with the fast timings of the tests.
func (w *ward) agentConfig(t *testing.T, keys agent.KeyStore, dev agent.Device) agent.Config {
	return agent.Config{
		Server: w.cfg.DeviceAddr, MQTT: w.cfg.MQTTAddr, Roots: w.roots, Keys: keys, Device: dev,
		SoftwareVersion: "2.6A",
		Logger:          testLogger(t),
		Now:             w.now,
		BackoffMin:      20 * time.Millisecond, BackoffMax: 400 * time.Millisecond,
		TelemetryInterval: 100 * time.Millisecond, QuarantineProbe: 200 * time.Millisecond,
		PublishRate: 200, PublishBurst: 100,
		PacketTimeout: 3 * time.Second,
	}
}

// run starts the agent; it stops at the end of the test.
func run(t *testing.T, a *agent.Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("agent Run did not return within 15s of cancellation")
		}
	})
}

// messages returns the payloads of the device's messages of kind in the
// stream WARD_DEVICE, oldest first.
func (w *ward) messages(t *testing.T, id, kind string) []json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := w.js.Stream(ctx, "WARD_DEVICE")
	if err != nil {
		return nil // not created yet
	}
	// The gateway stores messages in records of many devices' messages.
	subject := gateway.RecordSubject(protocol.Kind(kind))
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	want := info.State.Subjects[subject]
	if want == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []json.RawMessage
	for read := uint64(0); read < want; {
		batch, err := c.Fetch(int(want-read), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			msgs, err := gateway.DecodeStreamMsg(m.Subject(), m.Headers(), m.Data())
			if err != nil {
				t.Fatal(err)
			}
			for _, dm := range msgs {
				if dm.DeviceID == id {
					out = append(out, json.RawMessage(dm.Payload))
				}
			}
		}
		if n == 0 {
			break
		}
		read += uint64(n)
	}
	return out
}

// partition is the device's network link to Ward: cut, it closes every
// open connection and refuses new ones, as an outage looks from the device.
type partition struct {
	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func (p *partition) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("network unreachable (test partition)")}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		p.conns = append(p.conns, c)
	}
	return c, err
}

func (p *partition) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *partition) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pump is a test Device: an infusion pump that is infusing. It records
// whether anything ever asked it to stop (nothing may).
type pump struct {
	mu      sync.Mutex
	mode    string
	rate    float64
	stopped bool
	reads   atomic.Int64
}

func newPump() *pump { return &pump{mode: "infusing", rate: 125} }

func (p *pump) State() any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return map[string]any{"mode": p.mode, "idle": p.mode != "infusing", "software_version": "2.6A"}
}

func (p *pump) Idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode != "infusing"
}

func (p *pump) Telemetry() any {
	p.reads.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	return map[string]any{"rate_ml_h": p.rate, "mode": p.mode}
}

// Stop is what a product would expose to stop therapy; the agent has no
// way to call it, and the tests check it was never called.
func (p *pump) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped, p.mode = true, "idle"
}

func (p *pump) infusing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode == "infusing" && !p.stopped
}

// testLogger sends the agent's log to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
