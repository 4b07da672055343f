package gateway

// Durable ingest: every message a device publishes goes into the JetStream
// stream WARD_DEVICE (bus.StreamDevice) before the device hears that it was
// received.
//
// # When the device gets its PUBACK
//
// mochi-mqtt v2.7.9 server.go, (*Server).processPublish: the hooks'
// OnPublish runs at line 913 and the PUBACK is built and written at lines
// 942–952, after it, in the same goroutine (the connection's read loop).
// Ingest.OnPublish publishes to JetStream and waits for the stream's ack
// before returning, so a QoS 1 PUBACK is only ever written for a message
// that the stream has stored. An error from OnPublish is mapped at lines
// 914–926:
//
//   - packets.ErrRejectPacket: nothing is sent, the message is dropped;
//   - packets.CodeSuccessIgnore: PUBACK success, the message is dropped;
//   - a bare packets.Code (not wrapped: mochi type-asserts it), on an MQTT 5
//     connection at QoS > 0: a PUBACK with that reason code;
//   - anything else, or a Code on MQTT 3.1.1 or at QoS 0, falls through and
//     the message is acknowledged and forwarded as if accepted (a trap).
//
// So Ingest refuses as follows. A payload that is not a v1 JSON object
// (protocol.CheckPayload): MQTT 5 QoS 1 gets PUBACK 0x99 "payload format
// invalid"; MQTT 3.1.1 and QoS 0 are acknowledged and dropped (3.1.1 has
// no way to refuse, and withholding the PUBACK would make the device resend
// it forever). A message the stream did not store (JetStream unavailable,
// timeout): MQTT 5 QoS 1 gets PUBACK 0x80 "unspecified error" and the device
// resends it; MQTT 3.1.1 QoS 1 gets no PUBACK and its connection is closed,
// so the client resends it after reconnecting (MQTT 3.1.1 §4.4); QoS 0 is
// dropped. Each case is counted (Ingest.Stats).
//
// # Durability
//
// The stream has one replica on a single node, file storage, limits
// retention (max age, max bytes, discard old). With one replica the NATS
// file store writes each message to its block file before acknowledging it
// (nats-server filestore: flush in place unless async flush, which needs
// replicas > 1), so an acknowledged message survives kill -9 of the
// process. Surviving a power cut needs the server's sync_interval: always
// (server option SyncAlways) as well.
//
// # Duplicates
//
// A QoS 1 message carries Nats-Msg-Id "<device>-<packet id>-<sha256 of the
// payload, 96 bits, hex>" and the stream drops a second message with the
// same id within its duplicate window (default 2 minutes). The id has no
// connection id in it on purpose: a redelivery (DUP flag) comes on a new
// connection, possibly to another node, and must carry the same id as the
// first delivery. A message without the DUP flag is new by definition, so
// if its id was already seen (the device reused the packet id for the same
// bytes within the window) it is stored again under a unique id. The one
// ambiguity MQTT leaves: a DUP message with the same packet id and the same
// bytes as the previous message of that id within the window is taken for
// a redelivery of it; its content is already stored.
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
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/protocol"
)

// Values of the headers that take few values, shared by every message.
var (
	qosValues   = [2][]string{{"0"}, {"1"}}
	retainValue = []string{"true"}
)

// Headers of a device message in the stream, besides Nats-Msg-Id, in
// canonical MIME form.
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
	Duplicates   uint64 `json:"duplicates"`    // redeliveries the stream already had
	Invalid      uint64 `json:"invalid"`       // refused: payload not a v1 JSON object
	Unauthorized uint64 `json:"unauthorized"`  // refused: not the client's own device topic
	StoreFailed  uint64 `json:"store_failed"`  // refused: the stream did not store it
	StateUpdates uint64 `json:"state_updates"` // last known states written
}

// Ingest is the mochi hook that stores device messages, and the consumer
// that keeps the registry's last state and last seen. Add it to the
// gateway with AddHook before Run.
type Ingest struct {
	mqtt.HookBase
	js   jetstream.JetStream
	cfg  IngestConfig
	node []string // the Ward-Node header's value
	log  *slog.Logger

	stored, duplicates, invalid, unauthorized, failed, states atomic.Uint64

	seenMu sync.Mutex
	seen   map[string]time.Time // device → its latest stored message since the last flush

	statesMu      sync.Mutex
	pendingStates []pendingState // consumed, not yet written
	flushMu       sync.Mutex     // serialises flushStates
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
	in := &Ingest{js: cfg.JetStream, cfg: cfg, log: cfg.Logger, node: []string{cfg.Node}, seen: map[string]time.Time{}}
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

// Provides says which hook methods Ingest implements.
func (in *Ingest) Provides(b byte) bool { return b == mqtt.OnPublish }

// Stats returns the counters.
func (in *Ingest) Stats() IngestStats {
	return IngestStats{
		Stored: in.stored.Load(), Duplicates: in.duplicates.Load(), Invalid: in.invalid.Load(),
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
	h := sha256.Sum256(payload)
	return deviceID + "-" + strconv.Itoa(int(packetID)) + "-" + hex.EncodeToString(h[:12])
}

// CheckDevicePayload is protocol.CheckPayload plus the UTF-8 check the
// protocol states (encoding/json replaces invalid UTF-8 instead of failing).
func CheckDevicePayload(b []byte) error {
	if len(b) <= protocol.MaxPayload && !utf8.Valid(b) {
		return fmt.Errorf("%w: not valid UTF-8", protocol.ErrBadPayload)
	}
	return protocol.CheckPayload(b)
}

// ingestRefusal returns the OnPublish error that refuses pk with code where the
// protocol can say so, and otherwise acknowledges and drops it.
func ingestRefusal(cl *mqtt.Client, pk packets.Packet, code packets.Code) error {
	if pk.FixedHeader.Qos > 0 && cl.Properties.ProtocolVersion == 5 {
		return code // bare Code: processPublish type-asserts it
	}
	return packets.CodeSuccessIgnore
}

// OnPublish stores a device's message in the stream and returns only when
// the stream has acknowledged it; see the file comment for refusals.
func (in *Ingest) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the server's own messages (commands), not a device's
	}
	id, kind, err := protocol.ParseTopic(pk.TopicName)
	if err != nil || id != cl.ID || !kind.Publishable() {
		in.unauthorized.Add(1)
		return pk, ingestRefusal(cl, pk, packets.ErrNotAuthorized)
	}
	if err := CheckDevicePayload(pk.Payload); err != nil {
		in.invalid.Add(1)
		in.log.Info("device payload refused", "device", id, "kind", kind, "bytes", len(pk.Payload), "err", err)
		return pk, ingestRefusal(cl, pk, packets.Code{Code: packets.ErrPayloadFormatInvalid.Code, Reason: err.Error()})
	}
	at := in.cfg.Now().UTC()
	dup, err := in.store(pk, id, kind, at)
	if err != nil {
		in.failed.Add(1)
		in.log.Error("device message not stored", "device", id, "kind", kind, "qos", pk.FixedHeader.Qos, "err", err)
		if pk.FixedHeader.Qos > 0 && cl.Properties.ProtocolVersion < 5 {
			// MQTT 3.1.1 cannot refuse a PUBLISH: withhold the PUBACK and
			// close the connection; the client resends after reconnecting.
			cl.Stop(errIngestNotStored)
			return pk, packets.ErrRejectPacket
		}
		if pk.FixedHeader.Qos == 0 {
			return pk, packets.ErrRejectPacket
		}
		return pk, packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "message not stored, send it again"}
	}
	if dup {
		in.duplicates.Add(1)
	} else {
		in.stored.Add(1)
	}
	if in.cfg.Registry != nil {
		in.seenMu.Lock()
		if last, ok := in.seen[id]; !ok || at.After(last) {
			in.seen[id] = at
		}
		in.seenMu.Unlock()
	}
	return pk, nil
}

var errIngestNotStored = errors.New("gateway: message not stored")

// store publishes the message to the stream and waits for its ack. It
// reports whether the stream already had it.
func (in *Ingest) store(pk packets.Packet, id string, kind protocol.Kind, now time.Time) (duplicate bool, err error) {
	// The header map is built with its keys already in canonical form
	// (nats.Header.Set would canonicalise each one, for every message).
	h := make(nats.Header, 6)
	h[HeaderDevice] = []string{id}
	h[HeaderNode] = in.node
	h[HeaderReceivedAt] = []string{now.Format(time.RFC3339Nano)}
	h[HeaderQoS] = qosValues[min(pk.FixedHeader.Qos, 1)]
	if pk.FixedHeader.Retain {
		h[HeaderRetain] = retainValue
	}
	msgID := ""
	if pk.FixedHeader.Qos > 0 {
		msgID = MsgID(id, pk.PacketID, pk.Payload)
		h[jetstream.MsgIDHeader] = []string{msgID}
	}
	msg := &nats.Msg{Subject: DeviceSubject(id, kind), Data: pk.Payload, Header: h}
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.StoreTimeout)
	defer cancel()
	// No Nats-Expected-Stream header: the ack names the stream that
	// stored the message, and that is checked instead, for free.
	ack, err := in.js.PublishMsg(ctx, msg)
	if err == nil && ack.Stream != bus.StreamDevice {
		err = fmt.Errorf("stored in stream %q, not %s", ack.Stream, bus.StreamDevice)
	}
	if err != nil {
		return false, err
	}
	if ack.Duplicate && !pk.FixedHeader.Dup {
		// A new message that reuses a packet id for the same bytes within
		// the window: not a redelivery, store it under a unique id.
		h[jetstream.MsgIDHeader] = []string{msgID + "-" + strconv.FormatInt(now.UnixNano(), 36)}
		if ack, err = in.js.PublishMsg(ctx, msg); err != nil {
			return false, err
		}
	}
	return ack.Duplicate, nil
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

// record queues a state message; flushStates writes the queue. A full
// batch is written at once, the rest within stateFlushEvery.
func (in *Ingest) record(ctx context.Context, m jetstream.Msg) {
	id, kind, ok := ParseDeviceSubject(m.Subject())
	if !ok || kind != protocol.State {
		m.Term()
		return
	}
	in.statesMu.Lock()
	in.pendingStates = append(in.pendingStates, pendingState{msg: m, report: fleet.StateReport{DeviceID: id, State: m.Data(), At: ingestReceivedAt(m)}})
	full := len(in.pendingStates) >= stateBatch
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

// pendingState is a state message waiting for its batch.
type pendingState struct {
	msg    jetstream.Msg
	report fleet.StateReport
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
	batch := in.pendingStates
	in.pendingStates = nil
	in.statesMu.Unlock()
	if len(batch) == 0 {
		return
	}
	reports := make([]fleet.StateReport, len(batch))
	for i, p := range batch {
		reports[i] = p.report
	}
	if err := in.cfg.Registry.RecordStates(ctx, reports); err != nil {
		in.log.Warn("last states not recorded, retrying", "states", len(batch), "err", err)
		for _, p := range batch {
			_ = p.msg.NakWithDelay(5 * time.Second)
		}
		return
	}
	for _, p := range batch {
		_ = p.msg.Ack()
	}
	in.states.Add(uint64(len(batch)))
}

// receivedAt is when the gateway received the message, or when the stream
// stored it if the header is missing.
func ingestReceivedAt(m jetstream.Msg) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, m.Headers().Get(HeaderReceivedAt)); err == nil {
		return t
	}
	if md, err := m.Metadata(); err == nil {
		return md.Timestamp
	}
	return time.Now()
}
