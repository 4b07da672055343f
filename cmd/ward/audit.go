package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "The audit log: who did what, when, with which outcome",
	}
	cmd.AddCommand(newAuditListCmd(g))
	return cmd
}

func newAuditListCmd(g *globals) *cobra.Command {
	var f client.AuditFilter
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List audit entries, oldest first",
		Example: "  ward audit list --action device. --limit 50\n  ward audit list --target device:7yq3k2m4n5p6r7s8t9u2v3w4x5 -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			es, err := c.Audit(cmd.Context(), f)
			if err != nil {
				return err
			}
			return g.render(cmd, struct {
				Items []client.AuditEntry `json:"items"`
			}{es}, func(w io.Writer) error {
				rows := make([][]string, 0, len(es))
				for _, e := range es {
					rows = append(rows, []string{fmt.Sprint(e.Seq), e.At.UTC().Format("2006-01-02 15:04:05"), e.Actor, e.Action, e.Target, e.Outcome, e.Reason})
				}
				if err := table(w, []string{"SEQ", "TIME (UTC)", "ACTOR", "ACTION", "TARGET", "OUTCOME", "REASON"}, rows); err != nil {
					return err
				}
				if f.Limit > 0 && len(es) == f.Limit {
					_, err := fmt.Fprintf(w, "(more: --after %d)\n", es[len(es)-1].Seq)
					return err
				}
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Target, "target", "", "only this target, e.g. device:<id> or manufacturer:<id>")
	fl.StringVar(&f.Action, "action", "", "only actions starting with this, e.g. device. or enroll.")
	fl.StringVar(&f.Outcome, "outcome", "", "only this outcome: success, denied, pending, failed")
	fl.Int64Var(&f.After, "after", 0, "only entries after this sequence number")
	fl.IntVar(&f.Limit, "limit", 100, "at most this many entries (1 to 1000)")
	return cmd
}
