package gateway_test

// Ingest tests: real paho.golang clients (and raw MQTT packets where a test
// must control packet ids, DUP flags or the protocol version) over real
// mutual TLS 1.3 against a real gateway, with the embedded NATS server of
// package bus and real stores.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
	"github.com/wardhq/ward/protocol"
)

// ingRig is a gateway with ingest and commands on a real store and an
// embedded NATS server.
type ingRig struct {
	st     *store.Store
	reg    *fleet.Registry
	ca     *pki.Authority
	bus    *bus.Bus
	gw     *gateway.Gateway
	in     *gateway.Ingest
	cmds   *gateway.Commands
	roots  *x509.CertPool
	mfr    string
	serial int
}

func newIngRig(t *testing.T, st *store.Store) *ingRig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := filepath.Join(t.TempDir(), "ca")
	pass := []byte("correct horse battery staple")
	if err := pki.Init(pki.InitConfig{Dir: dir, Passphrase: pass}); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Open(pki.Config{Dir: dir, Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	al := audit.New(st, nil)
	reg, err := fleet.New(ctx, fleet.Config{Store: st, Audit: al})
	if err != nil {
		t.Fatal(err)
	}
	mfrCA, _, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Acme Medical"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.AddManufacturer(ctx, "token:test", "Acme Medical", pki.EncodeCertificates(mfrCA)); err != nil {
		t.Fatal(err)
	}
	b, err := bus.Open(bus.Config{Dir: filepath.Join(t.TempDir(), "bus"), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{Addr: "127.0.0.1:0", Cert: func() *tls.Certificate { return &srv }, CA: ca, Fleet: reg,
		Store: st, Audit: al, Conn: b.Conn, Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	in, err := gateway.NewIngest(ctx, gateway.IngestConfig{JetStream: b.JetStream, Registry: reg, Node: "node-1", SeenInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := gateway.NewCommands(gateway.CommandsConfig{Store: st, Conn: b.Conn, JetStream: b.JetStream, SweepInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.AddHook(in); err != nil {
		t.Fatal(err)
	}
	if err := gw.AddHook(cmds); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{gw.Run, in.Run, cmds.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				t.Errorf("run: %v", err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		b.Close()
	})
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	return &ingRig{st: st, reg: reg, ca: ca, bus: b, gw: gw, in: in, cmds: cmds, roots: roots, mfr: "Acme Medical"}
}

// device registers an active device and returns its id and TLS client
// certificate.
func (r *ingRig) device(t *testing.T) (string, tls.Certificate) {
	t.Helper()
	ctx := context.Background()
	r.serial++
	d, err := r.reg.Preregister(ctx, "token:test", fleet.Preregistration{Serial: fmt.Sprintf("PUMP-%04d", r.serial), Manufacturer: r.mfr, Model: "LVP 3000"})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := pki.NewCSR(key, d.ID, d.Serial)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := r.ca.IssueDevice(csr, pki.DeviceIdentity{ID: d.ID, Serial: d.Serial, Manufacturer: d.Manufacturer})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.st.Tx(ctx, func(tx *store.Tx) error { return r.reg.RecordIssued(ctx, tx, d.ID, cert) }); err != nil {
		t.Fatal(err)
	}
	return d.ID, tls.Certificate{Certificate: [][]byte{cert.Raw, r.ca.Issuer().Raw}, PrivateKey: key, Leaf: cert}
}

func (r *ingRig) dial(t *testing.T, cert tls.Certificate) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", r.gw.Addr().String(), &tls.Config{RootCAs: r.roots, ServerName: "localhost",
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// client connects a paho MQTT 5 client. session > 0 asks for a persistent
// session (clean start false, that expiry in seconds).
func (r *ingRig) client(t *testing.T, id string, cert tls.Certificate, session uint32, onMsg func(paho.PublishReceived) (bool, error)) *paho.Client {
	t.Helper()
	c, _ := r.connect(t, id, cert, session, onMsg)
	return c
}

// clientPresent connects like client and reports CONNACK's session present.
func (r *ingRig) clientPresent(t *testing.T, id string, cert tls.Certificate, session uint32, onMsg func(paho.PublishReceived) (bool, error)) bool {
	t.Helper()
	_, present := r.connect(t, id, cert, session, onMsg)
	return present
}

func (r *ingRig) connect(t *testing.T, id string, cert tls.Certificate, session uint32, onMsg func(paho.PublishReceived) (bool, error)) (*paho.Client, bool) {
	t.Helper()
	cfg := paho.ClientConfig{ClientID: id, Conn: packets.NewThreadSafeConn(r.dial(t, cert))}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){onMsg}
	}
	c := paho.NewClient(cfg)
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: session == 0}
	if session > 0 {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &session}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	if ca.ReasonCode != 0 {
		t.Fatalf("connect %s: reason 0x%02x", id, ca.ReasonCode)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, ca.SessionPresent
}

func publish(t *testing.T, c *paho.Client, topic string, payload []byte) (*paho.PublishResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
}

// streamMsgs returns the device's messages of kind k in the stream, read
// out of its records.
func streamMsgs(t *testing.T, js jetstream.JetStream, deviceID string, k protocol.Kind) []gateway.DeviceMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.StreamDevice)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []gateway.DeviceMessage
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != gateway.RecordSubject(k) {
			continue
		}
		ms, err := gateway.DecodeStreamMsg(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("stream message %d: %v", seq, err)
		}
		for _, dm := range ms {
			if dm.DeviceID == deviceID {
				out = append(out, dm)
			}
		}
	}
	return out
}

// rawMQTT5 is a connection speaking MQTT 5 packets directly, to control
// packet ids and the DUP flag.
type rawMQTT5 struct {
	t    *testing.T
	conn *tls.Conn
}

func (r *ingRig) raw5(t *testing.T, id string, cert tls.Certificate) *rawMQTT5 {
	t.Helper()
	return r.raw5Keepalive(t, id, cert, 30)
}

// raw5Keepalive is raw5 with the keepalive given, in seconds.
func (r *ingRig) raw5Keepalive(t *testing.T, id string, cert tls.Certificate, keepalive uint16) *rawMQTT5 {
	t.Helper()
	conn := r.dial(t, cert)
	t.Cleanup(func() { conn.Close() })
	c := &rawMQTT5{t: t, conn: conn}
	cp := packets.NewControlPacket(packets.CONNECT)
	cn := cp.Content.(*packets.Connect)
	cn.ProtocolName, cn.ProtocolVersion, cn.ClientID, cn.CleanStart, cn.KeepAlive = "MQTT", 5, id, true, keepalive
	cn.Properties = &packets.Properties{}
	c.write(cp)
	if ack := c.read(); ack.Type != packets.CONNACK || ack.Content.(*packets.Connack).ReasonCode != 0 {
		t.Fatalf("raw connect: %v", ack)
	}
	return c
}

func (c *rawMQTT5) write(cp *packets.ControlPacket) {
	c.t.Helper()
	if _, err := cp.WriteTo(c.conn); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawMQTT5) read() *packets.ControlPacket {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	cp, err := packets.ReadPacket(c.conn)
	if err != nil {
		c.t.Fatal(err)
	}
	return cp
}

// publish sends a QoS 1 PUBLISH and returns the PUBACK's reason code.
func (c *rawMQTT5) publish(topic string, pid uint16, dup bool, payload []byte) byte {
	c.t.Helper()
	cp := packets.NewControlPacket(packets.PUBLISH)
	p := cp.Content.(*packets.Publish)
	p.Topic, p.QoS, p.PacketID, p.Duplicate, p.Payload, p.Properties = topic, 1, pid, dup, payload, &packets.Properties{}
	c.write(cp)
	ack := c.read()
	pa, ok := ack.Content.(*packets.Puback)
	if !ok || pa.PacketID != pid {
		c.t.Fatalf("want PUBACK for %d, got %v", pid, ack)
	}
	return pa.ReasonCode
}

func TestIngestStoredBeforePuback(t *testing.T) {
	r := newIngRig(t, storetest.Open(t, store.SQLite))
	id, cert := r.device(t)
	c := r.client(t, id, cert, 0, nil)
	topic := protocol.Topic(id, protocol.Telemetry)
	before := time.Now().UTC()
	for i := range 5 {
		payload := []byte(`{"v":1,"seq":` + strconv.Itoa(i) + `}`)
		resp, err := publish(t, c, topic, payload)
		if err != nil || resp.ReasonCode >= 0x80 {
			t.Fatalf("publish %d: %v %+v", i, err, resp)
		}
		// The PUBACK is in: the message must be in the stream now.
		msgs := streamMsgs(t, r.bus.JetStream, id, protocol.Telemetry)
		if len(msgs) != i+1 {
			t.Fatalf("after PUBACK %d: %d messages in the stream", i, len(msgs))
		}
		m := msgs[i]
		if !bytes.Equal(m.Payload, payload) {
			t.Fatalf("stored %q, want %q", m.Payload, payload)
		}
		if m.Kind != protocol.Telemetry || m.Node != "node-1" || m.QoS != 1 || m.Retain ||
			m.ReceivedAt.Before(before.Add(-time.Second)) || m.ReceivedAt.After(time.Now().Add(time.Second)) {
			t.Fatalf("stored %+v", m)
		}
		if !strings.HasPrefix(m.MsgID, id+"-") || !strings.HasSuffix(m.MsgID, gateway.MsgID(id, 0, payload)[len(id)+2:]) {
			t.Fatalf("message id %q", m.MsgID)
		}
	}

	// Raw packets: a redelivery (same packet id, DUP) is stored once; a new
	// message reusing the packet id for the same bytes (no DUP) is stored.
	id2, cert2 := r.device(t)
	raw := r.raw5(t, id2, cert2)
	topic2 := protocol.Topic(id2, protocol.Events)
	payload := []byte(`{"v":1,"alarm":"occlusion"}`)
	if rc := raw.publish(topic2, 7, false, payload); rc != 0 {
		t.Fatalf("first: reason 0x%02x", rc)
	}
	if rc := raw.publish(topic2, 7, true, payload); rc != 0 {
		t.Fatalf("redelivery: reason 0x%02x", rc)
	}
	if n := len(streamMsgs(t, r.bus.JetStream, id2, protocol.Events)); n != 1 {
		t.Fatalf("after a DUP redelivery: %d messages, want 1", n)
	}
	// A redelivery on a new connection (after a reconnect) too.
	raw.conn.Close()
	raw = r.raw5(t, id2, cert2)
	if rc := raw.publish(topic2, 7, true, payload); rc != 0 {
		t.Fatalf("redelivery after reconnect: reason 0x%02x", rc)
	}
	if n := len(streamMsgs(t, r.bus.JetStream, id2, protocol.Events)); n != 1 {
		t.Fatalf("after a redelivery on a new connection: %d messages, want 1", n)
	}
	if rc := raw.publish(topic2, 7, false, payload); rc != 0 {
		t.Fatalf("new message, same id and bytes: reason 0x%02x", rc)
	}
	if n := len(streamMsgs(t, r.bus.JetStream, id2, protocol.Events)); n != 2 {
		t.Fatalf("a new message with a reused packet id: %d messages, want 2", n)
	}
	if st := r.in.Stats(); st.Stored != 7 || st.Duplicates != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// Devices publishing at once are stored in shared records, and every
// message is in the stream, in each device's order, when its PUBACK comes.
func TestIngestRecordsGatherMessages(t *testing.T) {
	r := newIngRig(t, storetest.Open(t, store.SQLite))
	const devices, each = 24, 25
	ids := make([]string, devices)
	clients := make([]*paho.Client, devices)
	for i := range devices {
		id, cert := r.device(t)
		ids[i], clients[i] = id, r.client(t, id, cert, 0, nil)
	}
	var wg sync.WaitGroup
	for i := range devices {
		wg.Go(func() {
			for n := range each {
				resp, err := publish(t, clients[i], protocol.Topic(ids[i], protocol.Telemetry), []byte(`{"v":1,"n":`+strconv.Itoa(n)+`}`))
				if err != nil || resp.ReasonCode != 0 {
					t.Errorf("device %d message %d: %v %+v", i, n, err, resp)
					return
				}
			}
		})
	}
	wg.Wait()
	for i, id := range ids {
		msgs := streamMsgs(t, r.bus.JetStream, id, protocol.Telemetry)
		if len(msgs) != each {
			t.Fatalf("device %d: %d messages stored, want %d", i, len(msgs), each)
		}
		for n, m := range msgs {
			if string(m.Payload) != `{"v":1,"n":`+strconv.Itoa(n)+`}` {
				t.Fatalf("device %d message %d: %s", i, n, m.Payload)
			}
		}
	}
	st := r.in.Stats()
	t.Logf("%d messages in %d records", st.Stored, st.Records)
	if st.Stored != devices*each || st.Records >= st.Stored {
		t.Fatalf("stats %+v: want %d messages in fewer records", st, devices*each)
	}
	// The node's status (GET /api/v1/gateway) shows the same.
	gs := r.gw.Status()
	if gs.Connected != devices || gs.Messages != st || gs.Address != r.gw.Addr().String() || gs.Since.IsZero() {
		t.Fatalf("status %+v: want %d sessions and the ingest's counters %+v", gs, devices, st)
	}
}

func TestIngestRefusesMalformed(t *testing.T) {
	r := newIngRig(t, storetest.Open(t, store.SQLite))
	id, cert := r.device(t)
	c := r.client(t, id, cert, 0, nil)
	topic := protocol.Topic(id, protocol.Telemetry)
	for name, payload := range map[string][]byte{
		"not JSON":    []byte("hello"),
		"array":       []byte(`[1,2]`),
		"wrong v":     []byte(`{"v":2}`),
		"no v":        []byte(`{"t":1}`),
		"trailing":    []byte(`{"v":1} {"v":1}`),
		"over limit":  []byte(`{"v":1,"x":"` + strings.Repeat("a", protocol.MaxPayload) + `"}`),
		"invalid utf": []byte("{\"v\":1,\"x\":\"\xff\"}"),
	} {
		resp, err := publish(t, c, topic, payload)
		if err == nil || resp == nil || resp.ReasonCode < 0x80 {
			t.Fatalf("%s: accepted (%v, %+v)", name, err, resp)
		}
		// 0x99 from ingest; a size limit of the gateway core may answer
		// first with 0x95 (packet too large) or 0x97 (quota exceeded).
		if want := byte(0x99); resp.ReasonCode != want && !(name == "over limit" && (resp.ReasonCode == 0x95 || resp.ReasonCode == 0x97)) {
			t.Fatalf("%s: reason 0x%02x, want 0x%02x", name, resp.ReasonCode, want)
		}
		t.Logf("%s: PUBACK 0x%02x", name, resp.ReasonCode)
	}
	if n := len(streamMsgs(t, r.bus.JetStream, id, protocol.Telemetry)); n != 0 {
		t.Fatalf("%d malformed messages stored", n)
	}
	// The session still works.
	if resp, err := publish(t, c, topic, []byte(`{"v":1}`)); err != nil || resp.ReasonCode != 0 {
		t.Fatalf("valid message after refusals: %v %+v", err, resp)
	}
	if st := r.in.Stats(); st.Invalid < 6 || st.Stored != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// mqtt311 writes MQTT 3.1.1 packets by hand (paho.golang speaks only 5).
func mqtt311Connect(id string) []byte {
	var b []byte
	b = append(b, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30) // clean session, keepalive 30
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	b = append(b, id...)
	return append(append([]byte{0x10}, remainingLength(len(b))...), b...)
}

func mqtt311Publish(topic string, pid uint16, payload []byte) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(len(topic)))
	b = append(b, topic...)
	b = binary.BigEndian.AppendUint16(b, pid)
	b = append(b, payload...)
	return append(append([]byte{0x32}, remainingLength(len(b))...), b...)
}

func remainingLength(n int) []byte {
	var out []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			return out
		}
	}
}

func TestIngestStoreUnavailable(t *testing.T) {
	r := newIngRig(t, storetest.Open(t, store.SQLite))
	id, cert := r.device(t)
	c := r.client(t, id, cert, 0, nil)
	topic := protocol.Topic(id, protocol.Telemetry)
	ctx := context.Background()
	if err := r.bus.JetStream.DeleteStream(ctx, bus.StreamDevice); err != nil {
		t.Fatal(err)
	}
	resp, err := publish(t, c, topic, []byte(`{"v":1,"lost":true}`))
	if err == nil || resp == nil || resp.ReasonCode != 0x80 {
		t.Fatalf("publish with no stream: %v %+v, want PUBACK 0x80", err, resp)
	}

	// MQTT 3.1.1 cannot refuse: no PUBACK, and the connection is closed so
	// the client resends after reconnecting.
	id3, cert3 := r.device(t)
	conn := r.dial(t, cert3)
	defer conn.Close()
	conn.Write(mqtt311Connect(id3))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	connack := make([]byte, 4)
	if _, err := io.ReadFull(conn, connack); err != nil || connack[0] != 0x20 || connack[3] != 0 {
		t.Fatalf("3.1.1 CONNACK %x %v", connack, err)
	}
	conn.Write(mqtt311Publish(protocol.Topic(id3, protocol.Telemetry), 1, []byte(`{"v":1}`)))
	if rest, err := io.ReadAll(conn); len(rest) != 0 || (err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset")) {
		t.Fatalf("3.1.1 publish with no stream: got %x, %v; want the connection closed without PUBACK", rest, err)
	}

	// The stream comes back: publishes are stored again.
	if _, err := gateway.NewIngest(ctx, gateway.IngestConfig{JetStream: r.bus.JetStream}); err != nil {
		t.Fatal(err)
	}
	if resp, err := publish(t, c, topic, []byte(`{"v":1,"kept":true}`)); err != nil || resp.ReasonCode != 0 {
		t.Fatalf("publish after the stream is back: %v %+v", err, resp)
	}
	msgs := streamMsgs(t, r.bus.JetStream, id, protocol.Telemetry)
	if len(msgs) != 1 || string(msgs[0].Payload) != `{"v":1,"kept":true}` {
		t.Fatalf("stream holds %d messages", len(msgs))
	}
	if st := r.in.Stats(); st.StoreFailed != 2 {
		t.Fatalf("stats %+v", st)
	}

	// The NATS connection itself closed: refused as well.
	r.bus.Conn.Close()
	resp, err = publish(t, c, topic, []byte(`{"v":1,"lost":true}`))
	if err == nil || resp == nil || resp.ReasonCode != 0x80 {
		t.Fatalf("publish with the bus closed: %v %+v, want PUBACK 0x80", err, resp)
	}
}

func TestIngestLastState(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		r := newIngRig(t, st)
		id, cert := r.device(t)
		c := r.client(t, id, cert, 0, nil)
		ctx := context.Background()
		before := time.Now().UTC().Add(-time.Second)
		state := `{"v":1,"mode":"infusing","software_version":"2.6A","idle":false}`
		for _, s := range []string{`{"v":1,"mode":"idle","idle":true}`, state} {
			if resp, err := publish(t, c, protocol.Topic(id, protocol.State), []byte(s)); err != nil || resp.ReasonCode != 0 {
				t.Fatalf("state: %v %+v", err, resp)
			}
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			got, at, err := r.reg.LastState(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) == state && at != nil && !at.Before(before) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("last state %s at %v, want %s", got, at, state)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Telemetry alone moves last seen forward (it comes from the
		// gateway, not from the state consumer).
		time.Sleep(10 * time.Millisecond)
		sent := time.Now().UTC()
		if resp, err := publish(t, c, protocol.Topic(id, protocol.Telemetry), []byte(`{"v":1,"rate_ml_h":125}`)); err != nil || resp.ReasonCode != 0 {
			t.Fatalf("telemetry: %v %+v", err, resp)
		}
		for {
			d, err := r.reg.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if d.LastSeenAt != nil && !d.LastSeenAt.Before(sent.Add(-time.Millisecond)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("last seen %v, want after %v", d.LastSeenAt, sent)
			}
			time.Sleep(20 * time.Millisecond)
		}
		var sp protocol.StatePayload
		got, _, _ := r.reg.LastState(ctx, id)
		if err := json.Unmarshal(got, &sp); err != nil || sp.Mode != "infusing" || sp.SoftwareVersion != "2.6A" {
			t.Fatalf("state %+v %v", sp, err)
		}
	})
}

// A device that goes silent is cut off after 1.5 × its keepalive, and its
// history says so; one that pings in time stays.
func TestKeepaliveTimeout(t *testing.T) {
	r := newIngRig(t, storetest.Open(t, store.SQLite))
	silent, silentCert := r.device(t)
	pinging, pingingCert := r.device(t)
	s := r.raw5Keepalive(t, silent, silentCert, 1)
	p := r.raw5Keepalive(t, pinging, pingingCert, 1)
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		p.write(packets.NewControlPacket(packets.PINGREQ))
		if resp := p.read(); resp.Type != packets.PINGRESP {
			t.Fatalf("ping: %v", resp)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// It was told why (MQTT 5 DISCONNECT 0x8D), then the connection closed.
	if d := s.read(); d.Type != packets.DISCONNECT || d.Content.(*packets.Disconnect).ReasonCode != 0x8D {
		t.Fatalf("the silent device got %v, want DISCONNECT 0x8D", d)
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the silent device's connection is still open after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if !r.gw.Connected(pinging) || r.gw.Connected(silent) {
		t.Fatalf("connected: pinging %v, silent %v", r.gw.Connected(pinging), r.gw.Connected(silent))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.gw.History().Flush(ctx)
	rows, err := r.gw.History().List(ctx, silent, 10)
	if err != nil || len(rows) != 1 || rows[0].Reason != gateway.ReasonKeepaliveTimeout {
		t.Fatalf("history of the silent device: %+v %v", rows, err)
	}
	if rows[0].DurationMS == nil {
		t.Fatal("no duration recorded")
	}
	if d := time.Duration(*rows[0].DurationMS) * time.Millisecond; d < 1400*time.Millisecond || d > 2600*time.Millisecond {
		t.Fatalf("cut off after %s, want about 1.5 s", d)
	}
}

// TestPubacksInOrder: a device that sends QoS 1 messages of several kinds
// without waiting gets their PUBACKs in the order of its PUBLISHes
// [MQTT-4.6.0-2], though each kind's records are stored on their own and
// a PUBACK may be written by the goroutine that stored its record; refused
// messages keep their place too. Every acknowledged message is stored.
func TestPubacksInOrder(t *testing.T) {
	r := newIngRig(t, storetest.Open(t, store.SQLite))
	id, cert := r.device(t)
	raw := r.raw5(t, id, cert)
	kinds := []protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack}
	const rounds, each = 3, 30 // within the Receive Maximum (32) and the rate burst (100)
	want := map[protocol.Kind]int{}
	pid := uint16(0)
	for range rounds {
		var sent []uint16
		var codes []byte
		for i := range each {
			pid++
			k := kinds[i%len(kinds)]
			payload := []byte(`{"v":1,"n":` + strconv.Itoa(int(pid)) + `}`)
			code := byte(0)
			if i%7 == 6 {
				payload, code = []byte(`{"v":2}`), 0x99 // refused at once: payload format invalid
			} else {
				want[k]++
			}
			cp := packets.NewControlPacket(packets.PUBLISH)
			p := cp.Content.(*packets.Publish)
			p.Topic, p.QoS, p.PacketID, p.Payload, p.Properties = protocol.Topic(id, k), 1, pid, payload, &packets.Properties{}
			raw.write(cp)
			sent, codes = append(sent, pid), append(codes, code)
		}
		for i, p := range sent {
			ack := raw.read()
			pa, ok := ack.Content.(*packets.Puback)
			if !ok || pa.PacketID != p || pa.ReasonCode != codes[i] {
				t.Fatalf("PUBACK %d of the round: want packet %d (0x%02x), got %v", i, p, codes[i], ack)
			}
		}
	}
	for _, k := range kinds {
		if n := len(streamMsgs(t, r.bus.JetStream, id, k)); n != want[k] {
			t.Errorf("%s: %d messages stored, want %d", k, n, want[k])
		}
	}
}

// A device that sends more QoS 1 messages than the Receive Maximum the
// CONNACK announced, without waiting for their PUBACKs, is cut off with
// 0x93 (the event loop takes packets as fast as they come; a session on
// its goroutine takes one at a time, so it never gets there).
func TestReceiveMaximumEnforced(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("sessions are served by the event loop on Linux only")
	}
	r := newIngRig(t, storetest.Open(t, store.SQLite))
	id, cert := r.device(t)
	raw := r.raw5(t, id, cert)
	var burst bytes.Buffer
	const n = 4 * gateway.DefaultMaxInflight
	for pid := uint16(1); pid <= n; pid++ {
		cp := packets.NewControlPacket(packets.PUBLISH)
		p := cp.Content.(*packets.Publish)
		p.Topic, p.QoS, p.PacketID, p.Payload, p.Properties = protocol.Topic(id, protocol.Telemetry), 1, pid, []byte(`{"v":1}`), &packets.Properties{}
		if _, err := cp.WriteTo(&burst); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raw.conn.Write(burst.Bytes()); err != nil { // one write: they arrive together
		t.Fatal(err)
	}
	acks := 0
	for {
		cp := raw.read()
		if d, ok := cp.Content.(*packets.Disconnect); ok {
			if d.ReasonCode != 0x93 {
				t.Fatalf("DISCONNECT 0x%02x, want 0x93 (receive maximum exceeded)", d.ReasonCode)
			}
			break
		}
		if _, ok := cp.Content.(*packets.Puback); !ok {
			t.Fatalf("got %v", cp)
		}
		acks++
	}
	if acks >= n {
		t.Fatalf("%d PUBACKs for %d messages sent past the Receive Maximum", acks, n)
	}
	t.Logf("%d messages sent at once, %d acknowledged before the DISCONNECT", n, acks)
}
