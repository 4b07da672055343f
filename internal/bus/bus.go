// Package bus connects Ward's components, and Ward's nodes, over NATS.
//
// There is one code path: components always talk to a NATS connection. On
// a single node the server is embedded in the process (JetStream stored in
// the data directory, no network listener); on several nodes every node
// connects to the same external NATS cluster. Only where the server runs
// changes.
//
// Subjects are named ward.<domain>.<event>; Subject* constants list them.
// Core NATS carries notifications that lose nothing when missed because the
// receiver can re-read the store (a revocation tells other nodes to reload);
// JetStream streams carry what must not be lost (device messages, in the
// gateway).
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Subjects.
const (
	// SubjectRevoked carries a JSON array of certificate serials (hex)
	// that a node revoked; every node reloads its revocation set.
	SubjectRevoked = "ward.fleet.revoked"
	// SubjectManufacturers tells nodes that the manufacturer list changed.
	SubjectManufacturers = "ward.fleet.manufacturers"
	// SubjectDeviceState carries a DeviceState: a device's lifecycle state
	// changed (quarantine, release, revoke, decommission); the gateway of
	// every node applies it to the device's session.
	SubjectDeviceState = "ward.fleet.device.state"
	// SubjectGatewayViolation carries a gateway.Violation (JSON {device,
	// kind, detail, at, count}): a device broke a rule or a limit.
	SubjectGatewayViolation = "ward.gateway.violation"
	// SubjectDevicePrefix starts the subjects of device messages in the
	// JetStream stream StreamDevice: ward.device.batch.<kind>, records of
	// many devices' messages of one kind (gateway.DecodeStreamMsg), kind
	// one of telemetry, events, state, ack (package protocol); earlier
	// versions stored each message on ward.device.<id>.<kind>.
	SubjectDevicePrefix = "ward.device."
	// SubjectCommand carries the id of a queued server command: the node
	// that holds the device's session sends it (gateway.Commands).
	SubjectCommand = "ward.gateway.command"
)

// StreamDevice is the JetStream stream of device messages: everything a
// device published that the gateway acknowledged.
const StreamDevice = "WARD_DEVICE"

// DeviceState is the payload of SubjectDeviceState.
type DeviceState struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// Config says where the bus runs.
type Config struct {
	// URL of an external NATS server or cluster; empty runs one embedded.
	URL string
	// Dir holds the embedded server's JetStream data.
	Dir string
	// Name names this node to NATS.
	Name   string
	Logger *slog.Logger
}

// Bus is a connection to NATS, and the embedded server when there is one.
type Bus struct {
	Conn      *nats.Conn
	JetStream jetstream.JetStream
	embedded  *server.Server
	log       *slog.Logger
}

// Open starts the embedded server if needed and connects.
func Open(cfg Config) (*Bus, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Bus{log: log}
	opts := []nats.Option{
		nats.Name("ward " + cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("bus disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("bus reconnected") }),
	}
	url := cfg.URL
	if url == "" {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("bus: %w", err)
		}
		ns, err := server.NewServer(&server.Options{
			ServerName: cfg.Name,
			DontListen: true,
			JetStream:  true,
			StoreDir:   cfg.Dir,
			NoSigs:     true,
			NoLog:      true,
		})
		if err != nil {
			return nil, fmt.Errorf("bus: embedded server: %w", err)
		}
		ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			ns.Shutdown()
			return nil, errors.New("bus: embedded server did not start within 10s")
		}
		b.embedded = ns
		opts = append(opts, nats.InProcessServer(ns))
		url = ns.ClientURL()
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.shutdownEmbedded()
		return nil, fmt.Errorf("bus: connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		b.shutdownEmbedded()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	b.Conn, b.JetStream = nc, js
	return b, nil
}

// Embedded reports whether the NATS server runs in this process.
func (b *Bus) Embedded() bool { return b.embedded != nil }

// Ping checks the connection with a round trip to the server.
func (b *Bus) Ping(ctx context.Context) error {
	if !b.Conn.IsConnected() {
		return errors.New("bus: not connected")
	}
	d := 2 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	if err := b.Conn.FlushTimeout(d); err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	return nil
}

// Close drains the connection and stops the embedded server.
func (b *Bus) Close() error {
	err := b.Conn.Drain()
	for i := 0; i < 50 && !b.Conn.IsClosed(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	b.Conn.Close()
	b.shutdownEmbedded()
	return err
}

func (b *Bus) shutdownEmbedded() {
	if b.embedded != nil {
		b.embedded.Shutdown()
		b.embedded.WaitForShutdown()
	}
}
