package sim

// Misbehaviour bouts (see "Misbehaving devices" in fleet.go): a device's
// own credentials used the way a compromised device would, on a raw MQTT 5
// client while its agent is stopped.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"golang.org/x/time/rate"

	"github.com/wardhq/ward/agent"
	"github.com/wardhq/ward/protocol"
)

// boutLimit bounds one bout, whatever it does.
const boutLimit = time.Minute

// bout acts out d's misbehaviour once. It never panics out and never
// returns an error: what Ward refused is the point.
func (f *Fleet) bout(ctx context.Context, d *device) {
	d.mu.Lock()
	d.misbehaving = true
	d.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			f.log.Error("sim: misbehaviour bout panicked", "serial", d.spec.Serial, "panic", fmt.Sprint(r))
		}
		d.mu.Lock()
		d.misbehaving = false
		d.mu.Unlock()
		f.bouts.Add(1)
	}()
	ctx, cancel := context.WithTimeout(ctx, boutLimit)
	defer cancel()
	f.log.Info("sim: device misbehaving", "serial", d.spec.Serial, "misbehaviour", string(d.spec.Misbehave))
	var err error
	switch d.spec.Misbehave {
	case Flood:
		err = f.flood(ctx, d)
	case Probe:
		err = f.probe(ctx, d)
	case AddressHop:
		err = f.hop(ctx, d)
	default:
		err = fmt.Errorf("unknown misbehaviour %q", d.spec.Misbehave)
	}
	if err != nil && ctx.Err() == nil {
		f.log.Warn("sim: misbehaviour bout ended early", "serial", d.spec.Serial,
			"misbehaviour", string(d.spec.Misbehave), "err", err)
	}
}

var _ io.Closer = (*rawSession)(nil)

// rawSession is a bare MQTT 5 session with a device's own credentials.
type rawSession struct {
	c    *paho.Client
	conn net.Conn
	id   string
	gone chan *paho.Disconnect
}

// Close disconnects politely and closes the connection.
func (s *rawSession) Close() error {
	_ = s.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	return s.conn.Close()
}

// dialRaw connects as d (client id = clientID, "" for d's own id) from
// local (nil: the system's choice). A CONNACK refusal is an error naming
// its reason code.
func (f *Fleet) dialRaw(ctx context.Context, d *device, local net.Addr, clientID string) (*rawSession, error) {
	d.mu.Lock()
	ks := d.keys
	d.mu.Unlock()
	key, err := ks.Signer()
	if err != nil {
		return nil, err
	}
	op, err := ks.Certificate(agent.CertOperational)
	if err != nil {
		return nil, err
	}
	id, err := agent.DeviceIDOf(op[0])
	if err != nil {
		return nil, err
	}
	if clientID == "" {
		clientID = id
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: op[0]}
	for _, c := range op {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	name := f.cfg.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(f.cfg.MQTT)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dialer := net.Dialer{LocalAddr: local}
	raw, err := dialer.DialContext(dctx, "tcp", f.cfg.MQTT)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.cfg.Roots, ServerName: name,
		Certificates: []tls.Certificate{cert}, Time: f.now})
	if err := tc.HandshakeContext(dctx); err != nil {
		raw.Close()
		return nil, err
	}
	s := &rawSession{conn: tc, id: id, gone: make(chan *paho.Disconnect, 1)}
	s.c = paho.NewClient(paho.ClientConfig{
		ClientID:      clientID,
		Conn:          agent.NewPacketConn(tc), // one write per packet, as the agent sends
		PacketTimeout: 10 * time.Second,
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case s.gone <- d:
			default:
			}
		},
		OnClientError: func(error) {},
	})
	// paho sizes a channel by the Receive Maximum offered (65,535 when
	// none: half a megabyte).
	recvMax := uint16(16)
	ca, err := s.c.Connect(dctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &recvMax}})
	if err != nil {
		tc.Close()
		if ca != nil {
			return nil, fmt.Errorf("CONNACK 0x%02x", ca.ReasonCode)
		}
		return nil, err
	}
	return s, nil
}

// flood publishes telemetry at FloodRate for FloodDuration, or until Ward
// cuts the connection, from four publishers (QoS 1, each waiting for its
// PUBACK, as a device's MQTT stack would).
func (f *Fleet) flood(ctx context.Context, d *device) error {
	s, err := f.dialRaw(ctx, d, d.local, "")
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(ctx, f.cfg.FloodDuration)
	defer cancel()
	lim := rate.NewLimiter(rate.Limit(f.cfg.FloodRate), max(1, int(f.cfg.FloodRate/10)))
	big := `{"v":1,"pad":"` + strings.Repeat("x", protocol.MaxPayload+1024) + `"}`
	topic := protocol.Topic(s.id, protocol.Telemetry)
	var (
		n, refused atomic.Int64
		wg         sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			for {
				if err := lim.Wait(ctx); err != nil {
					return
				}
				i := n.Add(1)
				payload := fmt.Sprintf(`{"v":1,"flood":%d}`, i)
				if i%25 == 0 {
					payload = big
				}
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				pr, err := s.c.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
				pcancel()
				if pr == nil && err != nil {
					return // the connection ended (or the bout did)
				}
				if pr != nil && pr.ReasonCode >= 0x80 {
					refused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	f.log.Info("sim: flood ended", "serial", d.spec.Serial, "sent", n.Load(), "refused", refused.Load(),
		"disconnected", disconnectReason(s))
	return nil
}

// probe maps the fleet the way malware on a device would: wildcard and
// foreign subscriptions, foreign publishes, another device's client id.
func (f *Fleet) probe(ctx context.Context, d *device) error {
	s, err := f.dialRaw(ctx, d, d.local, "")
	if err != nil {
		return err
	}
	others := f.otherIDs(s.id, 2)
	subs := []string{protocol.TopicPrefix + "+/cmd", protocol.TopicPrefix + "+/telemetry", "#", "$SYS/#"}
	pubs := []string{"$SYS/broker/clients", "ward/v1/admin"}
	for _, o := range others {
		subs = append(subs, protocol.Topic(o, protocol.Cmd), protocol.Topic(o, protocol.Telemetry))
		pubs = append(pubs, protocol.Topic(o, protocol.Telemetry), protocol.Topic(o, protocol.State), protocol.Topic(o, protocol.Cmd))
	}
	refused := 0
	for _, t := range subs {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		sa, err := s.c.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: t, QoS: 1}}})
		cancel()
		if sa != nil && len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80 {
			refused++
		} else if sa == nil && err != nil && ctx.Err() != nil {
			s.Close()
			return err
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			s.Close()
			return ctx.Err()
		}
	}
	body, _ := json.Marshal(map[string]any{"v": 1, "probe": true})
	for _, t := range pubs {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		pr, err := s.c.Publish(pctx, &paho.Publish{Topic: t, QoS: 1, Payload: body})
		cancel()
		if pr != nil && pr.ReasonCode >= 0x80 {
			refused++
		} else if pr == nil && err != nil {
			break // Ward may close the connection; that is an answer too
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			break
		}
	}
	s.Close()
	// Speak for another device: refused at CONNECT.
	impostor := "aaaaaaaaaaaaaaaaaaaaaaaaaa"
	if len(others) > 0 {
		impostor = others[0]
	}
	if s2, err := f.dialRaw(ctx, d, d.local, impostor); err == nil {
		s2.Close()
	} else {
		refused++
	}
	f.log.Info("sim: probe ended", "serial", d.spec.Serial, "tries", len(subs)+len(pubs)+1, "refused", refused)
	return nil
}

// hop connects Hops times, each from another source address, about three
// times a second: faster than Ward's per-device connection rate.
func (f *Fleet) hop(ctx context.Context, d *device) error {
	rng := rand.New(rand.NewPCG(d.spec.Seed, 0x40b))
	ok, refused := 0, 0
	from := map[string]bool{}
	for i := range f.cfg.Hops {
		var local net.Addr
		if n := len(f.cfg.SourceAddrs); n > 0 {
			ip := f.cfg.SourceAddrs[rng.IntN(n)]
			local = &net.TCPAddr{IP: ip.AsSlice()}
			from[ip.String()] = true
		}
		s, err := f.dialRaw(ctx, d, local, "")
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			refused++
		} else {
			ok++
			// One state message, as a cloned device announcing itself.
			st, _ := json.Marshal(d.model.State())
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _ = s.c.Publish(pctx, &paho.Publish{Topic: protocol.Topic(s.id, protocol.State), QoS: 1, Retain: true, Payload: st})
			cancel()
			s.Close()
		}
		if i+1 < f.cfg.Hops && !sleepCtx(ctx, 300*time.Millisecond) {
			return ctx.Err()
		}
	}
	f.log.Info("sim: address hopping ended", "serial", d.spec.Serial, "connected", ok, "refused", refused, "addresses", len(from))
	return nil
}

// otherIDs returns up to n Ward ids of other enrolled devices of the fleet.
func (f *Fleet) otherIDs(self string, n int) []string {
	var out []string
	for _, d := range f.devs {
		if len(out) == n {
			break
		}
		d.mu.Lock()
		a := d.ag
		d.mu.Unlock()
		if a == nil {
			continue
		}
		if id := a.DeviceID(); id != "" && id != self {
			out = append(out, id)
		}
	}
	return out
}

// disconnectReason is the reason code of Ward's DISCONNECT, if it sent one.
func disconnectReason(s *rawSession) string {
	select {
	case d := <-s.gone:
		return fmt.Sprintf("0x%02x", d.ReasonCode)
	default:
		return ""
	}
}
