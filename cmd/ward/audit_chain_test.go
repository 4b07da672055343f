package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardhq/ward/internal/audit"
)

func TestCLIAuditVerifyExport(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	for _, r := range []string{"one", "two", "three"} {
		if err := c.env.Audit.Record(ctx, audit.Entry{Actor: "token:x", Action: "device.approve", Target: "device:d", Outcome: audit.Success, Reason: r}); err != nil {
			t.Fatal(err)
		}
	}

	out := c.ok("audit", "verify")
	if !strings.HasPrefix(out, "audit chain OK\n") || !strings.Contains(out, "Checkpoint key:") || !strings.Contains(out, "not checked") {
		t.Fatalf("verify:\n%s", out)
	}
	var rep struct {
		OK      bool  `json:"ok"`
		LastSeq int64 `json:"last_seq"`
	}
	if err := json.Unmarshal([]byte(c.ok("audit", "verify", "-o", "json")), &rep); err != nil || !rep.OK || rep.LastSeq < 4 {
		t.Fatalf("verify -o json: %+v %v", rep, err)
	}

	// Export to a file, then to standard output as CEF.
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	c.ok("audit", "export", "--out", file)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("export file mode %v", fi.Mode())
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) < 6 || !strings.Contains(lines[0], `"prev_hash":"`+audit.GenesisHash+`"`) {
		t.Fatalf("export:\n%s", b)
	}
	cef := c.ok("audit", "export", "--format", "cef", "--after", "1", "--limit", "2")
	if n := strings.Count(cef, "\n"); n != 2 || !strings.HasPrefix(cef, "CEF:0|Ward|Ward|") || !strings.Contains(cef, "msg=one") {
		t.Fatalf("export cef:\n%s", cef)
	}
	if _, err := c.run("audit", "export", "--format", "xml"); err == nil || !strings.Contains(err.Error(), "jsonl or cef") {
		t.Fatalf("--format xml: %v", err)
	}

	// Tamper with the store: verify fails, naming the entry, exit status 1.
	if _, err := c.env.Store.ExecContext(ctx, `UPDATE audit_events SET outcome = 'denied' WHERE seq = 3`); err != nil {
		t.Fatal(err)
	}
	out, err = c.run("audit", "verify")
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("verify of a broken chain: %v", err)
	}
	if !strings.HasPrefix(out, "audit chain BROKEN at entry 3: entry 3: hash mismatch (edited)\n") {
		t.Fatalf("verify of a broken chain:\n%s", out)
	}
}
