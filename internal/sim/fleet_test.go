package sim_test

// The fleet runner against a real Ward node in-process: SQLite, its own
// CA, the EST device listener, the MQTT gateway, and a NATS server
// (JetStream on disk) that the test also reads: the device stream and the
// gateway's violations.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/server"
	"github.com/wardhq/ward/internal/sim"
	"github.com/wardhq/ward/protocol"
)

type node struct {
	cfg   config.Config
	api   *client.Client
	nc    *nats.Conn
	js    jetstream.JetStream
	roots *x509.CertPool

	mu            sync.Mutex
	readTo        uint64          // last stream sequence telemetry read
	withTelemetry map[string]bool // devices with telemetry in the stream
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startNode runs a Ward node with Ward's default limits until the test ends.
func startNode(t *testing.T) *node {
	t.Helper()
	tmp := t.TempDir()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(tmp, "nats"), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Data, cfg.Bus, cfg.NodeName = filepath.Join(tmp, "data"), ns.ClientURL(), "sim-test"
	cfg.DeviceAddr, cfg.MQTTAddr, cfg.AdminAddr = freeAddr(t), freeAddr(t), freeAddr(t)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.WithNotice(io.Discard))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("node did not stop within 20s")
		}
	})
	<-srv.Ready()
	tok, err := os.ReadFile(cfg.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	api, err := client.New("http://"+cfg.AdminAddr, strings.TrimSpace(string(tok)))
	if err != nil {
		t.Fatal(err)
	}
	root, err := pki.ReadRoot(cfg.CADir())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	return &node{cfg: cfg, api: api, nc: nc, js: js, roots: roots, withTelemetry: map[string]bool{}}
}

// telemetry reports whether the device stream holds telemetry of id. It
// reads the stream's records from where its last call stopped.
func (n *node) telemetry(ctx context.Context, id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.withTelemetry[id] {
		return true
	}
	s, err := n.js.Stream(ctx, bus.StreamDevice)
	if err != nil {
		return false
	}
	info, err := s.Info(ctx)
	if err != nil {
		return false
	}
	for seq := max(n.readTo+1, info.State.FirstSeq); seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return false
		}
		n.readTo = seq
		if m.Subject != gateway.RecordSubject(protocol.Telemetry) {
			continue
		}
		msgs, err := gateway.DecodeStreamMsg(m.Subject, m.Header, m.Data)
		if err != nil {
			continue
		}
		for _, dm := range msgs {
			n.withTelemetry[dm.DeviceID] = true
		}
	}
	return n.withTelemetry[id]
}

// violations collects the gateway's violations by device and kind.
type violations struct {
	mu sync.Mutex
	by map[string]map[string]int
}

func (v *violations) has(device string, kinds ...string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, k := range kinds {
		if v.by[device][k] == 0 {
			return false
		}
	}
	return true
}

func TestFleetAgainstWard(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Ward node")
	}
	n := startNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	vs := &violations{by: map[string]map[string]int{}}
	sub, err := n.nc.Subscribe(bus.SubjectGatewayViolation, func(m *nats.Msg) {
		var v gateway.Violation
		if json.Unmarshal(m.Data, &v) != nil {
			return
		}
		vs.mu.Lock()
		if vs.by[v.Device] == nil {
			vs.by[v.Device] = map[string]int{}
		}
		vs.by[v.Device][v.Kind] += v.Count
		vs.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	const mfr = "Simulated Medical"
	ca, key, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: mfr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.api.AddManufacturer(ctx, mfr, pki.EncodeCertificates(ca)); err != nil {
		t.Fatal(err)
	}
	specs, err := sim.Plan(sim.PlanConfig{N: 20, Model: sim.ModelMix, Misbehave: 3, Seed: 7, Site: "Test General"})
	if err != nil {
		t.Fatal(err)
	}
	misbehaving := map[sim.Misbehaviour]string{} // misbehaviour → serial
	for _, s := range specs {
		if s.Misbehave != "" {
			misbehaving[s.Misbehave] = s.Serial
		}
		if _, err := n.api.Preregister(ctx, client.Preregistration{Serial: s.Serial, Manufacturer: mfr,
			Model: s.Model, Site: s.Site, Unit: s.Unit}); err != nil {
			t.Fatal(err)
		}
	}
	if len(misbehaving) != 3 {
		t.Fatalf("plan has misbehaviours %v, want one of each", misbehaving)
	}

	var (
		pmu  sync.Mutex
		last sim.Progress
	)
	fleet, err := sim.NewFleet(sim.FleetConfig{
		Specs: specs, Dir: t.TempDir(), Manufacturer: ca, ManufacturerKey: key, Roots: n.roots,
		Server: n.cfg.DeviceAddr, MQTT: n.cfg.MQTTAddr,
		MaxStarting:    8,
		MisbehaveAfter: time.Second, MisbehaveEvery: -1,
		FloodDuration: 3 * time.Second, Hops: 10,
		ProgressInterval: 200 * time.Millisecond,
		Progress: func(p sim.Progress) {
			pmu.Lock()
			last = p
			pmu.Unlock()
		},
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- fleet.Run(runCtx) }()
	defer func() {
		stop()
		select {
		case err := <-runDone:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return within 20s of cancellation")
		}
	}()

	ids := map[string]string{} // serial → Ward id
	eventually(t, ctx, "every well-behaved device connected, its telemetry in the stream, every bout done", func() (bool, string) {
		pmu.Lock()
		p := last
		pmu.Unlock()
		if p.Bouts < 3 {
			return false, "bouts: " + itoa(p.Bouts)
		}
		for _, d := range fleet.Devices() {
			if d.Status.DeviceID != "" {
				ids[d.Spec.Serial] = d.Status.DeviceID
			}
			if d.Spec.Misbehave != "" {
				continue
			}
			if !d.Status.Connected {
				return false, d.Spec.Serial + " is " + string(d.Status.Phase) + " " + d.Status.LastError
			}
			if !n.telemetry(ctx, d.Status.DeviceID) {
				return false, "no telemetry of " + d.Spec.Serial
			}
		}
		return true, ""
	})

	t.Logf("fleet up, bouts done: %+v", fleet.Progress())
	flood, probe, hop := ids[misbehaving[sim.Flood]], ids[misbehaving[sim.Probe]], ids[misbehaving[sim.AddressHop]]
	eventually(t, ctx, "the misbehaving devices' violations on the bus", func() (bool, string) {
		switch {
		case !vs.has(flood, gateway.ViolationMsgRate, gateway.ViolationPayloadSize):
			return false, "flood"
		case !vs.has(probe, gateway.ViolationACLSubscribe, gateway.ViolationACLPublish, gateway.ViolationClientID):
			return false, "probe"
		case !vs.has(hop, gateway.ViolationConnectDevice):
			return false, "address hop"
		}
		return true, ""
	})
	for serial, id := range ids {
		if s := misbehaving[sim.Flood]; serial != s && vs.has(id, gateway.ViolationMsgRate) {
			t.Errorf("well-behaved %s has msg_rate violations", serial)
		}
	}

	// The connection history tells the same story.
	history := func(id string) []client.Connection {
		t.Helper()
		h, err := n.api.History(ctx, id, 100)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	var good string
	for _, s := range specs {
		if s.Misbehave == "" {
			good = ids[s.Serial]
			break
		}
	}
	// Every connection of every device is a history row; none at all means
	// the node does not write them (then the rest is moot).
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	defer hcancel()
	eventually(t, hctx, "a history row of well-behaved "+good, func() (bool, string) {
		return len(history(good)) > 0, "no connection history at all: does the node run the gateway's History?"
	})
	eventually(t, ctx, "history rows of the misbehaving devices", func() (bool, string) {
		refusals := 0
		for _, c := range history(flood) {
			refusals += c.Refusals
		}
		if refusals == 0 {
			b, _ := json.Marshal(history(flood))
			return false, "flood: no refusals in its history: " + string(b)
		}
		clientID := false
		for _, c := range history(probe) {
			clientID = clientID || c.Reason == "refused_client_id"
		}
		if !clientID {
			return false, "probe: no refused_client_id row"
		}
		from, limited := map[string]bool{}, false
		for _, c := range history(hop) {
			host, _, _ := net.SplitHostPort(c.RemoteAddr)
			from[host] = true
			limited = limited || c.Reason == "rate_limit"
		}
		if len(from) < 4 || !limited {
			return false, "address hop: " + itoa(len(from)) + " addresses, rate limited: " + map[bool]string{true: "yes", false: "no"}[limited]
		}
		return true, ""
	})

	// The registry saw the well-behaved devices (ingest updates last_seen).
	eventually(t, ctx, "every well-behaved device active and seen", func() (bool, string) {
		devs, err := n.api.Devices(ctx, client.DeviceFilter{Limit: 1000})
		if err != nil {
			return false, err.Error()
		}
		if len(devs) != len(specs) {
			return false, "devices: " + itoa(len(devs))
		}
		for _, d := range devs {
			if d.State != client.StateActive {
				return false, d.Serial + " is " + string(d.State)
			}
			if d.LastSeenAt == nil {
				return false, d.Serial + " not seen"
			}
		}
		return true, ""
	})

	// The misbehaving devices behave again after their bout.
	eventually(t, ctx, "the misbehaving devices connected again", func() (bool, string) {
		for _, d := range fleet.Devices() {
			if d.Spec.Misbehave != "" && !d.Status.Connected {
				return false, d.Spec.Serial + " is " + string(d.Status.Phase)
			}
		}
		return true, ""
	})
	pmu.Lock()
	p := last
	pmu.Unlock()
	if sum := p.Waiting + p.Starting + p.Enrolling + p.Pending + p.Refused + p.Enrolled + p.Connected + p.Misbehaving + p.Failed; sum != p.Total || p.Failed != 0 {
		t.Errorf("progress %+v: phases add up to %d of %d", p, sum, p.Total)
	}
	if p.AllConnected == 0 || p.EverConnected != p.Total {
		t.Errorf("progress %+v: want every device connected once", p)
	}
}

// TestFleetReusesItsState runs a small fleet twice on one state directory:
// the second run enrolls nothing: the devices keep their keys, ids and
// certificates.
func TestFleetReusesItsState(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Ward node")
	}
	n := startNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const mfr = "Simulated Medical"
	ca, key, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: mfr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.api.AddManufacturer(ctx, mfr, pki.EncodeCertificates(ca)); err != nil {
		t.Fatal(err)
	}
	specs, err := sim.Plan(sim.PlanConfig{N: 4, Model: sim.ModelMonitor, Units: []string{"ICU"}, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if _, err := n.api.Preregister(ctx, client.Preregistration{Serial: s.Serial, Manufacturer: mfr, Model: s.Model, Unit: s.Unit}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	run := func() map[string]string {
		t.Helper()
		f, err := sim.NewFleet(sim.FleetConfig{Specs: specs, Dir: dir, Manufacturer: ca, ManufacturerKey: key, Roots: n.roots,
			Server: n.cfg.DeviceAddr, MQTT: n.cfg.MQTTAddr})
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- f.Run(rctx) }()
		ids := map[string]string{}
		eventually(t, ctx, "all connected", func() (bool, string) {
			p := f.Progress()
			return p.Connected == len(specs), "connected: " + itoa(p.Connected)
		})
		for _, d := range f.Devices() {
			ids[d.Spec.Serial] = d.Status.DeviceID
		}
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return ids
	}
	first := run()
	certs := func() int {
		total := 0
		for _, s := range specs {
			d, err := n.api.Device(ctx, s.Serial)
			if err != nil {
				t.Fatal(err)
			}
			total += len(d.Certificates)
		}
		return total
	}
	before := certs()
	second := run()
	for s, id := range first {
		if second[s] != id {
			t.Errorf("%s: id %s, then %s", s, id, second[s])
		}
	}
	if after := certs(); after != before {
		t.Errorf("the second run issued %d certificates; want none", after-before)
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func itoa(i int) string { return strconv.Itoa(i) }

// eventually polls cond every 50 ms until it holds or ctx ends.
func eventually(t *testing.T, ctx context.Context, what string, cond func() (bool, string)) {
	t.Helper()
	for {
		ok, why := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("not yet %s when the time was up; last: %s", what, why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
