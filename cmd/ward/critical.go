package main

// Critical actions: each asks for something a second person must approve
// (DESIGN §4.5), and prints the pending request.

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

func pendingText(a client.Approval) func(io.Writer) error {
	return func(w io.Writer) error {
		if _, err := fmt.Fprintf(w, "Request %s is pending: a second person with the permission must approve it before %s:\n  ward approval approve %s\n\n",
			a.ID, when(a.Deadline), a.ID); err != nil {
			return err
		}
		return printApproval(w, a)
	}
}

func newManufacturerRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "remove NAME|ID",
		Short:   "Ask to stop trusting a manufacturer's CA (needs a second person's approval)",
		Example: `  ward manufacturer remove "Acme Infusion"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.RemoveManufacturer(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, a, pendingText(a))
		},
	}
}

func newDeviceRevokeManyCmd(g *globals) *cobra.Command {
	var why string
	cmd := &cobra.Command{
		Use:   "revoke-many REF...",
		Short: "Revoke several devices at once, all or none; past the limit it needs a second person",
		Long: `Revoke several devices in one transaction: all of them, or none if one cannot be
revoked. Up to access.mass_revoke_limit devices (default 5) are revoked at once;
more become a request that a second person must approve (ward approval).`,
		Example: `  ward device revoke-many PX-1 PX-2 PX-3 --reason "recalled lot 2026-11"`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if why == "" {
				return fmt.Errorf("--reason is required: the audit log keeps why devices were revoked")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			m, err := c.RevokeDevices(cmd.Context(), args, why)
			if err != nil {
				return err
			}
			if m.Approval != nil {
				return g.render(cmd, m, pendingText(*m.Approval))
			}
			return g.render(cmd, m, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%d devices revoked.\n", len(m.Devices))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&why, "reason", "", "why (kept in the audit log)")
	return cmd
}

func newUserSetRolesCmd(g *globals) *cobra.Command {
	var roles, sites []string
	cmd := &cobra.Command{
		Use:     "set-roles USER --role ROLE... [--site SITE...]",
		Short:   "Ask to replace a person's roles and sites (needs a second person's approval)",
		Example: `  ward user set-roles alice --role biomed --site Main`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.SetUserRoles(cmd.Context(), args[0], splitList(roles), splitList(sites))
			if err != nil {
				return err
			}
			return g.render(cmd, a, pendingText(a))
		},
	}
	cmd.Flags().StringSliceVar(&roles, "role", nil, "role, repeatable")
	cmd.Flags().StringSliceVar(&sites, "site", nil, "site, repeatable; none: every site")
	return cmd
}
