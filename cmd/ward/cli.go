package main

// What every client command shares: finding the token, building the API
// client, and printing text tables or the API's JSON.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

// adminTokenFile is the bootstrap token's file name in the data directory.
const adminTokenFile = "admin-token"

// token finds the API token: WARD_TOKEN, else --token-file (or
// WARD_TOKEN_FILE), else <data>/admin-token.
func (g *globals) token() (string, error) {
	if t := strings.TrimSpace(os.Getenv("WARD_TOKEN")); t != "" {
		return t, nil
	}
	path, explicit := g.tokenFile, g.tokenFile != ""
	if !explicit {
		path = filepath.Join(g.data, adminTokenFile)
	}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("token file %s is empty", path)
		}
		return t, nil
	case explicit || !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("token file: %w", err)
	}
	return "", fmt.Errorf("no API token: set WARD_TOKEN, or pass --token-file FILE (env WARD_TOKEN_FILE), "+
		"or run where the server's data directory is (--data; looked for %s)", path)
}

// client returns an admin API client for the global flags.
func (g *globals) client() (*client.Client, error) {
	tok, err := g.token()
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(g.server, "https://") {
		return client.New(g.server, tok)
	}
	// Trust Ward's own root for an admin listener that uses a certificate
	// from Ward's CA, besides the system roots.
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	caFile := g.caCert
	if caFile == "" {
		caFile = filepath.Join(g.data, "ca", "root.crt")
	}
	if b, err := os.ReadFile(caFile); err == nil {
		roots.AppendCertsFromPEM(b)
	} else if g.caCert != "" {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyFromEnvironment,
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
	}}
	return client.New(g.server, tok, client.WithHTTPClient(hc))
}

// jsonOutput reports whether --output json was asked for, refusing unknown
// formats.
func (g *globals) jsonOutput() (bool, error) {
	switch g.output {
	case "json":
		return true, nil
	case "text", "":
		return false, nil
	}
	return false, fmt.Errorf("unknown output format %q: use text or json", g.output)
}

// render prints v as indented JSON with --output json, else calls text.
func (g *globals) render(cmd *cobra.Command, v any, text func(w io.Writer) error) error {
	asJSON, err := g.jsonOutput()
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return text(w)
}

// table writes aligned columns; the header is upper case by convention.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		for i, c := range r {
			if c == "" {
				r[i] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// fields writes "Key:  value" lines, aligned.
func fields(w io.Writer, kv ...string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", kv[i], v)
	}
	return tw.Flush()
}

// when formats a time for tables: UTC, to the minute.
func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04")
}

func whenp(t *time.Time) string {
	if t == nil {
		return ""
	}
	return when(*t)
}

// writeNewFile writes data to path, refusing to replace an existing file.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
