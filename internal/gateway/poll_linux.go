//go:build linux

package gateway

// The event loop on Linux: epoll, level-triggered, over the sockets of
// established sessions. See loop.go for what the loop does with a session;
// this file is the part that touches the operating system.

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxPendingOut bounds what a session may have written that its device has
// not yet read: a device that stops reading is cut off rather than
// growing the node's memory (its acks and commands are small).
const maxPendingOut = 256 << 10

// rawConn is the TCP connection under a session's TLS. Until detach it is
// the *net.TCPConn, served by Go's poller and a goroutine; after it, its
// socket belongs to a poller (a descriptor of our own, non-blocking):
// reads happen only in the poller's goroutine, at most one system call
// each time the socket is reported readable, and writes never block: what
// the socket does not take waits in out until it is writable.
type rawConn struct {
	*net.TCPConn
	polled atomic.Bool

	// Read side, the poller's goroutine only.
	readOK bool

	mu       sync.Mutex
	fd       int // -1 once released
	pl       *poller
	closing  bool // shut down, waiting for the poller to release it
	orphan   bool // released by the poller, waiting for a kick's Close
	early    bool // closed before detach
	out      []byte
	outSince time.Time
}

func newRawConn(c net.Conn) (net.Conn, *rawConn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	rc := &rawConn{TCPConn: tc, fd: -1}
	return rc, rc
}

// detach takes the socket from Go's poller: a duplicate of its descriptor
// stays open for the poller to own, the original is closed. The caller
// holds the session's write lock, so no session write is under way.
func (c *rawConn) detach(pl *poller) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.early {
		return net.ErrClosed
	}
	sc, err := c.TCPConn.SyscallConn()
	if err != nil {
		return err
	}
	nfd := -1
	var derr error
	if err := sc.Control(func(fd uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			derr = e
			return
		}
		nfd = int(r)
	}); err != nil {
		return err
	}
	if derr != nil {
		return os.NewSyscallError("fcntl", derr)
	}
	_ = c.TCPConn.Close() // the duplicate keeps the socket open
	c.fd, c.pl = nfd, pl
	c.polled.Store(true)
	return nil
}

// isPolled reports whether a poller owns the socket (c may be nil: not TCP).
func (c *rawConn) isPolled() bool { return c != nil && c.polled.Load() }

func (c *rawConn) Read(b []byte) (int, error) {
	if !c.polled.Load() {
		return c.TCPConn.Read(b)
	}
	if !c.readOK || len(b) == 0 {
		return 0, errWouldBlock
	}
	c.readOK = false
	for {
		n, err := rawRead(c.fd, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, errWouldBlock
		case err != nil:
			return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", err)}
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (c *rawConn) Write(b []byte) (int, error) {
	if !c.polled.Load() {
		return c.TCPConn.Write(b)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 || c.closing {
		return 0, net.ErrClosed
	}
	if len(c.out) > 0 {
		return c.queueLocked(b, len(b))
	}
	written := 0
	for written < len(b) {
		n, err := rawWrite(c.fd, b[written:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return c.queueLocked(b[written:], len(b))
		case err != nil:
			return written, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", err)}
		}
		written += n
	}
	return len(b), nil
}

// queueLocked keeps what the socket did not take and asks the poller to
// say when it is writable.
func (c *rawConn) queueLocked(rest []byte, n int) (int, error) {
	if len(c.out)+len(rest) > maxPendingOut {
		return n - len(rest), &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errSlowReader}
	}
	if len(c.out) == 0 {
		c.outSince = time.Now()
		c.pl.watchOut(c.fd, true)
	}
	c.out = append(c.out, rest...)
	return n, nil
}

var errSlowReader = errors.New("device does not read what it is sent")

// flushOut writes what waits in out; the poller calls it when the socket
// is writable.
func (c *rawConn) flushOut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flushLocked()
}

func (c *rawConn) flushLocked() {
	for len(c.out) > 0 && c.fd >= 0 {
		n, err := rawWrite(c.fd, c.out)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			break // EAGAIN: the poller says when; another error: the read side ends the session
		}
		c.out = c.out[n:]
	}
	if len(c.out) == 0 && c.fd >= 0 {
		c.out = nil
		c.outSince = time.Time{}
		if !c.closing {
			c.pl.watchOut(c.fd, false)
		}
	}
}

// stuck reports whether output has waited longer than d.
func (c *rawConn) stuck(now time.Time, d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.out) > 0 && now.Sub(c.outSince) > d
}

// Close shuts the socket down; the poller sees it readable, reads its end
// and releases it. What waits in out is tried once more first.
func (c *rawConn) Close() error {
	if !c.polled.Load() {
		c.mu.Lock()
		if !c.polled.Load() {
			c.early = true
			c.mu.Unlock()
			return c.TCPConn.Close()
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 || c.closing {
		return nil
	}
	c.flushLocked()
	c.closing = true
	if c.orphan {
		c.closeLocked()
		return nil
	}
	return syscall.Shutdown(c.fd, syscall.SHUT_RDWR)
}

// release closes the descriptor; the poller's goroutine calls it once the
// session has ended and the descriptor has left the epoll set. A kicked
// session's connection is closed by the kick (its DISCONNECT may still
// wait for a write under way): release then leaves it to the kick's Close.
func (c *rawConn) release(kicked bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if kicked && !c.closing {
		c.orphan = true
		return
	}
	c.closeLocked()
}

func (c *rawConn) closeLocked() {
	if c.fd >= 0 {
		_ = syscall.Close(c.fd)
		c.fd = -1
	}
	c.out = nil
}

func (c *rawConn) SetDeadline(t time.Time) error {
	if !c.polled.Load() {
		return c.TCPConn.SetDeadline(t)
	}
	return nil // the poller keeps the session's times
}

func (c *rawConn) SetReadDeadline(t time.Time) error {
	if !c.polled.Load() {
		return c.TCPConn.SetReadDeadline(t)
	}
	return nil
}

func (c *rawConn) SetWriteDeadline(t time.Time) error {
	if !c.polled.Load() {
		return c.TCPConn.SetWriteDeadline(t)
	}
	return nil
}

// poller is one epoll set and the goroutine that serves it.
type poller struct {
	l    *listener
	epfd int
	ep   *os.File // epfd, waited on through Go's own poller

	mu       sync.Mutex
	sessions map[int32]*session
}

// startPollers starts one poller per processor the runtime uses. Without
// them (epoll refused), sessions stay on their goroutines.
func (l *listener) startPollers() {
	for range max(1, min(runtimeProcs(), 8)) {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err == nil {
			err = syscall.SetNonblock(epfd, true)
		}
		if err != nil {
			l.g.log.Warn("gateway: epoll unavailable; one goroutine per connection", "err", err)
			return
		}
		// The epoll descriptor is itself readable when a socket in it is
		// ready: the poller's goroutine waits for that in Go's poller, as
		// any goroutine waits for a socket, rather than in a blocking
		// epoll_wait, which would hold a thread and wake the runtime's
		// monitor every 20 µs.
		pl := &poller{l: l, epfd: epfd, ep: os.NewFile(uintptr(epfd), "epoll"), sessions: map[int32]*session{}}
		l.pollers = append(l.pollers, pl)
		l.wg.Go(pl.run)
	}
}

// add registers a session whose socket was detached to it.
func (pl *poller) add(s *session) error {
	fd := s.rc.fd
	pl.mu.Lock()
	pl.sessions[int32(fd)] = s
	pl.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		pl.mu.Lock()
		delete(pl.sessions, int32(fd))
		pl.mu.Unlock()
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

func (pl *poller) remove(s *session) {
	pl.mu.Lock()
	if fd := int32(s.rc.fd); fd >= 0 && pl.sessions[fd] == s {
		delete(pl.sessions, fd)
	}
	pl.mu.Unlock()
}

// watchOut asks (or stops asking) to hear when fd is writable.
func (pl *poller) watchOut(fd int, on bool) {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if on {
		ev.Events |= syscall.EPOLLOUT
	}
	_ = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_MOD, fd, &ev)
}

// run serves the poller's sessions until the listener has closed and the
// last of them has ended.
func (pl *poller) run() {
	defer pl.ep.Close()
	g := pl.l.g
	events := make([]syscall.EpollEvent, 256)
	sweep := time.Now()
	rc, err := pl.ep.SyscallConn()
	if err != nil {
		g.log.Error("gateway: poller", "err", err)
		return
	}
	var deadline time.Time
	now := time.Now()
	for {
		var n int
		var werr error
		// Woken at least every 250 ms for the sweep; the deadline (a
		// timer) is moved only when it comes close. now is when the last
		// batch was found: close enough.
		if deadline.Sub(now) < 150*time.Millisecond {
			deadline = now.Add(250 * time.Millisecond)
			_ = pl.ep.SetReadDeadline(deadline)
		}
		err := rc.Read(func(uintptr) bool {
			n, werr = rawEpollPoll(pl.epfd, events)
			return n > 0 || (werr != nil && werr != syscall.EINTR)
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			g.log.Error("gateway: poller", "err", err)
			time.Sleep(10 * time.Millisecond)
		}
		if werr != nil && werr != syscall.EINTR {
			g.log.Error("gateway: epoll_wait", "err", werr)
			time.Sleep(10 * time.Millisecond)
		}
		now = time.Now()
		var clock time.Time
		if n > 0 {
			clock = g.now()
		}
		for i := 0; i < n; i++ {
			ev := events[i]
			pl.mu.Lock()
			s := pl.sessions[ev.Fd]
			pl.mu.Unlock()
			if s == nil {
				continue
			}
			if ev.Events&syscall.EPOLLOUT != 0 {
				s.rc.flushOut()
			}
			if ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
				s.rc.readOK = true
				if err := g.serveInput(s, now, clock); err != nil {
					pl.end(s, err)
				}
			}
		}
		if now.Sub(sweep) >= time.Second || pl.l.end.Load() {
			sweep = now
			pl.mu.Lock()
			all := make([]*session, 0, len(pl.sessions))
			for _, s := range pl.sessions {
				all = append(all, s)
			}
			left := len(all)
			pl.mu.Unlock()
			for _, s := range all {
				if err := g.expired(s, now); err != nil {
					pl.end(s, err)
					left--
				}
			}
			if left == 0 && pl.l.end.Load() {
				return
			}
		}
	}
}

// end ends a session the poller serves.
func (pl *poller) end(s *session, err error) {
	pl.remove(s)
	_ = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_DEL, s.rc.fd, nil)
	pl.l.endPolled(s, err) // releases the socket
}
