package gateway

// The event loop. A connection starts on a goroutine of its own, which
// runs the TLS handshake and CONNECT (listener.go, broker.go): the slow,
// rare part, on as many cores as there are. Once the session is
// established, on Linux, the goroutine hands the socket to a poller
// (poll_linux.go) and ends: the poller's one goroutine reads whatever
// sessions have input, decrypts it, handles each complete packet, and
// goes on to the next. An idle session so costs no goroutine, and a busy
// node no goroutine wake-up and no empty read per message.
//
// Nothing in the loop waits. A QoS 1 PUBLISH is handed to ingest with a
// pubAck (Ingest.PublishAsync); its PUBACK is written by whoever settles
// it, most often the goroutine that stored its record, and the PUBACKs of
// a session go out in the order of its PUBLISHes [MQTT-4.6.0-2], refusals
// included: a session's acks wait in a queue until those before them are
// settled. A device may have Limits.MaxInflight of them (the Receive
// Maximum the CONNACK announced); one more ends the session with 0x93.
// Writes never block (rawConn keeps what the socket does not take, up to
// maxPendingOut). The poller keeps the session's keepalive and cuts off a
// device whose output has waited past writeTimeout.
//
// Without a poller (not Linux, or epoll refused) a session stays on its
// goroutine, which reads with deadlines and waits for each message's
// store (broker.go): the same packets, the same answers.

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

// errWouldBlock is what a polled rawConn's Read returns when it has
// nothing to give without a second system call: crypto/tls keeps what it
// read of a partial record and is read again later, since the error is
// temporary.
var errWouldBlock = &wouldBlock{}

type wouldBlock struct{}

func (*wouldBlock) Error() string   { return "gateway: no more input now" }
func (*wouldBlock) Timeout() bool   { return false }
func (*wouldBlock) Temporary() bool { return true }

func isWouldBlock(err error) bool { return err == error(errWouldBlock) }

func errPacketType(t byte) error {
	return fmt.Errorf("%w: packet type %d", packets.ErrProtocolViolation, t)
}

// errHandedOff ends serveMQTT for a session that a poller now serves.
var errHandedOff = errors.New("gateway: session handed to the poller")

// inBufs holds the buffers sessions gather input in while a packet is
// incomplete; an idle session holds none.
var inBufs = sync.Pool{New: func() any { b := make([]byte, 0, inBufSize); return &b }}

const inBufSize = 2048

// handoff moves an established session to a poller: what the goroutine
// had read ahead (packets sent right after CONNECT) is served first.
func (g *Gateway) handoff(s *session) error {
	l := g.ln
	if len(l.pollers) == 0 || s.rc == nil {
		return nil
	}
	pl := l.pollers[int(l.next.Add(1))%len(l.pollers)]
	s.wmu.Lock()
	err := s.rc.detach(pl)
	s.wmu.Unlock()
	if err != nil {
		return err
	}
	if n := s.br.Buffered(); n > 0 {
		b, _ := s.br.Peek(n)
		s.in = append(s.takeIn(), b...)
	}
	s.br = nil
	now := time.Now()
	s.lastInput = now
	s.polled = true
	if err := g.serveInput(s, now, g.now()); err != nil {
		return err
	}
	if err := pl.add(s); err != nil {
		return err
	}
	return errHandedOff
}

// takeIn takes a buffer from inBufs; the session keeps the pool's pointer
// to give it back (a new one would be an allocation per message).
func (s *session) takeIn() []byte {
	s.inBuf = inBufs.Get().(*[]byte)
	return (*s.inBuf)[:0]
}

// dropIn gives the buffer back. *inBuf is still the pool's buffer, even
// when in has outgrown it for a large packet.
func (s *session) dropIn() {
	if s.inBuf != nil {
		inBufs.Put(s.inBuf)
		s.inBuf = nil
	}
	s.in = nil
}

// serveInput reads what the session's socket has (one read), decrypts it
// and handles every complete packet. An error ends the session. now is
// when the poller found the socket ready (real time, for keepalive), clock
// the gateway's clock then (Config.Now): read once for the poller's batch.
func (g *Gateway) serveInput(s *session, now, clock time.Time) error {
	s.now = clock
	maxPacket := g.lim.MaxPayload + 4096
	for {
		// Handle the complete packets gathered so far.
		off := 0
		for {
			fh, hdr, err := parseFixedHeader(s.in[off:], maxPacket)
			if err != nil {
				return g.loopError(s, err)
			}
			if hdr == 0 || len(s.in)-off < hdr+fh.Remaining {
				break
			}
			body := s.in[off+hdr : off+hdr+fh.Remaining]
			if fh.Type != packets.Publish {
				body = append([]byte(nil), body...) // decoded packets may keep their bytes
			}
			off += hdr + fh.Remaining
			pk, err := decodePacket(fh, s.version, body)
			if err == nil {
				err = g.handle(s, pk)
			}
			if err != nil {
				return g.loopError(s, err)
			}
		}
		if off > 0 {
			n := copy(s.in, s.in[off:])
			s.in = s.in[:n]
		}
		if s.in == nil {
			s.in = s.takeIn()
		}
		if len(s.in) == cap(s.in) {
			s.in = append(s.in, make([]byte, cap(s.in))...)[:len(s.in)] // a large packet: room for more
		}
		n, err := s.conn.Read(s.in[len(s.in):cap(s.in)])
		if n > 0 {
			s.in = s.in[:len(s.in)+n]
			s.lastInput = now
			continue
		}
		if err == nil {
			continue
		}
		if len(s.in) == 0 {
			s.dropIn()
		}
		if isWouldBlock(err) {
			return nil
		}
		return g.loopError(s, err)
	}
}

// loopError is serveMQTT's end of a session, for the poller: a DISCONNECT
// with the reason when MQTT 5 has one, and nil for the device's own
// DISCONNECT.
func (g *Gateway) loopError(s *session, err error) error {
	if errors.Is(err, errClientDisconnect) {
		return errClientDisconnect
	}
	var code packets.Code
	if errors.As(err, &code) && code.Code >= packets.ErrUnspecifiedError.Code {
		s.disconnect(code)
	}
	return err
}

// expired ends a session that has been silent past 1.5 × its keepalive, or
// whose device has not read its output for writeTimeout.
func (g *Gateway) expired(s *session, now time.Time) error {
	if now.Sub(s.lastInput) > time.Duration(s.keepalive)*time.Second*3/2 {
		if s.end() == "" {
			s.disconnect(packets.ErrKeepAliveTimeout)
		}
		return os.ErrDeadlineExceeded
	}
	if s.rc.stuck(now, writeTimeout) {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// endPolled records the end of a session the poller served, as serve does
// for one on its goroutine.
func (l *listener) endPolled(s *session, err error) {
	if errors.Is(err, errClientDisconnect) {
		err = nil
	}
	s.dropIn()
	l.endSession(s, err, true)
	l.wg.Done()
}

// parseFixedHeader reads a packet's fixed header from b: its length in
// bytes, 0 while b holds only part of it. A packet longer than maxPacket
// is refused before its body is read.
func parseFixedHeader(b []byte, maxPacket int) (fh packets.FixedHeader, n int, err error) {
	if len(b) < 2 {
		return fh, 0, nil
	}
	if err := fh.Decode(b[0]); err != nil {
		return fh, 0, err
	}
	var value, shift uint32
	for i := 1; ; i++ {
		if i >= len(b) {
			return fh, 0, nil
		}
		if i > 4 {
			return fh, 0, packets.ErrMalformedVariableByteInteger
		}
		value |= uint32(b[i]&127) << shift
		if b[i]&128 == 0 {
			n = i + 1
			break
		}
		shift += 7
	}
	fh.Remaining = int(value)
	if fh.Remaining+1 > maxPacket {
		return fh, 0, packets.ErrPacketTooLarge
	}
	return fh, n, nil
}

// decodePacket decodes a packet's body.
func decodePacket(fh packets.FixedHeader, version byte, buf []byte) (pk packets.Packet, err error) {
	pk = packets.Packet{FixedHeader: fh, ProtocolVersion: version}
	switch fh.Type {
	case packets.Connect:
		err = pk.ConnectDecode(buf)
	case packets.Disconnect:
		err = pk.DisconnectDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Subscribe:
		err = pk.SubscribeDecode(buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(buf)
	case packets.Pingreq:
	case packets.Auth:
		err = pk.AuthDecode(buf)
	default:
		// PUBREC, PUBREL, PUBCOMP (no QoS 2 here), and packets only a
		// server sends.
		err = errPacketType(fh.Type)
	}
	return pk, err
}

// ---- PUBACKs in order

// pubAck is a QoS 1 PUBLISH of a polled session waiting for its PUBACK.
type pubAck struct {
	g    *Gateway
	s    *session
	id   uint16
	done bool
	code packets.Code
	err  error
}

// Stored settles the message (Ingest.PublishAsync) and writes the PUBACKs
// that are now due.
func (a *pubAck) Stored(code packets.Code, err error) {
	s := a.s
	s.amu.Lock()
	a.done, a.code, a.err = true, code, err
	var fail error
	for len(s.acks) > 0 && s.acks[0].done {
		h := s.acks[0]
		s.acks[0] = nil
		s.acks = s.acks[1:]
		if h.err != nil {
			fail = h.err
			break
		}
		if h.code.Code < packets.ErrUnspecifiedError.Code {
			_ = s.writePuback(h.id)
		} else {
			_ = s.write(ack(packets.Puback, h.id, h.code))
		}
	}
	if len(s.acks) == 0 {
		s.acks = s.ackArr[:0] // rather than a new slice for the next message
	}
	s.amu.Unlock()
	if fail != nil {
		// MQTT 3.1.1 cannot refuse: no PUBACK, and the connection is
		// closed so that the device sends it again.
		s.setEnd(ReasonProtocolError)
		a.g.kick(s, ReasonProtocolError, packets.ErrUnspecifiedError)
	}
}

// queueAck takes a PUBLISH's place in the session's PUBACK order. It
// refuses one beyond the Receive Maximum.
func (g *Gateway) queueAck(s *session, id uint16) (*pubAck, error) {
	a := &pubAck{g: g, s: s, id: id}
	s.amu.Lock()
	defer s.amu.Unlock()
	if len(s.acks) >= g.lim.MaxInflight {
		return nil, packets.ErrReceiveMaximum
	}
	s.acks = append(s.acks, a)
	return a, nil
}

// noAck settles a QoS 0 message: nothing to answer.
type noAck struct{}

func (noAck) Stored(packets.Code, error) {}
