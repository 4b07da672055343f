package gateway

// Durable ingest: every message a device publishes goes into the JetStream
// stream WARD_DEVICE (bus.StreamDevice) before the device hears that it was
// received.
//
// # When the device gets its PUBACK
//
// The event loop (loop.go) hands each message to Ingest.PublishAsync with
// the session's place in its PUBACK order; the PUBACK is written once the
// message's record is in the stream, by the goroutine that stored it. A
// session served by its goroutine calls Ingest.Publish, which waits for
// the same. Either way a QoS 1 PUBACK is only ever written for a message
// that the stream has stored.
//
// Ingest refuses as follows. A payload that is not a v1 JSON object
// (protocol.CheckPayload): MQTT 5 QoS 1 gets PUBACK 0x99 "payload format
// invalid"; MQTT 3.1.1 and QoS 0 are acknowledged and dropped (3.1.1 has
// no way to refuse, and withholding the PUBACK would make the device resend
// it forever). A message the stream did not store (JetStream unavailable,
// timeout): MQTT 5 QoS 1 gets PUBACK 0x80 "unspecified error" and the device
// resends it; MQTT 3.1.1 QoS 1 gets no PUBACK and its connection is closed,
// so the client resends it after reconnecting (MQTT 3.1.1 §4.4); QoS 0 is
// dropped. Each case is counted (Ingest.Stats).
//
// # Records
//
// Messages are stored in records of many messages of one kind (record.go):
// one JetStream message, one file write and one stream ack for as many
// messages as arrived while the previous record of that kind was being
// stored (see recorder). Each is settled by its record's ack, so the rule
// above holds message by message.
//
// # Durability
//
// The stream has one replica on a single node, file storage, limits
// retention (max age, max bytes, discard old). With one replica the NATS
// file store writes each record to its block file before acknowledging it
// (nats-server filestore: flush in place unless async flush, which needs
// replicas > 1), so an acknowledged message survives kill -9 of the
// process. Surviving a power cut needs the server's sync_interval: always
// (server option SyncAlways) as well.
//
// # Duplicates
//
// A QoS 1 message's id is MsgID: "<device>-<packet id>-<sha256 of the
// payload, 96 bits, hex>". The id has no connection id in it on purpose: a
// redelivery (DUP flag) comes on a new connection and must carry the same
// id as the first delivery. The node remembers the ids of the QoS 1
// messages it stored within the duplicate window (default 2 minutes; see
// dedup), and a DUP message whose id it stored is acknowledged and not
// stored again. A message without the DUP flag is new by definition, so if
// its id was already stored (the device reused the packet id for the same
// bytes within the window) it is stored again under a unique id. The one
// ambiguity MQTT leaves: a DUP message with the same packet id and the
// same bytes as the previous message of that id within the window is taken
// for a redelivery of it; its content is already stored.
//
// The memory is the node's: a redelivery to another node, or to this one
// after it restarted, is stored again with the same MsgID (the PUBACK was
// lost, so the device could not know). Consumers that must count a message
// once drop a repeated MsgID; the registry's columns and command acks are
// idempotent already.
//
// # Registry
//
// The registry's last_seen_at and last known state are kept off the publish
// path. last_seen_at comes from the gateway itself: every stored message
// notes its device and time in memory, and Ingest.Run writes the latest
// time of each device: within a second for a device's first message on the
// node, then at most once per SeenInterval, and all pending ones when it
// stops. A crash loses at most one interval of last-seen times, never a
// message.
// The last known state comes from the stream: Ingest.Run consumes the state
// subjects only (ward.device.*.state) with the durable consumer
// "ward-registry", shared by every node, and acks each message after its
// batch's transaction commits (up to 256 states per transaction, written
// within 200 ms), so a database outage delays the column and loses
// nothing. Both columns only move forward in time.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/protocol"
)

// Headers of a single device message in the stream, as earlier versions
// stored them (DecodeStreamMsg still reads them), and of a record
// (HeaderNode), in canonical MIME form.
const (
	HeaderDevice     = "Ward-Device"      // device id
	HeaderNode       = "Ward-Node"        // node that received it
	HeaderReceivedAt = "Ward-Received-At" // RFC 3339, nanoseconds, UTC
	HeaderQoS        = "Ward-Mqtt-Qos"    // 0 or 1 (2 is served as 1)
	HeaderRetain     = "Ward-Mqtt-Retain" // "true" when the device set retain
)

// Defaults of IngestConfig.
const (
	DefaultStreamMaxAge    = 7 * 24 * time.Hour
	DefaultStreamMaxBytes  = 10 << 30
	DefaultDuplicateWindow = 2 * time.Minute
	DefaultStoreTimeout    = 5 * time.Second
	DefaultSeenInterval    = time.Minute
)

// Durable consumer names on the device stream.
const (
	ConsumerRegistry = "ward-registry"
	ConsumerCommands = "ward-commands"
)

// IngestConfig configures Ingest.
type IngestConfig struct {
	JetStream jetstream.JetStream // required
	// Registry receives last known states and last-seen times; nil skips
	// them (Run then returns at once).
	Registry *fleet.Registry
	Node     string
	// Stream limits: MaxAge (default 7 days), MaxBytes (default 10 GiB; -1
	// for no limit), Replicas (default 1; 3 on a NATS cluster) and the
	// duplicate window (default 2 minutes).
	MaxAge          time.Duration
	MaxBytes        int64
	Replicas        int
	DuplicateWindow time.Duration
	// StoreTimeout bounds the wait for the stream's ack (default 5 s);
	// the device waits as long for its PUBACK.
	StoreTimeout time.Duration
	// SeenInterval is how often the devices' last_seen_at are written
	// (default 1 minute): at most one UPDATE per device per interval.
	SeenInterval time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// IngestStats counts what Ingest did since it started.
type IngestStats struct {
	Stored       uint64 `json:"stored"`        // new messages in the stream
	Records      uint64 `json:"records"`       // stream records they were stored in
	Duplicates   uint64 `json:"duplicates"`    // redeliveries the stream already had
	Invalid      uint64 `json:"invalid"`       // refused: payload not a v1 JSON object
	Unauthorized uint64 `json:"unauthorized"`  // refused: not the client's own device topic
	StoreFailed  uint64 `json:"store_failed"`  // refused: the stream did not store it
	StateUpdates uint64 `json:"state_updates"` // last known states written
}

// Ingest stores the messages devices publish (Publish), and is the consumer
// that keeps the registry's last state and last seen. Add it to the
// gateway with AddHook before Run.
type Ingest struct {
	js   jetstream.JetStream
	cfg  IngestConfig
	node []string // the Ward-Node header's value
	log  *slog.Logger

	stored, duplicates, invalid, unauthorized, failed, states, records atomic.Uint64
	reused                                                             atomic.Uint64 // suffixes of ids stored again

	recorders [4]*recorder // by kindIndex
	dedup     dedup

	seenMu sync.Mutex
	seen   map[string]time.Time // device → its latest stored message since the last flush

	statesMu       sync.Mutex
	pendingStates  []pendingState // consumed, not yet written
	pendingReports int            // states in pendingStates
	flushMu        sync.Mutex     // serialises flushStates
}

// NewIngest creates or updates the device stream and returns the hook.
func NewIngest(ctx context.Context, cfg IngestConfig) (*Ingest, error) {
	if cfg.JetStream == nil {
		return nil, errors.New("gateway: ingest needs JetStream")
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultStreamMaxAge
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultStreamMaxBytes
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.DuplicateWindow == 0 {
		cfg.DuplicateWindow = DefaultDuplicateWindow
	}
	if cfg.DuplicateWindow > cfg.MaxAge {
		cfg.DuplicateWindow = cfg.MaxAge
	}
	if cfg.StoreTimeout == 0 {
		cfg.StoreTimeout = DefaultStoreTimeout
	}
	if cfg.SeenInterval == 0 {
		cfg.SeenInterval = DefaultSeenInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	in := &Ingest{js: cfg.JetStream, cfg: cfg, log: cfg.Logger, node: []string{cfg.Node}, seen: map[string]time.Time{},
		dedup: dedup{window: cfg.DuplicateWindow, recent: map[string]*dedupList{}}}
	for _, k := range []protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack} {
		in.recorders[kindIndex(k)] = &recorder{in: in, subject: RecordSubject(k), wake: make(chan struct{}, 1)}
	}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	_, err := cfg.JetStream.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        bus.StreamDevice,
		Description: "Ward: messages devices published, stored before their PUBACK",
		Subjects:    []string{bus.SubjectDevicePrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Duplicates:  cfg.DuplicateWindow,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: device stream: %w", err)
	}
	return in, nil
}

// ID names the hook.
func (in *Ingest) ID() string { return "ward-ingest" }

// Stats returns the counters.
func (in *Ingest) Stats() IngestStats {
	return IngestStats{
		Stored: in.stored.Load(), Records: in.records.Load(), Duplicates: in.duplicates.Load(), Invalid: in.invalid.Load(),
		Unauthorized: in.unauthorized.Load(), StoreFailed: in.failed.Load(), StateUpdates: in.states.Load(),
	}
}

// DeviceSubject is the stream subject of a device message.
func DeviceSubject(deviceID string, k protocol.Kind) string {
	return bus.SubjectDevicePrefix + deviceID + "." + string(k)
}

// ParseDeviceSubject is the inverse of DeviceSubject.
func ParseDeviceSubject(subject string) (deviceID string, k protocol.Kind, ok bool) {
	rest, ok := strings.CutPrefix(subject, bus.SubjectDevicePrefix)
	if !ok {
		return "", "", false
	}
	deviceID, kind, ok := strings.Cut(rest, ".")
	if !ok || !protocol.ValidDeviceID(deviceID) || !protocol.Kind(kind).Publishable() {
		return "", "", false
	}
	return deviceID, protocol.Kind(kind), true
}

// MsgID is the stream's deduplication id of a QoS 1 message.
func MsgID(deviceID string, packetID uint16, payload []byte) string {
	return msgIDOf(deviceID, dedupKey(packetID, payload))
}

// msgIDOf is MsgID from the message's deduplication key.
func msgIDOf(deviceID string, k [14]byte) string {
	var b [msgIDBufLen]byte
	return string(appendMsgID(b[:0], deviceID, k))
}

// appendMsgID appends the MsgID of key to b: a message's id is built in
// the record without a string of its own.
func appendMsgID(b []byte, deviceID string, k [14]byte) []byte {
	b = append(b, deviceID...)
	b = append(b, '-')
	b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint16(k[:2])), 10)
	b = append(b, '-')
	return hex.AppendEncode(b, k[2:])
}

// msgIDBufLen holds a MsgID (26 + 1 + 5 + 1 + 24) and a unique suffix
// ("-" time "." count, base 36: 1 + 13 + 1 + 13).
const msgIDBufLen = 96

// CheckDevicePayload checks a payload a device published: a v1 JSON
// object in valid UTF-8 (protocol.CheckPayload, which checks the UTF-8
// that encoding/json would replace instead of refusing).
func CheckDevicePayload(b []byte) error {
	return protocol.CheckPayload(b)
}

// Publish stores a device's message of kind k (its topic, which the
// gateway authorised) in the stream and returns only when the stream has
// stored it, with the reason code of its PUBACK (QoS 1): success, or why it
// was refused. MQTT 3.1.1 and QoS 0 cannot be refused: a message that is
// not valid is acknowledged and dropped; one the stream did not store
// closes a 3.1.1 connection (err), so the device resends it.
func (in *Ingest) Publish(deviceID string, kind protocol.Kind, version byte, pk packets.Packet) (packets.Code, error) {
	w := &chanWaiter{done: make(chan struct{})}
	in.PublishAsync(deviceID, kind, version, in.cfg.Now(), pk, w)
	<-w.done
	return w.code, w.err
}

// StoreWaiter learns the outcome of a message handed to PublishAsync:
// the reason code of its PUBACK, or an error that must close an MQTT 3.1.1
// connection (see Publish).
type StoreWaiter interface {
	Stored(code packets.Code, err error)
}

type chanWaiter struct {
	code packets.Code
	err  error
	done chan struct{}
}

func (w *chanWaiter) Stored(code packets.Code, err error) { w.code, w.err = code, err; close(w.done) }

// PublishAsync is Publish without the wait: it copies what it needs of pk
// before it returns (pk's buffers may be reused at once), and tells w the
// outcome, from another goroutine once the message's record is stored, or
// before it returns when the message needs no storing (refused, or a
// redelivery already stored). at is when the message was received. The
// gateway's event loop uses it, so that no goroutine waits on the store per
// message.
func (in *Ingest) PublishAsync(deviceID string, kind protocol.Kind, version byte, at time.Time, pk packets.Packet, w StoreWaiter) {
	if !kind.Publishable() {
		in.unauthorized.Add(1)
		w.Stored(packets.ErrNotAuthorized, nil)
		return
	}
	id := deviceID
	if err := CheckDevicePayload(pk.Payload); err != nil {
		in.invalid.Add(1)
		in.log.Info("device payload refused", "device", id, "kind", kind, "bytes", len(pk.Payload), "err", err)
		if version < 5 {
			w.Stored(packets.CodeSuccess, nil)
			return
		}
		w.Stored(packets.Code{Code: packets.ErrPayloadFormatInvalid.Code, Reason: err.Error()}, nil)
		return
	}
	at = at.UTC()
	m := recordMsg{device: id, kind: kind, version: version, qos: min(pk.FixedHeader.Qos, 1), at: at, w: w}
	var idBuf [msgIDBufLen]byte
	msgID := idBuf[:0]
	if m.qos > 0 {
		m.key = dedupKey(pk.PacketID, pk.Payload)
		m.keyed = true
		seen := in.dedup.seen(id, m.key, at)
		if seen && pk.FixedHeader.Dup {
			in.duplicates.Add(1) // a redelivery of a message stored here
			in.noteSeen(id, at)
			w.Stored(packets.CodeSuccess, nil)
			return
		}
		msgID = appendMsgID(msgID, id, m.key)
		if seen {
			// A new message that reuses a packet id for the same bytes
			// within the window: not a redelivery, a unique id.
			// (The time keeps it unique across restarts, the count within
			// a poller's batch, which shares one time.)
			msgID = append(msgID, '-')
			msgID = strconv.AppendInt(msgID, at.UnixNano(), 36)
			msgID = append(msgID, '.')
			msgID = strconv.AppendUint(msgID, in.reused.Add(1), 36)
		}
	}
	in.recorders[kindIndex(kind)].add(m, pk.FixedHeader.Retain, msgID, pk.Payload)
}

var errIngestNotStored = errors.New("gateway: message not stored")

// noteSeen notes a device's stored message for last_seen_at.
func (in *Ingest) noteSeen(id string, at time.Time) {
	if in.cfg.Registry == nil {
		return
	}
	in.seenMu.Lock()
	if last, ok := in.seen[id]; !ok || at.After(last) {
		in.seen[id] = at
	}
	in.seenMu.Unlock()
}

// recordMsg is a message in a record being gathered or stored: what its
// outcome updates, and who waits for it.
type recordMsg struct {
	device  string
	kind    protocol.Kind
	version byte
	qos     byte
	keyed   bool
	key     [14]byte
	at      time.Time
	w       StoreWaiter
}

// settle tells the messages of a record its outcome, once it is known.
func (in *Ingest) settle(msgs []recordMsg, err error) {
	if err != nil {
		in.failed.Add(uint64(len(msgs)))
		in.log.Error("device messages not stored", "messages", len(msgs), "kind", msgs[0].kind, "err", err)
		for i := range msgs {
			m := &msgs[i]
			if m.qos > 0 && m.version < 5 {
				// MQTT 3.1.1 cannot refuse a PUBLISH: withhold the PUBACK
				// and close the connection; the client resends after
				// reconnecting.
				m.w.Stored(packets.Code{}, errIngestNotStored)
				continue
			}
			m.w.Stored(packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "message not stored, send it again"}, nil)
		}
		return
	}
	in.stored.Add(uint64(len(msgs)))
	in.dedup.addStored(msgs)
	if in.cfg.Registry != nil {
		in.seenMu.Lock()
		for i := range msgs {
			m := &msgs[i]
			if last, ok := in.seen[m.device]; !ok || m.at.After(last) {
				in.seen[m.device] = m.at
			}
		}
		in.seenMu.Unlock()
	}
	for i := range msgs {
		msgs[i].w.Stored(packets.CodeSuccess, nil)
	}
}

// Records. A device message is stored as part of a record of its kind
// (record.go): the first message of a kind starts a record and a flusher
// goroutine that stores it; messages that arrive while a record is being
// stored gather in the next one, which the flusher stores next, up to
// maxRecordMessages or maxRecordBytes. One record per kind is in flight at a time, so a quiet
// node stores each message on its own and a busy one stores hundreds in
// one JetStream message, one file write and one ack. Every message of a
// record learns the record's outcome.
//
// A kind's records start at least recordInterval apart unless the one
// waiting has recordEnough messages: a record costs the node tens of
// microseconds of JetStream work whatever its size, and a stream of small
// records spends more on that than on the messages. A message that arrives
// when no record has started for that long, as on a quiet node, is stored
// at once.
//
// Waiting only pays when more messages are coming. A device that waits for
// its PUBACK before it publishes again, as most do, is back in the next
// record as soon as it has its PUBACK; when every device of the last record
// is back, and the record waiting is as large, more waiting would gather
// nothing but the devices' delay. Such a record is stored at once: a few
// devices publishing in lock-step are served at the store's pace, not one
// record a millisecond, while a busy node, whose devices are still on
// their way, keeps its large records. One record of a kind is stored at a
// time, so records never come faster than the store takes them.

// recorder gathers the messages of one kind into records and stores them.
type recorder struct {
	in      *Ingest
	subject string

	mu      sync.Mutex
	queue   []*pendingRecord // oldest first; only the last takes more messages
	running bool             // a flusher is storing the queue
	started time.Time        // when the last record was taken to be stored
	idle    bool             // the flusher waits for a message
	wake    chan struct{}    // a message came for an idle flusher, or the record it waits on is ready early

	// The devices of the last record taken, while they are not yet back
	// with a message in the record being gathered; watching is false when
	// that record was too large to be worth watching.
	away     map[string]struct{}
	awayFrom int // messages in the last record taken
	watching bool
	backs    int // records taken with every device of the one before back, for tests
}

// recordInterval is the least time between the starts of two records of
// one kind: at most 1,000 records a second per kind, so about 20 messages
// a record at 20,000 a second, for at most a millisecond more before a
// PUBACK on a busy node (bench/README.md). On a quiet node, whose
// messages come further apart than that, no message waits for it. A record
// of recordEnough messages is worth storing without the wait.
const (
	recordInterval = time.Millisecond
	recordEnough   = 64
)

// flusherLinger is how long a kind's flusher waits for a message before
// it ends.
const flusherLinger = time.Second

// pendingRecord is a record being gathered or stored.
type pendingRecord struct {
	data    []byte
	msgs    []recordMsg
	created time.Time
	back    bool // it holds a message of every device of the record before, and as many messages
}

// pendingRecords holds records to gather messages in, their buffers
// grown: a busy node gathers a thousand records a second.
var pendingRecords = sync.Pool{New: func() any { return &pendingRecord{data: make([]byte, 0, 4096)} }}

// add adds a message to the record being gathered; its waiter learns the
// record's outcome from the goroutine that stores it.
func (r *recorder) add(m recordMsg, retain bool, msgID, payload []byte) {
	size := len(m.device) + len(msgID) + len(payload) + 3*binary.MaxVarintLen64 + 1
	r.mu.Lock()
	var p *pendingRecord
	if n := len(r.queue); n > 0 {
		if last := r.queue[n-1]; len(last.msgs) < maxRecordMessages && len(last.data)+size <= maxRecordBytes {
			p = last
		}
	}
	if p == nil {
		p = pendingRecords.Get().(*pendingRecord)
		p.created = time.Now()
		r.queue = append(r.queue, p)
	}
	p.data = appendMessage(p.data, m.device, m.at, m.qos, retain, msgID, payload)
	p.msgs = append(p.msgs, m)
	if r.watching && len(r.queue) == 1 {
		delete(r.away, m.device)
		if len(r.away) == 0 && len(p.msgs) >= r.awayFrom {
			p.back, r.watching = true, false
		}
	}
	switch {
	case !r.running:
		// The flusher stores it: at once on a quiet node, whose last
		// record started more than recordInterval ago, or when due.
		r.running = true
		go r.flush()
	case r.idle || len(p.msgs) == recordEnough || p.back:
		r.idle = false
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	r.mu.Unlock()
}

// flush stores the queued records one after the other, each no sooner
// than recordInterval after the one before unless it has recordEnough
// messages or all its devices are back. With the queue empty it waits for
// the next message, and ends once none has come for flusherLinger: a
// flusher started afresh for every record, as a few devices in lock-step
// would have it, spends more on starting and growing its stack than on the
// record. A record that waited longer than the store timeout is not
// stored: its devices have been waiting that long already.
func (r *recorder) flush() {
	t := time.NewTimer(flusherLinger)
	defer t.Stop()
	for {
		r.mu.Lock()
		if len(r.queue) == 0 {
			r.idle = true
			r.mu.Unlock()
			t.Reset(flusherLinger)
			select {
			case <-r.wake:
				continue
			case <-t.C:
			}
			r.mu.Lock()
			if len(r.queue) > 0 {
				r.mu.Unlock()
				continue
			}
			r.running, r.idle = false, false
			r.queue = nil
			r.mu.Unlock()
			return
		}
		r.idle = false
		p := r.queue[0]
		if wait := recordInterval - time.Since(r.started); wait > 0 && len(r.queue) == 1 && len(p.msgs) < recordEnough && !p.back {
			r.mu.Unlock()
			t.Reset(wait)
			select {
			case <-t.C:
			case <-r.wake:
			}
			continue
		}
		r.queue[0] = nil
		r.queue = r.queue[1:]
		r.started = time.Now()
		if p.back {
			r.backs++
		}
		r.watch(p)
		r.mu.Unlock()
		r.store(p)
	}
}

// watch notes the devices of p, the record taken to be stored, to learn
// when they are all back in the next one. Only a record smaller than
// recordEnough is worth it: a larger one is stored without waiting anyway.
// It is called with r.mu held.
func (r *recorder) watch(p *pendingRecord) {
	clear(r.away)
	r.watching = len(p.msgs) < recordEnough && len(r.queue) == 0
	if !r.watching {
		return
	}
	if r.away == nil {
		r.away = make(map[string]struct{}, recordEnough)
	}
	for i := range p.msgs {
		r.away[p.msgs[i].device] = struct{}{}
	}
	r.awayFrom = len(p.msgs)
}

// store stores one record and tells its messages' waiters.
func (r *recorder) store(p *pendingRecord) {
	var err error
	if waited := time.Since(p.created); waited > r.in.cfg.StoreTimeout {
		err = fmt.Errorf("not stored: waited %s behind earlier records", waited.Round(time.Millisecond))
	} else {
		err = r.in.publishRecord(r.subject, p)
	}
	r.in.settle(p.msgs, err)
	clear(p.msgs) // the devices' waiters
	p.data, p.msgs, p.back = p.data[:0], p.msgs[:0], false
	if cap(p.data) <= 2*maxRecordBytes {
		pendingRecords.Put(p)
	}
}

// publishRecord stores one record and waits for the stream's ack. The
// message is written to the connection before PublishMsg returns, so the
// record's buffer may be reused after it.
func (in *Ingest) publishRecord(subject string, p *pendingRecord) error {
	h := nats.Header{HeaderNode: in.node, HeaderRecord: recordVersionValue}
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.StoreTimeout)
	defer cancel()
	// No Nats-Expected-Stream header: the ack names the stream that
	// stored the record, and that is checked instead, for free.
	ack, err := in.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: p.data, Header: h})
	if err == nil && ack.Stream != bus.StreamDevice {
		err = fmt.Errorf("stored in stream %q, not %s", ack.Stream, bus.StreamDevice)
	}
	if err == nil {
		in.records.Add(1)
	}
	return err
}

// kindIndex is k's index in Ingest.recorders.
func kindIndex(k protocol.Kind) int {
	switch k {
	case protocol.Telemetry:
		return 0
	case protocol.Events:
		return 1
	case protocol.State:
		return 2
	default: // protocol.Ack: store is only called for publishable kinds
		return 3
	}
}

// Duplicates. The node remembers, per device, the keys (packet id and
// payload hash) of the QoS 1 messages it stored within the duplicate
// window, at most dedupPerDevice of them: more than a device can have
// unacknowledged at once (MQTT 5's Receive Maximum, DefaultMaxInflight).

const dedupPerDevice = 64

type dedupEntry struct {
	at  int64 // Unix nanoseconds
	key [14]byte
}

type dedup struct {
	window time.Duration
	mu     sync.Mutex
	recent map[string]*dedupList
	pruned time.Time
}

// dedupList is one device's remembered keys: appended until it holds
// dedupPerDevice, then a ring whose oldest entry is at next. Entries older
// than the window stay until overwritten and are not matched.
type dedupList struct {
	es   []dedupEntry
	next int
	last int64 // the newest entry's time
}

// dedupKey is a message's packet id and 96 bits of its payload's SHA-256.
func dedupKey(packetID uint16, payload []byte) (k [14]byte) {
	binary.BigEndian.PutUint16(k[:2], packetID)
	h := sha256.Sum256(payload)
	copy(k[2:], h[:12])
	return k
}

// seen reports whether the device's message with key was stored within
// the window.
func (d *dedup) seen(deviceID string, key [14]byte, now time.Time) bool {
	since := now.Add(-d.window).UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.recent[deviceID]
	if l == nil {
		return false
	}
	for i := range l.es {
		if e := &l.es[i]; e.key == key && e.at > since {
			return true
		}
	}
	return false
}

// add remembers that the device's message with key was stored at now.
func (d *dedup) add(deviceID string, key [14]byte, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addLocked(deviceID, key, now)
}

// addStored remembers the keyed messages of a stored record, under one
// lock.
func (d *dedup) addStored(msgs []recordMsg) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range msgs {
		if m := &msgs[i]; m.keyed {
			d.addLocked(m.device, m.key, m.at)
		}
	}
}

func (d *dedup) addLocked(deviceID string, key [14]byte, now time.Time) {
	if now.Sub(d.pruned) > d.window {
		since := now.Add(-d.window).UnixNano()
		// Forget the devices whose last message is out of the window:
		// a walk of the map once per window.
		for id, l := range d.recent {
			if l.last <= since {
				delete(d.recent, id)
			}
		}
		d.pruned = now
	}
	l := d.recent[deviceID]
	if l == nil {
		l = &dedupList{}
		d.recent[deviceID] = l
	}
	e := dedupEntry{at: now.UnixNano(), key: key}
	l.last = e.at
	if len(l.es) < dedupPerDevice {
		l.es = append(l.es, e)
		return
	}
	l.es[l.next] = e
	l.next = (l.next + 1) % dedupPerDevice
}

// Run keeps the registry's last seen and last known state until ctx ends.
// Several nodes share the durable consumer.
func (in *Ingest) Run(ctx context.Context) error {
	if in.cfg.Registry == nil {
		return nil
	}
	var flushers sync.WaitGroup
	flushers.Go(func() { in.flushSeenEvery(ctx) })
	flushers.Go(func() { in.flushStatesEvery(ctx) })
	defer flushers.Wait()
	cfg := jetstream.ConsumerConfig{
		Durable:       ConsumerRegistry,
		Description:   "Ward: last known state of devices",
		FilterSubject: bus.SubjectDevicePrefix + "*." + string(protocol.State),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 4096,
	}
	cons, err := in.js.CreateOrUpdateConsumer(ctx, bus.StreamDevice, cfg)
	if err != nil && ctx.Err() == nil {
		// A consumer of an earlier version that the server will not
		// update in place: start it again. It redelivers the retained
		// states, which cannot move the columns backwards.
		in.log.Warn("registry consumer not updated, creating it again", "err", err)
		_ = in.js.DeleteConsumer(ctx, bus.StreamDevice, ConsumerRegistry)
		cons, err = in.js.CreateOrUpdateConsumer(ctx, bus.StreamDevice, cfg)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("gateway: registry consumer: %w", err)
	}
	return consumeStream(ctx, cons, in.log, in.record)
}

// flushSeenEvery writes the devices' last-seen times until ctx ends, and
// all that are pending once more then. A device's first message since the
// node started is written within a second; later ones at most once per
// SeenInterval.
func (in *Ingest) flushSeenEvery(ctx context.Context) {
	written := map[string]time.Time{} // device → last time written by this node
	t := time.NewTicker(min(time.Second, in.cfg.SeenInterval))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			in.flushSeen(ctx, written, false)
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			in.flushSeen(fctx, written, true)
			cancel()
			return
		}
	}
}

func (in *Ingest) flushSeen(ctx context.Context, written map[string]time.Time, all bool) {
	in.seenMu.Lock()
	batch := in.seen
	if len(batch) == 0 {
		in.seenMu.Unlock()
		return
	}
	in.seen = make(map[string]time.Time, len(batch))
	in.seenMu.Unlock()
	keep := map[string]time.Time{}
	for id, at := range batch {
		if last, ok := written[id]; ok && !all && at.Sub(last) < in.cfg.SeenInterval {
			keep[id] = at // written recently: wait for the interval
			continue
		}
		if err := in.cfg.Registry.RecordSeen(ctx, id, at); err != nil {
			in.log.Warn("last seen not recorded", "device", id, "err", err)
			keep[id] = at
			continue
		}
		written[id] = at
	}
	if len(keep) == 0 {
		return
	}
	in.seenMu.Lock()
	for id, at := range keep {
		if cur, ok := in.seen[id]; !ok || at.After(cur) {
			in.seen[id] = at
		}
	}
	in.seenMu.Unlock()
}

// consume hands every message of cons to handle until ctx ends. handle
// acks or naks.
func consumeStream(ctx context.Context, cons jetstream.Consumer, log *slog.Logger, handle func(context.Context, jetstream.Msg)) error {
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(256))
		if err != nil {
			log.Warn("device stream consumer", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		stop := context.AfterFunc(ctx, it.Stop)
		for {
			m, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					log.Warn("device stream consumer", "err", err)
				}
				break
			}
			handle(ctx, m)
		}
		stop()
		it.Stop()
	}
	return nil
}

// record queues the states of a stream message (a record or, from earlier
// versions, a single message); flushStates writes the queue. A full batch
// is written at once, the rest within stateFlushEvery.
func (in *Ingest) record(ctx context.Context, m jetstream.Msg) {
	msgs, err := DecodeStreamMsg(m.Subject(), m.Headers(), m.Data())
	if err != nil || msgs[0].Kind != protocol.State {
		in.log.Warn("device stream message not readable, dropped", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	p := pendingState{msg: m, reports: make([]fleet.StateReport, len(msgs))}
	for i, dm := range msgs {
		p.reports[i] = fleet.StateReport{DeviceID: dm.DeviceID, State: dm.Payload, At: dm.ReceivedAt}
	}
	in.statesMu.Lock()
	in.pendingStates = append(in.pendingStates, p)
	in.pendingReports += len(msgs)
	full := in.pendingReports >= stateBatch
	in.statesMu.Unlock()
	if full {
		in.flushStates(ctx)
	}
}

// State messages are written to the registry in batches of at most
// stateBatch, at least every stateFlushEvery.
const (
	stateBatch      = 256
	stateFlushEvery = 200 * time.Millisecond
)

// pendingState is a stream message's states waiting for their batch.
type pendingState struct {
	msg     jetstream.Msg
	reports []fleet.StateReport
}

// flushStatesEvery writes queued states until ctx ends.
func (in *Ingest) flushStatesEvery(ctx context.Context) {
	t := time.NewTicker(stateFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			in.flushStates(ctx)
		case <-ctx.Done():
			return // unacked messages are redelivered to the next consumer
		}
	}
}

// flushStates writes the queued states in one transaction and acks their
// messages, or naks them all to be redelivered.
func (in *Ingest) flushStates(ctx context.Context) {
	in.flushMu.Lock() // one batch at a time, in order
	defer in.flushMu.Unlock()
	in.statesMu.Lock()
	batch, n := in.pendingStates, in.pendingReports
	in.pendingStates, in.pendingReports = nil, 0
	in.statesMu.Unlock()
	if len(batch) == 0 {
		return
	}
	reports := make([]fleet.StateReport, 0, n)
	for _, p := range batch {
		reports = append(reports, p.reports...)
	}
	if err := in.cfg.Registry.RecordStates(ctx, reports); err != nil {
		in.log.Warn("last states not recorded, retrying", "states", n, "err", err)
		for _, p := range batch {
			_ = p.msg.NakWithDelay(5 * time.Second)
		}
		return
	}
	for _, p := range batch {
		_ = p.msg.Ack()
	}
	in.states.Add(uint64(n))
}
