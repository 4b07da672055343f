package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "The audit log: who did what, when, with which outcome",
	}
	cmd.AddCommand(newAuditListCmd(g), newAuditVerifyCmd(g), newAuditExportCmd(g))
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

func newAuditVerifyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Prove the audit chain whole, or name the first bad entry",
		Long: `Asks the server to re-hash the whole audit chain and check every signed
checkpoint. It exits 0 when the chain is whole and 1, naming the first bad
entry, when anything was edited, deleted, reordered or cut off.`,
		Example: "  ward audit verify\n  ward audit verify -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.VerifyAudit(cmd.Context())
			if err != nil {
				return err
			}
			err = g.render(cmd, r, func(w io.Writer) error {
				if r.OK {
					fmt.Fprintln(w, "audit chain OK")
				} else {
					fmt.Fprintf(w, "audit chain BROKEN at entry %d: %s\n", r.FirstBad, r.Problem)
				}
				key := r.KeyID
				if key == "" {
					key = "none configured: checkpoint signatures not checked"
				}
				return fields(w,
					"Entries", fmt.Sprint(r.Entries),
					"Last entry", fmt.Sprint(r.LastSeq),
					"Last hash", r.LastHash,
					"Checkpoints", fmt.Sprint(r.Checkpoints),
					"Last checkpoint", fmt.Sprint(r.LastCheckpoint),
					"Checkpoint key", key,
				)
			})
			if err != nil {
				return err
			}
			if !r.OK {
				return exitError{code: 1}
			}
			return nil
		},
	}
}

func newAuditExportCmd(g *globals) *cobra.Command {
	var (
		o   client.AuditExport
		out string
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export audit entries as JSON lines or CEF, for a SIEM or an auditor",
		Long: `Streams audit entries, oldest first, to standard output or --out FILE.
jsonl writes one JSON object per line with seq, prev_hash and hash, enough to
re-verify the chain independently; cef writes ArcSight CEF events.`,
		Example: "  ward audit export --out audit.jsonl\n  ward audit export --format cef --after 1200 | logger -t ward",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Format != client.AuditJSONL && o.Format != client.AuditCEF {
				return fmt.Errorf("unknown --format %q: use jsonl or cef", o.Format)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				return c.ExportAudit(cmd.Context(), cmd.OutOrStdout(), o)
			}
			return exportToFile(cmd, c, o, out)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Format, "format", client.AuditJSONL, "jsonl or cef")
	fl.StringVar(&out, "out", "", "write to this file (mode 0600, replaced only when the export is complete) instead of standard output")
	fl.Int64Var(&o.After, "after", 0, "only entries after this sequence number")
	fl.IntVar(&o.Limit, "limit", 0, "at most this many entries (0: all)")
	return cmd
}

// exportToFile writes the export to a temporary file next to path and
// renames it into place once complete.
func exportToFile(cmd *cobra.Command, c *client.Client, o client.AuditExport, path string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := c.ExportAudit(cmd.Context(), f, o); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Exported %d bytes to %s\n", fi.Size(), path)
	return nil
}
