package gateway

import (
	"sync"
	"time"

	"github.com/wardhq/ward/protocol"
	"golang.org/x/time/rate"
)

// Limits bound what one device, one source address and the whole node may
// do. Zero values take the defaults below; a negative rate disables that
// limit.
type Limits struct {
	// MaxPayload bounds one message's payload (default protocol.MaxPayload).
	MaxPayload int
	// MsgRate and MsgBurst are a token bucket of messages per device and
	// connection (default 50/s, burst 100). A message over the rate is
	// refused (PUBACK 0x96 for MQTT 5 QoS 1, dropped otherwise); a device
	// that keeps at it, more than MsgBurst refusals in a row, is
	// disconnected with 0x96.
	MsgRate  float64
	MsgBurst int
	// ConnectRatePerDevice and ConnectBurstPerDevice bound connection
	// attempts per device id (default 1/s, burst 5).
	ConnectRatePerDevice  float64
	ConnectBurstPerDevice int
	// ConnectRatePerSource and ConnectBurstPerSource bound connection
	// attempts per source IP address, checked before the TLS handshake
	// (default 20/s, burst 50). Sites whose devices share one NAT address
	// may need more.
	ConnectRatePerSource  float64
	ConnectBurstPerSource int
	// MaxInflight bounds unacknowledged QoS 1 messages per client in each
	// direction (default 32).
	MaxInflight int
	// MaxConnections bounds concurrent connections on this node, checked
	// before the TLS handshake (default 100,000).
	MaxConnections int
	// HandshakeTimeout bounds the TLS handshake and the wait for CONNECT
	// (default 10s).
	HandshakeTimeout time.Duration
}

// Defaults.
const (
	DefaultMsgRate               = 50
	DefaultMsgBurst              = 100
	DefaultConnectRatePerDevice  = 1
	DefaultConnectBurstPerDevice = 5
	DefaultConnectRatePerSource  = 20
	DefaultConnectBurstPerSource = 50
	DefaultMaxInflight           = 32
	DefaultMaxConnections        = 100_000
	DefaultHandshakeTimeout      = 10 * time.Second
)

func (l Limits) withDefaults() Limits {
	if l.MaxPayload <= 0 {
		l.MaxPayload = protocol.MaxPayload
	}
	if l.MsgRate == 0 {
		l.MsgRate = DefaultMsgRate
	}
	if l.MsgBurst <= 0 {
		l.MsgBurst = DefaultMsgBurst
	}
	if l.ConnectRatePerDevice == 0 {
		l.ConnectRatePerDevice = DefaultConnectRatePerDevice
	}
	if l.ConnectBurstPerDevice <= 0 {
		l.ConnectBurstPerDevice = DefaultConnectBurstPerDevice
	}
	if l.ConnectRatePerSource == 0 {
		l.ConnectRatePerSource = DefaultConnectRatePerSource
	}
	if l.ConnectBurstPerSource <= 0 {
		l.ConnectBurstPerSource = DefaultConnectBurstPerSource
	}
	if l.MaxInflight <= 0 {
		l.MaxInflight = DefaultMaxInflight
	}
	if l.MaxInflight > 65535 {
		l.MaxInflight = 65535
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	return l
}

// keyedLimiter is a token bucket per key (device id, source address) in a
// bounded map: idle entries are swept, and when the map is full of recent
// entries an arbitrary one is dropped (its key starts a fresh bucket). A
// nil keyedLimiter allows everything.
type keyedLimiter struct {
	limit rate.Limit
	burst int
	size  int
	idle  time.Duration

	mu        sync.Mutex
	m         map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newKeyedLimiter(perSecond float64, burst, size int, idle time.Duration) *keyedLimiter {
	if perSecond < 0 {
		return nil
	}
	return &keyedLimiter{limit: rate.Limit(perSecond), burst: burst, size: size, idle: idle, m: map[string]*bucket{}}
}

func (l *keyedLimiter) allow(key string, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.m[key]
	if !ok {
		if len(l.m) >= l.size {
			l.evict(now)
		}
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.m[key] = b
	}
	b.seen = now
	return b.lim.AllowN(now, 1)
}

// evict makes room for one entry. Called with mu held.
func (l *keyedLimiter) evict(now time.Time) {
	if now.Sub(l.lastSweep) >= l.idle/2 {
		l.lastSweep = now
		for k, b := range l.m {
			if now.Sub(b.seen) > l.idle {
				delete(l.m, k)
			}
		}
	}
	for k := range l.m {
		if len(l.m) < l.size {
			return
		}
		delete(l.m, k)
	}
}

// throttle lets an event through once per interval per key and counts the
// ones it held back, so floods are recorded without a write each.
type throttle struct {
	every time.Duration
	size  int

	mu sync.Mutex
	m  map[string]*throttled
}

type throttled struct {
	last       time.Time
	suppressed int
}

func newThrottle(every time.Duration, size int) *throttle {
	return &throttle{every: every, size: size, m: map[string]*throttled{}}
}

// allow reports whether the event for key should be recorded now, and how
// many were suppressed since the last one recorded.
func (t *throttle) allow(key string, now time.Time) (bool, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[key]
	if !ok {
		if len(t.m) >= t.size {
			for k, v := range t.m {
				if now.Sub(v.last) > t.every || len(t.m) >= t.size {
					delete(t.m, k)
				}
			}
		}
		t.m[key] = &throttled{last: now}
		return true, 0
	}
	if now.Sub(e.last) < t.every {
		e.suppressed++
		return false, 0
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	return true, n
}
