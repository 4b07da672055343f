package main

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/internal/pki"
)

func newMfgCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mfg",
		Short: "Test tool: play a device factory (manufacturer CA, birth certificates)",
		Long: `A test tool that plays a device manufacturer's factory, for demonstrations,
tests and simulators: it creates a manufacturer CA and mints birth
certificates (IDevID) with device keys. Keys are written UNENCRYPTED (mode
0600). A real manufacturer keeps its CA key in an HSM; do not use these for
devices in patient care. Works offline; needs no server.`,
	}
	cmd.AddCommand(newMfgInitCACmd(g), newMfgMintCmd(g))
	return cmd
}

func newMfgInitCACmd(g *globals) *cobra.Command {
	var name, out string
	cmd := &cobra.Command{
		Use:   "init-ca",
		Short: "Create a manufacturer CA: DIR/ca.crt and DIR/ca.key (test tool)",
		Example: `  ward mfg init-ca --name "Acme Infusion" --out ./acme
  ward manufacturer add --name "Acme Infusion" --ca ./acme/ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certPath, keyPath := filepath.Join(out, "ca.crt"), filepath.Join(out, "ca.key")
			if err := refuseExisting(certPath, keyPath); err != nil {
				return err
			}
			c, key, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: name})
			if err != nil {
				return err
			}
			if err := writePair(out, certPath, keyPath, c, key); err != nil {
				return err
			}
			return g.render(cmd, map[string]string{
				"certificate": certPath, "key": keyPath, "subject": c.Subject.String(), "fingerprint": pki.Fingerprint(c),
			}, func(w io.Writer) error {
				fmt.Fprintf(w, "Manufacturer CA %q created (test tool; the key is not encrypted).\n\n", c.Subject.CommonName)
				return fields(w, "Certificate", certPath, "Key", keyPath, "Fingerprint", pki.Fingerprint(c))
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "manufacturer name (required)")
	f.StringVar(&out, "out", "", "directory to write ca.crt and ca.key to (required)")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func newMfgMintCmd(g *globals) *cobra.Command {
	var caPath, caKeyPath, serial, model, out string
	cmd := &cobra.Command{
		Use:   "mint",
		Short: "Mint a device's birth certificate and key: <serial>.crt, <serial>.key (test tool)",
		Long: `Mint what a factory puts in a device: a fresh ECDSA P-256 device key and a
birth certificate (IDevID) with the serial in the subject, signed by the
manufacturer CA. Writes DIR/<serial>.crt and DIR/<serial>.key (mode 0600,
not encrypted). Characters of the serial that cannot appear in a file name
are written as "_". Test tool.`,
		Example: `  ward mfg mint --ca ./acme/ca.crt --ca-key ./acme/ca.key --serial PX-000123 --model P7 --out ./devices`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(caPath)
			if err != nil {
				return err
			}
			cas, err := pki.ReadCertificates(b)
			if err != nil {
				return fmt.Errorf("%s: %w", caPath, err)
			}
			caKey, err := pki.ReadKeyFile(caKeyPath, nil)
			if err != nil {
				return err
			}
			base := fileSafe(serial)
			certPath, keyPath := filepath.Join(out, base+".crt"), filepath.Join(out, base+".key")
			if err := refuseExisting(certPath, keyPath); err != nil {
				return err
			}
			cert, key, err := pki.MintBirthCertificate(pki.BirthConfig{CA: cas[0], CAKey: caKey, Serial: serial, Model: model})
			if err != nil {
				return err
			}
			if err := writePair(out, certPath, keyPath, cert, key); err != nil {
				return err
			}
			return g.render(cmd, map[string]string{
				"serial": serial, "certificate": certPath, "key": keyPath, "subject": cert.Subject.String(), "issuer": cas[0].Subject.String(),
			}, func(w io.Writer) error {
				fmt.Fprintf(w, "Birth certificate for %s minted (test tool; the key is not encrypted).\n\n", serial)
				return fields(w, "Subject", cert.Subject.String(), "Issuer", issuerName(cert), "Certificate", certPath, "Key", keyPath)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&caPath, "ca", "", "manufacturer CA certificate, PEM (required)")
	f.StringVar(&caKeyPath, "ca-key", "", "manufacturer CA key, PEM (required)")
	f.StringVar(&serial, "serial", "", "device serial number (required)")
	f.StringVar(&model, "model", "", "device model (subject OU)")
	f.StringVar(&out, "out", ".", "directory to write <serial>.crt and <serial>.key to")
	for _, n := range []string{"ca", "ca-key", "serial"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

func issuerName(c *x509.Certificate) string { return c.Issuer.String() }

// fileSafe maps a serial to a file name: path separators, control
// characters and a leading dot become "_".
func fileSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == ':' || r < 0x20 || r == 0x7f {
			return '_'
		}
		return r
	}, s)
	if strings.HasPrefix(s, ".") {
		s = "_" + s[1:]
	}
	return s
}

// refuseExisting fails if any of paths exists: the mfg tools never replace
// a key.
func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists; refusing to replace it", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writePair writes an unencrypted test key (0600) and its certificate.
func writePair(dir, certPath, keyPath string, cert *x509.Certificate, key crypto.Signer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := pki.WriteKeyFile(keyPath, key, nil); err != nil {
		return err
	}
	return writeNewFile(certPath, pki.EncodeCertificates(cert), 0o644)
}
