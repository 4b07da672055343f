package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/pki"
)

func newCACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Ward's certificate authority: create it, export its root, show it",
		Long: `Ward's certificate authority: an offline root CA and an online issuing CA
that signs the devices' operational certificates.

"ca init" and "ca export-root" work on the data directory (--data) directly,
without a running server; "ca show" asks the server.`,
	}
	cmd.AddCommand(newCAInitCmd(g), newCAExportRootCmd(g), newCAShowCmd(g))
	return cmd
}

func newCAInitCmd(g *globals) *cobra.Command {
	var name, rootKeyOut, passFile string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the root and issuing CA in <data>/ca (offline)",
		Long: `Create Ward's root CA and issuing CA in <data>/ca, with keys encrypted by the
CA passphrase, taken from the file named by --passphrase-file (env
WARD_CA_PASSPHRASE_FILE) or else from the environment variable
WARD_CA_PASSPHRASE; at least 12 bytes. Run it before the first "ward serve"
(which otherwise creates a demonstration CA). It refuses to touch a directory
that already holds a CA.

The root key signs only the issuing CA. Keep it offline: write it straight to
removable media with --root-key-out, or move <data>/ca/root.key away after
init. ward serve never needs it.`,
		Example: `  WARD_CA_PASSPHRASE_FILE=/run/secrets/ward-ca ward ca init --name "St. Elsewhere" \
      --root-key-out /media/usb/ward-root.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := g.jsonOutput()
			if err != nil {
				return err
			}
			pass, err := pki.ReadPassphrase("WARD_CA_PASSPHRASE", passFile)
			if err != nil {
				return fmt.Errorf("CA passphrase: set WARD_CA_PASSPHRASE or pass --passphrase-file: %w", err)
			}
			dir := filepath.Join(g.data, "ca")
			err = pki.Init(pki.InitConfig{Dir: dir, Passphrase: pass, Name: name, RootKeyOut: rootKeyOut})
			if errors.Is(err, pki.ErrExists) {
				return fmt.Errorf("a CA already exists in %s; refusing to replace it", dir)
			}
			if err != nil {
				return err
			}
			root, err := pki.ReadRoot(dir)
			if err != nil {
				return err
			}
			issuerKey := filepath.Join(dir, pki.IssuerKeyFile)
			rootKey := rootKeyOut
			if rootKey == "" {
				rootKey = filepath.Join(dir, pki.RootKeyFile)
			}
			out := struct {
				Dir             string `json:"dir"`
				RootSubject     string `json:"root_subject"`
				RootFingerprint string `json:"root_fingerprint"`
				RootNotAfter    string `json:"root_not_after"`
				RootCert        string `json:"root_certificate"`
				RootKey         string `json:"root_key"`
				IssuerCert      string `json:"issuer_certificate"`
				IssuerKey       string `json:"issuer_key"`
			}{dir, root.Subject.String(), pki.Fingerprint(root), root.NotAfter.UTC().Format("2006-01-02"),
				filepath.Join(dir, pki.RootCertFile), rootKey, filepath.Join(dir, pki.IssuerCertFile), issuerKey}
			if asJSON {
				return g.render(cmd, out, nil)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Ward CA created in %s\n\n", dir)
			fields(w,
				"Root CA", out.RootSubject,
				"Root fingerprint", out.RootFingerprint,
				"Root valid until", out.RootNotAfter,
				"Root certificate", out.RootCert,
				"Root key", out.RootKey+" (encrypted)",
				"Issuing CA key", out.IssuerKey+" (encrypted; ward serve needs it)",
			)
			fmt.Fprintln(w)
			if rootKeyOut != "" {
				fmt.Fprintf(w, "The root key was written to %s, not to the data directory.\n", rootKeyOut)
				fmt.Fprintln(w, "Keep that medium offline, in a safe; Ward needs the root key only to sign a new issuing CA.")
			} else {
				fmt.Fprintln(w, "Move the root key offline now; Ward needs it only to sign a new issuing CA:")
				fmt.Fprintf(w, "  1. copy %s to removable media (two copies, kept apart, in a safe)\n", rootKey)
				fmt.Fprintln(w, "  2. check each copy (compare sha256sum)")
				fmt.Fprintf(w, "  3. delete it here: shred -u %s\n", rootKey)
			}
			fmt.Fprintln(w, "Give devices the root certificate (ward ca export-root) and compare the fingerprint above out of band.")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", `organisation named in the CA certificates (default "Ward")`)
	f.StringVar(&rootKeyOut, "root-key-out", "", "write the encrypted root key here instead of <data>/ca/root.key (e.g. removable media)")
	f.StringVar(&passFile, "passphrase-file", os.Getenv("WARD_CA_PASSPHRASE_FILE"), "file holding the CA passphrase (env WARD_CA_PASSPHRASE_FILE; or WARD_CA_PASSPHRASE)")
	return cmd
}

func newCAExportRootCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:     "export-root",
		Short:   "Print the root CA certificate (PEM) from <data>/ca; no passphrase needed",
		Example: "  ward ca export-root --out ward-root.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := pki.ReadRoot(filepath.Join(g.data, "ca"))
			if errors.Is(err, pki.ErrNotInitialised) {
				return fmt.Errorf("no CA in %s: run ward ca init, or point --data at the server's data directory", filepath.Join(g.data, "ca"))
			}
			if err != nil {
				return err
			}
			pemBytes := pki.EncodeCertificates(root)
			if out == "" {
				_, err := cmd.OutOrStdout().Write(pemBytes)
				return err
			}
			if err := writeNewFile(out, pemBytes, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Root CA certificate written to %s (fingerprint %s)\n", out, pki.Fingerprint(root))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write to this file (must not exist) instead of standard output")
	return cmd
}

func newCAShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "show",
		Short:   "Show the server's root and issuing CA (via the API)",
		Example: "  ward ca show\n  ward ca show -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ca, err := c.CA(cmd.Context())
			if err != nil {
				return err
			}
			return g.render(cmd, ca, func(w io.Writer) error {
				cert := func(label string, ci client.CertInfo) []string {
					return []string{
						label, ci.Subject,
						"  Fingerprint", ci.Fingerprint,
						"  Serial", ci.Serial,
						"  Valid", when(ci.NotBefore) + " to " + when(ci.NotAfter),
					}
				}
				kv := append(cert("Root CA", ca.Root), cert("Issuing CA", ca.Issuer)...)
				kv = append(kv, "Device certificate lifetime", lifetime(ca.DeviceCertificateLifetimeSeconds, ca.DeviceCertificateLifetime))
				return fields(w, kv...)
			})
		},
	}
}

// lifetime writes whole days as days, anything else as a Go duration.
func lifetime(secs int64, fallback string) string {
	const day = 24 * 3600
	switch {
	case secs == day:
		return "1 day"
	case secs > 0 && secs%day == 0:
		return fmt.Sprintf("%d days", secs/day)
	}
	return fallback
}
