package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
	"github.com/wardhq/ward/protocol"
)

// cmdInbox collects the command messages a device receives.
type cmdInbox chan gateway.CommandMessage

func (in cmdInbox) handler(t *testing.T) func(paho.PublishReceived) (bool, error) {
	return func(p paho.PublishReceived) (bool, error) {
		var m gateway.CommandMessage
		if err := json.Unmarshal(p.Packet.Payload, &m); err != nil {
			t.Errorf("command message %q: %v", p.Packet.Payload, err)
			return true, nil
		}
		in <- m
		return true, nil
	}
}

func (in cmdInbox) next(t *testing.T) gateway.CommandMessage {
	t.Helper()
	select {
	case m := <-in:
		return m
	case <-time.After(15 * time.Second):
		t.Fatal("no command received")
	}
	return gateway.CommandMessage{}
}

func subscribeCmd(t *testing.T, c *paho.Client, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: protocol.Topic(id, protocol.Cmd), QoS: 1}}})
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe: %v %+v", err, sa)
	}
}

func wait(t *testing.T, cmds *gateway.Commands, id string, state gateway.CommandState) gateway.Command {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := cmds.Wait(ctx, id, state)
	if err != nil {
		t.Fatalf("wait for %s: %v (state %s)", state, err, c.State)
	}
	return c
}

func TestCommands(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		r := newIngRig(t, st)
		ctx := context.Background()

		// Online: queued → delivered (PUBACK) → acked (ack topic).
		id, cert := r.device(t)
		inbox := make(cmdInbox, 4)
		c := r.client(t, id, cert, 0, inbox.handler(t))
		subscribeCmd(t, c, id)
		body := []byte("opaque \x00 command")
		cmd, err := r.cmds.Send(ctx, id, body, time.Minute)
		if err != nil || cmd.State != gateway.CommandQueued || cmd.DeviceID != id {
			t.Fatalf("send: %+v %v", cmd, err)
		}
		m := inbox.next(t)
		if m.V != 1 || m.ID != cmd.ID || string(m.Body) != string(body) || !m.ExpiresAt.Equal(cmd.ExpiresAt) {
			t.Fatalf("device got %+v", m)
		}
		got := wait(t, r.cmds, cmd.ID, gateway.CommandDelivered)
		if got.State != gateway.CommandDelivered || got.DeliveredAt == nil || got.SentAt == nil || got.AckedAt != nil {
			t.Fatalf("delivered: %+v", got)
		}
		t.Logf("queued %s, sent %s, delivered %s", got.CreatedAt.Format(time.RFC3339Nano), got.SentAt.Format(time.RFC3339Nano), got.DeliveredAt.Format(time.RFC3339Nano))
		ack := `{"v":1,"command":"` + cmd.ID + `","result":"applied"}`
		if resp, err := publish(t, c, protocol.Topic(id, protocol.Ack), []byte(ack)); err != nil || resp.ReasonCode != 0 {
			t.Fatalf("ack: %v %+v", err, resp)
		}
		got = wait(t, r.cmds, cmd.ID, gateway.CommandAcked)
		if got.AckedAt == nil || string(got.AckPayload) != ack {
			t.Fatalf("acked: %+v", got)
		}

		// A device cannot ack another device's command.
		other, otherCert := r.device(t)
		oc := r.client(t, other, otherCert, 0, nil)
		cmd2, err := r.cmds.Send(ctx, id, []byte("second"), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		inbox.next(t)
		wait(t, r.cmds, cmd2.ID, gateway.CommandDelivered)
		if resp, err := publish(t, oc, protocol.Topic(other, protocol.Ack), []byte(`{"v":1,"command":"`+cmd2.ID+`"}`)); err != nil || resp.ReasonCode != 0 {
			t.Fatalf("foreign ack: %v %+v", err, resp)
		}
		time.Sleep(500 * time.Millisecond)
		if got, _ := r.cmds.Get(ctx, cmd2.ID); got.State != gateway.CommandDelivered {
			t.Fatalf("after another device's ack: %s", got.State)
		}

		// Offline, clean session: queued until the device connects and
		// subscribes.
		off, offCert := r.device(t)
		cmd3, err := r.cmds.Send(ctx, off, []byte("while offline"), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(600 * time.Millisecond) // a few sweeps
		if got, _ := r.cmds.Get(ctx, cmd3.ID); got.State != gateway.CommandQueued {
			t.Fatalf("offline device's command is %s, want queued", got.State)
		}
		offInbox := make(cmdInbox, 4)
		oc2 := r.client(t, off, offCert, 0, offInbox.handler(t))
		subscribeCmd(t, oc2, off)
		if m := offInbox.next(t); m.ID != cmd3.ID {
			t.Fatalf("after reconnect got %s, want %s", m.ID, cmd3.ID)
		}
		wait(t, r.cmds, cmd3.ID, gateway.CommandDelivered)

		// Offline with a persistent session: the device does not subscribe
		// again; resuming the session is enough.
		ps, psCert := r.device(t)
		psInbox := make(cmdInbox, 4)
		pc := r.client(t, ps, psCert, 300, psInbox.handler(t))
		subscribeCmd(t, pc, ps)
		pc.Disconnect(&paho.Disconnect{})
		deadline := time.Now().Add(5 * time.Second)
		for r.gw.Connected(ps) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cmd4, err := r.cmds.Send(ctx, ps, []byte("to a persistent session"), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		if got, _ := r.cmds.Get(ctx, cmd4.ID); got.State != gateway.CommandQueued {
			t.Fatalf("command for a disconnected persistent session is %s, want queued", got.State)
		}
		r.client(t, ps, psCert, 300, psInbox.handler(t))
		if m := psInbox.next(t); m.ID != cmd4.ID {
			t.Fatalf("after resuming got %s, want %s", m.ID, cmd4.ID)
		}
		wait(t, r.cmds, cmd4.ID, gateway.CommandDelivered)

		// Taken over with clean start off: the new connection continues
		// the session (session present) and gets commands unsubscribed.
		tk, tkCert := r.device(t)
		tkInbox := make(cmdInbox, 4)
		first := r.client(t, tk, tkCert, 300, tkInbox.handler(t))
		subscribeCmd(t, first, tk)
		second := r.clientPresent(t, tk, tkCert, 300, tkInbox.handler(t))
		if !second {
			t.Fatal("takeover without clean start: session present is false")
		}
		cmd5, err := r.cmds.Send(ctx, tk, []byte("after a takeover"), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if m := tkInbox.next(t); m.ID != cmd5.ID {
			t.Fatalf("after the takeover got %s, want %s", m.ID, cmd5.ID)
		}
		wait(t, r.cmds, cmd5.ID, gateway.CommandDelivered)

		// Expiry: a command nobody picks up expires.
		exp, _ := r.device(t)
		cmd6, err := r.cmds.Send(ctx, exp, []byte("never"), 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if got, err := r.cmds.Wait(wctx, cmd6.ID, gateway.CommandDelivered); !errors.Is(err, gateway.ErrCommandEnded) || got.State != gateway.CommandExpired {
			t.Fatalf("unreachable device: %s %v, want expired", got.State, err)
		}

		// Refusals.
		if _, err := r.cmds.Send(ctx, "aaaaaaaaaaaaaaaaaaaaaaaaaa", []byte("x"), 0); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("unknown device: %v", err)
		}
		if _, err := r.cmds.Send(ctx, id, make([]byte, gateway.MaxCommandBody+1), 0); !errors.Is(err, fleet.ErrInvalid) {
			t.Fatalf("oversized: %v", err)
		}
		if _, err := r.reg.Revoke(ctx, "token:test", id, "stolen"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.cmds.Send(ctx, id, []byte("x"), 0); !errors.Is(err, fleet.ErrState) {
			t.Fatalf("revoked device: %v", err)
		}
		if _, err := r.cmds.Get(ctx, "nosuchcommand"); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("unknown command: %v", err)
		}
	})
}

func TestParseAck(t *testing.T) {
	good := `{"v":1,"command":"abcdefghijklmnopqrstuvwxyz","status":"ok"}`
	if a, err := gateway.ParseAck([]byte(good)); err != nil || a.Command != "abcdefghijklmnopqrstuvwxyz" {
		t.Fatalf("%+v %v", a, err)
	}
	for _, bad := range []string{``, `{}`, `{"v":1}`, `{"v":2,"command":"abcdefghijklmnopqrstuvwxyz"}`,
		`{"v":1,"command":"ABC"}`, `{"v":1,"command":1}`, `{"v":1,"command":"abcdefghijklmnopqrstuvwxyz"} x`,
		"{\"v\":1,\"command\":\"abcdefghijklmnopqrstuvwxyz\",\"x\":\"\xff\"}"} {
		if _, err := gateway.ParseAck([]byte(bad)); !errors.Is(err, protocol.ErrBadPayload) {
			t.Errorf("ParseAck(%q) = %v, want ErrBadPayload", bad, err)
		}
	}
}

// FuzzDevicePayload: whatever a device sends, parsing neither panics nor
// accepts what the contract refuses.
func FuzzDevicePayload(f *testing.F) {
	for _, s := range []string{`{"v":1}`, `{"v":1,"command":"abcdefghijklmnopqrstuvwxyz"}`, `{"v":1.0}`, `{"v":"1"}`,
		`[]`, `null`, `{"v":1}{"v":1}`, `{"v":1,"v":2}`, "{\"v\":1,\"a\":\"\xff\"}", `{"v":1,"mode":"idle","idle":true}`,
		`{"v":1e0}`, ` {"v":1} `, `{"v":01}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := gateway.CheckDevicePayload(b)
		if err != nil && !errors.Is(err, protocol.ErrBadPayload) {
			t.Fatalf("error not ErrBadPayload: %v", err)
		}
		if err == nil {
			if len(b) > protocol.MaxPayload {
				t.Fatalf("accepted %d bytes", len(b))
			}
			var obj map[string]json.RawMessage
			if json.Unmarshal(b, &obj) != nil || obj == nil || !strings.Contains(string(obj["v"]), "1") {
				t.Fatalf("accepted %q", b)
			}
		}
		a, aerr := gateway.ParseAck(b)
		if aerr == nil {
			if err != nil {
				t.Fatalf("ParseAck accepted what CheckDevicePayload refuses: %q", b)
			}
			if len(a.Command) != 26 || strings.Trim(a.Command, "abcdefghijklmnopqrstuvwxyz234567") != "" {
				t.Fatalf("ParseAck accepted command id %q", a.Command)
			}
		}
		// Stored state passes through the registry as JSON.
		if err == nil && !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
	})
}
