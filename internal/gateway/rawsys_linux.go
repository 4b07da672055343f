//go:build linux

package gateway

import (
	"syscall"
	"unsafe"
)

// The event loop's system calls on a session's socket and on its epoll set
// never block: the descriptors are non-blocking and epoll_wait is asked not
// to wait. They are made without the runtime's syscall bookkeeping
// (syscall.RawSyscall), which a blocking call needs to hand its processor
// to another thread. That bookkeeping is not free on a busy node: each call
// that starts while every processor was idle wakes Go's monitor thread
// (sysmon) out of its deep sleep, and it then polls every 20 µs until the
// node is idle again. A loop that makes a read and a write for each message
// paid for that thousands of times a second; these calls do not.
//
// Each call is bounded by the kernel's work on one socket buffer or one
// epoll set, microseconds: the processor is not held long enough to matter
// to the scheduler or to a stop-the-world.

func rawRead(fd int, b []byte) (int, error)  { return rawIO(syscall.SYS_READ, fd, b) }
func rawWrite(fd int, b []byte) (int, error) { return rawIO(syscall.SYS_WRITE, fd, b) }

// rawIO is read(2) or write(2) of b on fd.
func rawIO(trap uintptr, fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawEpollPoll returns the ready events of epfd without waiting
// (epoll_pwait, which every Linux architecture has, with no signal mask).
func rawEpollPoll(epfd int, events []syscall.EpollEvent) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
