package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"
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
	ClientVersion  string     `json:"client_version,omitempty"`
	ConnectedAt    time.Time  `json:"connected_at"`
	DisconnectedAt *time.Time `json:"disconnected_at,omitempty"`
	DurationMS     *int64     `json:"duration_ms,omitempty"`
	// Reason is why it ended or was refused (client_close,
	// keepalive_timeout, revoked, protocol_error, rate_limit, refused_auth,
	// refused_client_id, server_shutdown, …); empty while connected.
	Reason   string `json:"reason,omitempty"`
	Detail   string `json:"detail,omitempty"`
	Refusals int    `json:"refusals"`
}

// Quarantine restricts a device's session, on whichever node it is
// connected, within a second; why is required.
func (c *Client) Quarantine(ctx context.Context, ref, why string) (Device, error) {
	p, err := refPath(ref)
	if err != nil {
		return Device{}, err
	}
	var out Device
	err = c.do(ctx, http.MethodPost, p+"/quarantine", nil, struct {
		Reason string `json:"reason"`
	}{why}, &out)
	return out, err
}

// Release lifts a device's quarantine.
func (c *Client) Release(ctx context.Context, ref string) (Device, error) {
	p, err := refPath(ref)
	if err != nil {
		return Device{}, err
	}
	var out Device
	err = c.do(ctx, http.MethodPost, p+"/release", nil, nil, &out)
	return out, err
}

// History returns a device's most recent connections, newest first
// (limit 0: the server's default, 100).
func (c *Client) History(ctx context.Context, ref string, limit int) ([]Connection, error) {
	p, err := refPath(ref)
	if err != nil {
		return nil, err
	}
	var q url.Values
	if limit > 0 {
		q = url.Values{"limit": {strconv.Itoa(limit)}}
	}
	var out struct {
		Items []Connection `json:"items"`
	}
	err = c.do(ctx, http.MethodGet, p+"/history", q, nil, &out)
	return out.Items, err
}

// GatewayStatus is a node's device gateway at a glance: its MQTT sessions
// now, and what it refused and stored since it started. Counters are per
// node and start at zero with it.
type GatewayStatus struct {
	Node           string           `json:"node"`
	Address        string           `json:"address"`
	Since          time.Time        `json:"since"`
	Connected      int64            `json:"connected"`
	Refused        map[string]int64 `json:"refused"`    // refused connections by reason
	Violations     map[string]int64 `json:"violations"` // refused messages, subscriptions and attempts by kind
	HistoryDropped int64            `json:"history_dropped"`
	Messages       GatewayMessages  `json:"messages"`
}

// GatewayMessages counts what devices published to a node.
type GatewayMessages struct {
	Stored       uint64 `json:"stored"`        // new messages in the stream
	Records      uint64 `json:"records"`       // stream records they were stored in
	Duplicates   uint64 `json:"duplicates"`    // redeliveries already stored
	Invalid      uint64 `json:"invalid"`       // refused: payload not a v1 JSON object
	Unauthorized uint64 `json:"unauthorized"`  // refused: not the device's own topic
	StoreFailed  uint64 `json:"store_failed"`  // refused: the stream did not store it
	StateUpdates uint64 `json:"state_updates"` // last known states written
}

// GatewayStatus returns the device gateway's status on the node that
// answers.
func (c *Client) GatewayStatus(ctx context.Context) (GatewayStatus, error) {
	var out GatewayStatus
	err := c.do(ctx, http.MethodGet, "/api/v1/gateway", nil, nil, &out)
	return out, err
}

// Metrics returns the answering node's metrics (GET /metrics), in
// Prometheus's text format: the gateway's figures of GatewayStatus, the
// node's version, the Go runtime and the process.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	var raw json.RawMessage // not JSON: do keeps a RawMessage as it came
	err := c.do(ctx, http.MethodGet, "/metrics", nil, nil, &raw)
	return raw, err
}
