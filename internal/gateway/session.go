package gateway

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/wardhq/ward/internal/fleet"
)

// Phases of a connection.
const (
	phaseTLS      int32 = iota // handshake done, waiting for CONNECT
	phaseRefused               // CONNECT refused and recorded
	phaseAdmitted              // CONNECT accepted, CONNACK not yet sent
	phaseOpen                  // session established, history row opened
)

// session is one device connection, from the TLS handshake to its end: what
// the gateway knows of it, and its MQTT state. It is found by device id
// from orders and commands.
type session struct {
	conn       net.Conn
	rc         *rawConn // the TCP connection under conn; nil when not TCP
	deviceID   string
	serial     string
	remote     string
	tlsVersion string
	cipher     string

	// The registry's answer for the device, looked up after the handshake.
	admitted fleet.State
	admitErr error

	phase       atomic.Int32
	quarantined atomic.Bool
	kicked      atomic.Bool // the gateway ends the session (kick); nothing more is written
	refusals    atomic.Int64
	overRate    atomic.Int64 // messages refused in a row for the rate

	// MQTT: set by the connection's goroutine before phaseAdmitted,
	// read-only after.
	br        *bufio.Reader
	version   byte   // 4 (3.1.1) or 5
	keepalive uint16 // seconds
	maxPacket uint32 // the device's maximum packet size, 0 if none
	sendQuota int    // QoS 1 messages the device takes unacknowledged
	expiry    uint32 // session expiry, seconds (changed by DISCONNECT)

	wmu          sync.Mutex // one packet written at a time
	wdeadlineSet time.Time  // when the write deadline was last moved (under wmu)
	pubackBuf    [4]byte    // a success PUBACK being written (under wmu)

	// Served by a poller (loop.go): set once before the poller has it;
	// in and lastInput belong to the poller's goroutine.
	polled    bool
	in        []byte
	inBuf     *[]byte // the pooled buffer under in (inBufs)
	lastInput time.Time

	// now is the gateway's clock when the input being handled was read:
	// the time of its messages and of its rate limits. One reading serves
	// a poller's whole batch, rather than several per message.
	now time.Time

	amu    sync.Mutex
	acks   []*pubAck // QoS 1 PUBLISHes not yet answered, in order (polled)
	ackArr [4]*pubAck

	omu      sync.Mutex // guards what Ward sends the device
	sub      byte       // 0, or 1 + the QoS granted on the cmd topic
	inflight map[uint16]struct{}
	nextID   uint16

	mu            sync.Mutex
	mqttVersion   byte
	clientVersion string
	ordered       fleet.State // last order received for the device, if any
	endReason     string
	rowID         string
	connectedAt   time.Time
	msgLim        *rate.Limiter
}

func (s *session) order(st fleet.State) {
	s.mu.Lock()
	s.ordered = st
	s.mu.Unlock()
}

func (s *session) lastOrder() fleet.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ordered
}

func (s *session) setEnd(reason string) {
	s.mu.Lock()
	if s.endReason == "" {
		s.endReason = reason
	}
	s.mu.Unlock()
}

func (s *session) end() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endReason
}

// row is the history row the session starts.
func (s *session) row() Connection {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Connection{
		DeviceID: s.deviceID, RemoteAddr: s.remote, CertSerial: s.serial,
		TLSVersion: s.tlsVersion, Cipher: s.cipher, MQTTVersion: int(s.mqttVersion), ClientVersion: s.clientVersion,
	}
}
