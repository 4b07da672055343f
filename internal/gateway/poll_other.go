//go:build !linux

package gateway

import (
	"net"
	"time"
)

// Without epoll, every session stays on its own goroutine (loop.go).

type rawConn struct{}

func (*rawConn) detach(*poller) error                { return nil }
func (*rawConn) isPolled() bool                      { return false }
func (*rawConn) release(bool)                        {}
func (*rawConn) stuck(time.Time, time.Duration) bool { return false }

type poller struct{}

func (*poller) add(*session) error { return nil }

func newRawConn(c net.Conn) (net.Conn, *rawConn) { return c, nil }

func (l *listener) startPollers() {}
