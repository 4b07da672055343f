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
// Ingest.Run consumes the stream with the durable consumer "ward-registry"
// and updates the registry, never in the publish path: a state message
// becomes the device's last known state (fleet.Registry.RecordState), any
// message moves last_seen_at forward at most once per SeenInterval per
// device. It acks a message after the UPDATE, so a database outage delays
// these columns and loses nothing.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
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

// Headers of a device message in the stream, besides Nats-Msg-Id.
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
	// SeenInterval coalesces last_seen_at updates (default 1 minute).
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
	js  jetstream.JetStream
	cfg IngestConfig
	log *slog.Logger

	stored, duplicates, invalid, unauthorized, failed, states atomic.Uint64
	seen                                                      ingestSeen // used by Run only
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
	in := &Ingest{js: cfg.JetStream, cfg: cfg, log: cfg.Logger}
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
	dup, err := in.store(cl, pk, id, kind)
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
	return pk, nil
}

var errIngestNotStored = errors.New("gateway: message not stored")

// store publishes the message to the stream and waits for its ack. It
// reports whether the stream already had it.
func (in *Ingest) store(cl *mqtt.Client, pk packets.Packet, id string, kind protocol.Kind) (duplicate bool, err error) {
	now := in.cfg.Now().UTC()
	msg := &nats.Msg{Subject: DeviceSubject(id, kind), Data: pk.Payload, Header: nats.Header{}}
	msg.Header.Set(HeaderDevice, id)
	msg.Header.Set(HeaderNode, in.cfg.Node)
	msg.Header.Set(HeaderReceivedAt, now.Format(time.RFC3339Nano))
	msg.Header.Set(HeaderQoS, strconv.Itoa(int(pk.FixedHeader.Qos)))
	if pk.FixedHeader.Retain {
		msg.Header.Set(HeaderRetain, "true")
	}
	msgID := ""
	if pk.FixedHeader.Qos > 0 {
		msgID = MsgID(id, pk.PacketID, pk.Payload)
		msg.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.StoreTimeout)
	defer cancel()
	ack, err := in.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(bus.StreamDevice))
	if err != nil {
		return false, err
	}
	if ack.Duplicate && !pk.FixedHeader.Dup {
		// A new message that reuses a packet id for the same bytes within
		// the window: not a redelivery, store it under a unique id.
		msg.Header.Set(jetstream.MsgIDHeader, msgID+"-"+strconv.FormatInt(now.UnixNano(), 36))
		if ack, err = in.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(bus.StreamDevice)); err != nil {
			return false, err
		}
	}
	return ack.Duplicate, nil
}

// Run keeps the registry's last known state and last seen from the stream
// until ctx ends. Several nodes share the durable consumer.
func (in *Ingest) Run(ctx context.Context) error {
	if in.cfg.Registry == nil {
		return nil
	}
	cons, err := in.js.CreateOrUpdateConsumer(ctx, bus.StreamDevice, jetstream.ConsumerConfig{
		Durable:       ConsumerRegistry,
		Description:   "Ward: last known state and last seen of devices",
		FilterSubject: bus.SubjectDevicePrefix + ">",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 4096,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("gateway: registry consumer: %w", err)
	}
	return consumeStream(ctx, cons, in.log, in.record)
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

// seen holds, per device, the last last_seen_at written, to coalesce.
type ingestSeen map[string]time.Time

func (in *Ingest) record(ctx context.Context, m jetstream.Msg) {
	id, kind, ok := ParseDeviceSubject(m.Subject())
	if !ok {
		m.Term()
		return
	}
	at := ingestReceivedAt(m)
	if in.seen == nil {
		in.seen = ingestSeen{}
	}
	if last, ok := in.seen[id]; !ok || at.Sub(last) >= in.cfg.SeenInterval {
		if err := in.cfg.Registry.RecordSeen(ctx, id, at); err != nil {
			in.log.Warn("last seen not recorded", "device", id, "err", err)
		} else {
			in.seen[id] = at
		}
	}
	if kind == protocol.State {
		if err := in.cfg.Registry.RecordState(ctx, id, m.Data(), at); err != nil {
			in.log.Warn("last state not recorded, retrying", "device", id, "err", err)
			m.NakWithDelay(5 * time.Second)
			return
		}
		in.states.Add(1)
	}
	m.Ack()
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
