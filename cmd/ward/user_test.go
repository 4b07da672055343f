package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runIn executes ward with args and stdin in-process.
func (c *cli) runIn(stdin string, args ...string) (string, string, error) {
	c.t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append(append([]string{}, c.base...), args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestCLIUser(t *testing.T) {
	c := newCLI(t)
	const pw = "a long enough passphrase"
	out, _, err := c.runIn(pw+"\n", "user", "create", "--username", "jdoe", "--display-name", "Jane Doe", "--email", "jdoe@example.org", "--role", "biomed", "--site", "Main")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Username:", "jdoe", "Roles:", "biomed", "Sites:", "Main", "State:", "enabled"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("another long passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.runIn("", "user", "create", "--username", "audit1", "--role", "auditor,viewer", "--password-file", pwFile); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.runIn("short\n", "user", "create", "--username", "weak", "--role", "viewer"); err == nil || strings.Contains(err.Error(), "short") && !strings.Contains(err.Error(), "characters") {
		t.Fatalf("weak password: %v", err)
	}
	if _, _, err := c.runIn("", "user", "create", "--username", "nopw", "--role", "viewer"); err == nil {
		t.Fatal("created a user without a password")
	}

	out = c.ok("user", "list")
	if !strings.Contains(out, "USERNAME") || !strings.Contains(out, "jdoe") || !strings.Contains(out, "audit1") || strings.Contains(out, "weak") {
		t.Fatalf("list:\n%s", out)
	}
	var list struct {
		Items []struct {
			Username string   `json:"username"`
			Roles    []string `json:"roles"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(c.ok("user", "list", "-o", "json")), &list); err != nil || len(list.Items) != 2 || list.Items[0].Username != "audit1" || len(list.Items[0].Roles) != 2 {
		t.Fatalf("list -o json: %+v, %v", list, err)
	}
	if out := c.ok("user", "show", "jdoe"); !strings.Contains(out, "Jane Doe") {
		t.Fatalf("show:\n%s", out)
	}

	// Locked after five failures; unlock clears it.
	for i := 0; i < 5; i++ {
		_, _ = c.env.Users.CheckPassword(context.Background(), "jdoe", "not the password", "192.0.2.1")
	}
	if out := c.ok("user", "list"); !strings.Contains(out, "locked") {
		t.Fatalf("list after lockout:\n%s", out)
	}
	if out := c.ok("user", "unlock", "jdoe"); strings.Contains(out, "Locked until:  2") {
		t.Fatalf("unlock:\n%s", out)
	}
	if _, err := c.env.Users.CheckPassword(context.Background(), "jdoe", pw, "192.0.2.1"); err != nil {
		t.Fatalf("after unlock: %v", err)
	}

	if out, _, err := c.runIn("jdoe's new passphrase\n", "user", "passwd", "jdoe"); err != nil || !strings.Contains(out, "sessions have ended") {
		t.Fatalf("passwd: %q, %v", out, err)
	}
	if _, err := c.env.Users.CheckPassword(context.Background(), "jdoe", "jdoe's new passphrase", "192.0.2.1"); err != nil {
		t.Fatalf("new password: %v", err)
	}
	if out := c.ok("user", "disable", "jdoe"); !strings.Contains(out, "disabled") {
		t.Fatalf("disable:\n%s", out)
	}
	if _, _, err := c.runIn("", "user", "show", "nobody"); err == nil {
		t.Fatal("show nobody")
	}
	if logs := c.env.Logs(); strings.Contains(logs, pw) || strings.Contains(logs, "another long passphrase") {
		t.Fatal("a password is in the server log")
	}
}
