package gateway

// The MQTT side of a device connection. Each connection has one goroutine
// (serveMQTT, started by the listener after the TLS handshake) that reads
// CONNECT and answers it; it then hands the session to an event loop
// (loop.go) and ends, or, where there is none, goes on reading the
// session's packets and handling them in order. What the connection writes
// (acks, commands, DISCONNECT) goes out under the session's write lock.
// There is no broker between devices: a device publishes only to Ward
// (ingest) and subscribes only to its own cmd topic, on which only Ward
// publishes, so the gateway keeps no topic tree and no retained messages.
//
// An idle connection held by the event loop is its socket in an epoll set,
// the TLS connection and the session, with no goroutine and no buffer of
// its own: the memory a held connection costs is mostly the TLS
// connection's (bench/README.md).
//
// The packet codec is mochi-mqtt's (packets), MQTT 5 and 3.1.1.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/protocol"
)

const (
	readBufferSize = 512
	// writeTimeout bounds one write to a device: a device that does not
	// read its socket is cut off rather than holding its goroutine.
	writeTimeout = 10 * time.Second
	// maxKeepalive is the longest keepalive the gateway accepts, in seconds.
	maxKeepalive = 1200
	// maxSessionExpiry is the longest a disconnected session is kept, in
	// seconds.
	maxSessionExpiry = 3600
)

var writeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readFixedHeader reads a packet's fixed header and refuses one longer than
// the gateway's maximum packet size before reading it.
func (s *session) readFixedHeader(maxPacket int) (packets.FixedHeader, error) {
	var fh packets.FixedHeader
	b, err := s.br.ReadByte()
	if err != nil {
		return fh, err
	}
	if err := fh.Decode(b); err != nil {
		return fh, err
	}
	if fh.Remaining, _, err = packets.DecodeLength(s.br); err != nil {
		return fh, err
	}
	if fh.Remaining+1 > maxPacket {
		return fh, packets.ErrPacketTooLarge
	}
	return fh, nil
}

// packetBufs holds the buffers small PUBLISH packets are read into: a
// payload is used (stored, hashed, checked) before the next packet is read,
// and never kept.
var packetBufs = sync.Pool{New: func() any { b := make([]byte, pooledPacket); return &b }}

const pooledPacket = 2048

// readPacket reads and decodes the rest of a packet. A PUBLISH's topic and
// payload may live in a pooled buffer, pooled: hand it to releasePacket
// once the packet is handled.
func (s *session) readPacket(fh packets.FixedHeader) (pk packets.Packet, pooled *[]byte, err error) {
	pk = packets.Packet{FixedHeader: fh, ProtocolVersion: s.version}
	var buf []byte
	if fh.Type == packets.Publish && fh.Remaining <= pooledPacket {
		pooled = packetBufs.Get().(*[]byte)
		buf = (*pooled)[:fh.Remaining]
	} else {
		buf = make([]byte, fh.Remaining)
	}
	if _, err := io.ReadFull(s.br, buf); err != nil {
		return pk, pooled, err
	}
	pk, err = decodePacket(fh, s.version, buf)
	return pk, pooled, err
}

// releasePacket returns a packet's pooled buffer, if it had one.
func releasePacket(pooled *[]byte) {
	if pooled != nil {
		packetBufs.Put(pooled)
	}
}

// write encodes pk for the device and writes it. A packet larger than the
// device's maximum packet size is not sent.
func (s *session) write(pk packets.Packet) error {
	pk.ProtocolVersion = s.version
	pk.Mods.MaxSize = s.maxPacket
	buf := writeBufs.Get().(*bytes.Buffer)
	defer writeBufs.Put(buf)
	buf.Reset()
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Puback:
		err = pk.PubackEncode(buf)
	case packets.Suback:
		err = pk.SubackEncode(buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	default:
		err = fmt.Errorf("gateway: no encoder for packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	if s.maxPacket > 0 && uint32(buf.Len()) > s.maxPacket {
		return packets.ErrPacketTooLarge
	}
	return s.writeRaw(buf.Bytes())
}

// writeRaw writes an encoded packet. The write deadline is moved at most
// once a second (moving it is a timer update): a write may so have between
// writeTimeout - 1 s and writeTimeout.
func (s *session) writeRaw(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.writeLocked(b)
}

// writePuback writes a success PUBACK, the common case, without the
// general encoder: it is the same 4 bytes in MQTT 3.1.1 and 5.
func (s *session) writePuback(packetID uint16) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.pubackBuf = [4]byte{packets.Puback << 4, 2, byte(packetID >> 8), byte(packetID)}
	return s.writeLocked(s.pubackBuf[:])
}

// writeLocked is writeRaw for a caller that holds wmu.
func (s *session) writeLocked(b []byte) error {
	if s.kicked.Load() {
		return net.ErrClosed // a DISCONNECT is the last packet, and may be out already
	}
	if !s.rc.isPolled() { // a polled socket's writes never block
		if now := time.Now(); now.Sub(s.wdeadlineSet) > time.Second {
			_ = s.conn.SetWriteDeadline(now.Add(writeTimeout))
			s.wdeadlineSet = now
		}
	}
	_, err := s.conn.Write(b)
	return err
}

// ack builds an acknowledgement packet; a refusal carries its reason.
func ack(typ byte, packetID uint16, code packets.Code) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: packetID, ReasonCode: code.Code}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		pk.Properties.ReasonString = code.Reason
	}
	return pk
}

// disconnect sends an MQTT 5 DISCONNECT with code (3.1.1 has none: the
// connection is just closed by the caller).
func (s *session) disconnect(code packets.Code) {
	if s.version < 5 {
		return
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: code.Code}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		pk.Properties.ReasonString = code.Reason
	}
	_ = s.write(pk)
}

// serveMQTT runs the connection's MQTT session until it ends, and returns
// why: nil for a DISCONNECT from the device.
func (g *Gateway) serveMQTT(s *session) error {
	s.br = bufio.NewReaderSize(s.conn, readBufferSize)
	maxPacket := g.lim.MaxPayload + 4096
	// CONNECT must come within the handshake timeout.
	_ = s.conn.SetReadDeadline(g.now().Add(g.lim.HandshakeTimeout))
	fh, err := s.readFixedHeader(maxPacket)
	if err != nil {
		return err
	}
	if fh.Type != packets.Connect {
		return packets.ErrProtocolViolationRequireFirstConnect
	}
	pk, _, err := s.readPacket(fh)
	if err != nil {
		return err
	}
	if err := g.connect(s, pk); err != nil {
		return err
	}
	if err := g.handoff(s); err != nil {
		return err // errHandedOff: a poller serves it now
	}
	// The read deadline is 1.5 × keepalive after the last packet, moved
	// at most once a second or a quarter of it (moving it is a timer
	// update).
	keep := time.Duration(s.keepalive) * time.Second * 3 / 2
	every := min(time.Second, keep/4)
	var moved time.Time
	for {
		if now := time.Now(); now.Sub(moved) > every {
			_ = s.conn.SetReadDeadline(now.Add(keep))
			moved = now
		}
		fh, err := s.readFixedHeader(maxPacket)
		s.now = g.now()
		if err == nil {
			var pooled *[]byte
			pk, pooled, err = s.readPacket(fh)
			if err == nil {
				err = g.handle(s, pk)
			}
			releasePacket(pooled)
		}
		if err != nil {
			if errors.Is(err, errClientDisconnect) {
				return nil
			}
			var code packets.Code
			var ne net.Error
			switch {
			case errors.As(err, &code) && code.Code >= packets.ErrUnspecifiedError.Code:
				s.disconnect(code)
			case errors.As(err, &ne) && ne.Timeout() && s.end() == "":
				s.disconnect(packets.ErrKeepAliveTimeout)
			}
			return err
		}
	}
}

var errClientDisconnect = errors.New("gateway: DISCONNECT from the device")

// connect checks a CONNECT against the certificate and the registry and
// answers it. A refusal sends its CONNACK and returns an error, which ends
// the connection.
func (g *Gateway) connect(s *session, pk packets.Packet) error {
	s.mu.Lock()
	s.version = pk.ProtocolVersion
	s.mqttVersion = pk.ProtocolVersion
	for _, u := range pk.Properties.User {
		if u.Key == "software_version" {
			s.clientVersion = strings.Clone(clip(u.Val, 128)) // not the CONNECT buffer
		}
	}
	s.mu.Unlock()
	if code := pk.ConnectValidate(); code != packets.CodeSuccess {
		return g.deny(s, code, ReasonProtocolError, "invalid CONNECT: "+code.Reason)
	}
	if pk.ProtocolVersion < 4 {
		return g.deny(s, packets.ErrUnsupportedProtocolVersion, ReasonProtocolError, "MQTT 3.1 is not supported")
	}
	if pk.Connect.ClientIdentifier != s.deviceID {
		g.violation(s.deviceID, hostOf(s.remote), ViolationClientID, "client id differs from the certificate")
		return g.deny(s, packets.ErrClientIdentifierNotValid, ReasonRefusedClientID, "client id differs from the certificate's device id")
	}
	if pk.Connect.WillFlag {
		g.violation(s.deviceID, hostOf(s.remote), ViolationWill, "will message")
		return g.deny(s, packets.ErrNotAuthorized, ReasonRefusedAuth, "will messages are not supported")
	}
	switch s.lastOrder() {
	case fleet.Revoked, fleet.Decommissioned:
		return g.deny(s, packets.ErrBanned, ReasonRevoked, "device revoked")
	}
	state, err := s.admitted, s.admitErr // looked up by the listener after the handshake
	switch {
	case err == nil:
	case errors.Is(err, fleet.ErrState) && (g.cfg.Fleet.IsRevoked(s.serial) || state == fleet.Revoked || state == fleet.Decommissioned):
		return g.deny(s, packets.ErrBanned, ReasonRevoked, "device "+string(cmpOr(state, fleet.Revoked)))
	case errors.Is(err, fleet.ErrState):
		return g.deny(s, packets.ErrNotAuthorized, ReasonRefusedAuth, "device is "+string(state))
	case errors.Is(err, fleet.ErrNotFound):
		return g.deny(s, packets.ErrNotAuthorized, ReasonRefusedAuth, "unknown device")
	default:
		g.log.Error("gateway: check device", "device", s.deviceID, "err", err)
		return g.deny(s, packets.ErrServerUnavailable, ReasonRefusedAuth, "registry unavailable")
	}
	// An order that arrived while we read the registry is newer.
	switch s.lastOrder() {
	case fleet.Quarantined:
		s.quarantined.Store(true)
	case fleet.Active:
		s.quarantined.Store(false)
	case fleet.Revoked, fleet.Decommissioned:
		return g.deny(s, packets.ErrBanned, ReasonRevoked, "device revoked")
	default:
		s.quarantined.Store(state == fleet.Quarantined)
	}

	var props packets.Properties
	props.ReceiveMaximum = uint16(g.lim.MaxInflight)
	props.MaximumQos, props.MaximumQosFlag = 1, true
	// Wildcard and shared subscriptions, subscription ids and the
	// maximum packet size are not announced: a device that tries one is
	// refused by the gateway, which records it, rather than by its own
	// client library, which would hide it.
	// A keepalive of 0 (never) or above maxKeepalive would let an idle
	// connection hold a slot for ever: the server sets maxKeepalive (MQTT 5
	// clients are told in CONNACK; 3.1.1 ones are cut after 1.5 × it).
	s.keepalive = pk.Connect.Keepalive
	if s.keepalive == 0 || s.keepalive > maxKeepalive {
		s.keepalive = maxKeepalive
		props.ServerKeepAlive, props.ServerKeepAliveFlag = maxKeepalive, true
	}
	s.expiry = 0
	switch {
	case pk.ProtocolVersion == 5:
		s.expiry = pk.Properties.SessionExpiryInterval
		if s.expiry > maxSessionExpiry {
			s.expiry = maxSessionExpiry
			props.SessionExpiryInterval, props.SessionExpiryIntervalFlag = maxSessionExpiry, true
		}
	case !pk.Connect.Clean:
		s.expiry = maxSessionExpiry // 3.1.1 sessions have no expiry of their own
	}
	s.sendQuota = int(g.lim.MaxInflight)
	if pk.ProtocolVersion == 5 {
		if rm := pk.Properties.ReceiveMaximum; rm > 0 && int(rm) < s.sendQuota {
			s.sendQuota = int(rm)
		}
		s.maxPacket = pk.Properties.MaximumPacketSize
	}
	s.mu.Lock()
	s.msgLim = rate.NewLimiter(rate.Limit(g.lim.MsgRate), g.lim.MsgBurst)
	if g.lim.MsgRate < 0 {
		s.msgLim = rate.NewLimiter(rate.Inf, 0)
	}
	s.mu.Unlock()
	s.phase.Store(phaseAdmitted)

	// Another connection of the device on this node is taken over; its
	// session continues on this one unless the device asked for a clean
	// start.
	var inherited byte
	for _, o := range g.sessionsOf(s.deviceID) {
		if o != s && o.phase.Load() >= phaseAdmitted {
			o.omu.Lock()
			inherited = max(inherited, o.sub)
			o.omu.Unlock()
			g.kick(o, ReasonTakenOver, packets.ErrSessionTakenOver)
		}
	}
	present := false
	if pk.Connect.Clean {
		g.forgetSession(s.deviceID)
	} else if q, ok := g.resumeSession(s.deviceID); ok || inherited != 0 {
		present = true
		s.omu.Lock()
		s.sub = max(q, inherited)
		s.omu.Unlock()
	}

	c := s.row()
	c.Node, c.ConnectedAt = g.cfg.Node, g.now().UTC()
	g.hist.opened(&c)
	s.mu.Lock()
	s.rowID, s.connectedAt = c.ID, c.ConnectedAt
	s.mu.Unlock()
	s.phase.Store(phaseOpen)
	g.stats.connected.Add(1)
	connack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, SessionPresent: present, Properties: props}
	if err := s.write(connack); err != nil {
		return err
	}
	if g.cmds != nil {
		g.cmds.sessionUp(s)
	}
	// A revocation that came while we were connecting.
	if s.end() != "" || s.lastOrder() == fleet.Revoked || s.lastOrder() == fleet.Decommissioned {
		g.kick(s, ReasonRevoked, packets.ErrBanned)
	}
	return nil
}

func cmpOr(s, def fleet.State) fleet.State {
	if s == "" {
		return def
	}
	return s
}

// deny refuses a CONNECT with code and records it.
func (g *Gateway) deny(s *session, code packets.Code, reason, detail string) error {
	send := code
	if s.version < 5 {
		// MQTT 3.1.1 has return codes 1 to 5 only.
		if v3, ok := packets.V5CodesToV3[code]; ok {
			send = v3
		} else {
			send = packets.Err3NotAuthorized
		}
	}
	_ = s.write(ack(packets.Connack, 0, send))
	s.phase.Store(phaseRefused)
	g.refuse(refusal{conn: s.row(), reason: reason, detail: detail, flood: true})
	return code
}

// closed ends an established session: its subscription is kept if the
// device asked for a session that outlives the connection.
func (g *Gateway) closed(s *session) {
	if g.cmds != nil {
		g.cmds.sessionDown(s)
	}
	s.omu.Lock()
	sub := s.sub
	s.inflight = nil
	s.omu.Unlock()
	if s.expiry > 0 && sub != 0 && s.end() != ReasonTakenOver {
		g.keepSession(s.deviceID, sub, time.Duration(s.expiry)*time.Second)
	}
}

// handle handles one packet of an established session.
func (g *Gateway) handle(s *session, pk packets.Packet) error {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return g.publish(s, pk)
	case packets.Puback:
		s.omu.Lock()
		_, ok := s.inflight[pk.PacketID]
		delete(s.inflight, pk.PacketID)
		s.omu.Unlock()
		if ok && g.cmds != nil {
			g.cmds.acked(s, pk)
		}
		return nil
	case packets.Subscribe:
		return g.subscribe(s, pk)
	case packets.Unsubscribe:
		return g.unsubscribe(s, pk)
	case packets.Pingreq:
		return s.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}})
	case packets.Disconnect:
		if pk.Properties.SessionExpiryIntervalFlag {
			if pk.Properties.SessionExpiryInterval > 0 && s.expiry == 0 {
				return packets.ErrProtocolViolationZeroNonZeroExpiry
			}
			s.expiry = min(pk.Properties.SessionExpiryInterval, maxSessionExpiry)
		}
		return errClientDisconnect
	case packets.Connect:
		return packets.ErrProtocolViolationSecondConnect
	default: // AUTH: no enhanced authentication
		return packets.ErrProtocolViolation
	}
}

// publish takes a device's PUBLISH: the topic policy, retain, size and
// rate, then ingest. A refusal is a PUBACK with its reason for MQTT 5 at
// QoS 1; MQTT 3.1.1 cannot refuse, so a foreign topic closes its
// connection and other refusals drop the message.
func (g *Gateway) publish(s *session, pk packets.Packet) error {
	if s.version == 5 {
		if code := pk.PublishValidate(0); code != packets.CodeSuccess {
			return code // topic aliases are not offered
		}
	}
	if pk.FixedHeader.Qos > 1 {
		if s.version == 5 {
			return packets.ErrQosNotSupported // the CONNACK said 1
		}
		pk.FixedHeader.Qos = 1 // 3.1.1: served as QoS 1
	}
	d, kind := authorize(s.deviceID, s.quarantined.Load(), pk.TopicName, true)
	if d != allow {
		s.refusals.Add(1)
		g.violation(s.deviceID, hostOf(s.remote), ViolationACLPublish, d.String()+": "+clip(pk.TopicName, 200))
		switch {
		case pk.FixedHeader.Qos == 0:
			return nil
		case s.version < 5:
			return packets.ErrNotAuthorized
		}
		return g.answer(s, pk.PacketID, packets.ErrNotAuthorized)
	}
	if pk.FixedHeader.Retain {
		if kind != protocol.State {
			return g.refusePublish(s, pk, packets.ErrRetainNotSupported, ViolationRetain, "retained message on "+clip(pk.TopicName, 200))
		}
	}
	if len(pk.Payload) > g.lim.MaxPayload {
		return g.refusePublish(s, pk, packets.ErrPacketTooLarge, ViolationPayloadSize, "payload too large")
	}
	s.mu.Lock()
	lim := s.msgLim
	s.mu.Unlock()
	if lim != nil && !lim.AllowN(s.now, 1) {
		if n := s.overRate.Add(1); n > int64(g.lim.MsgBurst) {
			// Still flooding after a whole burst of refusals: cut it off.
			g.kick(s, ReasonRateLimit, packets.ErrMessageRateTooHigh)
		}
		return g.refusePublish(s, pk, packets.ErrMessageRateTooHigh, ViolationMsgRate, "message rate too high")
	}
	s.overRate.Store(0)
	if s.polled {
		return g.publishAsync(s, pk, kind)
	}
	code := packets.CodeSuccess
	if g.ingest != nil { // without ingest (tests), a message is taken and dropped
		var err error
		if code, err = g.ingest.Publish(s.deviceID, kind, s.version, pk); err != nil {
			return err
		}
	}
	switch {
	case pk.FixedHeader.Qos == 0:
		return nil
	case code.Code < packets.ErrUnspecifiedError.Code:
		return s.writePuback(pk.PacketID)
	}
	return s.write(ack(packets.Puback, pk.PacketID, code))
}

// refusePublish counts and records a refused PUBLISH and, for MQTT 5 at
// QoS 1, answers it with code; MQTT 3.1.1 cannot refuse, so the message is
// dropped.
func (g *Gateway) refusePublish(s *session, pk packets.Packet, code packets.Code, kind, detail string) error {
	s.refusals.Add(1)
	g.violation(s.deviceID, hostOf(s.remote), kind, detail)
	if s.version == 5 && pk.FixedHeader.Qos > 0 {
		return g.answer(s, pk.PacketID, code)
	}
	return nil
}

// answer answers a PUBLISH at once: in its place among the PUBACKs that
// wait for their store when a poller serves the session.
func (g *Gateway) answer(s *session, packetID uint16, code packets.Code) error {
	if !s.polled {
		return s.write(ack(packets.Puback, packetID, code))
	}
	a, err := g.queueAck(s, packetID)
	if err != nil {
		return err
	}
	a.Stored(code, nil)
	return nil
}

// publishAsync hands an authorised message to ingest without waiting: its
// PUBACK follows when it is stored (loop.go).
func (g *Gateway) publishAsync(s *session, pk packets.Packet, kind protocol.Kind) error {
	var w StoreWaiter = noAck{}
	if pk.FixedHeader.Qos > 0 {
		a, err := g.queueAck(s, pk.PacketID)
		if err != nil {
			return err
		}
		w = a
	}
	if g.ingest == nil { // without ingest (tests), a message is taken and dropped
		w.Stored(packets.CodeSuccess, nil)
		return nil
	}
	g.ingest.PublishAsync(s.deviceID, kind, s.version, s.now, pk, w)
	return nil
}

// subscribe grants the device's own cmd topic and refuses every other
// filter.
func (g *Gateway) subscribe(s *session, pk packets.Packet) error {
	if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	codes := make([]byte, len(pk.Filters))
	granted := false
	for i, f := range pk.Filters {
		d, _ := authorize(s.deviceID, s.quarantined.Load(), f.Filter, false)
		if d != allow || len(f.ShareName) > 0 {
			s.refusals.Add(1)
			g.violation(s.deviceID, hostOf(s.remote), ViolationACLSubscribe, d.String()+": "+clip(f.Filter, 200))
			codes[i] = packets.ErrNotAuthorized.Code
			if s.version < 5 {
				codes[i] = packets.ErrUnspecifiedError.Code // 0x80, 3.1.1's only failure
			}
			continue
		}
		q := min(f.Qos, 1)
		s.omu.Lock()
		s.sub = 1 + q
		s.omu.Unlock()
		codes[i], granted = q, true
	}
	if err := s.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: pk.PacketID, ReasonCodes: codes}); err != nil {
		return err
	}
	if granted && g.cmds != nil {
		g.cmds.subscribed(s)
	}
	return nil
}

func (g *Gateway) unsubscribe(s *session, pk packets.Packet) error {
	if code := pk.UnsubscribeValidate(); code != packets.CodeSuccess {
		return code
	}
	own := protocol.Topic(s.deviceID, protocol.Cmd)
	codes := make([]byte, len(pk.Filters))
	s.omu.Lock()
	for i, f := range pk.Filters {
		if f.Filter == own && s.sub != 0 {
			s.sub = 0
			continue
		}
		codes[i] = packets.CodeNoSubscriptionExisted.Code
	}
	s.omu.Unlock()
	return s.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback}, PacketID: pk.PacketID, ReasonCodes: codes})
}

// send publishes payload on the device's cmd topic if the session is
// subscribed to it, at QoS min(qos, granted). bind runs with the packet id
// before the PUBLISH is written, so the device's PUBACK always finds it. A
// QoS 1 message the session has no room for (its inflight window is full)
// is not sent: taken reports whether it was.
func (s *session) send(payload []byte, qos byte, bind func(packetID uint16)) (taken bool, err error) {
	if s.phase.Load() != phaseOpen {
		return false, nil
	}
	s.omu.Lock()
	if s.sub == 0 {
		s.omu.Unlock()
		return false, nil
	}
	qos = min(qos, s.sub-1)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName: protocol.Topic(s.deviceID, protocol.Cmd), Payload: payload}
	if qos > 0 {
		if len(s.inflight) >= s.sendQuota {
			s.omu.Unlock()
			return false, nil
		}
		if s.inflight == nil {
			s.inflight = map[uint16]struct{}{}
		}
		for {
			s.nextID++
			if s.nextID == 0 {
				s.nextID = 1
			}
			if _, used := s.inflight[s.nextID]; !used {
				break
			}
		}
		pk.PacketID = s.nextID
		s.inflight[pk.PacketID] = struct{}{}
		if bind != nil {
			bind(pk.PacketID)
		}
	}
	s.omu.Unlock()
	if err := s.write(pk); err != nil {
		s.omu.Lock()
		delete(s.inflight, pk.PacketID)
		s.omu.Unlock()
		return false, err
	}
	return true, nil
}

// subscribedToCmd reports whether the session is subscribed to its cmd
// topic.
func (s *session) subscribedToCmd() bool {
	s.omu.Lock()
	defer s.omu.Unlock()
	return s.sub != 0
}

// ---- sessions that outlive their connection

// persisted is what a disconnected session keeps: its cmd subscription.
type persisted struct {
	sub     byte // 1 + granted QoS
	expires time.Time
}

func (g *Gateway) keepSession(deviceID string, sub byte, d time.Duration) {
	g.pmu.Lock()
	defer g.pmu.Unlock()
	now := g.now()
	if len(g.persisted) > 0 && now.Sub(g.pswept) > time.Minute {
		for id, p := range g.persisted {
			if now.After(p.expires) {
				delete(g.persisted, id)
			}
		}
		g.pswept = now
	}
	g.persisted[deviceID] = persisted{sub: sub, expires: now.Add(d)}
}

func (g *Gateway) resumeSession(deviceID string) (byte, bool) {
	g.pmu.Lock()
	defer g.pmu.Unlock()
	p, ok := g.persisted[deviceID]
	delete(g.persisted, deviceID)
	if !ok || g.now().After(p.expires) {
		return 0, false
	}
	return p.sub, true
}

func (g *Gateway) forgetSession(deviceID string) {
	g.pmu.Lock()
	delete(g.persisted, deviceID)
	g.pmu.Unlock()
}
