package gateway

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/wardhq/ward/internal/store"
)

// Reasons a connection ended or was refused, as recorded in the history.
const (
	ReasonClientClose      = "client_close"      // the device sent DISCONNECT or closed the connection
	ReasonKeepaliveTimeout = "keepalive_timeout" // nothing heard for 1.5 × keepalive
	ReasonRevoked          = "revoked"           // revoked or decommissioned: refused, or disconnected live
	ReasonQuarantined      = "quarantined"       // disconnected because of a quarantine (not done today: a quarantine restricts)
	ReasonProtocolError    = "protocol_error"    // malformed MQTT, garbage, a second CONNECT, …
	ReasonRateLimit        = "rate_limit"        // too many connection attempts or messages
	ReasonRefusedAuth      = "refused_auth"      // no certificate, untrusted, expired, device not admitted
	ReasonRefusedClientID  = "refused_client_id" // client id differs from the certificate's device id
	ReasonServerShutdown   = "server_shutdown"   // this node stopped
	ReasonTakenOver        = "session_taken_over"
	ReasonServerBusy       = "server_busy" // MaxConnections reached
)

// Connection is one row of a device's connection history.
type Connection struct {
	ID             string     `json:"id"`
	DeviceID       string     `json:"device_id,omitempty"`
	Node           string     `json:"node"`
	RemoteAddr     string     `json:"remote_addr"`
	CertSerial     string     `json:"cert_serial,omitempty"`
	TLSVersion     string     `json:"tls_version,omitempty"`
	Cipher         string     `json:"cipher,omitempty"`
	MQTTVersion    int        `json:"mqtt_version,omitempty"`
	ClientVersion  string     `json:"client_version,omitempty" doc:"From the CONNECT user property software_version"`
	ConnectedAt    time.Time  `json:"connected_at"`
	DisconnectedAt *time.Time `json:"disconnected_at,omitempty"`
	DurationMS     *int64     `json:"duration_ms,omitempty"`
	Reason         string     `json:"reason,omitempty" doc:"Why it ended or was refused; empty while connected"`
	Detail         string     `json:"detail,omitempty"`
	Refusals       int        `json:"refusals" doc:"Publishes and subscriptions refused during the connection"`
}

// HistoryConfig configures a History.
type HistoryConfig struct {
	Store *store.Store
	// Retention is how long rows are kept (default 90 days).
	Retention time.Duration
	// Queue bounds the rows waiting to be written (default 65536); when it
	// is full, rows are dropped and counted.
	Queue  int
	Logger *slog.Logger
	Now    func() time.Time
}

// DefaultHistoryRetention is how long connection history is kept.
const DefaultHistoryRetention = 90 * 24 * time.Hour

// History is the device connection history in the store. List works
// without Run (the API uses it on any node); Record needs Run, which
// writes rows in batches in the background so the broker never waits for
// the store, and deletes rows older than the retention every hour.
type History struct {
	st        *store.Store
	retention time.Duration
	log       *slog.Logger
	now       func() time.Time

	ops      chan historyOp
	dropped  atomic.Int64
	lastWarn atomic.Int64 // unix seconds
	running  atomic.Bool
}

type historyOp struct {
	insert *Connection // a new row
	end    *Connection // the end of a row: ID, DisconnectedAt, DurationMS, Reason, Detail, Refusals
	flush  chan struct{}
}

// NewHistory returns the history kept in cfg.Store.
func NewHistory(cfg HistoryConfig) *History {
	h := &History{st: cfg.Store, retention: cfg.Retention, log: cfg.Logger, now: cfg.Now}
	if h.retention <= 0 {
		h.retention = DefaultHistoryRetention
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	q := cfg.Queue
	if q <= 0 {
		q = 65536
	}
	h.ops = make(chan historyOp, q)
	return h
}

func newConnectionID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// opened queues a new row; c.ID is set if empty.
func (h *History) opened(c *Connection) {
	if c.ID == "" {
		c.ID = newConnectionID()
	}
	cp := *c
	h.enqueue(historyOp{insert: &cp})
}

// closed queues the end of a row opened before.
func (h *History) closed(id string, at time.Time, connectedAt time.Time, reason, detail string, refusals int) {
	d := at.Sub(connectedAt).Milliseconds()
	h.enqueue(historyOp{end: &Connection{ID: id, DisconnectedAt: &at, DurationMS: &d, Reason: reason, Detail: detail, Refusals: refusals}})
}

// refused queues a row for a connection refused at once.
func (h *History) refused(c Connection) {
	at := c.ConnectedAt
	d := int64(0)
	c.DisconnectedAt, c.DurationMS = &at, &d
	h.opened(&c)
}

func (h *History) enqueue(op historyOp) {
	select {
	case h.ops <- op:
	default:
		n := h.dropped.Add(1)
		now := h.now().Unix()
		if last := h.lastWarn.Load(); now-last >= 60 && h.lastWarn.CompareAndSwap(last, now) {
			h.log.Warn("gateway: connection history queue full; rows dropped", "dropped_total", n)
		}
	}
}

// Dropped returns how many rows were dropped because the queue was full.
func (h *History) Dropped() int64 { return h.dropped.Load() }

// Flush waits until every row queued before it is written (for tests and
// shutdown). It returns at once if Run is not running.
func (h *History) Flush(ctx context.Context) {
	if !h.running.Load() {
		return
	}
	done := make(chan struct{})
	select {
	case h.ops <- historyOp{flush: done}:
	case <-ctx.Done():
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// historyLinger is how long the writer gathers rows before a commit.
const historyLinger = 100 * time.Millisecond

// Run writes queued rows until ctx ends, then writes what is left.
func (h *History) Run(ctx context.Context) error {
	h.running.Store(true)
	defer h.running.Store(false)
	cleanup := time.NewTicker(time.Hour)
	defer cleanup.Stop()
	h.cleanup(ctx)
	batch := make([]historyOp, 0, 1024)
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case op := <-h.ops:
					batch = append(batch, op)
					if len(batch) == cap(batch) {
						h.write(batch)
						batch = batch[:0]
					}
				default:
					h.write(batch)
					return nil
				}
			}
		case <-cleanup.C:
			h.cleanup(ctx)
		case op := <-h.ops:
			batch = append(batch[:0], op)
			// Gather what comes within historyLinger (one flushed commit
			// for many connections during a storm); a Flush writes at once.
			linger := time.NewTimer(historyLinger)
		more:
			for len(batch) < cap(batch) && op.flush == nil {
				select {
				case op = <-h.ops:
					batch = append(batch, op)
				case <-linger.C:
					break more
				case <-ctx.Done():
					break more
				}
			}
			linger.Stop()
			h.write(batch)
			batch = batch[:0]
		}
	}
}

// write stores a batch in one transaction and releases its flush waiters.
func (h *History) write(batch []historyOp) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := h.st.Tx(ctx, func(tx *store.Tx) error {
		for _, op := range batch {
			switch {
			case op.insert != nil:
				c := op.insert
				_, err := tx.ExecContext(ctx, `INSERT INTO device_connections (id, device_id, node, remote_addr, cert_serial, tls_version, cipher, mqtt_version, client_version, connected_at, disconnected_at, duration_ms, reason, detail, refusals)
					VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
					c.ID, c.DeviceID, c.Node, c.RemoteAddr, c.CertSerial, c.TLSVersion, c.Cipher, c.MQTTVersion, clip(c.ClientVersion, 128),
					c.ConnectedAt.UTC(), nullTime(c.DisconnectedAt), nullInt(c.DurationMS), c.Reason, clip(c.Detail, 512), c.Refusals)
				if err != nil {
					return err
				}
			case op.end != nil:
				c := op.end
				_, err := tx.ExecContext(ctx, `UPDATE device_connections SET disconnected_at = ?, duration_ms = ?, reason = ?, detail = ?, refusals = ? WHERE id = ?`,
					nullTime(c.DisconnectedAt), nullInt(c.DurationMS), c.Reason, clip(c.Detail, 512), c.Refusals, c.ID)
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		h.dropped.Add(int64(len(batch)))
		h.log.Error("gateway: write connection history", "rows", len(batch), "err", err)
	}
	for _, op := range batch {
		if op.flush != nil {
			close(op.flush)
		}
	}
}

func (h *History) cleanup(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	res, err := h.st.ExecContext(ctx, `DELETE FROM device_connections WHERE connected_at < ?`, h.now().Add(-h.retention).UTC())
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			h.log.Error("gateway: connection history retention", "err", err)
		}
		return
	}
	if n, _ := res.RowsAffected(); n > 0 {
		h.log.Info("gateway: connection history retention", "deleted", n, "retention", h.retention.String())
	}
}

// List returns a device's most recent connections, newest first; limit
// defaults to 100 and is at most 1000.
func (h *History) List(ctx context.Context, deviceID string, limit int) ([]Connection, error) {
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	rows, err := h.st.QueryContext(ctx, `SELECT id, device_id, node, remote_addr, cert_serial, tls_version, cipher, mqtt_version, client_version, connected_at, disconnected_at, duration_ms, reason, detail, refusals
		FROM device_connections WHERE device_id = ? ORDER BY connected_at DESC, id DESC LIMIT ?`, deviceID, limit)
	if err != nil {
		return nil, fmt.Errorf("gateway: history of %s: %w", deviceID, err)
	}
	defer rows.Close()
	out := []Connection{}
	for rows.Next() {
		var (
			c   Connection
			end sql.NullTime
			dur sql.NullInt64
		)
		if err := rows.Scan(&c.ID, &c.DeviceID, &c.Node, &c.RemoteAddr, &c.CertSerial, &c.TLSVersion, &c.Cipher, &c.MQTTVersion, &c.ClientVersion,
			&c.ConnectedAt, &end, &dur, &c.Reason, &c.Detail, &c.Refusals); err != nil {
			return nil, fmt.Errorf("gateway: history of %s: %w", deviceID, err)
		}
		c.ConnectedAt = c.ConnectedAt.UTC()
		if end.Valid {
			t := end.Time.UTC()
			c.DisconnectedAt = &t
		}
		if dur.Valid {
			c.DurationMS = &dur.Int64
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func nullTime(t *time.Time) sql.NullTime {
	if t == nil {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: t.UTC(), Valid: true}
}

func nullInt(p *int64) sql.NullInt64 {
	if p == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: *p, Valid: true}
}

// clip bounds a string from the network before it is stored, and makes it
// valid UTF-8 without NUL (PostgreSQL refuses both in TEXT).
func clip(s string, n int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "?"), "\x00", "")
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && s[len(s)-1]&0xC0 == 0x80 { // do not cut a UTF-8 sequence
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[len(s)-1] >= 0xC0 {
		s = s[:len(s)-1]
	}
	return s
}
