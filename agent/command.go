package agent

import (
	"context"
	"encoding/json"
	"time"
)

// seenLimit bounds the command ids remembered to answer repeats.
const seenLimit = 256

// seenCommands remembers the answers to recent commands: Ward delivers a
// command at least once, and a repeat is answered again without running
// it twice.
type seenCommands struct {
	order []string
	ack   map[string][]byte
}

func (s *seenCommands) get(id string) []byte { return s.ack[id] }

func (s *seenCommands) put(id string, ack []byte) {
	if s.ack == nil {
		s.ack = make(map[string][]byte)
	}
	if _, ok := s.ack[id]; !ok {
		s.order = append(s.order, id)
		if len(s.order) > seenLimit {
			delete(s.ack, s.order[0])
			s.order = s.order[1:]
		}
	}
	s.ack[id] = ack
}

// commandMessage is what arrives on the cmd topic.
type commandMessage struct {
	V         int       `json:"v"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
	Body      []byte    `json:"body"`
}

type ackMessage struct {
	V       int    `json:"v"`
	Command string `json:"command"`
	Status  string `json:"status"` // done, failed, refused, expired
	Error   string `json:"error,omitempty"`
}

// Answers on the ack topic.
const (
	AckDone    = "done"
	AckFailed  = "failed"
	AckRefused = "refused"
	AckExpired = "expired"
)

// commandWorker answers the commands of every session, one at a time,
// until ctx ends.
func (a *Agent) commandWorker(ctx context.Context, cmds <-chan []byte) {
	for {
		select {
		case <-ctx.Done():
			return
		case raw := <-cmds:
			a.handleCommand(ctx, raw)
		}
	}
}

func (a *Agent) handleCommand(ctx context.Context, raw []byte) {
	var m commandMessage
	if err := json.Unmarshal(raw, &m); err != nil || m.V != 1 || !validID(m.ID) {
		a.log.Warn("agent: ignoring a malformed message on the cmd topic", "bytes", len(raw))
		return
	}
	a.mu.Lock()
	prev := a.seen.get(m.ID)
	a.mu.Unlock()
	if prev != nil {
		a.queueAck(prev)
		return
	}
	ack := ackMessage{V: 1, Command: m.ID}
	switch {
	case !m.ExpiresAt.IsZero() && !a.now().Before(m.ExpiresAt):
		ack.Status, ack.Error = AckExpired, "command expired before it ran"
	case a.cfg.OnCommand == nil:
		ack.Status, ack.Error = AckRefused, "this agent accepts no unverified commands"
	default:
		err := a.cfg.OnCommand(ctx, Command{ID: m.ID, ExpiresAt: m.ExpiresAt, Body: m.Body, Raw: raw})
		if err != nil {
			ack.Status, ack.Error = AckFailed, oneLine([]byte(err.Error()))
		} else {
			ack.Status = AckDone
		}
	}
	b, err := json.Marshal(ack)
	if err != nil {
		return
	}
	a.log.Info("agent: command answered", "command", m.ID, "status", ack.Status)
	a.mu.Lock()
	a.seen.put(m.ID, b)
	a.mu.Unlock()
	a.queueAck(b)
}

// queueAck queues an answer for the ack topic, dropping the oldest beyond
// maxAcks (Ward then sees the command as delivered, not acked).
func (a *Agent) queueAck(b []byte) {
	a.mu.Lock()
	if len(a.acks) >= maxAcks {
		a.acks = a.acks[1:]
		a.log.Warn("agent: too many unsent command answers; dropped the oldest")
	}
	a.acks = append(a.acks, b)
	a.mu.Unlock()
	notify(a.wake)
}
