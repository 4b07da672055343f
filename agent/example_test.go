package agent_test

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"os/signal"

	"github.com/wardhq/ward/agent"
	"github.com/wardhq/ward/protocol"
)

// infusionPump is the product: it knows the medicine, the agent knows
// Ward.
type infusionPump struct{ infusing bool }

func (p *infusionPump) State() any {
	return protocol.StatePayload{V: 1, Mode: "infusing", SoftwareVersion: "2.6A", Idle: !p.infusing}
}
func (p *infusionPump) Idle() bool     { return !p.infusing }
func (p *infusionPump) Telemetry() any { return map[string]any{"rate_ml_h": 125.0, "vtbi_ml": 480.0} }

// A device maker's main: a key store on the device, Ward's root
// provisioned at installation, and the agent running beside the therapy.
func Example() {
	keys, err := agent.NewFileKeyStore("/var/lib/pump/ward")
	if err != nil {
		slog.Error("key store", "err", err)
		return
	}
	// At the factory, once: keys.Signer() creates the device key, the
	// manufacturer's CA signs a birth certificate for its public key, and
	// keys.PutCertificate(agent.CertBirth, chain) stores it.
	rootPEM, err := os.ReadFile("/etc/pump/ward-root.pem")
	if err != nil {
		slog.Error("Ward root", "err", err)
		return
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)

	pump := &infusionPump{infusing: true}
	a, err := agent.New(agent.Config{
		Server:          "ward.hospital.example:8443",
		MQTT:            "ward.hospital.example:8883",
		Roots:           roots,
		Keys:            keys,
		Device:          pump,
		SoftwareVersion: "2.6A",
		Logger:          slog.Default(),
	})
	if err != nil {
		slog.Error("agent", "err", err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go func() {
		// The therapy loop reports what happens; the agent delivers it
		// when it can, and never stops the pump.
		_ = a.Event("occlusion_alarm", map[string]any{"line": "A", "pressure_kpa": 92})
		a.StateChanged()
	}()
	_ = a.Run(ctx) // returns when ctx ends; retries everything else
}
