package gateway

import (
	"time"

	"github.com/wardhq/ward/protocol"
)

// Limits bound what one device, one source address and the whole node may
// do. Zero values take the defaults below; a negative rate disables that
// limit.
type Limits struct {
	// MaxPayload bounds one message's payload (default protocol.MaxPayload).
	MaxPayload int
	// MsgRate and MsgBurst are a token bucket of messages per device and
	// connection (default 50/s, burst 100). A message over the rate is
	// refused (PUBACK 0x96 for MQTT 5 QoS 1, dropped otherwise); a device
	// that keeps at it, more than MsgBurst refusals in a row, is
	// disconnected with 0x96.
	MsgRate  float64
	MsgBurst int
	// ConnectRatePerDevice and ConnectBurstPerDevice bound connection
	// attempts per device id (default 1/s, burst 5).
	ConnectRatePerDevice  float64
	ConnectBurstPerDevice int
	// ConnectRatePerSource and ConnectBurstPerSource bound connection
	// attempts per source IP address, checked before the TLS handshake
	// (default 20/s, burst 50). Sites whose devices share one NAT address
	// may need more.
	ConnectRatePerSource  float64
	ConnectBurstPerSource int
	// MaxInflight bounds unacknowledged QoS 1 messages per client in each
	// direction (default 32).
	MaxInflight int
	// MaxConnections bounds concurrent connections on this node, checked
	// before the TLS handshake (default 100,000).
	MaxConnections int
	// HandshakeTimeout bounds the TLS handshake and the wait for CONNECT
	// (default 10s).
	HandshakeTimeout time.Duration
}

// Defaults.
const (
	DefaultMsgRate               = 50
	DefaultMsgBurst              = 100
	DefaultConnectRatePerDevice  = 1
	DefaultConnectBurstPerDevice = 5
	DefaultConnectRatePerSource  = 20
	DefaultConnectBurstPerSource = 50
	DefaultMaxInflight           = 32
	DefaultMaxConnections        = 100_000
	DefaultHandshakeTimeout      = 10 * time.Second
)

func (l Limits) withDefaults() Limits {
	if l.MaxPayload <= 0 {
		l.MaxPayload = protocol.MaxPayload
	}
	if l.MsgRate == 0 {
		l.MsgRate = DefaultMsgRate
	}
	if l.MsgBurst <= 0 {
		l.MsgBurst = DefaultMsgBurst
	}
	if l.ConnectRatePerDevice == 0 {
		l.ConnectRatePerDevice = DefaultConnectRatePerDevice
	}
	if l.ConnectBurstPerDevice <= 0 {
		l.ConnectBurstPerDevice = DefaultConnectBurstPerDevice
	}
	if l.ConnectRatePerSource == 0 {
		l.ConnectRatePerSource = DefaultConnectRatePerSource
	}
	if l.ConnectBurstPerSource <= 0 {
		l.ConnectBurstPerSource = DefaultConnectBurstPerSource
	}
	if l.MaxInflight <= 0 {
		l.MaxInflight = DefaultMaxInflight
	}
	if l.MaxInflight > 65535 {
		l.MaxInflight = 65535
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	return l
}
