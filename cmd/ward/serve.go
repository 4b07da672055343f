package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/server"
)

func newServeCmd(g *globals) *cobra.Command {
	var (
		configFile string
		f          = config.Default()
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Ward node",
		Long: `Run a Ward node: the device listener (EST enrollment over mutual TLS 1.3),
the admin API listener, the store and the bus.

With no configuration Ward runs on its embedded default: SQLite and an
embedded NATS server in --data, and a demonstration CA created on first start.
Settings come from defaults, then the --config file (YAML; see
internal/config/ward.reference.yaml), then WARD_* environment variables, then
flags. The CA key passphrase comes from WARD_CA_PASSPHRASE or
ca.passphrase_file, never from a flag.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := config.Default()
			if configFile == "" {
				configFile = os.Getenv("WARD_CONFIG")
			}
			if configFile != "" {
				if err := cfg.LoadFile(configFile); err != nil {
					return err
				}
			}
			if err := cfg.LoadEnv(os.Getenv); err != nil {
				return err
			}
			fl := cmd.Flags()
			root := cmd.Root().PersistentFlags()
			if root.Changed("data") {
				cfg.Data = g.data
			}
			set := func(name string, dst *string, v string) {
				if fl.Changed(name) {
					*dst = v
				}
			}
			set("store", &cfg.Store, f.Store)
			set("bus", &cfg.Bus, f.Bus)
			set("node-name", &cfg.NodeName, f.NodeName)
			set("device-addr", &cfg.DeviceAddr, f.DeviceAddr)
			set("mqtt-addr", &cfg.MQTTAddr, f.MQTTAddr)
			set("admin-addr", &cfg.AdminAddr, f.AdminAddr)
			set("log-format", &cfg.Log.Format, f.Log.Format)
			set("log-level", &cfg.Log.Level, f.Log.Level)
			set("ca-passphrase-file", &cfg.CA.PassphraseFile, f.CA.PassphraseFile)
			if fl.Changed("device-name") {
				cfg.DeviceNames = f.DeviceNames
			}
			if fl.Changed("cert-lifetime") {
				cfg.CA.CertLifetime = f.CA.CertLifetime
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			log, err := newLogger(cfg)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if addr := os.Getenv("WARD_PPROF_ADDR"); addr != "" {
				if err := servePprof(ctx, addr, log); err != nil {
					return err
				}
			}
			start := time.Now()
			srv, err := server.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			go func() {
				select {
				case <-srv.Ready():
					log.Info("ward is ready", "version", server.Version, "data", cfg.Data, "took", time.Since(start).Round(time.Millisecond).String())
				case <-ctx.Done():
				}
			}()
			return srv.Run(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configFile, "config", "", "YAML configuration file (env WARD_CONFIG)")
	fl.StringVar(&f.Store, "store", "", "PostgreSQL URL (postgres://…); default SQLite in the data directory (env WARD_STORE)")
	fl.StringVar(&f.Bus, "bus", "", "external NATS URL (nats://…); default an embedded NATS server with JetStream (env WARD_BUS)")
	fl.StringVar(&f.NodeName, "node-name", f.NodeName, "name of this node (env WARD_NODE_NAME)")
	fl.StringVar(&f.DeviceAddr, "device-addr", f.DeviceAddr, "device HTTPS listener: EST enrollment (env WARD_DEVICE_ADDR)")
	fl.StringVar(&f.MQTTAddr, "mqtt-addr", f.MQTTAddr, "device MQTT listener (env WARD_MQTT_ADDR)")
	fl.StringVar(&f.AdminAddr, "admin-addr", f.AdminAddr, "admin API listener, loopback only for now (env WARD_ADMIN_ADDR)")
	fl.StringSliceVar(&f.DeviceNames, "device-name", nil, "DNS name or IP devices use to reach Ward, repeatable (env WARD_DEVICE_NAMES, comma-separated)")
	fl.StringVar(&f.Log.Format, "log-format", f.Log.Format, "log format: text or json (env WARD_LOG_FORMAT)")
	fl.StringVar(&f.Log.Level, "log-level", f.Log.Level, "log level: debug, info, warn, error (env WARD_LOG_LEVEL)")
	fl.StringVar(&f.CA.PassphraseFile, "ca-passphrase-file", "", "file holding the CA key passphrase (env WARD_CA_PASSPHRASE_FILE; or WARD_CA_PASSPHRASE)")
	fl.Var(&f.CA.CertLifetime, "cert-lifetime", "lifetime of device operational certificates (env WARD_CERT_LIFETIME)")
	return cmd
}

func newLogger(cfg config.Config) (*slog.Logger, error) {
	level, err := cfg.LogLevel()
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return slog.New(h).With("node", cfg.NodeName), nil
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print Ward's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "ward", server.Version)
		},
	}
}

// servePprof serves Go's profiler on a loopback address, for measuring
// (WARD_PPROF_ADDR=127.0.0.1:6060). It is off unless asked for, and never
// off this host: profiles show memory, which may hold secrets.
func servePprof(ctx context.Context, addr string, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("WARD_PPROF_ADDR: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("WARD_PPROF_ADDR: %q is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("WARD_PPROF_ADDR: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() { _ = srv.Serve(ln) }()
	log.Warn("profiler on", "addr", "http://"+ln.Addr().String()+"/debug/pprof/")
	return nil
}
