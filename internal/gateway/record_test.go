package gateway

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"

	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/protocol"
)

func recordHeader() nats.Header {
	return nats.Header{HeaderNode: []string{"node-1"}, HeaderRecord: []string{recordVersion}}
}

func TestRecordRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 22, 3, 4, 5, 123456789, time.UTC)
	ids := []string{"abcdefghijklmnopqrstuvwxyz", "aaaaaaaaaaaaaaaaaaaaaaaa27"}
	var data []byte
	data = appendMessage(data, ids[0], at, 1, true, MsgID(ids[0], 7, []byte(`{"v":1}`)), []byte(`{"v":1}`))
	data = appendMessage(data, ids[1], at.Add(time.Second), 0, false, "", []byte(`{"v":1,"x":[1,2]}`))
	msgs, err := DecodeStreamMsg(RecordSubject(protocol.State), recordHeader(), data)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.DeviceID != ids[0] || m.Kind != protocol.State || m.Node != "node-1" || !m.ReceivedAt.Equal(at) || m.QoS != 1 || !m.Retain ||
		m.MsgID != MsgID(ids[0], 7, []byte(`{"v":1}`)) || string(m.Payload) != `{"v":1}` {
		t.Fatalf("first %+v", m)
	}
	m = msgs[1]
	if m.DeviceID != ids[1] || m.QoS != 0 || m.Retain || m.MsgID != "" || !m.ReceivedAt.Equal(at.Add(time.Second)) || string(m.Payload) != `{"v":1,"x":[1,2]}` {
		t.Fatalf("second %+v", m)
	}

	// A single message as earlier versions stored it.
	h := nats.Header{HeaderDevice: []string{ids[0]}, HeaderNode: []string{"node-0"}, HeaderReceivedAt: []string{at.Format(time.RFC3339Nano)},
		HeaderQoS: []string{"1"}, nats.MsgIdHdr: []string{"x-1-y"}}
	msgs, err = DecodeStreamMsg(DeviceSubject(ids[0], protocol.Telemetry), h, []byte(`{"v":1}`))
	if err != nil || len(msgs) != 1 || msgs[0].DeviceID != ids[0] || msgs[0].Kind != protocol.Telemetry || msgs[0].QoS != 1 ||
		msgs[0].MsgID != "x-1-y" || msgs[0].Node != "node-0" || !msgs[0].ReceivedAt.Equal(at) {
		t.Fatalf("single message: %+v %v", msgs, err)
	}
}

func TestRecordRefusesMalformed(t *testing.T) {
	id := "abcdefghijklmnopqrstuvwxyz"
	good := appendMessage(nil, id, time.Unix(1, 0), 1, false, "m-1", []byte(`{"v":1}`))
	cases := map[string]struct {
		subject string
		h       nats.Header
		data    []byte
		want    string
	}{
		"empty":          {RecordSubject(protocol.State), recordHeader(), nil, "no messages"},
		"other format":   {RecordSubject(protocol.State), nats.Header{HeaderRecord: []string{"2"}}, good, `format "2"`},
		"other subject":  {"ward.device.batch.cmd", recordHeader(), good, "subject"},
		"truncated":      {RecordSubject(protocol.State), recordHeader(), good[:len(good)-1], "past the end"},
		"trailing":       {RecordSubject(protocol.State), recordHeader(), append(bytes.Clone(good), 0x05), "device id"},
		"bad device":     {RecordSubject(protocol.State), recordHeader(), appendMessage(nil, strings.ToUpper(id), time.Unix(1, 0), 0, false, "", nil), "invalid device id"},
		"unknown flag":   {RecordSubject(protocol.State), recordHeader(), func() []byte { b := bytes.Clone(good); b[1+26+1] = 4; return b }(), "unknown flags"},
		"qos0 with id":   {RecordSubject(protocol.State), recordHeader(), appendMessage(nil, id, time.Unix(1, 0), 0, false, "m-1", nil), "QoS 0"},
		"qos1 without":   {RecordSubject(protocol.State), recordHeader(), appendMessage(nil, id, time.Unix(1, 0), 1, false, "", nil), "QoS 1"},
		"huge length":    {RecordSubject(protocol.State), recordHeader(), binary.AppendUvarint(nil, 1<<40), "over"},
		"single, no hdr": {DeviceSubject(id, protocol.State), nats.Header{}, []byte(`{"v":1}`), "Ward-Device"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeStreamMsg(c.subject, c.h, c.data)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
		})
	}
	var many []byte
	for range maxRecordMessages + 1 {
		many = appendMessage(many, id, time.Unix(1, 0), 0, false, "", nil)
	}
	if _, err := DecodeStreamMsg(RecordSubject(protocol.Ack), recordHeader(), many); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("%d messages: %v", maxRecordMessages+1, err)
	}
}

func TestDedupWindowAndBound(t *testing.T) {
	d := dedup{window: time.Minute, recent: map[string]*dedupList{}}
	now := time.Unix(1000, 0)
	id := "abcdefghijklmnopqrstuvwxyz"
	k := dedupKey(7, []byte(`{"v":1}`))
	if d.seen(id, k, now) {
		t.Fatal("seen before added")
	}
	d.add(id, k, now)
	if !d.seen(id, k, now.Add(59*time.Second)) || d.seen(id, k, now.Add(61*time.Second)) {
		t.Fatal("window not kept")
	}
	if d.seen(id, dedupKey(8, []byte(`{"v":1}`)), now) || d.seen(id, dedupKey(7, []byte(`{"v":2}`)), now) || d.seen("aaaaaaaaaaaaaaaaaaaaaaaaaa", k, now) {
		t.Fatal("another packet id, payload or device taken for the same message")
	}
	for i := range 2 * dedupPerDevice {
		d.add(id, dedupKey(uint16(100+i), nil), now)
	}
	if n := len(d.recent[id].es); n != dedupPerDevice {
		t.Fatalf("%d remembered, bound %d", n, dedupPerDevice)
	}
	if d.seen(id, dedupKey(100, nil), now) || !d.seen(id, dedupKey(uint16(100+2*dedupPerDevice-1), nil), now) {
		t.Fatal("not the newest kept")
	}
	// A device quiet for a window is forgotten at the next walk.
	d.add("aaaaaaaaaaaaaaaaaaaaaaaaaa", k, now.Add(3*time.Minute))
	if _, ok := d.recent[id]; ok || len(d.recent) != 1 {
		t.Fatalf("quiet device kept: %d devices", len(d.recent))
	}
}

// FuzzDecodeRecord: a record decodes without panicking, within its limits,
// and what decodes encodes back to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	id := "abcdefghijklmnopqrstuvwxyz"
	f.Add(appendMessage(nil, id, time.Unix(1, 5), 1, true, "m-1", []byte(`{"v":1}`)))
	f.Add(appendMessage(appendMessage(nil, id, time.Unix(-1, 0), 0, false, "", nil), id, time.Unix(2, 0), 1, false, "x", []byte("{}")))
	f.Add([]byte{0x1a})
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := DecodeStreamMsg(RecordSubject(protocol.Events), recordHeader(), data)
		if err != nil {
			return
		}
		if len(msgs) == 0 || len(msgs) > maxRecordMessages {
			t.Fatalf("%d messages", len(msgs))
		}
		var again []byte
		for _, m := range msgs {
			if !protocol.ValidDeviceID(m.DeviceID) || len(m.Payload) > protocol.MaxPayload || len(m.MsgID) > maxMsgIDLen || m.Kind != protocol.Events {
				t.Fatalf("out of bounds: %+v", m)
			}
			again = appendMessage(again, m.DeviceID, m.ReceivedAt, m.QoS, m.Retain, m.MsgID, m.Payload)
		}
		if !bytes.Equal(again, data) {
			// Varints have one shortest encoding; a longer one decodes
			// too. What decoded must decode again to the same messages.
			msgs2, err := DecodeStreamMsg(RecordSubject(protocol.Events), recordHeader(), again)
			if err != nil || len(msgs2) != len(msgs) {
				t.Fatalf("re-encoded record: %v", err)
			}
		}
	})
}

// publishLoop has each of devices publish QoS 1 telemetry through in,
// one message at a time as a device waiting for its PUBACK does, resting
// rest after each PUBACK, until d has passed. It returns how long it ran.
func publishLoop(t *testing.T, in *Ingest, devices int, rest, d time.Duration) time.Duration {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for dev := range devices {
		id := "aaaaaaaaaaaaaaaaaaaaaaa" + string(rune('a'+dev/26)) + string(rune('a'+dev%26)) + "a"
		wg.Go(func() {
			for n := uint16(1); ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				pk := packets.Packet{TopicName: protocol.Topic(id, protocol.Telemetry), Payload: []byte(`{"v":1}`), PacketID: n,
					FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}}
				if code, err := in.Publish(id, protocol.Telemetry, 5, pk); err != nil || code.Code != 0 {
					t.Errorf("%s: %v %v", id, code, err)
					return
				}
				if rest > 0 {
					time.Sleep(rest)
				}
			}
		})
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	return time.Since(start)
}

func newTestIngest(t *testing.T) *Ingest {
	t.Helper()
	bs, err := bus.Open(bus.Config{Dir: filepath.Join(t.TempDir(), "bus"), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bs.Close() })
	in, err := NewIngest(t.Context(), IngestConfig{JetStream: bs.JetStream, Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// telemetryBacks is how many telemetry records were taken with every
// device of the one before back.
func telemetryBacks(in *Ingest) int {
	r := in.recorders[kindIndex(protocol.Telemetry)]
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.backs
}

// TestRecordInterval has 32 devices that each rest 3 ms after a PUBACK,
// so that the devices of a record are not all back by the next: the
// records of one kind start at least recordInterval apart, so there are
// at most elapsed/recordInterval + 1 of them, each with several messages,
// and every message is stored.
func TestRecordInterval(t *testing.T) {
	in := newTestIngest(t)
	elapsed := publishLoop(t, in, 32, 3*time.Millisecond, 300*time.Millisecond)
	st := in.Stats()
	backs := telemetryBacks(in)
	t.Logf("%d messages in %d records over %s, %d with every device back", st.Stored, st.Records, elapsed.Round(time.Millisecond), backs)
	// A record that does wait out the interval has every device back only
	// by chance, and then it was not started early.
	if limit := uint64(elapsed/recordInterval) + 1 + uint64(backs); st.Records > limit {
		t.Fatalf("%d records in %s: records started less than %s apart", st.Records, elapsed, recordInterval)
	}
	if st.Records == 0 || st.Stored < 4*st.Records {
		t.Fatalf("%d messages in %d records: want several messages a record", st.Stored, st.Records)
	}
}

// TestRecordLockStep has 4 devices publishing in lock-step, each at once
// after its PUBACK: every device of a record is back in the next, so the
// next is stored without waiting out recordInterval, and the devices are
// served at the store's pace.
func TestRecordLockStep(t *testing.T) {
	in := newTestIngest(t)
	elapsed := publishLoop(t, in, 4, 0, 300*time.Millisecond)
	st := in.Stats()
	backs := telemetryBacks(in)
	t.Logf("%d messages in %d records over %s (%.0f a second), %d with every device back",
		st.Stored, st.Records, elapsed.Round(time.Millisecond), float64(st.Stored)/elapsed.Seconds(), backs)
	if st.Records < 10 || uint64(backs) < st.Records*8/10 {
		t.Fatalf("%d of %d records had every device of the one before back: want at least 80 %%", backs, st.Records)
	}
	// Waiting out the interval, there would be at most one record a
	// millisecond.
	if limit := uint64(elapsed/recordInterval)*3/2 + 1; st.Records < limit {
		t.Fatalf("%d records in %s: want at least %d, as many as the store takes", st.Records, elapsed, limit)
	}
}
