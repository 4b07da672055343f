package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// countingConn counts the writes under TLS: one per record.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestPacketConnOneRecordPerPacket: through NewPacketConn each packet paho
// writes is one TLS record (paho's own lock alone writes several), and the
// peer reads the same packets.
func TestPacketConnOneRecordPerPacket(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan *packets.ControlPacket, 16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS13})
		for {
			cp, err := packets.ReadPacket(sc)
			if err != nil {
				close(got)
				return
			}
			got <- cp
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	tc := tls.Client(cc, &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	publish := func(qos byte, id uint16) *packets.ControlPacket {
		cp := packets.NewControlPacket(packets.PUBLISH)
		p := cp.Content.(*packets.Publish)
		p.Topic, p.QoS, p.PacketID, p.Payload = "ward/v1/d/abcdefghijklmnopqrstuvwxyz/telemetry", qos, id, make([]byte, 128)
		p.Properties = &packets.Properties{}
		return cp
	}

	// paho's lock alone: a PUBLISH in several records.
	cc.writes.Store(0)
	if _, err := publish(1, 1).WriteTo(packets.NewThreadSafeConn(tc)); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load(); n < 2 {
		t.Fatalf("without NewPacketConn a PUBLISH took %d records; the test assumes several", n)
	}

	// Through NewPacketConn: one record a packet.
	pc := NewPacketConn(tc)
	cc.writes.Store(0)
	sent := []*packets.ControlPacket{publish(0, 0), publish(1, 2), packets.NewControlPacket(packets.PINGREQ)}
	for _, cp := range sent {
		if _, err := cp.WriteTo(pc); err != nil {
			t.Fatal(err)
		}
	}
	if n := cc.writes.Load(); n != int64(len(sent)) {
		t.Errorf("%d packets took %d TLS records, want one each", len(sent), n)
	}
	want := []byte{packets.PUBLISH, packets.PUBLISH, packets.PUBLISH, packets.PINGREQ}
	for i, typ := range want {
		select {
		case cp := <-got:
			if cp == nil || cp.Type != typ {
				t.Fatalf("packet %d: got %v, want type %d", i, cp, typ)
			}
			if p, ok := cp.Content.(*packets.Publish); ok && len(p.Payload) != 128 {
				t.Fatalf("packet %d: payload of %d bytes", i, len(p.Payload))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d not received", i)
		}
	}

	// A failed write closes the connection and fails the next one.
	_ = raw.Close()
	if _, err := publish(0, 0).WriteTo(pc); err != nil {
		t.Fatalf("the failure surfaces at the next write, got %v at this one", err)
	}
	if _, err := publish(0, 0).WriteTo(pc); err == nil {
		t.Fatal("a write after a failed one succeeded")
	}
}
