package agent_test

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/wardhq/ward/agent"
)

// chacha is a fixed, seeded random source.
type chacha struct{ r *rand.ChaCha8 }

func (c chacha) Read(p []byte) (int, error) { return c.r.Read(p) }

func fixedRand() chacha { return chacha{rand.NewChaCha8([32]byte{1, 2, 3})} }

func TestBackoffGrowsWithJitter(t *testing.T) {
	const lo, hi = time.Second, 5 * time.Minute
	// The bounds: never below the floor, never above the doubling ceiling.
	r := fixedRand()
	for attempt := range 40 {
		ceiling := min(hi, lo<<min(attempt, 30))
		for range 50 {
			d := agent.Backoff(attempt, lo, hi, r)
			if d < lo || d > ceiling {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, lo, ceiling)
			}
		}
	}
	// The delays grow: the mean of each attempt's draws rises until the
	// ceiling reaches the maximum, then stays about (lo+hi)/2.
	mean := func(attempt int) time.Duration {
		var sum time.Duration
		for range 400 {
			sum += agent.Backoff(attempt, lo, hi, r)
		}
		return sum / 400
	}
	prev := time.Duration(0)
	for attempt := range 9 { // ceilings 1 s … 256 s
		m := mean(attempt)
		if attempt > 1 && m <= prev {
			t.Fatalf("attempt %d: mean %s not above attempt %d's %s", attempt, m, attempt-1, prev)
		}
		prev = m
	}
	if m, want := mean(30), (lo+hi)/2; m < want*9/10 || m > want*11/10 {
		t.Fatalf("at the maximum: mean %s, want about %s", m, want)
	}
	// Jittered: two devices (two sources) do not retry in lockstep, and one
	// device's successive draws differ.
	a, b := fixedRand(), chacha{rand.NewChaCha8([32]byte{9})}
	same := 0
	seen := map[time.Duration]bool{}
	for range 100 {
		da, db := agent.Backoff(6, lo, hi, a), agent.Backoff(6, lo, hi, b)
		if da == db {
			same++
		}
		seen[da] = true
	}
	if same > 2 || len(seen) < 95 {
		t.Fatalf("not jittered: %d equal pairs, %d distinct delays of 100", same, len(seen))
	}
	// Deterministic for a given source: the sequence can be replayed.
	x, y := fixedRand(), fixedRand()
	for attempt := range 20 {
		if dx, dy := agent.Backoff(attempt, lo, hi, x), agent.Backoff(attempt, lo, hi, y); dx != dy {
			t.Fatalf("attempt %d: %s != %s from the same seed", attempt, dx, dy)
		}
	}
}

func TestBackoffEdges(t *testing.T) {
	zeros := bytes.NewReader(make([]byte, 8))
	if d := agent.Backoff(10, time.Second, time.Minute, zeros); d != time.Second {
		t.Fatalf("all-zero randomness: %s, want the floor", d)
	}
	ones := bytes.NewReader(bytes.Repeat([]byte{0xff}, 8))
	if d := agent.Backoff(3, time.Second, time.Minute, ones); d != 8*time.Second {
		t.Fatalf("all-one randomness at attempt 3: %s, want the ceiling 8s", d)
	}
	if d := agent.Backoff(1000, time.Second, time.Minute, bytes.NewReader(nil)); d != time.Minute {
		t.Fatalf("failing source: %s, want the ceiling", d)
	}
	if d := agent.Backoff(0, time.Second, time.Minute, fixedRand()); d != time.Second {
		t.Fatalf("attempt 0: %s, want the floor", d)
	}
	if d := agent.Backoff(5, 2*time.Second, time.Second, fixedRand()); d != 2*time.Second {
		t.Fatalf("max below min: %s", d)
	}
}
