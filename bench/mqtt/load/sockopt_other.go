//go:build !linux

package load

import (
	"syscall"
	"time"
)

func bindNoPort(_, _ string, _ syscall.RawConn) error { return nil }

func cpuTime() time.Duration { return 0 }
