package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/server"
	"github.com/wardhq/ward/internal/sim"
)

// demoUnits are the hospital units of ward demo.
var demoUnits = []string{"ICU", "ED", "Oncology", "Med-Surg", "NICU"}

func newDemoCmd(g *globals) *cobra.Command {
	o := &simOptions{preregister: true}
	var adminAddr, deviceAddr, mqttAddr, logLevel string
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start Ward with a simulated hospital fleet, in one command",
		Long: `Start a Ward node in this process on a fresh data directory (a new
temporary directory, removed on exit unless --keep; or --data), with its
embedded defaults, then a simulated manufacturer and a fleet of medical
devices (infusion pumps, patient monitors, insulin pumps) spread over a
few hospital units. It prints the admin API's address and the one-time
credentials (the bootstrap admin token, and an admin account's password),
says when the whole fleet is active and connected, and runs until Ctrl-C.

Everything listens on loopback only. The listeners take their usual ports
(admin 8080, devices 8443, MQTT 8883) or, when one is taken, a free one.
Not for patient care: the CA, the manufacturer and the devices are
simulated, and the demo CA's passphrase is stored beside its key.`,
		Example: `  ward demo
  ward demo --devices 1000 --misbehave 3
  ward demo --data ./demo-data --keep`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			data, temp := g.data, false
			if !cmd.Root().PersistentFlags().Changed("data") && os.Getenv("WARD_DATA") == "" {
				dir, err := os.MkdirTemp("", "ward-demo-")
				if err != nil {
					return err
				}
				data, temp = dir, true
			}
			if temp && !keep {
				defer os.RemoveAll(data)
			}
			cfg := config.Default()
			cfg.Data, cfg.NodeName = data, "demo"
			cfg.AdminAddr, cfg.DeviceAddr, cfg.MQTTAddr = freeOr(adminAddr), freeOr(deviceAddr), freeOr(mqttAddr)
			cfg.Log.Level = logLevel
			if err := cfg.Validate(); err != nil {
				return err
			}
			log, err := newLogger(cfg)
			if err != nil {
				return err
			}

			// The node gets a context of its own: it stops after the fleet.
			srvCtx, stopSrv := context.WithCancel(context.Background())
			defer stopSrv()
			srv, err := server.New(srvCtx, cfg, log, server.WithNotice(io.Discard),
				server.WithListenHook(func(dev, admin net.Addr) { cfg.DeviceAddr, cfg.AdminAddr = dev.String(), admin.String() }),
				server.WithMQTTHook(func(mqtt net.Addr) { cfg.MQTTAddr = mqtt.String() }))
			if err != nil {
				return err
			}
			srvDone := make(chan error, 1)
			go func() { srvDone <- srv.Run(srvCtx) }()
			stopNode := func() error {
				stopSrv()
				select {
				case err := <-srvDone:
					return err
				case <-time.After(server.ShutdownTimeout + 10*time.Second):
					return errors.New("the Ward node did not stop in time")
				}
			}
			select {
			case <-srv.Ready():
			case err := <-srvDone:
				return fmt.Errorf("ward did not start: %w", err)
			case <-ctx.Done():
				return stopNode()
			}
			booted := time.Since(start)

			tok, err := os.ReadFile(cfg.AdminTokenPath())
			if err != nil {
				return errors.Join(err, stopNode())
			}
			token := strings.TrimSpace(string(tok))
			adminURL := "http://" + cfg.AdminAddr
			c, err := client.New(adminURL, token)
			if err != nil {
				return errors.Join(err, stopNode())
			}
			user, password, err := demoAdmin(ctx, c)
			if err != nil {
				return errors.Join(err, stopNode())
			}

			if len(o.units) == 0 {
				o.units = demoUnits
			}
			o.dir = filepath.Join(cfg.Data, "sim")
			o.deviceAddr, o.mqttAddr = cfg.DeviceAddr, cfg.MQTTAddr
			errw := cmd.ErrOrStderr()
			r := &simRun{o: o, c: c, out: out, errw: errw, tty: isTerminal(errw)}
			r.onConnected = func(p sim.Progress) {
				r.endLine()
				r.mu.Lock()
				fmt.Fprintf(out, "fleet connected: %d/%d devices active and connected %s after start (Ward ready in %s, fleet %s)\n",
					p.EverConnected, p.Total, seconds(time.Since(start)), seconds(booted), seconds(p.AllConnected))
				r.mu.Unlock()
			}
			if err := r.setup(ctx); err != nil {
				return errors.Join(err, stopNode())
			}

			cli := "ward"
			if adminURL != "http://127.0.0.1:8080" {
				cli += " --server " + adminURL
			}
			cli += " --data " + shellQuote(cfg.Data)
			removed := ""
			if temp && !keep {
				removed = " (removed on exit; --keep keeps it)"
			}
			fmt.Fprintf(out, "\nWard demo: %s in %s.\n\n", describeFleet(r.specs), strings.Join(o.units, ", "))
			_ = fields(out,
				"  Admin API", adminURL+"  (OpenAPI: "+adminURL+"/api/v1/openapi.json)",
				"  Admin token", token+"  (shown once; also in "+cfg.AdminTokenPath()+")",
				"  Admin user", user+" / "+password,
				"  Devices", "EST https://"+cfg.DeviceAddr+", MQTT "+cfg.MQTTAddr,
				"  Data", cfg.Data+removed,
			)
			fmt.Fprintf(out, "\nTry:\n  %s device list --limit 1000\n  %s device history %s\n  %s gateway status\n  curl -sH \"Authorization: Bearer $(cat %s)\" %s/metrics | grep ^ward_\n\nCtrl-C stops the fleet and Ward.\n\n",
				cli, cli, r.specs[0].Serial, cli, shellQuote(cfg.AdminTokenPath()), adminURL)

			runErr := r.fleet.Run(ctx)
			r.endLine()
			fmt.Fprintln(out, "Stopping: the fleet has disconnected; stopping Ward.")
			p := r.fleet.Progress()
			if err := errors.Join(runErr, stopNode()); err != nil {
				return err
			}
			fmt.Fprintf(out, "Stopped after %s: %d devices, %d events delivered.\n", seconds(time.Since(start)), p.Total, p.Delivered)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&adminAddr, "admin-addr", "127.0.0.1:8080", "admin API listener (a free port if taken)")
	f.StringVar(&deviceAddr, "device-addr", "127.0.0.1:8443", "device listener, EST (a free port if taken)")
	f.StringVar(&mqttAddr, "mqtt-addr", "127.0.0.1:8883", "device MQTT listener (a free port if taken)")
	f.StringVar(&logLevel, "log-level", "error", "Ward's log level: debug, info, warn, error")
	f.BoolVar(&keep, "keep", false, "keep the temporary data directory on exit")
	o.flags(cmd, 200, demoUnits, "")
	_ = f.MarkHidden("dir") // always <data>/sim
	return cmd
}

// demoAdmin creates the account "admin" with a random password and the
// admin role; if it exists (a reused data directory), the password is not
// known.
func demoAdmin(ctx context.Context, c *client.Client) (user, password string, err error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	password = base64.RawURLEncoding.EncodeToString(b[:])
	_, err = c.CreateUser(ctx, client.UserRequest{Username: "admin", DisplayName: "Demo administrator", Password: password, Roles: []string{"admin"}})
	switch {
	case err == nil:
		return "admin", password, nil
	case client.IsConflict(err):
		return "admin", "(exists; password as first shown)", nil
	}
	return "", "", fmt.Errorf("create the demo admin account: %w", err)
}

// freeOr returns addr if it can be listened on now, else the same host
// with a free port.
func freeOr(addr string) string {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		return addr
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return addr // let the node report it
	}
	host, _, _ := net.SplitHostPort(addr)
	ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return addr
	}
	defer ln.Close()
	return ln.Addr().String()
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
