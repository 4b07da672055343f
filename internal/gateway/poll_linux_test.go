//go:build linux

package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	ppackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// TestRawConnWritesNeverBlock: once detached, a connection's writes never
// block: what the socket does not take waits in order until the poller
// flushes it, and a peer that does not read is refused once
// maxPendingOut waits, rather than growing the node's memory.
func TestRawConnWritesNeverBlock(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_, rc := newRawConn(c)
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(epfd)
	pl := &poller{epfd: epfd, sessions: map[int32]*session{}}
	if err := rc.detach(pl); err != nil {
		t.Fatal(err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(rc.fd)}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, rc.fd, &ev); err != nil {
		t.Fatal(err)
	}

	// Numbered 1 KiB chunks until the socket and the queue are full.
	chunk := make([]byte, 1024)
	var sent uint32
	var refused error
	start := time.Now()
	for sent < 1<<20 {
		binary.BigEndian.PutUint32(chunk, sent)
		n, err := rc.Write(chunk)
		if err != nil {
			refused = err
			if n != 0 {
				t.Fatalf("a refused write took %d bytes", n)
			}
			break
		}
		sent++
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("writes blocked for %v", took)
	}
	if !errors.Is(refused, errSlowReader) {
		t.Fatalf("a peer that does not read: %v after %d KiB, want errSlowReader", refused, sent)
	}
	if pending := len(rc.out); pending == 0 || pending > maxPendingOut {
		t.Fatalf("%d bytes pending, want 1..%d", pending, maxPendingOut)
	}
	if !rc.stuck(time.Now().Add(time.Minute), time.Second) {
		t.Error("output waiting a minute is not reported stuck")
	}

	// The peer reads; the poller flushes on EPOLLOUT; every chunk arrives
	// once, in order.
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 1024)
		for i := uint32(0); i < sent; i++ {
			if _, err := io.ReadFull(peer, buf); err != nil {
				got <- err
				return
			}
			if n := binary.BigEndian.Uint32(buf); n != i {
				got <- errors.New("chunks out of order")
				return
			}
		}
		got <- nil
	}()
	events := make([]syscall.EpollEvent, 4)
	deadline := time.Now().Add(10 * time.Second)
	for {
		rc.mu.Lock()
		left := len(rc.out)
		rc.mu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still pending", left)
		}
		n, _ := syscall.EpollWait(epfd, events, 100)
		for i := 0; i < n; i++ {
			if events[i].Events&syscall.EPOLLOUT != 0 {
				rc.flushOut()
			}
		}
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	// Close shuts the socket down (the peer sees its end); release closes it.
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read after Close: %v, want EOF", err)
	}
	if _, err := rc.Write(chunk); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	rc.release(false)
	if rc.fd != -1 {
		t.Fatal("descriptor not released")
	}
}

// TestPollerReleasesSockets: sessions the event loop served, ended by the
// device, by a revocation (a kick) and by a takeover, leave no descriptor
// behind.
func TestPollerReleasesSockets(t *testing.T) {
	f := newFixture(t, storetest.Open(t, store.SQLite))
	openFDs := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip("no /proc/self/fd")
		}
		return len(ents)
	}
	settle := func() {
		t.Helper()
		waitFor(t, "sessions ended", func() bool {
			f.gw.mu.RLock()
			defer f.gw.mu.RUnlock()
			return len(f.gw.byConn) == 0
		})
	}
	// Warm up: the first connection opens what stays open (history, pools).
	dev := f.newDevice(nil)
	mc, _, err := f.connect(dev, dev.id)
	if err != nil {
		t.Fatal(err)
	}
	_ = mc.Disconnect(&paho.Disconnect{})
	settle()
	before := openFDs()

	for i := range 16 {
		dev := f.newDevice(nil)
		if i%4 == 3 {
			// A malformed packet right behind CONNECT: read ahead with
			// it, it fails the session as it is handed to the poller.
			conn, err := f.dialTLS(dev.cert)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			cp := ppackets.NewControlPacket(ppackets.CONNECT)
			cn := cp.Content.(*ppackets.Connect)
			cn.ProtocolName, cn.ProtocolVersion, cn.ClientID, cn.CleanStart, cn.KeepAlive = "MQTT", 5, dev.id, true, 30
			cn.Properties = &ppackets.Properties{}
			if _, err := cp.WriteTo(&b); err != nil {
				t.Fatal(err)
			}
			b.Write([]byte{0xf0, 0x00}) // AUTH with nothing in it: malformed for MQTT 5
			if _, err := conn.Write(b.Bytes()); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.Copy(io.Discard, conn) // CONNACK, DISCONNECT, then the end
			conn.Close()
			settle()
			continue
		}
		mc, _, err := f.connect(dev, dev.id)
		if err != nil {
			t.Fatal(err)
		}
		switch i % 4 {
		case 0: // the device leaves
			_ = mc.Disconnect(&paho.Disconnect{})
		case 1: // Ward cuts it off
			if _, err := f.fleet.Revoke(context.Background(), "token:test", dev.id, "test"); err != nil {
				t.Fatal(err)
			}
		case 2: // it connects again: the first session is taken over
			mc2, _, err := f.connect(dev, dev.id)
			if err != nil {
				t.Fatal(err)
			}
			_ = mc2.Disconnect(&paho.Disconnect{})
		}
		settle()
	}
	// The clients' own sockets close too; give them a moment.
	waitFor(t, "descriptors back", func() bool { return openFDs() <= before })
}

// TestRawSyscalls: the loop's calls made without the scheduler's
// bookkeeping read, write and poll a non-blocking socket as the syscall
// package's would, errors included.
func TestRawSyscalls(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				syscall.Close(fd)
			}
		}
	}()
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(epfd)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fds[1])}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, fds[1], &ev); err != nil {
		t.Fatal(err)
	}
	events := make([]syscall.EpollEvent, 4)
	buf := make([]byte, 16)

	if n, err := rawEpollPoll(epfd, events); n != 0 || err != nil {
		t.Fatalf("poll of an idle set = %d, %v; want 0, nil", n, err)
	}
	if n, err := rawRead(fds[1], buf); n != 0 || err != syscall.EAGAIN {
		t.Fatalf("read of an empty socket = %d, %v; want EAGAIN", n, err)
	}
	if n, err := rawWrite(fds[0], []byte("hello")); n != 5 || err != nil {
		t.Fatalf("write = %d, %v", n, err)
	}
	if n, err := rawEpollPoll(epfd, events); n != 1 || err != nil || events[0].Fd != int32(fds[1]) {
		t.Fatalf("poll after a write = %d, %v, fd %d; want the reading end", n, err, events[0].Fd)
	}
	if n, err := rawRead(fds[1], buf); n != 5 || err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read = %d %q, %v", n, buf[:n], err)
	}
	if n, err := rawRead(fds[1], nil); n != 0 || err != nil {
		t.Fatalf("read into nothing = %d, %v", n, err)
	}
	if n, err := rawRead(-1, buf); n != 0 || err != syscall.EBADF {
		t.Fatalf("read of a bad descriptor = %d, %v; want EBADF", n, err)
	}
	if n, err := rawEpollPoll(-1, events); n != 0 || err != syscall.EBADF {
		t.Fatalf("poll of a bad descriptor = %d, %v; want EBADF", n, err)
	}
	syscall.Close(fds[0])
	fds[0] = -1
	if n, err := rawRead(fds[1], buf); n != 0 || err != nil {
		t.Fatalf("read at end of stream = %d, %v; want 0, nil", n, err)
	}
	if _, err := rawWrite(fds[1], []byte("x")); err != syscall.EPIPE {
		t.Fatalf("write to a closed peer: %v; want EPIPE", err)
	}
}
