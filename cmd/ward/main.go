// Command ward is Ward's one binary: the server (ward serve), the admin CLI
// (a client of the admin API) and the offline tools (ward ca, ward mfg).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "ward:", err)
		os.Exit(1)
	}
}

// exitError ends the process with a code after its message was printed.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// globals are the flags every client command shares.
type globals struct {
	server    string // admin API base URL
	tokenFile string
	data      string // data dir, where the bootstrap admin token is found
	output    string // "text" or "json"
	caCert    string // extra trust anchor for an https admin API
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "ward",
		Short:         "Security control plane for fleets of connected medical devices",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", envOr("WARD_SERVER", "http://127.0.0.1:8080"), "admin API address (env WARD_SERVER)")
	pf.StringVar(&g.tokenFile, "token-file", os.Getenv("WARD_TOKEN_FILE"), "file holding the admin API token (env WARD_TOKEN, WARD_TOKEN_FILE; default <data>/admin-token)")
	pf.StringVar(&g.data, "data", envOr("WARD_DATA", "./ward-data"), "data directory (env WARD_DATA)")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	pf.StringVar(&g.caCert, "ca-cert", os.Getenv("WARD_CA_CERT"), "PEM CA certificate to trust for an https --server (env WARD_CA_CERT; default <data>/ca/root.crt when present)")

	root.AddCommand(
		newServeCmd(g),
		newCACmd(g),
		newManufacturerCmd(g),
		newDeviceCmd(g),
		newGatewayCmd(g),
		newAuditCmd(g),
		newMfgCmd(g),
		newTokenCmd(g),
		newUserCmd(g),
		newApprovalCmd(g),
		newSimCmd(g),
		newDemoCmd(g),
		newVersionCmd(),
	)
	return root
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
