package agent

// The MQTT session (docs/device-protocol.md §7).

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/wardhq/ward/protocol"
)

// MQTT 5 reason codes the agent acts on.
const (
	rcNotAuthorized      = 0x87
	rcBanned             = 0x8A
	rcPacketTooLarge     = 0x95
	rcPayloadFormat      = 0x99
	rcTopicNameInvalid   = 0x90
	rcRetainNotSupported = 0x9A
	rcQoSNotSupported    = 0x9B
)

// receiveMaximum is the agent's MQTT 5 Receive Maximum: commands Ward may
// send before the agent acknowledged them.
const receiveMaximum = 16

// maxAcks bounds the answers to commands waiting to be published.
const maxAcks = 64

// pubResult is how Ward answered one publish.
type pubResult int

const (
	pubOK      pubResult = iota
	pubRefused           // refused for now: keep it, retry later
	pubPoison            // can never succeed: drop it
)

// session connects with the operational chain op and serves until the
// connection ends, the certificate must change, or ctx ends. It returns how
// long the session was up and why it ended.
func (a *Agent) session(ctx context.Context, op []*x509.Certificate, cmds chan<- []byte) (time.Duration, error) {
	key, err := a.cfg.Keys.Signer()
	if err != nil {
		return 0, err
	}
	id := a.DeviceID()
	cert := tlsCert(op, key)

	dctx, cancel := context.WithTimeout(ctx, a.cfg.PacketTimeout)
	defer cancel()
	raw, err := a.dialContext(dctx, "tcp", a.cfg.MQTT)
	if err != nil {
		return 0, fmt.Errorf("mqtt: dial: %w", err)
	}
	tc := tls.Client(raw, a.tlsConfig(a.cfg.MQTT, &cert))
	if err := tc.HandshakeContext(dctx); err != nil {
		raw.Close()
		if badCertificate(err) {
			return 0, fmt.Errorf("mqtt: %w", errCertRefused)
		}
		return 0, fmt.Errorf("mqtt: tls: %w", err)
	}

	sessCtx, stop := context.WithCancel(ctx)
	defer stop()
	serverGone := make(chan *paho.Disconnect, 1)
	c := paho.NewClient(paho.ClientConfig{
		ClientID:      id,
		Conn:          NewPacketConn(tc), // one write, one TLS record, per packet
		PacketTimeout: a.cfg.PacketTimeout,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if pr.Packet == nil || pr.Packet.Topic != protocol.Topic(id, protocol.Cmd) {
				return true, nil
			}
			// Block (backpressure) until the worker takes it: the
			// PUBACK goes out after this returns, so Ward does not count
			// a command as delivered that the agent let fall.
			select {
			case cmds <- bytes.Clone(pr.Packet.Payload):
			case <-sessCtx.Done():
				return false, sessCtx.Err()
			}
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case serverGone <- d:
			default:
			}
		},
		OnClientError: func(error) {},
	})
	// Receive Maximum bounds the commands Ward may have in flight to the
	// device; paho also sizes a per-connection buffer by it (65,535 slots,
	// 512 KiB, when it is not set).
	recvMax := uint16(receiveMaximum)
	props := &paho.ConnectProperties{ReceiveMaximum: &recvMax}
	if a.cfg.SoftwareVersion != "" {
		props.User = paho.UserProperties{{Key: "software_version", Value: a.cfg.SoftwareVersion}}
	}
	keep := uint16(min(a.cfg.KeepAlive/time.Second, 1200))
	ca, err := c.Connect(dctx, &paho.Connect{ClientID: id, KeepAlive: keep, CleanStart: true, Properties: props})
	if err != nil {
		tc.Close()
		if ca != nil {
			if ca.ReasonCode == rcBanned {
				return 0, fmt.Errorf("mqtt: CONNACK 0x%02x: %w", ca.ReasonCode, errCertRefused)
			}
			return 0, fmt.Errorf("mqtt: CONNACK 0x%02x %s", ca.ReasonCode, reasonString(ca))
		}
		if badCertificate(err) {
			return 0, fmt.Errorf("mqtt: %w", errCertRefused)
		}
		return 0, fmt.Errorf("mqtt: connect: %w", err)
	}
	start := time.Now()
	defer func() {
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		stop()
		<-c.Done()
	}()

	a.mu.Lock()
	a.connected, a.phase = true, PhaseConnected
	a.connects++
	a.lastErr = ""
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.connected = false
		if a.phase == PhaseConnected {
			a.phase = PhaseEnrolled
		}
		a.mu.Unlock()
	}()
	a.log.Info("agent: connected", "device", id, "not_after", op[0].NotAfter)

	s := &sess{a: a, c: c, id: id, ctx: sessCtx}
	if err := s.subscribe(); err != nil {
		return time.Since(start), err
	}
	if err := s.publishState(true); err != nil {
		return time.Since(start), err
	}
	err = s.loop(op, serverGone)
	return time.Since(start), err
}

func reasonString(ca *paho.Connack) string {
	if ca.Properties != nil {
		return ca.Properties.ReasonString
	}
	return ""
}

// sess is one connected MQTT session; its loop runs in one goroutine.
type sess struct {
	a   *Agent
	c   *paho.Client
	id  string
	ctx context.Context

	lastState     []byte    // last state Ward acknowledged on this session
	lastStateAt   time.Time // real time of the last state published
	lastTelemetry time.Time // real time
	retryAt       time.Time // real time: events and acks wait after a refusal
	refusals      int       // refusals in a row of events or acks
}

func (s *sess) subscribe() error {
	topic := protocol.Topic(s.id, protocol.Cmd)
	ctx, cancel := context.WithTimeout(s.ctx, s.a.cfg.PacketTimeout)
	defer cancel()
	sa, err := s.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
	if sa == nil && err != nil {
		return fmt.Errorf("mqtt: subscribe: %w", err)
	}
	if len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80 {
		// Not fatal: the device keeps publishing; commands wait at Ward.
		s.a.log.Warn("agent: Ward refused the subscription to the cmd topic", "device", s.id,
			"reason", fmt.Sprintf("0x%02x", sa.Reasons[0]))
	}
	return nil
}

// publish sends one QoS 1 message, paced, and classifies Ward's answer. An
// error means the connection is unusable.
func (s *sess) publish(kind protocol.Kind, payload []byte) (pubResult, byte, error) {
	if err := s.a.limiter.Wait(s.ctx); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.a.cfg.PacketTimeout)
	defer cancel()
	pr, err := s.c.Publish(ctx, &paho.Publish{
		Topic: protocol.Topic(s.id, kind), QoS: 1, Retain: kind == protocol.State, Payload: payload,
	})
	if pr == nil && errors.Is(err, paho.ErrInvalidArguments) {
		// paho refused it before sending (e.g. retain not offered).
		s.a.log.Warn("agent: message not sendable on this session", "topic", string(kind), "err", err)
		return pubPoison, 0, nil
	}
	if pr == nil {
		if err == nil {
			err = errors.New("no PUBACK")
		}
		return 0, 0, fmt.Errorf("mqtt: publish %s: %w", kind, err)
	}
	switch rc := pr.ReasonCode; {
	case rc < 0x80:
		return pubOK, rc, nil
	case rc == rcPacketTooLarge || rc == rcPayloadFormat || rc == rcTopicNameInvalid ||
		rc == rcRetainNotSupported || rc == rcQoSNotSupported:
		return pubPoison, rc, nil
	default: // not authorized (quarantine), rate, quota, server error
		return pubRefused, rc, nil
	}
}

// payloadOf encodes v as a v1 payload: a JSON object whose "v" is set to 1
// when absent or 0.
func payloadOf(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	if ver, ok := obj["v"]; !ok || string(ver) == "0" {
		obj["v"] = json.RawMessage("1")
		if b, err = json.Marshal(obj); err != nil {
			return nil, err
		}
	}
	if err := protocol.CheckPayload(b); err != nil {
		return nil, err
	}
	return b, nil
}

// publishState publishes Device.State, retained, if it changed since Ward
// last acknowledged it on this session (always when force).
func (s *sess) publishState(force bool) error {
	v := s.a.cfg.Device.State()
	if v == nil {
		return nil // nothing to report yet
	}
	b, err := payloadOf(v)
	if err != nil {
		s.a.log.Error("agent: Device.State cannot be sent", "err", err)
		return nil
	}
	if !force && bytes.Equal(b, s.lastState) {
		return nil
	}
	res, rc, err := s.publish(protocol.State, b)
	if err != nil {
		return err
	}
	s.lastStateAt = time.Now()
	if res == pubOK {
		s.lastState = b
	} else {
		s.a.log.Warn("agent: Ward refused the state", "device", s.id, "reason", fmt.Sprintf("0x%02x", rc))
	}
	return nil
}

// publishTelemetry publishes Device.Telemetry; a refusal with "not
// authorized" means the device is quarantined.
func (s *sess) publishTelemetry() error {
	s.lastTelemetry = time.Now()
	v := s.a.cfg.Device.Telemetry()
	if v == nil {
		return nil
	}
	b, err := payloadOf(v)
	if err != nil {
		s.a.log.Error("agent: Device.Telemetry cannot be sent", "err", err)
		return nil
	}
	res, rc, err := s.publish(protocol.Telemetry, b)
	if err != nil {
		return err
	}
	switch {
	case res == pubOK:
		s.setQuarantined(false)
	case rc == rcNotAuthorized:
		s.setQuarantined(true)
	default:
		s.a.log.Warn("agent: Ward refused telemetry", "device", s.id, "reason", fmt.Sprintf("0x%02x", rc))
	}
	return nil
}

func (s *sess) setQuarantined(q bool) {
	a := s.a
	a.mu.Lock()
	was := a.quarantined
	a.quarantined = q
	a.mu.Unlock()
	switch {
	case q && !was:
		a.log.Warn("agent: Ward restricts this device (quarantine): telemetry and acks are refused, events and state still flow; the device keeps running",
			"device", s.id)
	case !q && was:
		a.log.Info("agent: quarantine lifted", "device", s.id)
		s.retryAt = time.Time{} // acks may go now
		notify(a.wake)
	}
}

// sendOne publishes the oldest waiting ack or event, if any may go now. It
// reports whether more may be sent at once.
func (s *sess) sendOne() (bool, error) {
	a := s.a
	if time.Now().Before(s.retryAt) {
		return false, nil
	}
	a.mu.Lock()
	var (
		b     []byte
		kind  protocol.Kind
		isAck bool
	)
	if len(a.acks) > 0 && !a.quarantined {
		b, kind, isAck = a.acks[0], protocol.Ack, true
	} else if b = a.out.peek(); b != nil {
		kind = protocol.Events
	}
	a.mu.Unlock()
	if b == nil {
		return false, nil
	}
	res, rc, err := s.publish(kind, b)
	if err != nil {
		return false, err // stays queued; resent on the next connection
	}
	if res == pubRefused {
		if isAck && rc == rcNotAuthorized {
			s.setQuarantined(true) // acks wait for the release; events go on
			return true, nil
		}
		d := a.backoff(s.refusals)
		s.refusals++
		s.retryAt = time.Now().Add(d)
		a.log.Warn("agent: Ward refused a message; keeping it and retrying with backoff", "device", s.id,
			"topic", string(kind), "reason", fmt.Sprintf("0x%02x", rc), "retry_in", d.Round(time.Millisecond))
		return false, nil
	}
	s.refusals = 0
	a.mu.Lock()
	switch {
	case isAck:
		if len(a.acks) > 0 && &a.acks[0][0] == &b[0] {
			a.acks = a.acks[1:]
		}
	case a.out.pop(b):
		if res == pubOK {
			a.delivered++
		} else {
			a.rejected++
		}
	case res == pubOK:
		// Dropped for space while in flight, yet delivered.
		a.out.dropped--
		a.delivered++
	}
	a.mu.Unlock()
	if res == pubPoison {
		a.log.Error("agent: Ward refused a message for good; dropped it", "device", s.id,
			"topic", string(kind), "reason", fmt.Sprintf("0x%02x", rc))
	}
	return true, nil
}

// loop serves the session until it has to end.
func (s *sess) loop(op []*x509.Certificate, serverGone <-chan *paho.Disconnect) error {
	a := s.a
	period := time.Minute
	if t := a.cfg.TelemetryInterval; t > 0 && t < period {
		period = t
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	var retry *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	if a.cfg.TelemetryInterval > 0 {
		if err := s.publishTelemetry(); err != nil {
			return err
		}
	}
	notify(a.wake)
	for {
		var retryC <-chan time.Time
		if !s.retryAt.IsZero() {
			if retry == nil {
				retry = time.NewTimer(time.Until(s.retryAt))
			} else {
				retry.Reset(time.Until(s.retryAt))
			}
			retryC = retry.C
		}
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-s.c.Done():
			// The DISCONNECT that closed it, if any, says why.
			select {
			case d := <-serverGone:
				return disconnected(d)
			default:
			}
			return errors.New("mqtt: connection lost")
		case d := <-serverGone:
			return disconnected(d)
		case <-a.stateChanged:
			if err := s.publishState(false); err != nil {
				return err
			}
		case <-tick.C:
			if err := s.housekeeping(op); err != nil {
				return err
			}
		case <-a.wake:
		case <-retryC:
			s.retryAt = time.Time{}
		}
		more, err := s.sendOne()
		if err != nil {
			return err
		}
		if more {
			notify(a.wake)
		}
	}
}

// disconnected is the reason of a DISCONNECT from Ward.
func disconnected(d *paho.Disconnect) error {
	if d.ReasonCode == rcBanned {
		return fmt.Errorf("mqtt: DISCONNECT 0x%02x: %w", d.ReasonCode, errCertRefused)
	}
	return fmt.Errorf("mqtt: Ward disconnected the device: DISCONNECT 0x%02x", d.ReasonCode)
}

// housekeeping runs every tick: the certificate's life, telemetry, state.
func (s *sess) housekeeping(op []*x509.Certificate) error {
	a := s.a
	now := a.now()
	if !now.Before(op[0].NotAfter) {
		return errExpired
	}
	if err := a.maybeRenew(s.ctx, op); err != nil {
		return err
	}
	if a.cfg.TelemetryInterval > 0 {
		a.mu.Lock()
		q := a.quarantined
		a.mu.Unlock()
		every := a.cfg.TelemetryInterval
		if q {
			every = max(every, a.cfg.QuarantineProbe)
		}
		if time.Since(s.lastTelemetry) >= every-every/20 {
			if err := s.publishTelemetry(); err != nil {
				return err
			}
		}
	}
	// A change the product did not signal (Agent.StateChanged), such as
	// a volume infused that grows every second, rides at the telemetry
	// pace: state is a retained, registry-backed record, not a stream.
	if every := a.cfg.TelemetryInterval; every > 0 && time.Since(s.lastStateAt) < every-every/20 {
		return nil
	}
	return s.publishState(false)
}
