package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

func newDeviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "device",
		Aliases: []string{"devices", "dev"},
		Short:   "The device registry: preregister, list, show, approve, reject, revoke, decommission",
		Long: `The device registry. A device is named by REF: its Ward id or, when that is
unambiguous, its serial number.

States: pending (known, not admitted) -> active (holds a certificate) <->
quarantined; revoked and decommissioned are final (revoked may still be
decommissioned).`,
	}
	cmd.AddCommand(
		newDevicePreregisterCmd(g),
		newDeviceListCmd(g),
		newDeviceShowCmd(g),
		newDeviceApproveCmd(g),
		newDeviceReasonCmd(g, "reject", "Reject a pending device for good; it will not be queued again", false,
			func(c *client.Client, cmd *cobra.Command, ref, why string) (client.Device, error) {
				return c.Reject(cmd.Context(), ref, why)
			}),
		newDeviceReasonCmd(g, "revoke", "Revoke every certificate of a device and refuse it on every listener", true,
			func(c *client.Client, cmd *cobra.Command, ref, why string) (client.Device, error) {
				return c.Revoke(cmd.Context(), ref, why)
			}),
		newDeviceReasonCmd(g, "decommission", "Retire a device for good (its certificates are revoked)", false,
			func(c *client.Client, cmd *cobra.Command, ref, why string) (client.Device, error) {
				return c.Decommission(cmd.Context(), ref, why)
			}),
		newDeviceRevokeManyCmd(g),
	)
	cmd.AddCommand(newDeviceGatewayCmds(g)...)
	return cmd
}

func newDevicePreregisterCmd(g *globals) *cobra.Command {
	var p client.Preregistration
	cmd := &cobra.Command{
		Use:   "preregister",
		Short: "Record a purchased device so that its first enrollment is admitted at once",
		Example: `  ward device preregister --serial PX-000123 --manufacturer "Acme Infusion" --model P7 \
      --site Main --unit ICU-3 --tag infusion --tag large-volume`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.Preregister(cmd.Context(), p)
			if err != nil {
				return err
			}
			return g.render(cmd, d, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Device %s (%s %s) preregistered: it will be admitted when it first enrolls.\n", d.ID, d.Manufacturer, d.Serial)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.Serial, "serial", "", "serial number, as in the birth certificate (required)")
	f.StringVar(&p.Manufacturer, "manufacturer", "", "manufacturer name or id (required)")
	f.StringVar(&p.Model, "model", "", "model (required)")
	f.StringVar(&p.Site, "site", "", "site (hospital, building)")
	f.StringVar(&p.Unit, "unit", "", "care unit (e.g. ICU-3)")
	f.StringArrayVar(&p.Tags, "tag", nil, "tag, repeatable")
	for _, n := range []string{"serial", "manufacturer", "model"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

func newDeviceListCmd(g *globals) *cobra.Command {
	var f client.DeviceFilter
	var state string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List devices, ordered by Ward id",
		Long: `List devices, ordered by Ward id, at most --limit of them. When more remain,
the last line says how to see the next page (--after).`,
		Example: "  ward device list --state pending\n  ward device list --site Main --unit ICU-3 -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.State = client.State(state)
			c, err := g.client()
			if err != nil {
				return err
			}
			page, err := c.DevicePage(cmd.Context(), f)
			if err != nil {
				return err
			}
			return g.render(cmd, page, func(w io.Writer) error {
				rows := make([][]string, 0, len(page.Items))
				for _, d := range page.Items {
					rows = append(rows, []string{d.ID, d.Serial, d.Manufacturer, d.Model, string(d.State), siteUnit(d), whenp(d.LastSeenAt)})
				}
				if err := table(w, []string{"ID", "SERIAL", "MANUFACTURER", "MODEL", "STATE", "SITE/UNIT", "LAST SEEN"}, rows); err != nil {
					return err
				}
				if page.Next != "" {
					_, err := fmt.Fprintf(w, "(more: --after %s)\n", page.Next)
					return err
				}
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&state, "state", "", "only devices in this state: pending, active, quarantined, revoked, decommissioned")
	fl.StringVar(&f.Manufacturer, "manufacturer", "", "only this manufacturer (name or id)")
	fl.StringVar(&f.Site, "site", "", "only this site")
	fl.StringVar(&f.Unit, "unit", "", "only this unit")
	fl.StringVar(&f.After, "after", "", "continue after this Ward id")
	fl.IntVar(&f.Limit, "limit", 100, "at most this many devices (1 to 1000)")
	return cmd
}

func siteUnit(d client.Device) string {
	switch {
	case d.Site == "" && d.Unit == "":
		return ""
	case d.Unit == "":
		return d.Site
	case d.Site == "":
		return d.Unit
	}
	return d.Site + "/" + d.Unit
}

func newDeviceShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "show REF",
		Short:   "Show a device and its operational certificates",
		Example: "  ward device show PX-000123\n  ward device show 7yq3k2m4n5p6r7s8t9u2v3w4x5 -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.Device(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, d, func(w io.Writer) error { return printDevice(w, d) })
		},
	}
}

func printDevice(w io.Writer, d client.Device) error {
	approved := whenp(d.ApprovedAt)
	if approved != "" && d.ApprovedBy != "" {
		approved += " (" + d.ApprovedBy + ")"
	}
	cert := d.CertSerial
	if cert != "" {
		cert += " (expires " + whenp(d.CertNotAfter) + ")"
	}
	if err := fields(w,
		"ID", d.ID,
		"Serial", d.Serial,
		"Manufacturer", d.Manufacturer,
		"Model", d.Model,
		"State", string(d.State),
		"State reason", d.StateReason,
		"Site", d.Site,
		"Unit", d.Unit,
		"Tags", strings.Join(d.Tags, ", "),
		"Approved", approved,
		"Created", when(d.CreatedAt),
		"Updated", when(d.UpdatedAt),
		"Enrollment asked", whenp(d.EnrollRequestedAt),
		"Last seen", whenp(d.LastSeenAt),
		"Certificate", cert,
	); err != nil {
		return err
	}
	if len(d.Certificates) == 0 {
		_, err := fmt.Fprintln(w, "\nNo operational certificate issued.")
		return err
	}
	fmt.Fprintln(w, "\nCertificates:")
	rows := make([][]string, 0, len(d.Certificates))
	for _, c := range d.Certificates {
		status := "valid"
		if c.RevokedAt != nil {
			status = "revoked " + whenp(c.RevokedAt)
		}
		rows = append(rows, []string{c.Serial, when(c.IssuedAt), when(c.NotAfter), status})
	}
	return table(w, []string{"SERIAL", "ISSUED", "EXPIRES", "STATUS"}, rows)
}

func newDeviceApproveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "approve REF",
		Short:   "Approve a pending device: its next enrollment gets a certificate",
		Example: "  ward device approve PX-000123",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.Approve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, d, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Device %s (%s %s) approved.\n", d.ID, d.Manufacturer, d.Serial)
				return err
			})
		},
	}
}

func newDeviceReasonCmd(g *globals, verb, short string, reasonRequired bool,
	do func(c *client.Client, cmd *cobra.Command, ref, why string) (client.Device, error)) *cobra.Command {
	var why string
	cmd := &cobra.Command{
		Use:     verb + " REF",
		Short:   short,
		Example: fmt.Sprintf("  ward device %s PX-000123 --reason %q", verb, exampleReason[verb]),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := do(c, cmd, args[0], why)
			if err != nil {
				return err
			}
			return g.render(cmd, d, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Device %s (%s %s) is now %s.\n", d.ID, d.Manufacturer, d.Serial, d.State)
				return err
			})
		},
	}
	help := "why, for the audit log and the device record"
	if reasonRequired {
		help += " (required)"
	}
	cmd.Flags().StringVar(&why, "reason", "", help)
	if reasonRequired {
		_ = cmd.MarkFlagRequired("reason")
	}
	return cmd
}

var exampleReason = map[string]string{
	"reject":       "not in the purchase records",
	"revoke":       "reported stolen from ward 4B",
	"decommission": "end of life, wiped",
	"quarantine":   "unexpected traffic to port 23",
}
