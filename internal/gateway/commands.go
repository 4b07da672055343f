package gateway

// Server commands: other domains send a message to a device's cmd topic and
// learn whether it was delivered and acknowledged.
//
// # Life of a command
//
//	queued ──▶ sent ──▶ delivered ──▶ acked
//	   │         │          (PUBACK)    (ack topic)
//	   └─────────┴──▶ expired (past expires_at before delivery)
//	             └──▶ failed  (PUBACK with an error reason code)
//
// Send records the command as queued and announces it on the bus
// (bus.SubjectCommand); the node that holds the device's session (any node,
// one code path) sends it at QoS 1 on the session and marks it sent once
// it went out in the session's inflight window. A command is also sent
// when the device subscribes to its cmd topic or resumes a session that has
// the subscription, and by a periodic sweep: so a command for an offline
// device waits, queued, in the database (not in the gateway's memory, which
// a restart would lose) and is sent when the device comes back. A sent
// command that is still in the session's inflight window is not sent
// again; one that is not (the connection ended before its PUBACK, a
// restarted node) is sent again to the device's next session. Delivery is
// therefore at least once; the device recognises a repeat by the command
// id.
//
// delivered: the packet id under which the command went out is bound to
// the command before the PUBLISH is written (session.send), and looked up
// when the device's PUBACK for it is read (acked). The binding belongs to
// the session: a device's own QoS 1 publishes use its packet id space, and
// a new session starts afresh.
//
// acked: the device publishes to its ack topic {"v":1,"command":"<id>",…};
// the message goes through ingest into the stream like any other, and the
// durable consumer "ward-commands" records it (a device can only ack its own
// commands).
//
// # On the cmd topic
//
// The device receives the JSON object CommandMessage: {"v":1,"id":…,
// "expires_at":…,"body":"<base64>"}. body is opaque here (signed envelopes
// come with the command-signing issue).

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/protocol"
)

// CommandState is where a command is in its life.
type CommandState string

// Command states.
const (
	CommandQueued    CommandState = "queued"
	CommandSent      CommandState = "sent"
	CommandDelivered CommandState = "delivered"
	CommandAcked     CommandState = "acked"
	CommandExpired   CommandState = "expired"
	CommandFailed    CommandState = "failed"
)

// rank orders the states of a command that is going well; 0 for the
// final states that end it otherwise.
func (s CommandState) rank() int {
	switch s {
	case CommandQueued:
		return 1
	case CommandSent:
		return 2
	case CommandDelivered:
		return 3
	case CommandAcked:
		return 4
	}
	return 0
}

// Final reports whether nothing more will happen to a command in state s.
func (s CommandState) Final() bool {
	return s == CommandAcked || s == CommandExpired || s == CommandFailed
}

// Command is a server command and what became of it.
type Command struct {
	ID          string          `json:"id"`
	DeviceID    string          `json:"device_id"`
	PayloadHash string          `json:"payload_hash"` // SHA-256 of the body, hex
	State       CommandState    `json:"state"`
	CreatedAt   time.Time       `json:"created_at"`
	ExpiresAt   time.Time       `json:"expires_at"`
	SentAt      *time.Time      `json:"sent_at,omitempty"`
	DeliveredAt *time.Time      `json:"delivered_at,omitempty"`
	AckedAt     *time.Time      `json:"acked_at,omitempty"`
	AckPayload  json.RawMessage `json:"ack_payload,omitempty"`
	Error       string          `json:"error,omitempty"`
}

// CommandMessage is what a device receives on its cmd topic.
type CommandMessage struct {
	V         int       `json:"v"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
	Body      []byte    `json:"body"`
}

// AckMessage is what a device publishes on its ack topic about a command.
// Fields other than v and command are kept as sent (Command.AckPayload).
type AckMessage struct {
	V       int    `json:"v"`
	Command string `json:"command"`
}

var commandIDRE = regexp.MustCompile(`^[a-z2-7]{26}$`)

// ParseAck parses an ack payload: a v1 JSON object (CheckDevicePayload)
// naming a command by its id.
func ParseAck(b []byte) (AckMessage, error) {
	if err := CheckDevicePayload(b); err != nil {
		return AckMessage{}, err
	}
	var a AckMessage
	if err := json.Unmarshal(b, &a); err != nil {
		return AckMessage{}, fmt.Errorf("%w: ack: %v", protocol.ErrBadPayload, err)
	}
	if !commandIDRE.MatchString(a.Command) {
		return AckMessage{}, fmt.Errorf("%w: ack: \"command\" is not a command id", protocol.ErrBadPayload)
	}
	return a, nil
}

// Limits of Send.
const (
	DefaultCommandTTL = time.Hour
	MaxCommandTTL     = 7 * 24 * time.Hour
	MaxCommandBody    = 32 << 10 // base64 in a message of at most protocol.MaxPayload
)

// CommandsConfig configures Commands.
type CommandsConfig struct {
	Store     *store.Store        // required
	Conn      *nats.Conn          // required: announcements between nodes
	JetStream jetstream.JetStream // required: acks from the device stream
	// SweepInterval is how often queued commands of connected devices are
	// sent and overdue ones expired (default 5 s).
	SweepInterval time.Duration
	Logger        *slog.Logger
	Now           func() time.Time
	Rand          io.Reader
}

// Commands sends server commands to devices and tracks them. Add it to the
// gateway with AddHook before Run: the gateway tells it of sessions,
// subscriptions and PUBACKs.
type Commands struct {
	st   *store.Store
	nc   *nats.Conn
	js   jetstream.JetStream
	cfg  CommandsConfig
	log  *slog.Logger
	now  func() time.Time
	rand io.Reader

	sendMu sync.Mutex // serialises sending, so a command is not published twice at once

	mu      sync.Mutex
	clients map[string]*session       // device id → its current session here
	bound   map[commandBinding]string // outgoing packet → command id
	settled map[string]time.Time      // delivered or failed here, DB update maybe pending
	changed chan struct{}             // closed and replaced when a command changes here
}

type commandBinding struct {
	s      *session
	packet uint16
}

// NewCommands returns the command service.
func NewCommands(cfg CommandsConfig) (*Commands, error) {
	if cfg.Store == nil || cfg.Conn == nil || cfg.JetStream == nil {
		return nil, errors.New("gateway: commands need a store, a NATS connection and JetStream")
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = 5 * time.Second
	}
	c := &Commands{st: cfg.Store, nc: cfg.Conn, js: cfg.JetStream, cfg: cfg, log: cfg.Logger, now: cfg.Now, rand: cfg.Rand,
		clients: map[string]*session{}, bound: map[commandBinding]string{}, settled: map[string]time.Time{}, changed: make(chan struct{})}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Reader
	}
	return c, nil
}

var commandIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Send queues payload for the device's cmd topic, valid for ttl (default
// DefaultCommandTTL), and has it sent by the node that holds the device's
// session. The returned command is queued; follow it with Get or Wait.
// Errors: fleet.ErrNotFound (no such device), fleet.ErrState (revoked or
// decommissioned), fleet.ErrInvalid (body too large, ttl out of range).
func (c *Commands) Send(ctx context.Context, deviceID string, payload []byte, ttl time.Duration) (Command, error) {
	if ttl == 0 {
		ttl = DefaultCommandTTL
	}
	if ttl < 0 || ttl > MaxCommandTTL {
		return Command{}, fmt.Errorf("%w: ttl must be between 0 and %s", fleet.ErrInvalid, MaxCommandTTL)
	}
	if len(payload) > MaxCommandBody {
		return Command{}, fmt.Errorf("%w: command body of %d bytes, at most %d", fleet.ErrInvalid, len(payload), MaxCommandBody)
	}
	var state string
	err := c.st.QueryRowContext(ctx, `SELECT state FROM devices WHERE id = ?`, deviceID).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !protocol.ValidDeviceID(deviceID)) {
		return Command{}, fmt.Errorf("%w: device %s", fleet.ErrNotFound, deviceID)
	}
	if err != nil {
		return Command{}, fmt.Errorf("gateway: command: %w", err)
	}
	if s := fleet.State(state); s == fleet.Revoked || s == fleet.Decommissioned {
		return Command{}, fmt.Errorf("%w: device %s is %s", fleet.ErrState, deviceID, s)
	}
	var b [16]byte
	if _, err := io.ReadFull(c.rand, b[:]); err != nil {
		return Command{}, fmt.Errorf("gateway: command id: %w", err)
	}
	now := c.now().UTC()
	h := sha256.Sum256(payload)
	cmd := Command{ID: commandIDEncoding.EncodeToString(b[:]), DeviceID: deviceID, PayloadHash: hex.EncodeToString(h[:]),
		State: CommandQueued, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	msg, err := json.Marshal(CommandMessage{V: 1, ID: cmd.ID, ExpiresAt: cmd.ExpiresAt, Body: payload})
	if err != nil {
		return Command{}, fmt.Errorf("gateway: command: %w", err)
	}
	_, err = c.st.ExecContext(ctx, `INSERT INTO commands (id, device_id, payload_hash, message, created_at, expires_at, state) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		cmd.ID, cmd.DeviceID, cmd.PayloadHash, string(msg), cmd.CreatedAt, cmd.ExpiresAt, cmd.State)
	if err != nil {
		return Command{}, fmt.Errorf("gateway: command: %w", err)
	}
	// Announce it; a lost announcement only delays it until the sweep.
	note, _ := json.Marshal(commandNote{ID: cmd.ID, Device: deviceID})
	if err := c.nc.Publish(bus.SubjectCommand, note); err != nil {
		c.log.Warn("command announcement not sent", "command", cmd.ID, "err", err)
	}
	return cmd, nil
}

type commandNote struct {
	ID     string `json:"id"`
	Device string `json:"device"`
}

const commandColumns = `id, device_id, payload_hash, state, created_at, expires_at, sent_at, delivered_at, acked_at, ack_payload, error`

func scanCommand(row interface{ Scan(...any) error }) (Command, error) {
	var (
		c                     Command
		sent, delivered, ackd sql.NullTime
		ack                   sql.NullString
	)
	if err := row.Scan(&c.ID, &c.DeviceID, &c.PayloadHash, &c.State, &c.CreatedAt, &c.ExpiresAt, &sent, &delivered, &ackd, &ack, &c.Error); err != nil {
		return Command{}, err
	}
	c.CreatedAt, c.ExpiresAt = c.CreatedAt.UTC(), c.ExpiresAt.UTC()
	for _, p := range []struct {
		src sql.NullTime
		dst **time.Time
	}{{sent, &c.SentAt}, {delivered, &c.DeliveredAt}, {ackd, &c.AckedAt}} {
		if p.src.Valid {
			t := p.src.Time.UTC()
			*p.dst = &t
		}
	}
	if ack.Valid {
		c.AckPayload = json.RawMessage(ack.String)
	}
	return c, nil
}

// Get returns a command; fleet.ErrNotFound if there is none.
func (c *Commands) Get(ctx context.Context, id string) (Command, error) {
	cmd, err := scanCommand(c.st.QueryRowContext(ctx, `SELECT `+commandColumns+` FROM commands WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Command{}, fmt.Errorf("%w: command %s", fleet.ErrNotFound, id)
	}
	if err != nil {
		return Command{}, fmt.Errorf("gateway: command %s: %w", id, err)
	}
	return cmd, nil
}

// ErrCommandEnded is returned by Wait when a command ended (expired,
// failed) without reaching the state waited for.
var ErrCommandEnded = errors.New("command ended")

// Wait returns the command once it has reached state (or a later state
// on the way to acked), ErrCommandEnded if it ended otherwise, or ctx's
// error.
func (c *Commands) Wait(ctx context.Context, id string, state CommandState) (Command, error) {
	for {
		c.mu.Lock()
		changed := c.changed
		c.mu.Unlock()
		cmd, err := c.Get(ctx, id)
		if err != nil {
			return cmd, err
		}
		if cmd.State == state || (state.rank() > 0 && cmd.State.rank() >= state.rank()) {
			return cmd, nil
		}
		if cmd.State.Final() {
			return cmd, fmt.Errorf("%w: command %s is %s", ErrCommandEnded, id, cmd.State)
		}
		// Changes made here wake us at once; those made on other nodes
		// (an ack consumed there) are seen by polling.
		select {
		case <-ctx.Done():
			return cmd, ctx.Err()
		case <-changed:
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *Commands) notify() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// Run sends queued commands, expires overdue ones and records acks until
// ctx ends. It needs the device stream (NewIngest creates it).
func (c *Commands) Run(ctx context.Context) error {
	sub, err := c.nc.Subscribe(bus.SubjectCommand, func(m *nats.Msg) {
		var n commandNote
		if json.Unmarshal(m.Data, &n) != nil || !c.local(n.Device) {
			return
		}
		go c.deliver(n.Device)
	})
	if err != nil {
		return fmt.Errorf("gateway: commands: %w", err)
	}
	defer sub.Unsubscribe()
	cons, err := c.js.CreateOrUpdateConsumer(ctx, bus.StreamDevice, jetstream.ConsumerConfig{
		Durable:       ConsumerCommands,
		Description:   "Ward: command acks from devices",
		FilterSubject: bus.SubjectDevicePrefix + "*." + string(protocol.Ack),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("gateway: commands consumer: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		consumeStream(ctx, cons, c.log, c.recordAck)
	}()
	t := time.NewTicker(c.cfg.SweepInterval)
	defer t.Stop()
	for {
		c.sweep(ctx)
		select {
		case <-ctx.Done():
			<-done
			return nil
		case <-t.C:
		}
	}
}

// sweep expires overdue commands and sends the pending ones of devices
// connected here.
func (c *Commands) sweep(ctx context.Context) {
	now := c.now().UTC()
	res, err := c.st.ExecContext(ctx, `UPDATE commands SET state = ? WHERE state IN (?, ?) AND expires_at <= ?`,
		CommandExpired, CommandQueued, CommandSent, now)
	if err != nil {
		c.log.Warn("commands: expiry", "err", err)
	} else if n, _ := res.RowsAffected(); n > 0 {
		c.notify()
	}
	c.mu.Lock()
	for id, at := range c.settled {
		if now.Sub(at) > time.Minute {
			delete(c.settled, id)
		}
	}
	c.mu.Unlock()
	rows, err := c.st.QueryContext(ctx, `SELECT DISTINCT device_id FROM commands WHERE state IN (?, ?) AND expires_at > ?`,
		CommandQueued, CommandSent, now)
	if err != nil {
		c.log.Warn("commands: sweep", "err", err)
		return
	}
	var devices []string
	for rows.Next() {
		var id string
		if rows.Scan(&id) == nil && c.local(id) {
			devices = append(devices, id)
		}
	}
	rows.Close()
	for _, id := range devices {
		c.deliver(id)
	}
}

func (c *Commands) local(deviceID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.clients[deviceID]
	return ok
}

// deliver publishes the device's pending commands that are not already in
// its session's inflight window, if the device is connected here and
// subscribed to its cmd topic.
func (c *Commands) deliver(deviceID string) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	s := c.clients[deviceID]
	inflight := map[string]bool{}
	for k, id := range c.bound {
		if k.s == s {
			inflight[id] = true
		}
	}
	c.mu.Unlock()
	if s == nil || !s.subscribedToCmd() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := c.now().UTC()
	rows, err := c.st.QueryContext(ctx, `SELECT id, message FROM commands WHERE device_id = ? AND state IN (?, ?) AND expires_at > ? ORDER BY created_at, id`,
		deviceID, CommandQueued, CommandSent, now)
	if err != nil {
		c.log.Warn("commands: pending", "device", deviceID, "err", err)
		return
	}
	type pending struct{ id, msg string }
	var todo []pending
	for rows.Next() {
		var p pending
		if rows.Scan(&p.id, &p.msg) == nil {
			todo = append(todo, p)
		}
	}
	rows.Close()
	for _, p := range todo {
		c.mu.Lock()
		_, settled := c.settled[p.id]
		c.mu.Unlock()
		if inflight[p.id] || settled {
			continue
		}
		taken, err := s.send([]byte(p.msg), 1, func(packetID uint16) {
			c.mu.Lock()
			c.bound[commandBinding{s: s, packet: packetID}] = p.id
			c.mu.Unlock()
		})
		if err != nil {
			c.log.Warn("command not published", "command", p.id, "device", deviceID, "err", err)
			return
		}
		if !taken {
			c.log.Debug("command not taken by the session, stays pending", "command", p.id)
			continue
		}
		if _, err := c.st.ExecContext(ctx, `UPDATE commands SET state = ?, sent_at = ? WHERE id = ? AND state = ?`,
			CommandSent, c.now().UTC(), p.id, CommandQueued); err != nil {
			c.log.Warn("commands: mark sent", "command", p.id, "err", err)
		}
		c.notify()
	}
}

// recordAck records the acks of a stream message (a record or, from
// earlier versions, a single message). An ack the store did not take naks
// the whole message; recording an ack again changes nothing.
func (c *Commands) recordAck(ctx context.Context, m jetstream.Msg) {
	msgs, err := DecodeStreamMsg(m.Subject(), m.Headers(), m.Data())
	if err != nil || msgs[0].Kind != protocol.Ack {
		c.log.Warn("device stream message not readable, dropped", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	for _, dm := range msgs {
		a, err := ParseAck(dm.Payload)
		if err != nil {
			c.log.Info("command ack ignored", "device", dm.DeviceID, "err", err)
			continue
		}
		at := dm.ReceivedAt
		res, err := c.st.ExecContext(ctx, `UPDATE commands SET state = ?, acked_at = ?, ack_payload = ?, delivered_at = COALESCE(delivered_at, ?)
		WHERE id = ? AND device_id = ? AND state IN (?, ?, ?, ?)`,
			CommandAcked, at, string(dm.Payload), at, a.Command, dm.DeviceID, CommandQueued, CommandSent, CommandDelivered, CommandExpired)
		if err != nil {
			c.log.Warn("command ack not recorded, retrying", "command", a.Command, "err", err)
			_ = m.NakWithDelay(5 * time.Second)
			return
		}
		if n, _ := res.RowsAffected(); n == 0 {
			c.log.Info("command ack for no pending command of the device", "device", dm.DeviceID, "command", a.Command)
		}
	}
	_ = m.Ack()
	c.notify()
}

// What the gateway tells Commands.

// ID names the hook.
func (c *Commands) ID() string { return "ward-commands" }

// sessionUp notes the device's session and, if it resumed one subscribed
// to cmd, sends what is pending.
func (c *Commands) sessionUp(s *session) {
	c.mu.Lock()
	c.clients[s.deviceID] = s
	c.mu.Unlock()
	if s.subscribedToCmd() {
		go c.deliver(s.deviceID)
	}
}

// sessionDown forgets the session and what it had in flight: those
// commands stay sent, and are sent again to the device's next session.
func (c *Commands) sessionDown(s *session) {
	c.mu.Lock()
	if c.clients[s.deviceID] == s {
		delete(c.clients, s.deviceID)
	}
	for k := range c.bound {
		if k.s == s {
			delete(c.bound, k)
		}
	}
	c.mu.Unlock()
}

// subscribed sends pending commands once the device subscribed to cmd.
func (c *Commands) subscribed(s *session) {
	go c.deliver(s.deviceID)
}

// acked marks a command delivered (or failed) when the device's PUBACK for
// its packet id arrives.
func (c *Commands) acked(s *session, pk packets.Packet) {
	k := commandBinding{s: s, packet: pk.PacketID}
	c.mu.Lock()
	id, ok := c.bound[k]
	if ok {
		delete(c.bound, k)
		c.settled[id] = c.now()
	}
	c.mu.Unlock()
	if !ok {
		return
	}
	at := c.now().UTC()
	reason := pk.ReasonCode
	go func() { // never make the device's read loop wait for the database
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		if reason >= 0x80 {
			_, err = c.st.ExecContext(ctx, `UPDATE commands SET state = ?, error = ? WHERE id = ? AND state IN (?, ?)`,
				CommandFailed, fmt.Sprintf("device refused it: PUBACK reason 0x%02x", reason), id, CommandQueued, CommandSent)
		} else {
			_, err = c.st.ExecContext(ctx, `UPDATE commands SET state = ?, delivered_at = ?, sent_at = COALESCE(sent_at, ?) WHERE id = ? AND state IN (?, ?, ?)`,
				CommandDelivered, at, at, id, CommandQueued, CommandSent, CommandExpired)
		}
		if err != nil {
			c.log.Warn("command delivery not recorded", "command", id, "err", err)
		}
		c.notify()
	}()
}
