package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

func newManufacturerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "manufacturer",
		Aliases: []string{"manufacturers", "mfr"},
		Short:   "Manufacturers whose device birth certificates Ward trusts",
	}
	cmd.AddCommand(newManufacturerAddCmd(g), newManufacturerListCmd(g), newManufacturerRemoveCmd(g))
	return cmd
}

func newManufacturerAddCmd(g *globals) *cobra.Command {
	var name, caFile string
	cmd := &cobra.Command{
		Use:   "add",
		Short: "Register a manufacturer and the CA certificate(s) that sign its birth certificates",
		Long: `Register a manufacturer and the PEM CA certificate(s) that sign its devices'
birth certificates (IDevID). From then on, a device presenting a birth
certificate from that CA may ask to enroll. Compare the fingerprint printed
with the one the manufacturer gave you out of band.`,
		Example: `  ward manufacturer add --name "Acme Infusion" --ca acme-device-ca.pem`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pemBytes, err := os.ReadFile(caFile)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			m, err := c.AddManufacturer(cmd.Context(), name, pemBytes)
			if err != nil {
				return err
			}
			return g.render(cmd, m, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Manufacturer %q registered: id %s, CA fingerprint %s\n", m.Name, m.ID, m.Fingerprint)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "manufacturer name (required)")
	f.StringVar(&caFile, "ca", "", "PEM file with the manufacturer's device CA certificate(s) (required)")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("ca")
	return cmd
}

func newManufacturerListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List registered manufacturers",
		Example: "  ward manufacturer list\n  ward manufacturer list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ms, err := c.Manufacturers(cmd.Context())
			if err != nil {
				return err
			}
			return g.render(cmd, struct {
				Items []client.Manufacturer `json:"items"`
			}{ms}, func(w io.Writer) error {
				rows := make([][]string, 0, len(ms))
				for _, m := range ms {
					rows = append(rows, []string{m.ID, m.Name, m.Fingerprint, when(m.CreatedAt), m.CreatedBy})
				}
				return table(w, []string{"ID", "NAME", "CA FINGERPRINT", "CREATED", "BY"}, rows)
			})
		},
	}
}
