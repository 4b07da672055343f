package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/pki"
)

func TestTokenAndApprovalCommands(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()

	// ward token create prints the secret once, with a warning on stderr.
	out := c.ok("token", "create", "--name", "ci", "--role", "viewer,auditor", "--site", "Main", "--ttl", "720h", "-o", "json")
	var created struct {
		Token struct {
			ID    string   `json:"id"`
			Roles []string `json:"roles"`
			Sites []string `json:"sites"`
		} `json:"token"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.HasPrefix(created.Secret, "ward_"+created.Token.ID+"_") || len(created.Token.Roles) != 2 || created.Token.Sites[0] != "Main" {
		t.Fatalf("token create = %s", out)
	}
	if _, err := c.env.Tokens.Authenticate(ctx, created.Secret); err != nil {
		t.Fatalf("printed secret does not authenticate: %v", err)
	}
	list := c.ok("token", "list")
	if !strings.Contains(list, created.Token.ID) || strings.Contains(list, created.Secret) || !strings.Contains(list, "viewer,auditor") {
		t.Fatalf("token list:\n%s", list)
	}
	if out := c.ok("token", "revoke", created.Token.ID); !strings.Contains(out, "revoked") {
		t.Fatalf("token revoke: %s", out)
	}
	if _, err := c.run("token", "create", "--name", "x", "--role", "wizard"); err == nil {
		t.Fatal("unknown role accepted")
	}

	// A removal waits for a second person.
	mca, _ := c.env.ManufacturerCA(t, "Acme Infusion")
	if _, err := c.env.Client.AddManufacturer(ctx, "Acme Infusion", pki.EncodeCertificates(mca)); err != nil {
		t.Fatal(err)
	}
	var ap client.Approval
	out = c.ok("manufacturer", "remove", "Acme Infusion", "-o", "json")
	if err := json.Unmarshal([]byte(out), &ap); err != nil || ap.State != "pending" || ap.Kind != "manufacturer.remove" {
		t.Fatalf("manufacturer remove = %s (%v)", out, err)
	}
	if out := c.ok("manufacturer", "list"); !strings.Contains(out, "Acme Infusion") {
		t.Fatalf("a manufacturer was removed without a second person:\n%s", out)
	}
	if out := c.ok("approval", "list"); !strings.Contains(out, ap.ID) || !strings.Contains(out, "manufacturer.remove") {
		t.Fatalf("approval list:\n%s", out)
	}
	if out := c.ok("approval", "show", ap.ID); !strings.Contains(out, "pending") || !strings.Contains(out, "Acme Infusion") {
		t.Fatalf("approval show:\n%s", out)
	}
	if _, err := c.run("approval", "approve", ap.ID); err == nil || !strings.Contains(err.Error(), "own request") {
		t.Fatalf("self-approval by CLI: %v", err)
	}
	secret, _, err := c.env.Tokens.Create(ctx, access.Principal{Kind: "system", ID: "other", Roles: []access.Role{access.RoleAdmin}},
		access.TokenSpec{Name: "second", Roles: []access.Role{access.RoleSecurity}})
	if err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(t.TempDir(), "second")
	if err := os.WriteFile(second, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := c.ok("--token-file", second, "approval", "approve", ap.ID); !strings.Contains(out, "Approved and carried out") {
		t.Fatalf("approve: %s", out)
	}
	if out := c.ok("approval", "list"); strings.Contains(out, ap.ID) {
		t.Fatalf("approved request still pending:\n%s", out)
	}
	if out := c.ok("approval", "list", "--all"); !strings.Contains(out, "approved") {
		t.Fatalf("approval list --all:\n%s", out)
	}

	// Rejection needs and keeps a reason.
	mca2, _ := c.env.ManufacturerCA(t, "Beta Pumps")
	if _, err := c.env.Client.AddManufacturer(ctx, "Beta Pumps", pki.EncodeCertificates(mca2)); err != nil {
		t.Fatal(err)
	}
	ap2, err := c.env.Client.RemoveManufacturer(ctx, "Beta Pumps")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.run("--token-file", second, "approval", "reject", ap2.ID); err == nil {
		t.Fatal("reject without --reason")
	}
	c.ok("--token-file", second, "approval", "reject", ap2.ID, "--reason", "wrong vendor")
	if out := c.ok("approval", "show", ap2.ID); !strings.Contains(out, "rejected") || !strings.Contains(out, "wrong vendor") {
		t.Fatalf("approval show after reject:\n%s", out)
	}
}
