package gateway

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
	"github.com/wardhq/ward/protocol"
)

// mosquitto runs a Mosquitto command-line client (Debian's
// mosquitto-clients) against the gateway and returns its output and
// whether it succeeded.
func (f *fixture) mosquitto(tool string, d device, id string, args ...string) (string, bool) {
	f.t.Helper()
	host, port, _ := net.SplitHostPort(f.gw.Addr().String())
	full := []string{"-h", host, "-p", port, "--tls-version", "tlsv1.3", "-V", "mqttv5", "--id", id}
	if d.cert.Leaf != nil {
		ca, cert, key := f.files(d)
		full = append(full, "--cafile", ca, "--cert", cert, "--key", key)
	} else {
		ca, _, _ := f.files(dev0(f))
		full = append(full, "--cafile", ca)
	}
	full = append(full, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, full...).CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}

func needMosquitto(t *testing.T) {
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto_pub not found: CI must install mosquitto-clients")
		}
		t.Skip("mosquitto_pub not installed (Debian mosquitto-clients)")
	}
}

// TestMosquittoClients is acceptance 1 with mosquitto_pub and
// mosquitto_sub, using a device's key and certificate files.
func TestMosquittoClients(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t, storetest.Open(t, store.SQLite))
	dev := f.newDevice(nil)
	other := f.newDevice(nil)
	pub := func(d device, id, topic string, extra ...string) (string, bool) {
		return f.mosquitto("mosquitto_pub", d, id, append([]string{"-q", "1", "-t", topic, "-m", payload}, extra...)...)
	}
	sub := func(d device, id, topic string) (string, bool) {
		return f.mosquitto("mosquitto_sub", d, id, "-q", "1", "-t", topic, "-W", "2", "-C", "1")
	}

	// Own topics work.
	for _, k := range []protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack} {
		if out, ok := pub(dev, dev.id, protocol.Topic(dev.id, k)); !ok || out != "" {
			t.Errorf("mosquitto_pub %s: ok=%v %s", k, ok, out)
		}
	}
	if out, ok := pub(dev, dev.id, protocol.Topic(dev.id, protocol.State), "-r"); !ok {
		t.Errorf("retained state: %s", out)
	}
	got := make(chan string, 1)
	go func() {
		out, _ := f.mosquitto("mosquitto_sub", dev, dev.id, "-q", "1", "-t", protocol.Topic(dev.id, protocol.Cmd), "-W", "10", "-C", "1")
		got <- out
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !f.gw.Connected(dev.id) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the SUBSCRIBE land
	if err := f.gw.Publish(protocol.Topic(dev.id, protocol.Cmd), []byte(payload), 1); err != nil {
		t.Fatal(err)
	}
	if out := <-got; out != payload {
		t.Errorf("mosquitto_sub on cmd got %q", out)
	}

	// Refusals.
	for _, topic := range []string{protocol.Topic(other.id, protocol.Telemetry), "$SYS/broker/version", "ward/v1/d/+/telemetry"} {
		if out, ok := pub(dev, dev.id, topic); ok && !strings.Contains(out, "ot authorized") {
			t.Errorf("mosquitto_pub %s accepted: %s", topic, out)
		}
	}
	if out, ok := pub(dev, dev.id, protocol.Topic(dev.id, protocol.Telemetry), "-r"); ok && !strings.Contains(out, "etain") {
		t.Errorf("retained telemetry accepted: %s", out)
	}
	for _, filter := range []string{protocol.Topic(other.id, protocol.Cmd), "ward/v1/d/+/cmd", "#", "$SYS/#"} {
		if out, ok := sub(dev, dev.id, filter); ok && !strings.Contains(out, "denied") {
			t.Errorf("mosquitto_sub %s accepted: %s", filter, out)
		}
	}
	if out, ok := pub(other, dev.id, protocol.Topic(dev.id, protocol.Telemetry)); ok {
		t.Errorf("client id of another device accepted: %s", out)
	}
	f.waitHistory(other.id, ReasonRefusedClientID)
	if out, ok := pub(device{}, dev.id, protocol.Topic(dev.id, protocol.Telemetry)); ok {
		t.Errorf("no certificate accepted: %s", out)
	}
	foreign := f.newDevice(f.cas.other)
	if out, ok := pub(foreign, foreign.id, protocol.Topic(foreign.id, protocol.Telemetry)); ok {
		t.Errorf("foreign CA accepted: %s", out)
	}
	expired := f.newDevice(f.cas.past)
	if out, ok := pub(expired, expired.id, protocol.Topic(expired.id, protocol.Telemetry)); ok {
		t.Errorf("expired certificate accepted: %s", out)
	}
	f.waitHistory(expired.id, ReasonRefusedAuth)
	if _, err := f.fleet.Revoke(context.Background(), "token:test", other.id, "lost"); err != nil {
		t.Fatal(err)
	}
	if out, ok := pub(other, other.id, protocol.Topic(other.id, protocol.Telemetry)); ok {
		t.Errorf("revoked certificate accepted: %s", out)
	}
	f.waitHistory(other.id, ReasonRevoked)
	rows := f.history("")
	var noCert, foreignCA bool
	for _, c := range rows {
		noCert = noCert || c.Detail == "no client certificate"
		foreignCA = foreignCA || strings.Contains(c.Detail, "not issued by Ward")
	}
	if !noCert || !foreignCA {
		t.Errorf("unidentified refusals not recorded: %+v", rows)
	}
	if n := len(f.history(dev.id)); n < 8 {
		t.Errorf("device has %d history rows, want one per connection", n)
	}
}

// dev0 is a device whose files give the CA file to a client without a
// certificate of its own.
func dev0(f *fixture) device {
	if f.anyDevice.cert.Leaf == nil {
		f.anyDevice = f.newDevice(nil)
	}
	return f.anyDevice
}
