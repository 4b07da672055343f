package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/wardhq/ward/protocol"
)

// FuzzAuthorize: whatever the topic, client id and direction, authorize
// never allows a topic outside the device's own namespace, never a
// wildcard or $ topic, never a subscription other than cmd, and while
// quarantined never a publish other than state and events.
func FuzzAuthorize(f *testing.F) {
	id := "abcdefghijklmnopqrstuvwxyz"
	for _, k := range []protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack, protocol.Cmd} {
		f.Add(id, protocol.Topic(id, k), true, false)
		f.Add(id, protocol.Topic(id, k), false, true)
	}
	for _, s := range []string{"#", "+", "ward/v1/d/+/cmd", "ward/v1/d/" + id + "/#", "$SYS/broker", "$share/g/ward/v1/d/" + id + "/cmd",
		"ward/v1/d/" + id + "/cmd/", "/ward/v1/d/" + id + "/cmd", "ward/v1/d/" + id + "/cmd\x00", "ward/v1/d/" + strings.ToUpper(id) + "/cmd", ""} {
		f.Add(id, s, false, false)
		f.Add(id, s, true, false)
	}
	f.Fuzz(func(t *testing.T, id, topic string, write, quarantined bool) {
		d, kind := authorize(id, quarantined, topic, write)
		if d != allow {
			return
		}
		if !protocol.ValidDeviceID(id) {
			t.Fatalf("allowed for invalid id %q", id)
		}
		if !strings.HasPrefix(topic, protocol.TopicPrefix+id+"/") || strings.ContainsAny(topic, "+#$\x00") {
			t.Fatalf("allowed %q for %q", topic, id)
		}
		tid, k, err := protocol.ParseTopic(topic)
		if err != nil || tid != id || topic != protocol.Topic(id, k) || k != kind {
			t.Fatalf("allowed unparsable %q (kind %q)", topic, kind)
		}
		switch {
		case !write && k != protocol.Cmd:
			t.Fatalf("subscription to %q allowed", topic)
		case write && !k.Publishable():
			t.Fatalf("publish to %q allowed", topic)
		case write && quarantined && k != protocol.State && k != protocol.Events:
			t.Fatalf("quarantined publish to %q allowed", topic)
		}
	})
}

// FuzzReadPacket: whatever bytes a device sends, the session's reader
// returns packets or an error, never panics, never reads a packet longer
// than the maximum, and never hands on more payload than the packet held;
// the event loop's parser (loop.go) reads the same packets from the same
// bytes, and none that the reader refused.
func FuzzReadPacket(f *testing.F) {
	id := "abcdefghijklmnopqrstuvwxyz"
	enc := func(pk packets.Packet) []byte {
		var b bytes.Buffer
		var err error
		switch pk.FixedHeader.Type {
		case packets.Connect:
			err = pk.ConnectEncode(&b)
		case packets.Publish:
			err = pk.PublishEncode(&b)
		case packets.Subscribe:
			err = pk.SubscribeEncode(&b)
		case packets.Puback:
			err = pk.PubackEncode(&b)
		}
		if err != nil {
			f.Fatal(err)
		}
		return b.Bytes()
	}
	for _, v := range []byte{4, 5} {
		connect := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Keepalive: 30, Clean: true}})
		publish := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: v, PacketID: 7,
			TopicName: protocol.Topic(id, protocol.Telemetry), Payload: []byte(`{"v":1}`)})
		subscribe := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: v, PacketID: 8,
			Filters: packets.Subscriptions{{Filter: protocol.Topic(id, protocol.Cmd), Qos: 1}}})
		puback := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: v, PacketID: 9})
		f.Add(v, slices.Concat(connect, publish, subscribe, puback, []byte{0xc0, 0, 0xe0, 0}))
	}
	f.Add(byte(5), []byte{0x30, 0xff, 0xff, 0xff, 0x7f})
	f.Add(byte(4), []byte("GET / HTTP/1.1\r\n\r\n"))
	const maxPacket = 4096 + 1024
	f.Fuzz(func(t *testing.T, version byte, data []byte) {
		// The goroutine's reader.
		var read []string
		s := &session{version: 4 + version%2, br: bufio.NewReaderSize(bytes.NewReader(data), readBufferSize)}
		for range 64 {
			fh, err := s.readFixedHeader(maxPacket)
			if err != nil {
				break
			}
			if fh.Remaining+1 > maxPacket {
				t.Fatalf("a packet of %d bytes read past the maximum %d", fh.Remaining+1, maxPacket)
			}
			pk, pooled, err := s.readPacket(fh)
			if err != nil {
				break
			}
			if len(pk.Payload)+len(pk.TopicName) > fh.Remaining {
				t.Fatalf("topic and payload of %d bytes from a packet of %d", len(pk.Payload)+len(pk.TopicName), fh.Remaining)
			}
			read = append(read, fmt.Sprintf("%d/%d %q %q", fh.Type, fh.Remaining, pk.TopicName, pk.Payload))
			releasePacket(pooled)
			if pk.FixedHeader.Type == packets.Connect {
				s.version = pk.ProtocolVersion
			}
		}
		// The event loop's parser, on the same bytes: the same packets,
		// and never one the reader refused.
		var parsed []string
		v, b := 4+version%2, data
		for range 64 {
			fh, n, err := parseFixedHeader(b, maxPacket)
			if err != nil || n == 0 || len(b) < n+fh.Remaining {
				break
			}
			pk, err := decodePacket(fh, v, b[n:n+fh.Remaining])
			if err != nil {
				break
			}
			parsed = append(parsed, fmt.Sprintf("%d/%d %q %q", fh.Type, fh.Remaining, pk.TopicName, pk.Payload))
			b = b[n+fh.Remaining:]
			if pk.FixedHeader.Type == packets.Connect {
				v = pk.ProtocolVersion
			}
		}
		if len(parsed) > len(read) {
			t.Fatalf("the loop's parser took %d packets, the reader %d", len(parsed), len(read))
		}
		for i := range parsed {
			if parsed[i] != read[i] {
				t.Fatalf("packet %d: loop %s, reader %s", i, parsed[i], read[i])
			}
		}
	})
}
