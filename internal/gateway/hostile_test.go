package gateway

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
	"github.com/wardhq/ward/protocol"
)

// TestHostileInput: garbage instead of TLS, garbage after TLS, a CONNECT
// with a huge client id, a slow client that never sends CONNECT, and a
// message flood. The gateway refuses each, records it, and keeps serving.
func TestHostileInput(t *testing.T) {
	f := newFixture(t, storetest.Open(t, store.SQLite), func(c *Config) {
		c.Limits.HandshakeTimeout = 500 * time.Millisecond
		c.Limits.MsgRate, c.Limits.MsgBurst = 20, 20
	})
	dev := f.newDevice(nil)
	addr := f.gw.Addr().String()

	// Not TLS at all.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 100))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
	c.Close()

	// Garbage after a good handshake.
	tc, err := f.dialTLS(dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = tc.Write(bytes.Repeat([]byte{0xff, 0x00, 0x13}, 1000))
	_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, tc)
	tc.Close()

	// A CONNECT with a 1 MiB client id: refused from its header.
	tc, err = f.dialTLS(dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("a", 1<<20)
	var buf bytes.Buffer
	buf.Write([]byte{0x10})
	rem := 10 + 2 + len(huge)
	for {
		b := byte(rem % 128)
		rem /= 128
		if rem > 0 {
			b |= 0x80
		}
		buf.WriteByte(b)
		if rem == 0 {
			break
		}
	}
	buf.Write([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30})
	buf.Write([]byte{byte(len(huge) >> 8), byte(len(huge))})
	buf.WriteString(huge)
	_ = tc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = tc.Write(buf.Bytes())
	_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, tc)
	tc.Close()

	// A client that completes TLS and then says nothing.
	start := time.Now()
	tc, err = f.dialTLS(dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, tc)
	tc.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("silent client held for %v", d)
	}

	// A TCP client that never starts TLS.
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
	c.Close()

	rows := f.history(dev.id)
	protocolErrors := 0
	for _, r := range rows {
		if r.Reason == ReasonProtocolError {
			protocolErrors++
		}
	}
	if protocolErrors < 1 {
		t.Errorf("hostile connections not recorded: %+v", rows)
	}
	if n := len(f.history("")); n < 1 {
		t.Errorf("non-TLS connections not recorded")
	}

	// A flood: over the rate, messages are refused with 0x96, and a device
	// that keeps at it is disconnected.
	mc, _, err := f.connect(dev, dev.id)
	if err != nil {
		t.Fatal(err)
	}
	var refused int
	for i := 0; i < 200; i++ {
		pr, _ := mc.Publish(ctx5(t), &paho.Publish{Topic: protocol.Topic(dev.id, protocol.Telemetry), QoS: 1, Payload: []byte(payload)})
		if pr == nil {
			break // disconnected
		}
		if pr.ReasonCode == 0x96 {
			refused++
		}
	}
	if refused == 0 {
		t.Error("no message refused for the rate")
	}
	select {
	case <-mc.Done():
	case <-time.After(3 * time.Second):
		t.Error("flooding device not disconnected")
	}
	f.waitHistory(dev.id, ReasonRateLimit)
	if f.gw.Stats().Violations[ViolationMsgRate] == 0 {
		t.Error("rate violations not counted")
	}

	// A payload over the limit.
	mc, _, err = f.connect(dev, dev.id)
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := mc.Publish(ctx5(t), &paho.Publish{Topic: protocol.Topic(dev.id, protocol.Telemetry), QoS: 1, Payload: bytes.Repeat([]byte("x"), protocol.MaxPayload+1)})
	if pr == nil || pr.ReasonCode != 0x95 {
		t.Errorf("oversized payload: %+v", pr)
	}

	// Still serving.
	if rc := publish(t, mc, protocol.Topic(dev.id, protocol.State), false); rc != 0 {
		t.Errorf("after the hostile clients: 0x%02x", rc)
	}
}

// TestConnectRateLimits: attempts per device and per source address are
// bounded and recorded.
func TestConnectRateLimits(t *testing.T) {
	f := newFixture(t, storetest.Open(t, store.SQLite), func(c *Config) {
		c.Limits.ConnectRatePerDevice, c.Limits.ConnectBurstPerDevice = 0.01, 2
	})
	dev := f.newDevice(nil)
	var ok int
	for i := 0; i < 5; i++ {
		if mc, _, err := f.connect(dev, dev.id); err == nil {
			ok++
			_ = mc.Disconnect(&paho.Disconnect{})
		}
	}
	if ok != 2 {
		t.Errorf("%d connections admitted, want the burst of 2", ok)
	}
	f.waitHistory(dev.id, ReasonRateLimit)

	g := newFixture(t, storetest.Open(t, store.SQLite), func(c *Config) {
		c.Limits.ConnectRatePerSource, c.Limits.ConnectBurstPerSource = 0.01, 3
	})
	dev2 := g.newDevice(nil)
	ok = 0
	for i := 0; i < 6; i++ {
		if mc, _, err := g.connect(dev2, dev2.id); err == nil {
			ok++
			_ = mc.Disconnect(&paho.Disconnect{})
		}
	}
	// newFixture's readiness probe used one attempt.
	if ok != 2 {
		t.Errorf("%d connections admitted from one address, want 2", ok)
	}
	if g.gw.Stats().Refused[ReasonRateLimit] == 0 {
		t.Error("source rate refusals not counted")
	}
}

var _ = tls.VersionTLS13
