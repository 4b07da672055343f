package enroll

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimiter is a token bucket per source address, in a bounded map: entries
// idle longer than idle are swept, and when the map is full of recent
// entries an arbitrary one is dropped (its address starts a fresh bucket).
type ipLimiter struct {
	limit rate.Limit
	burst int
	size  int
	idle  time.Duration

	mu        sync.Mutex
	m         map[string]*ipBucket
	lastSweep time.Time
}

type ipBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newIPLimiter(perSecond float64, burst, size int, idle time.Duration) *ipLimiter {
	return &ipLimiter{limit: rate.Limit(perSecond), burst: burst, size: size, idle: idle, m: map[string]*ipBucket{}}
}

func (l *ipLimiter) allow(ip string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.m[ip]
	if !ok {
		if len(l.m) >= l.size {
			l.evict(now)
		}
		b = &ipBucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.m[ip] = b
	}
	b.seen = now
	return b.lim.AllowN(now, 1)
}

// evict makes room for one entry. Called with mu held.
func (l *ipLimiter) evict(now time.Time) {
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
// ones it held back, so floods are audited without an audit write each.
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
func (t *throttle) allow(key string) (bool, int) {
	now := time.Now()
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
