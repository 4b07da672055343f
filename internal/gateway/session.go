package gateway

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
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

// session is what the gateway knows of one device connection, from the
// TLS handshake to its end. It is found by its net.Conn from mochi's
// hooks and by device id from orders.
type session struct {
	conn       net.Conn
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
	refusals    atomic.Int64
	overRate    atomic.Int64 // messages refused in a row for the rate

	mu            sync.Mutex
	client        *mqtt.Client
	mqttVersion   byte
	clientVersion string
	ordered       fleet.State // last order received for the device, if any
	endReason     string
	rowID         string
	connectedAt   time.Time
	msgLim        *rate.Limiter
}

func (s *session) mqttClient() *mqtt.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client
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
