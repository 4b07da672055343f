// Package ratelimit holds the two bounded, per-key limiters that Ward's
// listeners use against floods: Keyed, a token bucket per key (a source
// address, a device id), and Throttle, which lets one event per key and
// interval through and counts the rest, so that a flood is recorded once a
// minute rather than once per attempt.
//
// Both keep their keys in a map of bounded size: a flood of distinct keys
// evicts idle (and, if need be, arbitrary) entries instead of growing
// memory; an evicted key simply starts afresh.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Keyed is a token bucket per key. A nil *Keyed allows everything.
type Keyed struct {
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

// NewKeyed returns perSecond tokens per key with burst, for at most size
// keys; keys unused for idle are swept. A negative perSecond turns the
// limit off (nil).
func NewKeyed(perSecond float64, burst, size int, idle time.Duration) *Keyed {
	if perSecond < 0 {
		return nil
	}
	return &Keyed{limit: rate.Limit(perSecond), burst: burst, size: size, idle: idle, m: map[string]*bucket{}}
}

// Allow takes a token for key at now, reporting whether there was one.
func (l *Keyed) Allow(key string, now time.Time) bool {
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

// Len is the number of keys held.
func (l *Keyed) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// evict makes room for one entry. Called with mu held.
func (l *Keyed) evict(now time.Time) {
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

// Throttle lets one event per key and interval through.
type Throttle struct {
	every time.Duration
	size  int

	mu sync.Mutex
	m  map[string]*throttled
}

type throttled struct {
	last       time.Time
	suppressed int
}

// NewThrottle returns a throttle of one event per key every interval, for
// at most size keys.
func NewThrottle(every time.Duration, size int) *Throttle {
	return &Throttle{every: every, size: size, m: map[string]*throttled{}}
}

// Allow reports whether the event for key at now should be recorded, and
// how many were held back since the last one recorded.
func (t *Throttle) Allow(key string, now time.Time) (bool, int) {
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
