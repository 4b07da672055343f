package server

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/gateway"
)

// openGateway builds the device MQTT gateway on the bound MQTT listener,
// with durable ingest into the bus and server commands as its hooks. It
// serves with the device listener's certificate (same names, same renewal).
func (s *Server) openGateway(ctx context.Context, al *audit.Log, now func() time.Time) error {
	gc := s.cfg.Gateway
	s.history = gateway.NewHistory(gateway.HistoryConfig{Store: s.store, Retention: time.Duration(gc.HistoryRetention),
		Logger: s.log.With("component", "gateway"), Now: now})
	var err error
	s.gateway, err = gateway.New(gateway.Config{
		Listener: s.mqttLn,
		Cert:     func() *tls.Certificate { return s.serverCert.Load() },
		CA:       s.ca, Fleet: s.fleet, Store: s.store, Audit: al, Conn: s.bus.Conn, Node: s.cfg.NodeName,
		Limits: gateway.Limits{
			MaxPayload: gc.MaxPayload, MsgRate: gc.MsgRate, MsgBurst: gc.MsgBurst,
			ConnectRatePerDevice: gc.ConnectRatePerDevice, ConnectRatePerSource: gc.ConnectRatePerSource,
			MaxConnections: gc.MaxConnections,
		},
		History: s.history, HistoryRetention: time.Duration(gc.HistoryRetention),
		Logger: s.log.With("component", "gateway"), Now: now,
	})
	if err != nil {
		return err
	}
	if s.ingest, err = gateway.NewIngest(ctx, gateway.IngestConfig{
		JetStream: s.bus.JetStream, Registry: s.fleet, Node: s.cfg.NodeName,
		MaxAge: time.Duration(gc.MessageRetention),
		Logger: s.log.With("component", "ingest"), Now: now,
	}); err != nil {
		return err
	}
	if err := s.gateway.AddHook(s.ingest); err != nil {
		return err
	}
	if s.commands, err = gateway.NewCommands(gateway.CommandsConfig{
		Store: s.store, Conn: s.bus.Conn, JetStream: s.bus.JetStream,
		Logger: s.log.With("component", "commands"), Now: now,
	}); err != nil {
		return err
	}
	return s.gateway.AddHook(s.commands)
}
