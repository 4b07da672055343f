package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
)

// listener accepts device connections: it checks the source rate and the
// connection count before the TLS handshake, runs the handshake (so every
// refusal is recorded with its address), checks the device's connection
// rate, then serves the MQTT session and records how it ended.
type listener struct {
	g       *Gateway
	ln      net.Listener
	wg      sync.WaitGroup
	active  atomic.Int64
	end     atomic.Bool
	pollers []*poller // serve established sessions (loop.go); none: their goroutines do
	next    atomic.Uint32
}

// close stops accepting and ends every connection: sessions with a
// DISCONNECT 0x8B, connections still in their handshake by closing them.
func (l *listener) close() {
	if !l.end.CompareAndSwap(false, true) {
		return
	}
	_ = l.ln.Close()
	l.g.mu.RLock()
	all := make([]*session, 0, len(l.g.byConn))
	for _, s := range l.g.byConn {
		all = append(all, s)
	}
	l.g.mu.RUnlock()
	for _, s := range all {
		l.g.kick(s, ReasonServerShutdown, packets.ErrServerShuttingDown)
	}
}

// accept accepts until the listener closes.
func (l *listener) accept() {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.g.log.Warn("gateway: accept", "err", err, "retry_in", delay.String())
			time.Sleep(delay)
			continue
		}
		delay = 0
		if l.end.Load() {
			c.Close()
			return
		}
		remote := c.RemoteAddr().String()
		if l.active.Load() >= int64(l.g.lim.MaxConnections) {
			c.Close()
			l.g.refuse(refusal{conn: Connection{RemoteAddr: remote}, reason: ReasonServerBusy, detail: "too many connections on this node", flood: true})
			continue
		}
		if !l.g.srcLim.Allow(hostOf(remote), l.g.now()) {
			c.Close()
			l.g.violation("", hostOf(remote), ViolationConnectSource, "connection attempts from "+hostOf(remote))
			l.g.refuse(refusal{conn: Connection{RemoteAddr: remote}, reason: ReasonRateLimit, detail: "too many connection attempts from this address", flood: true})
			continue
		}
		l.active.Add(1)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			s := l.admit(c)
			if s == nil {
				l.active.Add(-1)
				return
			}
			// The session runs on a goroutine of its own, which starts
			// with a small stack: the handshake's deep frames (certificate
			// verification, ECDSA, the registry lookup) grew this one's,
			// and a goroutine keeps a grown stack until a garbage
			// collection finds it mostly unused.
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				l.serve(s)
			}()
		}()
	}
}

// handshakeError is what verifyConnection reports: why, and who.
type handshakeError struct {
	reason, detail   string
	deviceID, serial string
}

func (e *handshakeError) Error() string { return "gateway: " + e.detail }

// verifyConnection runs inside the TLS handshake: the client certificate
// must be Ward's, valid now, name a device, and not be revoked.
func (g *Gateway) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return &handshakeError{reason: ReasonRefusedAuth, detail: "no client certificate"}
	}
	leaf := cs.PeerCertificates[0]
	serial := fleet.CertSerial(leaf)
	id, err := g.cfg.CA.VerifyDevice(leaf, cs.PeerCertificates[1:])
	if err != nil {
		he := &handshakeError{reason: ReasonRefusedAuth, serial: serial}
		switch {
		case errors.Is(err, pki.ErrCertExpired):
			he.detail = "certificate expired"
		case errors.Is(err, pki.ErrCertNotYetValid):
			he.detail = "certificate not yet valid"
		case errors.Is(err, pki.ErrNotDeviceCert), errors.Is(err, pki.ErrInvalidDeviceID):
			he.detail = "not a device certificate"
		default:
			he.detail = "certificate not issued by Ward's CA"
		}
		if errors.Is(err, pki.ErrCertExpired) || errors.Is(err, pki.ErrCertNotYetValid) {
			// Ward's own certificate, only out of date: name the device.
			he.deviceID, _ = pki.DeviceIDFromCert(leaf)
		} else {
			he.serial = "" // a serial of a foreign CA means nothing here
		}
		return he
	}
	if g.cfg.Fleet.IsRevoked(serial) {
		return &handshakeError{reason: ReasonRevoked, detail: "certificate revoked", deviceID: id, serial: serial}
	}
	return nil
}

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLS 1.3"
	case tls.VersionTLS12:
		return "TLS 1.2"
	}
	return fmt.Sprintf("0x%04x", v)
}

// admit runs the TLS handshake, the device's connection rate and the
// registry lookup. It returns the session to serve, or nil when the
// connection was refused (and closed, and recorded).
func (l *listener) admit(c net.Conn) *session {
	g := l.g
	remote := c.RemoteAddr().String()
	var rc *rawConn
	if len(l.pollers) > 0 {
		c, rc = newRawConn(c)
	}
	tc := tls.Server(c, g.tlsCfg)
	ctx, cancel := context.WithTimeout(context.Background(), g.lim.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		tc.Close()
		var he *handshakeError
		switch {
		case errors.As(err, &he):
			g.refuse(refusal{conn: Connection{DeviceID: he.deviceID, CertSerial: he.serial, RemoteAddr: remote, TLSVersion: "TLS 1.3"},
				reason: he.reason, detail: he.detail, flood: true})
		case strings.Contains(err.Error(), "didn't provide a certificate"):
			g.refuse(refusal{conn: Connection{RemoteAddr: remote}, reason: ReasonRefusedAuth, detail: "no client certificate", flood: true})
		default:
			g.refuse(refusal{conn: Connection{RemoteAddr: remote}, reason: ReasonProtocolError, detail: "TLS handshake failed: " + handshakeFailure(err), flood: true})
		}
		return nil
	}
	cs := tc.ConnectionState()
	leaf := cs.PeerCertificates[0]
	id, _ := pki.DeviceIDFromCert(leaf) // verified in the handshake
	s := &session{
		conn:       tc,
		rc:         rc,
		deviceID:   id,
		serial:     fleet.CertSerial(leaf),
		remote:     remote,
		tlsVersion: tlsVersionName(cs.Version),
		cipher:     tls.CipherSuiteName(cs.CipherSuite),
	}
	if !g.devLim.Allow(id, g.now()) {
		tc.Close()
		g.violation(id, hostOf(remote), ViolationConnectDevice, "connection attempts")
		g.refuse(refusal{conn: s.row(), reason: ReasonRateLimit, detail: "too many connection attempts by this device", flood: true})
		return nil
	}
	// Registered before the lookup, so that an order for the device that
	// arrives during it reaches the session (OnConnect prefers it).
	g.addSession(s)
	// The registry's answer is kept for OnConnect, which sends the
	// refusal, if any, as a CONNACK: the device learns why.
	lctx, lcancel := context.WithTimeout(context.Background(), 10*time.Second)
	d, err := g.cfg.Fleet.CheckAdmitted(lctx, s.deviceID, s.serial)
	lcancel()
	s.admitted, s.admitErr = d.State, err
	return s
}

// serve runs an admitted connection's MQTT session and records how it
// ended, unless a poller took the session over (loop.go): then the
// poller records it, and holds the listener's wait group until then.
func (l *listener) serve(s *session) {
	if l.end.Load() {
		l.endSession(s, nil, false)
		return
	}
	err := l.g.serveMQTT(s)
	if errors.Is(err, errHandedOff) {
		l.wg.Add(1) // done by endPolled
		return
	}
	l.endSession(s, err, true)
}

// endSession records how a session ended (unless record is false) and lets
// its connection go.
func (l *listener) endSession(s *session, err error, record bool) {
	g := l.g
	if s.phase.Load() == phaseOpen {
		g.closed(s)
	}
	if record {
		g.finish(s, err)
	}
	g.removeSession(s)
	// A kicked session's connection is closed by the kick, after its
	// DISCONNECT, which may still wait for a write under way.
	if !s.kicked.Load() {
		_ = s.conn.Close()
	}
	if s.polled {
		s.rc.release(s.kicked.Load()) // the socket the poller held, or was to hold
	}
	l.active.Add(-1)
}

// handshakeFailure names a handshake error without echoing peer bytes.
func handshakeFailure(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, net.ErrClosed):
		return "connection closed"
	}
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) {
		return "not TLS"
	}
	return clip(err.Error(), 160)
}

// finish records how a connection ended.
func (g *Gateway) finish(s *session, err error) {
	now := g.now().UTC()
	switch s.phase.Load() {
	case phaseRefused:
		return
	case phaseTLS, phaseAdmitted:
		// No CONNECT, or a bad one.
		detail := "no valid CONNECT"
		if err != nil {
			detail += ": " + disconnectDetail(err)
		}
		g.refuse(refusal{conn: s.row(), reason: ReasonProtocolError, detail: detail, flood: true})
		return
	}
	reason, detail := g.endReason(s, err)
	g.hist.closed(s.rowID, now, s.connectedAt, reason, detail, int(s.refusals.Load()))
	g.stats.connected.Add(-1)
	g.log.Debug("gateway: device disconnected", "device", s.deviceID, "reason", reason, "detail", detail)
}

// endReason classifies the end of an established session.
func (g *Gateway) endReason(s *session, err error) (string, string) {
	if r := s.end(); r != "" {
		return r, disconnectDetail(err)
	}
	if g.closing.Load() {
		return ReasonServerShutdown, ""
	}
	if err == nil {
		return ReasonClientClose, ""
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ReasonKeepaliveTimeout, ""
	}
	var code packets.Code
	if errors.As(err, &code) {
		switch code.Code {
		case packets.ErrPacketTooLarge.Code:
			g.violation(s.deviceID, hostOf(s.remote), ViolationPacketSize, "packet larger than the maximum")
		case packets.CodeDisconnect.Code:
			return ReasonClientClose, ""
		case packets.ErrSessionTakenOver.Code:
			return ReasonTakenOver, ""
		case packets.ErrServerShuttingDown.Code:
			return ReasonServerShutdown, ""
		}
		return ReasonProtocolError, code.Reason
	}
	if isClosed(err) {
		return ReasonClientClose, ""
	}
	return ReasonProtocolError, disconnectDetail(err)
}

func isClosed(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return true
	}
	msg := err.Error()
	return msg == "EOF" || strings.HasSuffix(msg, "EOF") || strings.Contains(msg, "connection reset") || strings.Contains(msg, "broken pipe")
}

func disconnectDetail(err error) string {
	if err == nil {
		return ""
	}
	var code packets.Code
	if errors.As(err, &code) {
		return code.Reason
	}
	return clip(err.Error(), 160)
}
