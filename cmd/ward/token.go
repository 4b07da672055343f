package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "token",
		Aliases: []string{"tokens"},
		Short:   "API tokens for automation: scoped to roles and sites, expiring, revocable",
	}
	cmd.AddCommand(newTokenCreateCmd(g), newTokenListCmd(g), newTokenRevokeCmd(g))
	return cmd
}

func newTokenCreateCmd(g *globals) *cobra.Command {
	var (
		req   client.TokenRequest
		roles []string
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME --role ROLE [--role ROLE…] [--site SITE…] [--ttl 720h]",
		Short: "Create an API token; its secret is printed once",
		Long: `Create an API token holding some of your own roles (never more than you
hold) and, optionally, only some sites. The secret is printed once: Ward
keeps only its hash and cannot show it again. Store it in a secret manager
at once; anyone holding it acts with the token's roles.`,
		Example: "  ward token create --name ci-rollouts --role biomed --site Main --ttl 720h\n" +
			"  ward token create --name siem-export --role auditor -o json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, r := range roles {
				for _, x := range strings.Split(r, ",") {
					if x = strings.TrimSpace(x); x != "" {
						req.Roles = append(req.Roles, x)
					}
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			secret, t, err := c.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "Store this token now: it is shown only once, and anyone holding it acts with its roles.")
			return g.render(cmd, struct {
				Token  client.Token `json:"token"`
				Secret string       `json:"secret"`
			}{t, secret}, func(w io.Writer) error {
				if err := fields(w, "ID", t.ID, "Name", t.Name, "Roles", strings.Join(t.Roles, ","), "Sites", strings.Join(t.Sites, ","),
					"Expires", whenp(t.ExpiresAt)); err != nil {
					return err
				}
				_, err := fmt.Fprintf(w, "\n%s\n", secret)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "what the token is for (required)")
	f.StringSliceVar(&roles, "role", nil, "a role the token holds (required; repeat or comma-separate): admin, security, biomed, release, pharmacist, clinician, auditor, viewer")
	f.StringSliceVar(&req.Sites, "site", nil, "a site the token may act on (repeat; default: your sites)")
	f.StringVar(&req.TTL, "ttl", "", "lifetime, e.g. 720h (default 2160h, 90 days; at most 8784h)")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

func newTokenListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List API tokens (never their secrets)",
		Example: "  ward token list\n  ward token list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.Tokens(cmd.Context())
			if err != nil {
				return err
			}
			return g.render(cmd, struct {
				Items []client.Token `json:"items"`
			}{ts}, func(w io.Writer) error {
				rows := make([][]string, 0, len(ts))
				for _, t := range ts {
					state := "valid"
					if t.RevokedAt != nil {
						state = "revoked"
					}
					rows = append(rows, []string{t.ID, t.Name, strings.Join(t.Roles, ","), strings.Join(t.Sites, ","), state,
						when(t.CreatedAt), t.CreatedBy, whenp(t.ExpiresAt), whenp(t.LastUsedAt)})
				}
				return table(w, []string{"ID", "NAME", "ROLES", "SITES", "STATE", "CREATED", "BY", "EXPIRES", "LAST USED"}, rows)
			})
		},
	}
}

func newTokenRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Short:   "Revoke an API token at once",
		Example: "  ward token revoke 3kq7m2x9d4hf6a2b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.RevokeToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, t, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Token %s (%s) revoked\n", t.ID, t.Name)
				return err
			})
		},
	}
}
