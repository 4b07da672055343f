package gateway

import (
	"bytes"
	"errors"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/protocol"
)

// hook is the gateway inside mochi: it decides authentication and
// authorisation, enforces message limits and follows each session's life.
// It is the first hook; the MQTT reason codes are chosen here and only here.
type hook struct {
	mqtt.HookBase
	g *Gateway
}

func (h *hook) ID() string { return "ward-gateway" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablished,
		mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnPacketRead,
	}, []byte{b})
}

// refusedTopic stands in for a publish topic mochi would drop without a
// word ($SYS/…, wildcards): our ACL refuses it like any other foreign
// topic, so the device gets its PUBACK 0x87 (MQTT 5) or is disconnected
// (3.1.1), as for every other topic it may not use.
const refusedTopic = "ward/refused"

// OnPacketRead sends publishes to topics mochi ignores silently through
// the ordinary refusal.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || pk.TopicName == "" || mqtt.IsValidFilter(pk.TopicName, true) {
		return pk, nil
	}
	if s := h.g.sessionOf(cl); s != nil {
		s.refusals.Add(1)
		h.g.violation(s.deviceID, hostOf(s.remote), ViolationACLPublish, denyForeign.String()+": "+clip(pk.TopicName, 200))
	}
	pk.TopicName = refusedTopic
	return pk, nil
}

// OnConnect checks the CONNECT against the certificate and the registry.
// A refusal sends its own CONNACK (mochi's would always say 0x86) and
// returns an error, which ends the connection.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	g := h.g
	s := g.sessionOf(cl)
	if s == nil { // not from our listener: never
		return h.deny(cl, nil, packets.ErrNotAuthorized, ReasonRefusedAuth, "unknown connection")
	}
	s.mu.Lock()
	s.client = cl
	s.mqttVersion = pk.ProtocolVersion
	for _, u := range pk.Properties.User {
		if u.Key == "software_version" {
			s.clientVersion = clip(u.Val, 128)
		}
	}
	s.mu.Unlock()

	if pk.Connect.ClientIdentifier != s.deviceID {
		g.violation(s.deviceID, hostOf(s.remote), ViolationClientID, "client id differs from the certificate")
		return h.deny(cl, s, packets.ErrClientIdentifierNotValid, ReasonRefusedClientID, "client id differs from the certificate's device id")
	}
	if pk.Connect.WillFlag {
		g.violation(s.deviceID, hostOf(s.remote), ViolationWill, "will message")
		return h.deny(cl, s, packets.ErrNotAuthorized, ReasonRefusedAuth, "will messages are not supported")
	}
	switch s.lastOrder() {
	case fleet.Revoked, fleet.Decommissioned:
		return h.deny(cl, s, packets.ErrBanned, ReasonRevoked, "device revoked")
	}
	state, err := s.admitted, s.admitErr // looked up by the listener after the handshake
	switch {
	case err == nil:
	case errors.Is(err, fleet.ErrState) && (g.cfg.Fleet.IsRevoked(s.serial) || state == fleet.Revoked || state == fleet.Decommissioned):
		return h.deny(cl, s, packets.ErrBanned, ReasonRevoked, "device "+string(cmpOr(state, fleet.Revoked)))
	case errors.Is(err, fleet.ErrState):
		return h.deny(cl, s, packets.ErrNotAuthorized, ReasonRefusedAuth, "device is "+string(state))
	case errors.Is(err, fleet.ErrNotFound):
		return h.deny(cl, s, packets.ErrNotAuthorized, ReasonRefusedAuth, "unknown device")
	default:
		g.log.Error("gateway: check device", "device", s.deviceID, "err", err)
		return h.deny(cl, s, packets.ErrServerUnavailable, ReasonRefusedAuth, "registry unavailable")
	}
	// An order that arrived while we read the registry is newer.
	switch s.lastOrder() {
	case fleet.Quarantined:
		s.quarantined.Store(true)
	case fleet.Active:
		s.quarantined.Store(false)
	case fleet.Revoked, fleet.Decommissioned:
		return h.deny(cl, s, packets.ErrBanned, ReasonRevoked, "device revoked")
	default:
		s.quarantined.Store(state == fleet.Quarantined)
	}
	// A keepalive of 0 (never) or above maxKeepalive would let an idle
	// connection hold a slot for ever: the server sets maxKeepalive (MQTT 5
	// clients are told in CONNACK; 3.1.1 ones are cut after 1.5 × it).
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKeepalive {
		cl.State.Keepalive, cl.State.ServerKeepalive = maxKeepalive, true
	}
	s.mu.Lock()
	s.msgLim = rate.NewLimiter(rate.Limit(g.lim.MsgRate), g.lim.MsgBurst)
	if g.lim.MsgRate < 0 {
		s.msgLim = rate.NewLimiter(rate.Inf, 0)
	}
	s.mu.Unlock()
	s.phase.Store(phaseAdmitted)
	return nil
}

// maxKeepalive is the longest keepalive the gateway accepts, in seconds.
const maxKeepalive = 1200

func cmpOr(s, def fleet.State) fleet.State {
	if s == "" {
		return def
	}
	return s
}

// deny refuses a CONNECT with code and records it.
func (h *hook) deny(cl *mqtt.Client, s *session, code packets.Code, reason, detail string) error {
	g := h.g
	send := code
	if cl.Properties.ProtocolVersion < 5 {
		// MQTT 3.1.1 has return codes 1 to 5 only; mochi maps these two.
		if code != packets.ErrClientIdentifierNotValid && code != packets.ErrServerUnavailable {
			send = packets.ErrBadUsernameOrPassword // → 0x05 not authorized
		}
	}
	_ = g.mq.SendConnack(cl, send, false, nil)
	if s != nil {
		s.phase.Store(phaseRefused)
		g.refuse(refusal{conn: s.row(), reason: reason, detail: detail, flood: true})
	}
	return code
}

// OnConnectAuthenticate grants what OnConnect admitted.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	s := h.g.sessionOf(cl)
	return s != nil && s.phase.Load() == phaseAdmitted
}

// OnSessionEstablished opens the history row.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	g := h.g
	s := g.sessionOf(cl)
	if s == nil {
		return
	}
	c := s.row()
	c.Node, c.ConnectedAt = g.cfg.Node, g.now().UTC()
	g.hist.opened(&c)
	s.mu.Lock()
	s.rowID, s.connectedAt = c.ID, c.ConnectedAt
	s.mu.Unlock()
	s.phase.Store(phaseOpen)
	g.stats.connected.Add(1)
	if s.quarantined.Load() {
		g.dropSubscriptions(s) // a resumed session may hold some
	}
	// A revocation that came while we were connecting.
	if s.end() != "" || s.lastOrder() == fleet.Revoked || s.lastOrder() == fleet.Decommissioned {
		g.kick(s, ReasonRevoked, packets.ErrBanned)
	}
}

// OnACLCheck applies the topic policy to a publish (write) or a
// subscription and each delivery (!write).
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	g := h.g
	s := g.sessionOf(cl)
	if s == nil || s.phase.Load() < phaseAdmitted {
		return false
	}
	d := authorize(s.deviceID, s.quarantined.Load(), topic, write)
	if d == allow {
		return true
	}
	if topic == refusedTopic && write {
		return false // counted in OnPacketRead
	}
	s.refusals.Add(1)
	kind := ViolationACLSubscribe
	if write {
		kind = ViolationACLPublish
	}
	g.violation(s.deviceID, hostOf(s.remote), kind, d.String()+": "+clip(topic, 200))
	return false
}

// OnPublish enforces retain, size and rate after the ACL. A refusal is a
// PUBACK with its reason for MQTT 5 at QoS 1, and a silent drop otherwise
// (MQTT 3.1.1 has no negative acknowledgement); hooks after ours do not
// see a refused message.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	g := h.g
	if cl.Net.Inline { // Ward's own Publish
		return pk, nil
	}
	s := g.sessionOf(cl)
	if s == nil {
		return pk, packets.ErrRejectPacket
	}
	refuse := func(code packets.Code, kind, detail string) (packets.Packet, error) {
		s.refusals.Add(1)
		g.violation(s.deviceID, hostOf(s.remote), kind, detail)
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return pk, code
		}
		return pk, packets.ErrRejectPacket
	}
	if pk.FixedHeader.Retain {
		if _, k, err := protocol.ParseTopic(pk.TopicName); err != nil || k != protocol.State {
			return refuse(packets.ErrRetainNotSupported, ViolationRetain, "retained message on "+clip(pk.TopicName, 200))
		}
	}
	if len(pk.Payload) > g.lim.MaxPayload {
		return refuse(packets.ErrPacketTooLarge, ViolationPayloadSize, "payload too large")
	}
	s.mu.Lock()
	lim := s.msgLim
	s.mu.Unlock()
	if lim != nil && !lim.AllowN(g.now(), 1) {
		if n := s.overRate.Add(1); n > int64(g.lim.MsgBurst) {
			// Still flooding after a whole burst of refusals: cut it off.
			g.kick(s, ReasonRateLimit, packets.ErrMessageRateTooHigh)
		}
		return refuse(packets.ErrMessageRateTooHigh, ViolationMsgRate, "message rate too high")
	}
	s.overRate.Store(0)
	return pk, nil
}
