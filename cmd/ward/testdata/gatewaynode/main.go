// Command gatewaynode is a test helper for gateway_e2e_test.go: one Ward
// node reduced to what device ingest needs (SQLite store, CA, registry,
// embedded NATS with JetStream in the data directory, the MQTT gateway with
// the ingest hook), in its own process so that the test can kill -9 it.
// It prints "ready" once the listener is bound. Until `ward serve` runs the
// gateway, this stands in for it.
//
//	gatewaynode -data DIR -addr 127.0.0.1:PORT   (CA passphrase in WARD_CA_PASSPHRASE)
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
)

func main() {
	data := flag.String("data", "", "data directory")
	addr := flag.String("addr", "127.0.0.1:0", "MQTT listener")
	flag.Parse()
	if err := run(*data, *addr); err != nil {
		fmt.Fprintln(os.Stderr, "gatewaynode:", err)
		os.Exit(1)
	}
}

func run(data, addr string) error {
	ctx := context.Background()
	st, err := store.Open(ctx, "sqlite://"+filepath.Join(data, "ward.db"))
	if err != nil {
		return err
	}
	ca, err := pki.Open(pki.Config{Dir: filepath.Join(data, "ca"), Passphrase: []byte(os.Getenv("WARD_CA_PASSPHRASE"))})
	if err != nil {
		return err
	}
	al := audit.New(st, nil)
	reg, err := fleet.New(ctx, fleet.Config{Store: st, Audit: al})
	if err != nil {
		return err
	}
	b, err := bus.Open(bus.Config{Dir: filepath.Join(data, "bus"), Name: "gatewaynode"})
	if err != nil {
		return err
	}
	srv, err := ca.IssueServer([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	gw, err := gateway.New(gateway.Config{Addr: addr, Cert: func() *tls.Certificate { return &srv }, CA: ca, Fleet: reg,
		Store: st, Audit: al, Conn: b.Conn, Node: "gatewaynode",
		Limits: gateway.Limits{MsgRate: 1e6, MsgBurst: 1e6}}) // the test floods on purpose
	if err != nil {
		return err
	}
	in, err := gateway.NewIngest(ctx, gateway.IngestConfig{JetStream: b.JetStream, Registry: reg, Node: "gatewaynode"})
	if err != nil {
		return err
	}
	if err := gw.AddHook(in, nil); err != nil {
		return err
	}
	go in.Run(ctx)
	fmt.Println("ready", gw.Addr())
	return gw.Run(ctx)
}
