package agent

import (
	"net"
	"sync"
	"sync/atomic"
)

// NewPacketConn wraps a connection for github.com/eclipse/paho.golang so
// that each MQTT packet goes out in one write, and so in one TLS record and
// one TCP segment.
//
// paho writes a packet as several buffers (fixed header, variable header,
// properties, payload), each with a Write of its own: over TLS each becomes
// a record, so a small PUBLISH costs the device three encryptions and three
// system calls, and the receiving kernel, seeing two small segments in a
// row, acknowledges them at once instead of with the PUBACK. paho holds the
// connection's lock for a whole packet when the connection is a
// sync.Locker, as it asks (packets.NewThreadSafeConn): the returned
// connection is one, gathers what is written under the lock and writes it
// when the lock is released.
//
// A failed write closes the connection, so that paho's reader ends the
// session at once; it is reported to the next write too. Every write must
// be made under the lock, as paho's packets do.
func NewPacketConn(c net.Conn) net.Conn {
	return &packetConn{Conn: c}
}

type packetConn struct {
	net.Conn
	mu   sync.Mutex
	held atomic.Bool // under Lock: writes gather in buf
	buf  []byte
	err  error
}

// maxKeptBuffer bounds the buffer kept between packets (a large packet's
// buffer is let go).
const maxKeptBuffer = 16 << 10

func (c *packetConn) Lock() {
	c.mu.Lock()
	c.held.Store(true)
}

func (c *packetConn) Unlock() {
	if len(c.buf) > 0 && c.err == nil {
		if _, err := c.Conn.Write(c.buf); err != nil {
			c.err = err
			_ = c.Conn.Close()
		}
	}
	c.buf = c.buf[:0]
	if cap(c.buf) > maxKeptBuffer {
		c.buf = nil
	}
	c.held.Store(false)
	c.mu.Unlock()
}

func (c *packetConn) Write(b []byte) (int, error) {
	if !c.held.Load() {
		// Not one of paho's packets: written as it comes.
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err != nil {
			return 0, c.err
		}
		return c.Conn.Write(b)
	}
	if c.err != nil {
		return 0, c.err
	}
	c.buf = append(c.buf, b...)
	return len(b), nil
}
