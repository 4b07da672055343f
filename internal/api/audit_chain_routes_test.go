package api_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func TestAuditVerifyAndExport(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
		e := apitest.New(t, s, func(c *api.Config) { c.AuditKey = key.Public() })
		for _, r := range []string{"one", "two", "three | a=b"} {
			if err := e.Audit.Record(ctx, audit.Entry{Actor: "token:x", Action: "device.approve", Target: "device:d", Outcome: audit.Success, Reason: r}); err != nil {
				t.Fatal(err)
			}
		}
		cp, err := audit.NewCheckpointer(audit.CheckpointerConfig{Log: e.Audit, Signer: key, Now: e.Clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cp.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}

		rep, err := e.Client.VerifyAudit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK || rep.Entries < 3 || rep.Checkpoints != 1 || rep.KeyID != cp.KeyID() || len(rep.LastHash) != 64 {
			t.Fatalf("verify: %+v", rep)
		}
		// Verifying is itself audited.
		if es, _ := e.Audit.List(ctx, audit.Filter{Action: "audit.verify"}); len(es) != 1 || es[0].Actor == "" {
			t.Fatalf("audit.verify entries: %+v", es)
		}

		// JSON lines: every entry so far, each with its hashes, in order.
		var out bytes.Buffer
		if err := e.Client.ExportAudit(ctx, &out, client.AuditExport{}); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		prev := audit.GenesisHash
		for i, l := range lines {
			var x struct {
				Seq      int64  `json:"seq"`
				PrevHash string `json:"prev_hash"`
				Hash     string `json:"hash"`
			}
			if err := json.Unmarshal([]byte(l), &x); err != nil || x.Seq != int64(i+1) || x.PrevHash != prev {
				t.Fatalf("line %d: %v %s", i+1, err, l)
			}
			prev = x.Hash
		}
		if !strings.Contains(lines[len(lines)-1], `"action":"audit.export"`) {
			t.Fatalf("the export is not audited: %s", lines[len(lines)-1])
		}

		// CEF, a page of it.
		resp := get(t, e, e.Token, "/api/v1/audit/export?format=cef&after=2&limit=2")
		body := readAll(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("cef: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		cef := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		if len(cef) != 2 || !strings.HasPrefix(cef[0], "CEF:0|Ward|Ward|") || !strings.Contains(cef[0], "externalId=3") || !strings.Contains(cef[1], `msg=three | a\=b`) {
			t.Fatalf("cef:\n%s", body)
		}
		// Past the end: an empty body, not an error.
		resp = get(t, e, e.Token, "/api/v1/audit/export?after=100000")
		if body := readAll(t, resp); resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("empty export: %d %q %s", resp.StatusCode, body, resp.Header.Get("Content-Type"))
		}
		if resp := get(t, e, e.Token, "/api/v1/audit/export?format=xml"); resp.StatusCode != http.StatusUnprocessableEntity {
			t.Fatalf("format xml: %d", resp.StatusCode)
		}

		// Who may: an auditor yes, a viewer no.
		system := access.Principal{Kind: "system", ID: "test", Roles: access.Roles()}
		auditor, _, err := e.Tokens.Create(ctx, system, access.TokenSpec{Name: "auditor", Roles: []access.Role{access.RoleAuditor}})
		if err != nil {
			t.Fatal(err)
		}
		viewer, _, err := e.Tokens.Create(ctx, system, access.TokenSpec{Name: "viewer", Roles: []access.Role{access.RoleViewer}})
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{"/api/v1/audit/verify", "/api/v1/audit/export"} {
			if resp := get(t, e, auditor, path); resp.StatusCode != 200 {
				t.Errorf("auditor %s: %d", path, resp.StatusCode)
			}
			if resp := get(t, e, viewer, path); resp.StatusCode != http.StatusForbidden {
				t.Errorf("viewer %s: %d", path, resp.StatusCode)
			}
		}

		// Tampered with: still 200, with ok false and the entry named.
		if _, err := s.ExecContext(ctx, `UPDATE audit_events SET reason = 'nothing' WHERE seq = 2`); err != nil {
			t.Fatal(err)
		}
		rep, err = e.Client.VerifyAudit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.OK || rep.FirstBad != 2 || !strings.Contains(rep.Problem, "entry 2: hash mismatch (edited)") {
			t.Fatalf("verify after tampering: %+v", rep)
		}
	})
}

func get(t *testing.T, e *apitest.Env, token, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.Server.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.Server.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
