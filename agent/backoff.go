package agent

import (
	"encoding/binary"
	"io"
	"math"
	"time"
)

// Backoff returns the delay before retry number attempt (0 for the first
// retry): a uniformly random duration in [min, min(max, min·2^attempt)]
// ("full jitter" above a floor of min), drawing randomness from r. The
// ceiling doubles with each attempt up to max, so a fleet that lost Ward at
// once comes back spread over the whole window instead of in one storm,
// and no device ever retries sooner than min. If r fails, the ceiling is
// returned.
func Backoff(attempt int, minDelay, maxDelay time.Duration, r io.Reader) time.Duration {
	if minDelay <= 0 {
		minDelay = time.Millisecond
	}
	if maxDelay < minDelay {
		maxDelay = minDelay
	}
	ceiling := maxDelay
	if attempt < 62 {
		if c := float64(minDelay) * math.Pow(2, float64(attempt)); c < float64(maxDelay) {
			ceiling = time.Duration(c)
		}
	}
	span := ceiling - minDelay
	if span <= 0 {
		return minDelay
	}
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return ceiling
	}
	// A uniform fraction in [0, 1] with 53 bits.
	f := float64(binary.BigEndian.Uint64(b[:])>>11) / float64(1<<53-1)
	return minDelay + time.Duration(f*float64(span))
}

// backoff draws from the agent's Rand.
func (a *Agent) backoff(attempt int) time.Duration {
	a.rngMu.Lock()
	defer a.rngMu.Unlock()
	return Backoff(attempt, a.cfg.BackoffMin, a.cfg.BackoffMax, a.cfg.Rand)
}
