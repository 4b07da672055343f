package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

func newApprovalCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "approval",
		Aliases: []string{"approvals"},
		Short:   "Two-person requests: critical actions waiting for a second person",
		Long: `Critical actions — removing a manufacturer, revoking more than a few devices
at once, changing a person's roles — are not carried out by the request that
asks for them. They wait here until a second person, different from the
requester and holding the permission the action needs, approves them (which
carries them out) or rejects them, before their deadline (24h by default).`,
	}
	cmd.AddCommand(newApprovalListCmd(g), newApprovalShowCmd(g), newApprovalApproveCmd(g), newApprovalRejectCmd(g))
	return cmd
}

func newApprovalListCmd(g *globals) *cobra.Command {
	var f client.ApprovalFilter
	var all bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List two-person requests, newest first (pending ones unless --all or --state)",
		Example: "  ward approval list\n  ward approval list --all\n  ward approval list --state failed -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.State == "" && !all {
				f.State = client.ApprovalPending
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			as, err := c.Approvals(cmd.Context(), f)
			if err != nil {
				return err
			}
			return g.render(cmd, struct {
				Items []client.Approval `json:"items"`
			}{as}, func(w io.Writer) error {
				rows := make([][]string, 0, len(as))
				for _, a := range as {
					rows = append(rows, []string{a.ID, a.State, a.Kind, a.RequestedBy, when(a.RequestedAt), when(a.Deadline), a.Summary})
				}
				return table(w, []string{"ID", "STATE", "KIND", "REQUESTED BY", "REQUESTED", "DEADLINE", "SUMMARY"}, rows)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.State, "state", "", "only this state: pending, approved, rejected, expired or failed")
	fl.StringVar(&f.Kind, "kind", "", "only this kind, e.g. devices.revoke")
	fl.IntVar(&f.Limit, "limit", 0, "at most this many (server default 100)")
	fl.BoolVar(&all, "all", false, "every state, not only pending")
	return cmd
}

func printApproval(w io.Writer, a client.Approval) error {
	kv := []string{
		"ID", a.ID, "Kind", a.Kind, "Summary", a.Summary, "State", a.State,
		"Requested by", a.RequestedBy, "Requested", when(a.RequestedAt), "Deadline", when(a.Deadline),
		"Decided by", a.DecidedBy, "Decided", whenp(a.DecidedAt),
	}
	if a.Reason != "" {
		kv = append(kv, "Reason", a.Reason)
	}
	if a.ExecutedAt != nil {
		kv = append(kv, "Executed", whenp(a.ExecutedAt))
	}
	if a.Error != "" {
		kv = append(kv, "Error", a.Error)
	}
	if len(a.Result) > 0 && string(a.Result) != "null" {
		kv = append(kv, "Result", string(a.Result))
	}
	kv = append(kv, "Params", string(a.Params))
	return fields(w, kv...)
}

func newApprovalShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "show ID",
		Short:   "Show a two-person request",
		Example: "  ward approval show 3kq7m2x9d4hf6a2b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.Approval(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, a, func(w io.Writer) error { return printApproval(w, a) })
		},
	}
}

func newApprovalApproveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "approve ID",
		Short: "Approve someone else's request, which carries it out now",
		Long: `Approve a pending request made by someone else. The action is carried out
at once, on your authority. Read it first (ward approval show ID): you are
the second person the two-person rule relies on.`,
		Example: "  ward approval show 3kq7m2x9d4hf6a2b\n  ward approval approve 3kq7m2x9d4hf6a2b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.ApproveApproval(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, a, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Approved and carried out: %s\n", a.Summary)
				return err
			})
		},
	}
}

func newApprovalRejectCmd(g *globals) *cobra.Command {
	var why string
	cmd := &cobra.Command{
		Use:     "reject ID --reason TEXT",
		Short:   "Reject a request (or withdraw your own)",
		Example: `  ward approval reject 3kq7m2x9d4hf6a2b --reason "wrong batch: these pumps are in surgery"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(why) == "" {
				return fmt.Errorf("--reason is required")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.RejectApproval(cmd.Context(), args[0], why)
			if err != nil {
				return err
			}
			return g.render(cmd, a, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Rejected: %s\n", a.Summary)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&why, "reason", "", "why (required; the requester and the audit log see it)")
	_ = cmd.MarkFlagRequired("reason")
	return cmd
}
