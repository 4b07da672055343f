package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestKeyed(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	l := NewKeyed(1, 2, 100, time.Minute)
	var got []bool
	for range 3 {
		got = append(got, l.Allow("a", t0))
	}
	if !got[0] || !got[1] || got[2] {
		t.Fatalf("burst of 2: %v", got)
	}
	if !l.Allow("b", t0) {
		t.Fatal("keys share a bucket")
	}
	if !l.Allow("a", t0.Add(time.Second)) {
		t.Fatal("no token after a second")
	}
	var off *Keyed = NewKeyed(-1, 0, 0, 0)
	if off != nil || !off.Allow("x", t0) {
		t.Fatal("a negative rate is not off")
	}
}

func TestKeyedBounded(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	l := NewKeyed(1, 1, 100, time.Minute)
	for i := range 10_000 {
		l.Allow(fmt.Sprint("10.0.", i/256, ".", i%256), t0.Add(time.Duration(i)*time.Millisecond))
	}
	if n := l.Len(); n > 100 {
		t.Fatalf("%d keys held, bound is 100", n)
	}
}

func TestThrottle(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	th := NewThrottle(time.Minute, 10)
	if ok, _ := th.Allow("k", t0); !ok {
		t.Fatal("first event held back")
	}
	for i := 1; i <= 5; i++ {
		if ok, _ := th.Allow("k", t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatal("event within the interval let through")
		}
	}
	if ok, n := th.Allow("k", t0.Add(time.Minute)); !ok || n != 5 {
		t.Fatalf("after the interval: %v, %d held back; want true, 5", ok, n)
	}
	for i := range 1000 {
		th.Allow(fmt.Sprint(i), t0)
	}
	if len(th.m) > 10 {
		t.Fatalf("%d keys held, bound is 10", len(th.m))
	}
}
