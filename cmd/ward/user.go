package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wardhq/ward/client"
)

func newUserCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "user",
		Aliases: []string{"users"},
		Short:   "People's accounts: create, list, show, disable, unlock, set passwords",
	}
	cmd.AddCommand(newUserCreateCmd(g), newUserListCmd(g), newUserShowCmd(g), newUserDisableCmd(g), newUserUnlockCmd(g), newUserPasswdCmd(g), newUserSetRolesCmd(g))
	return cmd
}

// splitList accepts repeated flags and comma-separated values alike.
func splitList(in []string) []string {
	var out []string
	for _, v := range in {
		for _, x := range strings.Split(v, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
	}
	return out
}

// readPassword reads a password from file, or asks for it twice on a
// terminal, or reads one line of standard input. Never from a flag value:
// that would leave it in the shell history and the process list.
func readPassword(cmd *cobra.Command, file, prompt string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		errw := cmd.ErrOrStderr()
		fmt.Fprint(errw, prompt+": ")
		p1, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(errw)
		if err != nil {
			return "", err
		}
		fmt.Fprint(errw, "Again: ")
		p2, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(errw)
		if err != nil {
			return "", err
		}
		if string(p1) != string(p2) {
			return "", errors.New("the passwords differ")
		}
		return string(p1), nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("no password on standard input (use --password-file, or a terminal)")
	}
	return line, nil
}

func userFields(w io.Writer, u client.User) error {
	state := "enabled"
	if u.Disabled {
		state = "disabled"
	}
	factors := []string{}
	if u.TOTPEnabled {
		factors = append(factors, "totp")
	}
	if u.WebAuthnCredentials > 0 {
		factors = append(factors, "webauthn ("+strconv.Itoa(u.WebAuthnCredentials)+")")
	}
	return fields(w, "ID", u.ID, "Username", u.Username, "Name", u.DisplayName, "E-mail", u.Email,
		"Roles", strings.Join(u.Roles, ","), "Sites", strings.Join(u.Sites, ","), "State", state,
		"Second factors", strings.Join(factors, ","), "External", u.External, "Created", when(u.CreatedAt),
		"Last login", whenp(u.LastLoginAt), "Locked until", whenp(u.LockedUntil))
}

func newUserCreateCmd(g *globals) *cobra.Command {
	var (
		req          client.UserRequest
		roles, sites []string
		passwordFile string
	)
	cmd := &cobra.Command{
		Use:   "create --username NAME --role ROLE [--role ROLE…] [--site SITE…]",
		Short: "Create a local account",
		Long: `Create a local account holding some of your own roles (never more than you
hold). The password comes from --password-file, or is asked for on a
terminal, or is read from standard input; never from a flag. It must have
12 to 1024 characters and differ from the username. A person whose roles
change anything enrols a second factor (TOTP or a security key) at the
first login.`,
		Example: "  ward user create --username jdoe --display-name \"Jane Doe\" --email jdoe@example.org --role biomed --site Main\n" +
			"  ward user create --username audit1 --role auditor --password-file pw.txt",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req.Roles, req.Sites = splitList(roles), splitList(sites)
			c, err := g.client()
			if err != nil {
				return err
			}
			if req.Password, err = readPassword(cmd, passwordFile, "Password for "+req.Username); err != nil {
				return err
			}
			u, err := c.CreateUser(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.render(cmd, u, func(w io.Writer) error { return userFields(w, u) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Username, "username", "", "login name: a-z 0-9 . _ @ - (required)")
	f.StringVar(&req.DisplayName, "display-name", "", "the person's name")
	f.StringVar(&req.Email, "email", "", "the person's e-mail address")
	f.StringSliceVar(&roles, "role", nil, "role, repeatable or comma-separated (required)")
	f.StringSliceVar(&sites, "site", nil, "site the person acts on, repeatable; none: every site")
	f.StringVar(&passwordFile, "password-file", "", "file holding the initial password")
	_ = cmd.MarkFlagRequired("username")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

func newUserListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List accounts",
		Example: "  ward user list\n  ward user list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			us, err := c.Users(cmd.Context())
			if err != nil {
				return err
			}
			return g.render(cmd, struct {
				Items []client.User `json:"items"`
			}{us}, func(w io.Writer) error {
				rows := make([][]string, 0, len(us))
				for _, u := range us {
					state := "enabled"
					switch {
					case u.Disabled:
						state = "disabled"
					case u.LockedUntil != nil:
						state = "locked"
					}
					mfa := ""
					if u.TOTPEnabled || u.WebAuthnCredentials > 0 {
						mfa = "yes"
					}
					rows = append(rows, []string{u.ID, u.Username, strings.Join(u.Roles, ","), strings.Join(u.Sites, ","), state, mfa, whenp(u.LastLoginAt)})
				}
				return table(w, []string{"ID", "USERNAME", "ROLES", "SITES", "STATE", "MFA", "LAST LOGIN"}, rows)
			})
		},
	}
}

// userRefCmd is a command that takes one account (id or username) and
// prints it after acting.
func userRefCmd(g *globals, use, short string, act func(cmd *cobra.Command, c *client.Client, ref string) (client.User, error)) *cobra.Command {
	return &cobra.Command{
		Use:     use + " ID|USERNAME",
		Short:   short,
		Example: "  ward user " + use + " jdoe",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			u, err := act(cmd, c, args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, u, func(w io.Writer) error { return userFields(w, u) })
		},
	}
}

func newUserShowCmd(g *globals) *cobra.Command {
	return userRefCmd(g, "show", "Show an account", func(cmd *cobra.Command, c *client.Client, ref string) (client.User, error) {
		return c.User(cmd.Context(), ref)
	})
}

func newUserDisableCmd(g *globals) *cobra.Command {
	return userRefCmd(g, "disable", "Disable an account and end its sessions", func(cmd *cobra.Command, c *client.Client, ref string) (client.User, error) {
		return c.DisableUser(cmd.Context(), ref)
	})
}

func newUserUnlockCmd(g *globals) *cobra.Command {
	return userRefCmd(g, "unlock", "Clear an account's failed logins and lockout", func(cmd *cobra.Command, c *client.Client, ref string) (client.User, error) {
		return c.UnlockUser(cmd.Context(), ref)
	})
}

func newUserPasswdCmd(g *globals) *cobra.Command {
	var passwordFile string
	cmd := &cobra.Command{
		Use:   "passwd ID|USERNAME",
		Short: "Set an account's password; its sessions end",
		Long: `Set an account's password (needs users:manage and at least the account's
roles). The password comes from --password-file, or is asked for on a
terminal, or is read from standard input. Every session of the account ends.`,
		Example: "  ward user passwd jdoe\n  ward user passwd jdoe --password-file pw.txt",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			pw, err := readPassword(cmd, passwordFile, "New password for "+args[0])
			if err != nil {
				return err
			}
			if err := c.SetUserPassword(cmd.Context(), args[0], pw, ""); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Password of %s set; its sessions have ended.\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&passwordFile, "password-file", "", "file holding the new password")
	return cmd
}
