package gateway

// The device stream's records. The gateway stores the messages devices
// publish as records of many messages: one JetStream message, one store
// write and one ack for up to maxRecordMessages messages of one kind, from
// any devices, instead of one each (see ingest.go, "Records").
//
// A record's subject is ward.device.batch.<kind> ("batch" is no device id:
// ids are 26 base32 letters), so the consumers' filters
// ward.device.*.<kind> take records and, from earlier versions, single
// messages on ward.device.<id>.<kind> alike; DecodeStreamMsg reads both.
// Its headers are Ward-Node and Ward-Record (the format's version, "1"); its
// data is the messages one after the other, each:
//
//	uvarint  length of the device id, then the id
//	varint   received at, Unix nanoseconds
//	byte     flags: 1 QoS 1, 2 retain
//	uvarint  length of the deduplication id (0 at QoS 0), then the id
//	uvarint  length of the payload, then the payload
//
// Decoding is strict: a bad device id, a length past the end, unknown flags
// or bytes left over fail the whole record.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/protocol"
)

// DeviceMessage is one message a device published, as the stream keeps it.
type DeviceMessage struct {
	DeviceID   string
	Kind       protocol.Kind
	Node       string    // node that received it
	ReceivedAt time.Time // UTC
	QoS        byte      // 0 or 1 (2 is served as 1)
	Retain     bool
	// MsgID identifies a QoS 1 message for deduplication (MsgID, with a
	// suffix when a device reused a packet id for the same bytes); empty
	// at QoS 0. Consumers that must see a message once across nodes
	// drop a repeated id (see ingest.go, "Duplicates").
	MsgID   string
	Payload []byte
}

// HeaderRecord names the record format of a record's data.
const (
	HeaderRecord  = "Ward-Record"
	recordVersion = "1"
)

// Record limits: a record is one NATS message, well under the server's
// 1 MiB maximum payload even with a last message of protocol.MaxPayload.
const (
	maxRecordMessages = 512
	maxRecordBytes    = 256 << 10
	maxMsgIDLen       = 128
	deviceIDLen       = 26
)

const (
	flagQoS1   = 1
	flagRetain = 2
)

var recordVersionValue = []string{recordVersion}

// RecordSubject is the subject of a record of messages of kind k.
func RecordSubject(k protocol.Kind) string {
	return bus.SubjectDevicePrefix + "batch." + string(k)
}

// appendMessage appends m's encoding (without kind and node, which the
// record carries) to b.
func appendMessage[ID ~string | ~[]byte](b []byte, deviceID string, at time.Time, qos byte, retain bool, msgID ID, payload []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(deviceID)))
	b = append(b, deviceID...)
	b = binary.AppendVarint(b, at.UnixNano())
	var f byte
	if qos > 0 {
		f |= flagQoS1
	}
	if retain {
		f |= flagRetain
	}
	b = append(b, f)
	b = binary.AppendUvarint(b, uint64(len(msgID)))
	b = append(b, msgID...)
	b = binary.AppendUvarint(b, uint64(len(payload)))
	return append(b, payload...)
}

var errRecord = errors.New("gateway: malformed device record")

// DecodeStreamMsg returns the device messages of one message of the device
// stream: the messages of a record, or the single message that earlier
// versions stored on ward.device.<id>.<kind>. The payloads share data's
// memory.
func DecodeStreamMsg(subject string, h nats.Header, data []byte) ([]DeviceMessage, error) {
	if id, kind, ok := ParseDeviceSubject(subject); ok {
		m := DeviceMessage{DeviceID: id, Kind: kind, Node: h.Get(HeaderNode), Payload: data, MsgID: h.Get(nats.MsgIdHdr), Retain: h.Get(HeaderRetain) == "true"}
		if h.Get(HeaderQoS) == "1" {
			m.QoS = 1
		}
		if h.Get(HeaderDevice) != id {
			return nil, fmt.Errorf("%w: %s header %q on %s", errRecord, HeaderDevice, h.Get(HeaderDevice), subject)
		}
		at, err := time.Parse(time.RFC3339Nano, h.Get(HeaderReceivedAt))
		if err != nil {
			return nil, fmt.Errorf("%w: %s header: %v", errRecord, HeaderReceivedAt, err)
		}
		m.ReceivedAt = at.UTC()
		return []DeviceMessage{m}, nil
	}
	kind, ok := parseRecordSubject(subject)
	if !ok {
		return nil, fmt.Errorf("%w: subject %q", errRecord, subject)
	}
	if v := h.Get(HeaderRecord); v != recordVersion {
		return nil, fmt.Errorf("%w: format %q, this version reads %q", errRecord, v, recordVersion)
	}
	return decodeRecord(kind, h.Get(HeaderNode), data)
}

func parseRecordSubject(subject string) (protocol.Kind, bool) {
	for _, k := range []protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack} {
		if subject == RecordSubject(k) {
			return k, true
		}
	}
	return "", false
}

func decodeRecord(kind protocol.Kind, node string, data []byte) ([]DeviceMessage, error) {
	out := make([]DeviceMessage, 0, 8)
	for len(data) > 0 {
		if len(out) == maxRecordMessages {
			return nil, fmt.Errorf("%w: more than %d messages", errRecord, maxRecordMessages)
		}
		var m DeviceMessage
		var b []byte
		var err error
		if b, data, err = readField(data, deviceIDLen); err != nil {
			return nil, fmt.Errorf("%w: message %d: device id: %v", errRecord, len(out), err)
		}
		if m.DeviceID = string(b); !protocol.ValidDeviceID(m.DeviceID) {
			return nil, fmt.Errorf("%w: message %d: invalid device id", errRecord, len(out))
		}
		ns, n := binary.Varint(data)
		if n <= 0 {
			return nil, fmt.Errorf("%w: message %d: time", errRecord, len(out))
		}
		data = data[n:]
		m.ReceivedAt = time.Unix(0, ns).UTC()
		if len(data) == 0 {
			return nil, fmt.Errorf("%w: message %d: flags missing", errRecord, len(out))
		}
		f := data[0]
		data = data[1:]
		if f&^(flagQoS1|flagRetain) != 0 {
			return nil, fmt.Errorf("%w: message %d: unknown flags 0x%02x", errRecord, len(out), f)
		}
		if f&flagQoS1 != 0 {
			m.QoS = 1
		}
		m.Retain = f&flagRetain != 0
		if b, data, err = readField(data, maxMsgIDLen); err != nil {
			return nil, fmt.Errorf("%w: message %d: id: %v", errRecord, len(out), err)
		}
		m.MsgID = string(b)
		if (m.QoS == 1) != (m.MsgID != "") {
			return nil, fmt.Errorf("%w: message %d: QoS %d with id %q", errRecord, len(out), m.QoS, m.MsgID)
		}
		if m.Payload, data, err = readField(data, protocol.MaxPayload); err != nil {
			return nil, fmt.Errorf("%w: message %d: payload: %v", errRecord, len(out), err)
		}
		m.Kind, m.Node = kind, node
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no messages", errRecord)
	}
	return out, nil
}

// readField reads a uvarint length of at most max and that many bytes.
func readField(data []byte, max int) (field, rest []byte, err error) {
	l, n := binary.Uvarint(data)
	switch {
	case n <= 0:
		return nil, nil, errors.New("bad length")
	case l > uint64(max):
		return nil, nil, fmt.Errorf("length %d over %d", l, max)
	case l > uint64(len(data)-n):
		return nil, nil, fmt.Errorf("length %d past the end", l)
	}
	data = data[n:]
	return data[:l:l], data[l:], nil
}
