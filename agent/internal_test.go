package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"
)

func TestCommandAnswers(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ran := 0
	a := &Agent{cfg: Config{Now: func() time.Time { return now }}, now: func() time.Time { return now },
		wake: make(chan struct{}, 1)}
	a.log = slog.New(slog.DiscardHandler)
	id := "abcdefghijklmnopqrstuvwxyz"
	msg := func(id string, exp time.Time) []byte {
		b, _ := json.Marshal(commandMessage{V: 1, ID: id, ExpiresAt: exp, Body: []byte("start")})
		return b
	}
	last := func() ackMessage {
		t.Helper()
		var m ackMessage
		if len(a.acks) == 0 {
			t.Fatal("no ack")
		}
		if err := json.Unmarshal(a.acks[len(a.acks)-1], &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	ctx := context.Background()

	// No OnCommand: refused, never run.
	a.handleCommand(ctx, msg(id, now.Add(time.Hour)))
	if m := last(); m.Status != AckRefused || m.Command != id || m.V != 1 {
		t.Fatalf("without OnCommand: %+v", m)
	}

	a.cfg.OnCommand = func(_ context.Context, c Command) error {
		ran++
		if string(c.Body) != "start" {
			return errors.New("bad body")
		}
		return nil
	}
	id2 := "bbbbbbbbbbbbbbbbbbbbbbbbbb"
	a.handleCommand(ctx, msg(id2, now.Add(time.Hour)))
	a.handleCommand(ctx, msg(id2, now.Add(time.Hour))) // a repeat: answered, not run again
	if m := last(); m.Status != AckDone || m.Command != id2 || ran != 1 || len(a.acks) != 3 {
		t.Fatalf("done: %+v ran %d acks %d", m, ran, len(a.acks))
	}
	id3 := "cccccccccccccccccccccccccc"
	a.handleCommand(ctx, msg(id3, now.Add(-time.Second)))
	if m := last(); m.Status != AckExpired || ran != 1 {
		t.Fatalf("expired: %+v ran %d", m, ran)
	}
	n := len(a.acks)
	a.handleCommand(ctx, []byte(`{"v":1,"id":"../../etc"}`))
	a.handleCommand(ctx, []byte(`not json`))
	if len(a.acks) != n {
		t.Fatal("a malformed command was answered")
	}
}

func TestPayloadOf(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want string // "" : refused
	}{
		{map[string]any{"mode": "idle"}, `{"mode":"idle","v":1}`},
		{map[string]any{"v": 1, "a": 2}, `{"a":2,"v":1}`},
		{struct {
			V    int    `json:"v"`
			Mode string `json:"mode"`
		}{Mode: "infusing"}, `{"mode":"infusing","v":1}`},
		{map[string]any{"v": 2}, ""},
		{[]int{1}, ""},
		{"text", ""},
		{map[string]any{"big": string(make([]byte, 70<<10))}, ""},
	} {
		b, err := payloadOf(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%v: accepted %s", tc.in, b)
			}
			continue
		}
		if err != nil || string(b) != tc.want {
			t.Errorf("%v: %s %v, want %s", tc.in, b, err, tc.want)
		}
	}
}

func TestOutboxBound(t *testing.T) {
	o := outbox{limit: 100}
	for i := range 250 {
		o.push([]byte{byte(i)})
	}
	if o.len() != 100 || o.dropped != 150 {
		t.Fatalf("len %d dropped %d", o.len(), o.dropped)
	}
	for i := 150; i < 250; i++ {
		b := o.peek()
		if b[0] != byte(i) || !o.pop(b) {
			t.Fatalf("at %d: %v", i, b)
		}
	}
	if o.peek() != nil || o.len() != 0 {
		t.Fatal("not empty")
	}
	// An event dropped for space while it was being published is not
	// popped again.
	o = outbox{limit: 2}
	o.push([]byte("a"))
	head := o.peek()
	o.push([]byte("b"))
	o.push([]byte("c"))
	if o.pop(head) || o.len() != 2 {
		t.Fatal("popped an event that was already dropped")
	}
}
