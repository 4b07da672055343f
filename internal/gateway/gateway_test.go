package gateway

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
	"github.com/wardhq/ward/protocol"
)

const payload = `{"v":1}`

func publish(t *testing.T, mc *mqttClient, topic string, retain bool) byte {
	t.Helper()
	pr, err := mc.Publish(ctx5(t), &paho.Publish{Topic: topic, QoS: 1, Retain: retain, Payload: []byte(payload)})
	if pr == nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return pr.ReasonCode
}

func subscribe(t *testing.T, mc *mqttClient, filter string) byte {
	t.Helper()
	sa, err := mc.Subscribe(ctx5(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons[0]
}

// TestOwnTopicsAndRefusals is acceptance 1 with paho.golang: own topics
// work; everything else is refused and recorded.
// sessionModes are the two ways a session is served: by the event loop
// (Linux), and by its goroutine (elsewhere).
var sessionModes = []struct {
	name   string
	adjust func(*Config)
}{
	{"loop", func(*Config) {}},
	{"goroutine", func(c *Config) { c.noPoller = true }},
}

func TestOwnTopicsAndRefusals(t *testing.T) {
	for _, m := range sessionModes {
		t.Run(m.name, func(t *testing.T) { testOwnTopicsAndRefusals(t, m.adjust) })
	}
}

func testOwnTopicsAndRefusals(t *testing.T, adjust func(*Config)) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st, adjust)
		dev := f.newDevice(nil)
		other := f.newDevice(nil)

		mc, ca, err := f.connect(dev, dev.id)
		if err != nil {
			t.Fatalf("connect: %v (%+v)", err, ca)
		}
		if !f.gw.Connected(dev.id) {
			t.Fatal("Connected is false for a connected device")
		}
		// Own topics.
		for _, k := range []protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack} {
			if rc := publish(t, mc, protocol.Topic(dev.id, k), false); rc != 0 {
				t.Errorf("publish %s: reason 0x%02x", k, rc)
			}
		}
		if rc := publish(t, mc, protocol.Topic(dev.id, protocol.State), true); rc != 0 {
			t.Errorf("retained state: reason 0x%02x", rc)
		}
		if rc := subscribe(t, mc, protocol.Topic(dev.id, protocol.Cmd)); rc > 1 {
			t.Fatalf("subscribe cmd: reason 0x%02x", rc)
		}
		if err := f.gw.Publish(protocol.Topic(dev.id, protocol.Cmd), []byte(payload), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-mc.received:
			if p.Topic != protocol.Topic(dev.id, protocol.Cmd) || string(p.Payload) != payload {
				t.Errorf("received %s %q", p.Topic, p.Payload)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("server publish on cmd not received")
		}
		if err := f.gw.Publish(protocol.Topic(dev.id, protocol.Telemetry), nil, 0); err == nil {
			t.Error("server Publish to a non-cmd topic accepted")
		}

		// Someone else's topics, wildcards, $SYS, retain.
		for _, topic := range []string{
			protocol.Topic(other.id, protocol.Telemetry),
			protocol.Topic(dev.id, protocol.Cmd), // a device does not publish commands
			"$SYS/broker/version",
			"ward/v1/d/" + dev.id + "/telemetry/x",
			"anything",
		} {
			if rc := publish(t, mc, topic, false); rc != 0x87 {
				t.Errorf("publish %s: reason 0x%02x, want 0x87", topic, rc)
			}
		}
		if rc := publish(t, mc, protocol.Topic(dev.id, protocol.Telemetry), true); rc != 0x9A {
			t.Errorf("retained telemetry: reason 0x%02x, want 0x9A", rc)
		}
		for _, filter := range []string{
			protocol.Topic(other.id, protocol.Cmd),
			protocol.Topic(dev.id, protocol.Telemetry),
			"ward/v1/d/+/cmd", "ward/v1/d/" + dev.id + "/#", "#", "$SYS/#", "$share/g/" + protocol.Topic(dev.id, protocol.Cmd),
		} {
			if rc := subscribe(t, mc, filter); rc < 0x80 {
				t.Errorf("subscribe %s: reason 0x%02x, want a refusal", filter, rc)
			}
		}
		// Other devices' messages never reach it.
		if err := f.gw.Publish(protocol.Topic(other.id, protocol.Cmd), []byte(payload), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-mc.received:
			t.Errorf("received another device's message on %s", p.Topic)
		case <-time.After(200 * time.Millisecond):
		}
		st0 := f.gw.Stats()
		if st0.Violations[ViolationACLPublish] < 5 || st0.Violations[ViolationACLSubscribe] < 7 || st0.Violations[ViolationRetain] != 1 {
			t.Errorf("stats: %+v", st0)
		}

		// A client id that differs from the certificate.
		_, ca, err = f.connect(other, dev.id)
		if err == nil || ca == nil || ca.ReasonCode != 0x85 {
			t.Errorf("client id of another device: %v %+v", err, ca)
		}
		f.waitHistory(other.id, ReasonRefusedClientID)

		// No certificate, another CA, an expired certificate.
		if _, _, err := f.connect(device{}, dev.id); err == nil {
			t.Error("connected without a certificate")
		}
		foreign := f.newDevice(f.cas.other)
		if _, _, err := f.connect(foreign, foreign.id); err == nil {
			t.Error("connected with a certificate from another CA")
		}
		expired := f.newDevice(f.cas.past)
		if _, _, err := f.connect(expired, expired.id); err == nil {
			t.Error("connected with an expired certificate")
		}
		c := f.waitHistory(expired.id, ReasonRefusedAuth)
		if c.Detail != "certificate expired" || c.CertSerial == "" {
			t.Errorf("expired: %+v", c)
		}
		var noCert, otherCA bool
		deadline := time.Now().Add(5 * time.Second)
		for !(noCert && otherCA) && time.Now().Before(deadline) {
			for _, c := range f.history("") {
				noCert = noCert || (c.Reason == ReasonRefusedAuth && c.Detail == "no client certificate")
				otherCA = otherCA || (c.Reason == ReasonRefusedAuth && strings.Contains(c.Detail, "not issued by Ward"))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !noCert || !otherCA {
			t.Errorf("history rows: no certificate %v, other CA %v: %+v", noCert, otherCA, f.history(""))
		}

		// A revoked device: refused at the handshake, and recorded.
		if _, err := f.fleet.Revoke(context.Background(), "token:test", other.id, "stolen"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.connect(other, other.id); err == nil {
			t.Error("revoked device connected")
		}
		c = f.waitHistory(other.id, ReasonRevoked)
		if c.CertSerial == "" {
			t.Errorf("revoked row: %+v", c)
		}

		// The connection row of the good session, once it ends.
		_ = mc.Disconnect(&paho.Disconnect{ReasonCode: 0})
		c = f.waitHistory(dev.id, ReasonClientClose)
		if c.TLSVersion != "TLS 1.3" || c.Cipher == "" || c.MQTTVersion != 5 || c.ClientVersion != "2.6A" || c.Node != "node-1" ||
			c.CertSerial == "" || c.RemoteAddr == "" || c.DisconnectedAt == nil || c.DurationMS == nil || c.Refusals < 13 {
			t.Errorf("connection row: %+v", c)
		}
	})
}

// TestQuarantineAndRevokeLive is acceptance 2: a quarantine restricts a
// connected session within a second, a release restores it, and a
// revocation disconnects it within a second and refuses it afterwards.
func TestQuarantineAndRevokeLive(t *testing.T) {
	for _, m := range sessionModes {
		t.Run(m.name, func(t *testing.T) { testQuarantineAndRevokeLive(t, m.adjust) })
	}
}

func testQuarantineAndRevokeLive(t *testing.T, adjust func(*Config)) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st, adjust)
		dev := f.newDevice(nil)
		mc, _, err := f.connect(dev, dev.id)
		if err != nil {
			t.Fatal(err)
		}
		if rc := subscribe(t, mc, protocol.Topic(dev.id, protocol.Cmd)); rc > 1 {
			t.Fatalf("subscribe: 0x%02x", rc)
		}
		telemetry := protocol.Topic(dev.id, protocol.Telemetry)
		if rc := publish(t, mc, telemetry, false); rc != 0 {
			t.Fatalf("telemetry before quarantine: 0x%02x", rc)
		}

		ctx := context.Background()
		start := time.Now()
		if _, err := f.fleet.Quarantine(ctx, "token:test", dev.id, "odd traffic"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "quarantine", func() bool { return publish(t, mc, telemetry, false) == 0x87 })
		took := time.Since(start)
		t.Logf("quarantine took effect in %v", took)
		if took >= time.Second {
			t.Errorf("quarantine took %v, want < 1s", took)
		}
		for _, k := range []protocol.Kind{protocol.State, protocol.Events} {
			if rc := publish(t, mc, protocol.Topic(dev.id, k), false); rc != 0 {
				t.Errorf("quarantined %s: 0x%02x", k, rc)
			}
		}
		if rc := publish(t, mc, protocol.Topic(dev.id, protocol.Ack), false); rc != 0x87 {
			t.Errorf("quarantined ack: 0x%02x", rc)
		}
		if err := f.gw.Publish(protocol.Topic(dev.id, protocol.Cmd), []byte(payload), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case <-mc.received:
		case <-time.After(5 * time.Second):
			t.Fatal("quarantined device did not receive cmd")
		}

		start = time.Now()
		if _, err := f.fleet.Release(ctx, "token:test", dev.id); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "release", func() bool { return publish(t, mc, telemetry, false) == 0 })
		t.Logf("release took effect in %v", time.Since(start))

		start = time.Now()
		if _, err := f.fleet.Revoke(ctx, "token:test", dev.id, "compromised"); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-mc.disconnect:
			took := time.Since(start)
			t.Logf("revocation disconnected the device in %v (reason 0x%02x)", took, d.ReasonCode)
			if d.ReasonCode != 0x8A {
				t.Errorf("disconnect reason 0x%02x, want 0x8A", d.ReasonCode)
			}
			if took >= time.Second {
				t.Errorf("revocation took %v, want < 1s", took)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("revoked device still connected after 2s")
		}
		f.waitHistory(dev.id, ReasonRevoked)
		if _, _, err := f.connect(dev, dev.id); err == nil {
			t.Error("revoked device reconnected")
		}
	})
}

// TestKickDuringWrite: a revocation reaches a node twice (as the device's
// state and as its certificate serial), possibly while an ack is being
// written. The device still gets its DISCONNECT, after the ack; a write
// stuck on a device that does not read delays the cut by at most kickWait.
func TestKickDuringWrite(t *testing.T) {
	f := newFixture(t, storetest.Open(t, store.SQLite))
	connected := func() (*mqttClient, *session) {
		t.Helper()
		dev := f.newDevice(nil)
		mc, _, err := f.connect(dev, dev.id)
		if err != nil {
			t.Fatal(err)
		}
		ss := f.gw.sessionsOf(dev.id)
		if len(ss) != 1 {
			t.Fatalf("%d sessions for %s", len(ss), dev.id)
		}
		return mc, ss[0]
	}

	// A write under way: both kicks come while it holds the write lock.
	mc, s := connected()
	s.wmu.Lock()
	f.gw.kick(s, ReasonRevoked, packets.ErrBanned)
	f.gw.kick(s, ReasonRevoked, packets.ErrBanned) // the serial's order: must not close first
	time.Sleep(50 * time.Millisecond)
	s.wmu.Unlock()
	select {
	case d := <-mc.disconnect:
		if d.ReasonCode != packets.ErrBanned.Code {
			t.Errorf("disconnect reason 0x%02x, want 0x%02x", d.ReasonCode, packets.ErrBanned.Code)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no DISCONNECT after the write under way ended")
	}
	if err := s.writeRaw([]byte{packets.Pingresp << 4, 0}); err == nil {
		t.Error("a kicked session still writes")
	}

	// A write that never ends: the connection is closed anyway.
	mc2, s2 := connected()
	s2.wmu.Lock()
	defer s2.wmu.Unlock()
	start := time.Now()
	f.gw.kick(s2, ReasonRevoked, packets.ErrBanned)
	select {
	case <-mc2.Done():
		took := time.Since(start)
		t.Logf("stuck write: connection closed after %v", took)
		if took < kickWait/2 || took > kickWait+time.Second {
			t.Errorf("closed after %v, want about %v", took, kickWait)
		}
	case <-time.After(kickWait + 2*time.Second):
		t.Fatal("connection with a stuck write not closed")
	}
}

// TestDecommissionDisconnects: decommissioning a connected device cuts it
// off too, with its history row saying why.
func TestDecommissionDisconnects(t *testing.T) {
	f := newFixture(t, storetest.Open(t, store.SQLite))
	dev := f.newDevice(nil)
	mc, _, err := f.connect(dev, dev.id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.fleet.Decommission(context.Background(), "token:test", dev.id, "retired"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-mc.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("decommissioned device still connected")
	}
	f.waitHistory(dev.id, ReasonRevoked)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in effect after 3s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var _ = tls.VersionTLS13
