package gateway_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	mpackets "github.com/mochi-mqtt/server/v2/packets"

	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/protocol"
)

// BenchmarkIngestPublish measures the store path of a QoS 1 telemetry
// message alone (payload check, JetStream publish, wait for the stream's
// ack), without TLS and MQTT: what every PUBACK waits for. The quiet case
// has one message at a time, each alone in its record; the parallel case
// has 128 devices publishing at once, one message in flight each, as in
// the gateway benchmark (bench/README.md).
//
//	go test -run='^$' -bench=IngestPublish -benchmem ./internal/gateway/
func BenchmarkIngestPublish(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bs, err := bus.Open(bus.Config{Dir: filepath.Join(b.TempDir(), "bus"), Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer bs.Close()
	in, err := gateway.NewIngest(ctx, gateway.IngestConfig{JetStream: bs.JetStream, Node: "node-1"})
	if err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"v":1,"seq":1,"rate_ml_h":125.0,"vi_ml":412.5,"battery":87,"state":"infusing","drug":"heparin"}`)
	publish := func(b *testing.B, id, topic string, pid uint16) {
		pk := mpackets.Packet{TopicName: topic, Payload: payload, PacketID: pid,
			FixedHeader: mpackets.FixedHeader{Type: mpackets.Publish, Qos: 1}}
		if code, err := in.Publish(id, protocol.Telemetry, 5, pk); err != nil || code.Code != 0 {
			b.Fatal(code, err)
		}
	}
	b.Run("quiet", func(b *testing.B) {
		// One message at a time, further apart than records may start
		// (1 ms), as on a quiet node: what one message costs alone.
		id := benchDeviceID(0)
		topic := protocol.Topic(id, protocol.Telemetry)
		b.ReportAllocs()
		for i := range b.N {
			b.StopTimer()
			time.Sleep(1100 * time.Microsecond)
			b.StartTimer()
			publish(b, id, topic, uint16(i))
		}
	})
	b.Run("parallel-128", func(b *testing.B) {
		var next atomic.Int64
		b.SetParallelism(64)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			id := benchDeviceID(int(next.Add(1)))
			topic := protocol.Topic(id, protocol.Telemetry)
			var pid uint16
			for pb.Next() {
				pid++
				publish(b, id, topic, pid)
			}
		})
	})
}

// benchDeviceID is a valid device id (26 base32 letters) made from n.
func benchDeviceID(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	id := []byte("aaaaaaaaaaaaaaaaaaaaaaaaaa")
	for i := len(id) - 1; n > 0; i-- {
		id[i] = alphabet[n%32]
		n /= 32
	}
	return string(id)
}
