package agent_test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardhq/ward/agent"
	"github.com/wardhq/ward/client"
)

// A preregistered device enrolls on first contact, connects, and its
// state, telemetry and events reach Ward's device stream.
func TestEnrollConnectPublish(t *testing.T) {
	w := node(t)
	keys, serial := w.device(t, true)
	p := newPump()
	a, err := agent.New(w.agentConfig(t, keys, p))
	if err != nil {
		t.Fatal(err)
	}
	if s := a.Status(); s.Phase != agent.PhaseNew || s.Enrolled || a.DeviceID() != "" {
		t.Fatalf("fresh agent: %+v", s)
	}
	run(t, a)
	eventually(t, 10*time.Second, "agent connected", func() bool { return a.Status().Connected })
	id := a.DeviceID()
	st := a.Status()
	if !st.Enrolled || st.Phase != agent.PhaseConnected || st.CertNotAfter.Before(time.Now().Add(6*24*time.Hour)) {
		t.Fatalf("status after connect: %+v", st)
	}
	d, err := w.api.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if d.Serial != serial || d.State != client.StateActive {
		t.Fatalf("device at Ward: %+v", d)
	}
	// The certificate is in the key store, for the next boot.
	op, err := keys.Certificate(agent.CertOperational)
	if err != nil || len(op) < 1 {
		t.Fatalf("operational certificate not stored: %v", err)
	}
	if got, _ := agent.DeviceIDOf(op[0]); got != id {
		t.Fatalf("stored certificate names %q, agent %q", got, id)
	}

	for i := range 3 {
		if err := a.Event("occlusion_alarm", map[string]any{"line": "A", "n": i}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "3 events, state and telemetry in the stream", func() bool {
		return len(w.messages(t, id, "events")) == 3 && len(w.messages(t, id, "state")) >= 1 && len(w.messages(t, id, "telemetry")) >= 2
	})
	var ev struct {
		V    int    `json:"v"`
		Kind string `json:"kind"`
		Seq  uint64 `json:"seq"`
		Data struct {
			Line string `json:"line"`
			N    int    `json:"n"`
		} `json:"data"`
	}
	for i, m := range w.messages(t, id, "events") {
		if err := json.Unmarshal(m, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.V != 1 || ev.Kind != "occlusion_alarm" || ev.Data.N != i || ev.Seq != uint64(i+1) {
			t.Fatalf("event %d: %s", i, m)
		}
	}
	var state struct {
		V    int    `json:"v"`
		Mode string `json:"mode"`
	}
	if err := json.Unmarshal(w.messages(t, id, "state")[0], &state); err != nil || state.V != 1 || state.Mode != "infusing" {
		t.Fatalf("state: %s %v", w.messages(t, id, "state")[0], err)
	}

	// A change of state is published at once when the device says so.
	p.mu.Lock()
	p.mode = "paused"
	p.mu.Unlock()
	a.StateChanged()
	eventually(t, 5*time.Second, "paused state in the stream", func() bool {
		ss := w.messages(t, id, "state")
		return json.Unmarshal(ss[len(ss)-1], &state) == nil && state.Mode == "paused"
	})
	// Stored comes before acknowledged: the agent counts an event delivered
	// a moment after it shows up in the stream.
	eventually(t, 5*time.Second, "3 events acknowledged", func() bool { return a.Status().Delivered == 3 })
	if st := a.Status(); st.Delivered != 3 || st.Buffered != 0 || st.Dropped != 0 || st.Quarantined {
		t.Fatalf("status: %+v", st)
	}
}

// A device nobody preregistered waits, pending, asking again after
// Retry-After, and proceeds once a person approves it.
func TestPendingUntilApproved(t *testing.T) {
	w := node(t)
	keys, serial := w.device(t, false)
	a, err := agent.New(w.agentConfig(t, keys, newPump()))
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	eventually(t, 10*time.Second, "agent pending", func() bool { return a.Status().Phase == agent.PhasePending })
	ctx := context.Background()
	var pending client.Device
	eventually(t, 5*time.Second, "pending device at Ward", func() bool {
		ds, err := w.api.Devices(ctx, client.DeviceFilter{State: client.StatePending, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.Serial == serial {
				pending = d
				return true
			}
		}
		return false
	})
	// It keeps asking, politely: Retry-After is 1 s here.
	first := *pending.EnrollRequestedAt
	eventually(t, 5*time.Second, "a second request after Retry-After", func() bool {
		d, err := w.api.Device(ctx, pending.ID)
		return err == nil && d.EnrollRequestedAt != nil && d.EnrollRequestedAt.After(first)
	})
	if s := a.Status(); s.Enrolled || s.Connected || s.DeviceID != "" {
		t.Fatalf("pending agent: %+v", s)
	}
	if _, err := w.api.Approve(ctx, pending.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "agent connected after approval", func() bool { return a.Status().Connected })
	if a.DeviceID() != pending.ID {
		t.Fatalf("device id %q, Ward's %q", a.DeviceID(), pending.ID)
	}
}

// The agent buffers events while Ward is down, up to its bound, dropping
// and counting the oldest beyond it; it reconnects with backoff when Ward
// comes back on the same data directory and ports, and every buffered
// event arrives.
func TestSurvivesServerRestart(t *testing.T) {
	w := node(t)
	keys, _ := w.device(t, true)
	cfg := w.agentConfig(t, keys, newPump())
	cfg.BufferLimit = 25
	var dials atomic.Int64
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == w.cfg.MQTTAddr {
			dials.Add(1)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	eventually(t, 10*time.Second, "agent connected", func() bool { return a.Status().Connected })
	id := a.DeviceID()
	if err := a.Event("boot", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "first event delivered", func() bool { return a.Status().Delivered == 1 })

	restart := w.outage(t)
	down := time.Now()
	eventually(t, 5*time.Second, "agent sees the outage", func() bool { return !a.Status().Connected })
	const n = 40
	for i := range n {
		if err := a.Event("dose_log", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	st := a.Status()
	if st.Buffered != cfg.BufferLimit || st.Dropped != n-uint64(cfg.BufferLimit) {
		t.Fatalf("while offline: buffered %d dropped %d, want %d and %d", st.Buffered, st.Dropped, cfg.BufferLimit, n-cfg.BufferLimit)
	}
	dialsBefore := dials.Load()
	time.Sleep(time.Second) // the outage lasts a while; the agent backs off
	restart()
	outage := time.Since(down)
	retries := dials.Load() - dialsBefore
	// Backoff from 20 ms up to 400 ms with jitter averages about 200 ms;
	// a storm would be hundreds.
	if max := int64(outage/(100*time.Millisecond)) + 2; retries > max {
		t.Fatalf("%d connection attempts in a %s outage: more than %d", retries, outage.Round(time.Millisecond), max)
	}
	t.Logf("%d connection attempts during a %s outage", retries, outage.Round(time.Millisecond))

	eventually(t, 15*time.Second, "agent reconnected and drained its buffer", func() bool {
		s := a.Status()
		return s.Connected && s.Buffered == 0
	})
	eventually(t, 5*time.Second, "every buffered event in the stream", func() bool {
		return len(w.messages(t, id, "events")) >= 1+cfg.BufferLimit
	})
	var got []int
	for _, m := range w.messages(t, id, "events")[1:] {
		var ev struct {
			Data struct{ I int } `json:"data"`
		}
		if err := json.Unmarshal(m, &ev); err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Data.I)
	}
	// The oldest were dropped; the newest BufferLimit arrive, in order
	// (a repeat is allowed: delivery is at least once).
	want := n - cfg.BufferLimit
	for _, i := range got {
		if i == want {
			want++
		} else if i != want-1 {
			t.Fatalf("events out of order or missing: %v", got)
		}
	}
	if want != n {
		t.Fatalf("events after the restart: %v, want %d..%d", got, n-cfg.BufferLimit, n-1)
	}
	if s := a.Status(); s.Delivered != uint64(1+cfg.BufferLimit) || s.Dropped != n-uint64(cfg.BufferLimit) || s.Connects != 2 {
		t.Fatalf("status: %+v", s)
	}
}

// With time moved forward past two thirds of its lifetime, the agent
// renews its operational certificate: later NotAfter, same device id, and
// it reconnects with it. Past expiry it falls back to its birth
// certificate.
func TestRenewsBeforeExpiry(t *testing.T) {
	w := node(t)
	keys, _ := w.device(t, true)
	a, err := agent.New(w.agentConfig(t, keys, newPump()))
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	eventually(t, 10*time.Second, "agent connected", func() bool { return a.Status().Connected })
	id := a.DeviceID()
	first, err := keys.Certificate(agent.CertOperational)
	if err != nil {
		t.Fatal(err)
	}
	lifetime := first[0].NotAfter.Sub(first[0].NotBefore)

	// Day 4 of 7: nothing happens.
	w.advance(4 * 24 * time.Hour)
	time.Sleep(300 * time.Millisecond) // three housekeeping rounds
	if s := a.Status(); s.Renewals != 0 || !s.CertNotAfter.Equal(first[0].NotAfter) {
		t.Fatalf("renewed too early: %+v", s)
	}
	// Day 5.5: renewed.
	w.advance(36 * time.Hour)
	eventually(t, 10*time.Second, "renewed and connected again", func() bool {
		s := a.Status()
		return s.Renewals == 1 && s.Connected && s.Connects == 2
	})
	second, err := keys.Certificate(agent.CertOperational)
	if err != nil {
		t.Fatal(err)
	}
	if !second[0].NotAfter.After(first[0].NotAfter) || second[0].SerialNumber.Cmp(first[0].SerialNumber) == 0 {
		t.Fatalf("new certificate: serial %x NotAfter %s; old: %x %s", second[0].SerialNumber, second[0].NotAfter,
			first[0].SerialNumber, first[0].NotAfter)
	}
	if got, _ := agent.DeviceIDOf(second[0]); got != id || a.DeviceID() != id {
		t.Fatalf("device id after renewal: %q (agent %q), want %q", got, a.DeviceID(), id)
	}
	if !a.Status().CertNotAfter.Equal(second[0].NotAfter) {
		t.Fatalf("agent uses %s, stored %s", a.Status().CertNotAfter, second[0].NotAfter)
	}
	d, err := w.api.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if d.CertNotAfter == nil || !d.CertNotAfter.Equal(second[0].NotAfter) {
		t.Fatalf("Ward's record: %+v", d)
	}

	// The device is off for longer than the lifetime: its certificate
	// expired; it enrolls again with the birth certificate.
	w.advance(lifetime + time.Hour)
	eventually(t, 10*time.Second, "enrolled again with the birth certificate and connected", func() bool {
		s := a.Status()
		return s.Connected && s.CertNotAfter.After(second[0].NotAfter)
	})
	if a.DeviceID() != id {
		t.Fatalf("device id after fallback: %q, want %q", a.DeviceID(), id)
	}
}

// The pump keeps infusing, and keeps reporting, through quarantine, an
// outage and revocation: the agent never asks it to stop (it has no way
// to: Device has no such method) and never stops reading it.
func TestKeepsInfusing(t *testing.T) {
	w := node(t)
	ctx := context.Background()
	keys, _ := w.device(t, true)
	p := newPump()
	cfg := w.agentConfig(t, keys, p)
	link := &partition{}
	cfg.Dial = link.dial
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	eventually(t, 10*time.Second, "agent connected", func() bool { return a.Status().Connected })
	id := a.DeviceID()
	check := func(when string) {
		t.Helper()
		if !p.infusing() {
			t.Fatalf("%s: the pump stopped infusing", when)
		}
	}
	reads := func() int64 { return p.reads.Load() }

	// Quarantine: telemetry refused, state and events still flow.
	if _, err := w.api.Quarantine(ctx, id, "suspicious traffic"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "agent sees the quarantine", func() bool { return a.Status().Quarantined })
	if err := a.Event("therapy", map[string]string{"during": "quarantine"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "event delivered during quarantine", func() bool {
		for _, m := range w.messages(t, id, "events") {
			if strings.Contains(string(m), `"during":"quarantine"`) {
				return true
			}
		}
		return false
	})
	// Ward stores the event before it acknowledges it, so the agent may
	// still hold it for a moment after it shows up in the stream.
	eventually(t, 5*time.Second, "event acknowledged during quarantine", func() bool {
		s := a.Status()
		return s.Buffered == 0 && s.Delivered >= 1
	})
	p.mu.Lock()
	p.rate = 90
	p.mu.Unlock()
	a.StateChanged()
	check("quarantined")
	if s := a.Status(); !s.Connected || s.Rejected != 0 || s.Buffered != 0 {
		t.Fatalf("quarantined: %+v", s)
	}
	if _, err := w.api.Release(ctx, id); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "quarantine lifted", func() bool { return !a.Status().Quarantined })

	// Outage (Ward unreachable; TestSurvivesServerRestart stops the node
	// itself): the agent retries in the background, the pump goes on.
	link.cut()
	eventually(t, 5*time.Second, "agent sees the outage", func() bool { return !a.Status().Connected })
	if err := a.Event("therapy", map[string]string{"during": "outage"}); err != nil {
		t.Fatal(err)
	}
	r := reads()
	time.Sleep(500 * time.Millisecond)
	check("Ward down")
	link.heal()
	eventually(t, 15*time.Second, "agent back and event delivered", func() bool {
		s := a.Status()
		return s.Connected && s.Buffered == 0
	})
	eventually(t, 5*time.Second, "telemetry again after the outage", func() bool { return reads() > r })

	// Revocation: disconnected, banned, enrollment refused; the agent
	// keeps trying in the background and the pump keeps infusing.
	if _, err := w.api.Revoke(ctx, id, "stolen"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "agent refused after revocation", func() bool {
		s := a.Status()
		return !s.Connected && s.Phase == agent.PhaseRefused && !s.Enrolled
	})
	if err := a.Event("therapy", map[string]string{"during": "revoked"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	check("revoked")
	if s := a.Status(); s.Buffered != 1 || s.LastError == "" {
		t.Fatalf("revoked: %+v", s)
	}
	t.Logf("revoked agent: %+v", a.Status())
}

// A device that restarts uses its stored operational certificate: no new
// enrollment.
func TestRestartUsesStoredCertificate(t *testing.T) {
	w := node(t)
	keys, _ := w.device(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(w.agentConfig(t, keys, newPump()))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	eventually(t, 10*time.Second, "first boot connected", func() bool { return a.Status().Connected })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	id := a.DeviceID()

	// The next boot: a new agent on the same key store.
	b, err := agent.New(w.agentConfig(t, keys, newPump()))
	if err != nil {
		t.Fatal(err)
	}
	if b.DeviceID() != id || !b.Status().Enrolled {
		t.Fatalf("second boot before Run: id %q, %+v", b.DeviceID(), b.Status())
	}
	run(t, b)
	eventually(t, 10*time.Second, "second boot connected", func() bool { return b.Status().Connected })
	d, err := w.api.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Certificates) != 1 {
		t.Fatalf("Ward issued %d certificates, want 1", len(d.Certificates))
	}
}
