package api_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func TestRoutes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		e := apitest.New(t, s, nil)
		c := e.Client

		if err := c.Health(ctx); err != nil {
			t.Fatal(err)
		}

		// Manufacturers.
		mca, mkey := e.ManufacturerCA(t, "Acme Infusion")
		m, err := c.AddManufacturer(ctx, "Acme Infusion", pki.EncodeCertificates(mca))
		if err != nil {
			t.Fatal(err)
		}
		if m.Fingerprint != pki.Fingerprint(mca) || m.CreatedBy != "token:"+tokenID(e.Token) {
			t.Fatalf("manufacturer = %+v", m)
		}
		if _, err := c.AddManufacturer(ctx, "Acme Infusion", pki.EncodeCertificates(mca)); !client.IsConflict(err) {
			t.Fatalf("duplicate manufacturer: %v", err)
		}
		ms, err := c.Manufacturers(ctx)
		if err != nil || len(ms) != 1 || ms[0].ID != m.ID {
			t.Fatalf("Manufacturers = %+v, %v", ms, err)
		}

		// Preregister, list, show.
		d1, err := c.Preregister(ctx, client.Preregistration{Serial: "PX-1", Manufacturer: "Acme Infusion", Model: "P7", Site: "Main", Unit: "ICU", Tags: []string{"infusion"}})
		if err != nil {
			t.Fatal(err)
		}
		if d1.State != client.StatePending || d1.ApprovedAt == nil || d1.Site != "Main" || len(d1.Tags) != 1 {
			t.Fatalf("preregistered = %+v", d1)
		}
		if _, err := c.Preregister(ctx, client.Preregistration{Serial: "PX-1", Manufacturer: "Acme Infusion", Model: "P7"}); !client.IsConflict(err) {
			t.Fatalf("preregister twice: %v", err)
		}
		if _, err := c.Preregister(ctx, client.Preregistration{Serial: "PX-2", Manufacturer: "Nobody", Model: "P7"}); !client.IsNotFound(err) {
			t.Fatalf("unknown manufacturer: %v", err)
		}
		if _, err := c.Preregister(ctx, client.Preregistration{Serial: "bad serial!", Manufacturer: "Acme Infusion", Model: "P7"}); statusOf(err) != 422 {
			t.Fatalf("bad serial: %v", err)
		}
		// A device that asked to enroll on its own is pending, not approved.
		var d2 fleet.Device
		if err := s.Tx(ctx, func(tx *store.Tx) error {
			d2, err = e.Fleet.CreatePending(ctx, tx, m.ID, "PX-2", "P7")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		d3, err := c.Preregister(ctx, client.Preregistration{Serial: "PX-3", Manufacturer: m.ID, Model: "P9", Site: "Annex"})
		if err != nil {
			t.Fatal(err)
		}

		all, err := c.Devices(ctx, client.DeviceFilter{})
		if err != nil || len(all) != 3 {
			t.Fatalf("Devices = %d, %v", len(all), err)
		}
		page, err := c.DevicePage(ctx, client.DeviceFilter{Limit: 2})
		if err != nil || len(page.Items) != 2 || page.Next != page.Items[1].ID {
			t.Fatalf("page 1 = %+v, %v", page, err)
		}
		page2, err := c.DevicePage(ctx, client.DeviceFilter{Limit: 2, After: page.Next})
		if err != nil || len(page2.Items) != 1 || page2.Next != "" {
			t.Fatalf("page 2 = %+v, %v", page2, err)
		}
		for _, tc := range []struct {
			f    client.DeviceFilter
			want int
		}{
			{client.DeviceFilter{Site: "Annex"}, 1},
			{client.DeviceFilter{Site: "Main", Unit: "ICU"}, 1},
			{client.DeviceFilter{Manufacturer: "Acme Infusion"}, 3},
			{client.DeviceFilter{Manufacturer: "Other"}, 0},
			{client.DeviceFilter{State: client.StatePending}, 3},
			{client.DeviceFilter{State: client.StateActive}, 0},
		} {
			ds, err := c.Devices(ctx, tc.f)
			if err != nil || len(ds) != tc.want {
				t.Errorf("Devices(%+v) = %d, %v; want %d", tc.f, len(ds), err, tc.want)
			}
		}
		if _, err := c.Devices(ctx, client.DeviceFilter{State: "sleepy"}); statusOf(err) != 422 {
			t.Errorf("bad state filter: %v", err)
		}
		if _, err := c.Devices(ctx, client.DeviceFilter{Limit: 5000}); statusOf(err) != 422 {
			t.Errorf("limit 5000: %v", err)
		}

		// Issue a certificate to d1 so that show lists it.
		issueTo(t, e, d1.ID, "PX-1")
		got, err := c.Device(ctx, "PX-1")
		if err != nil || got.ID != d1.ID || got.State != client.StateActive || len(got.Certificates) != 1 {
			t.Fatalf("Device(serial) = %+v, %v", got, err)
		}
		if got2, err := c.Device(ctx, d1.ID); err != nil || got2.ID != d1.ID {
			t.Fatalf("Device(id) = %+v, %v", got2, err)
		}
		if _, err := c.Device(ctx, "NOPE"); !client.IsNotFound(err) {
			t.Fatalf("unknown device: %v", err)
		}

		// Lifecycle.
		if _, err := c.Approve(ctx, d1.ID); !client.IsConflict(err) {
			t.Fatalf("approve active device: %v", err)
		}
		if a, err := c.Approve(ctx, d2.ID); err != nil || a.ApprovedAt == nil {
			t.Fatalf("Approve = %+v, %v", a, err)
		}
		if r, err := c.Reject(ctx, "PX-3", "not ours"); err != nil || r.State != client.StateRevoked {
			t.Fatalf("Reject = %+v, %v", r, err)
		}
		if _, err := c.Revoke(ctx, d1.ID, ""); statusOf(err) != 422 {
			t.Fatalf("revoke without reason: %v", err)
		}
		r, err := c.Revoke(ctx, d1.ID, "stolen")
		if err != nil || r.State != client.StateRevoked || !strings.Contains(r.StateReason, "stolen") {
			t.Fatalf("Revoke = %+v, %v", r, err)
		}
		if got, _ := c.Device(ctx, d1.ID); got.Certificates[0].RevokedAt == nil {
			t.Fatal("revoking the device did not revoke its certificate")
		}
		if dd, err := c.Decommission(ctx, d3.ID, ""); err != nil || dd.State != client.StateDecommissioned {
			t.Fatalf("Decommission = %+v, %v", dd, err)
		}
		if _, err := c.Decommission(ctx, d3.ID, "again"); !client.IsConflict(err) {
			t.Fatalf("decommission twice: %v", err)
		}

		// CA.
		ca, err := c.CA(ctx)
		if err != nil {
			t.Fatal(err)
		}
		roots, err := pki.ReadCertificates([]byte(ca.Root.PEM))
		if err != nil || !roots[0].Equal(e.CA.Root()) || ca.Root.Fingerprint != pki.Fingerprint(e.CA.Root()) ||
			ca.Issuer.Fingerprint != pki.Fingerprint(e.CA.Issuer()) || ca.DeviceCertificateLifetimeSeconds != 7*24*3600 {
			t.Fatalf("CA = %+v, %v", ca, err)
		}

		// Audit.
		entries, err := c.Audit(ctx, client.AuditFilter{Action: "device."})
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, en := range entries {
			actions = append(actions, en.Action)
		}
		want := "device.preregister device.preregister device.approve device.reject device.revoke device.decommission"
		if strings.Join(actions, " ") != want {
			t.Fatalf("audit actions = %q, want %q", actions, want)
		}
		if es, err := c.Audit(ctx, client.AuditFilter{Target: "device:" + d1.ID, Limit: 1}); err != nil || len(es) != 1 || es[0].Action != "device.preregister" {
			t.Fatalf("audit by target = %+v, %v", es, err)
		}
		if es, err := c.Audit(ctx, client.AuditFilter{Outcome: "denied"}); err != nil || len(es) != 0 || es == nil {
			t.Fatalf("audit denied = %#v, %v", es, err)
		}

		// Tokens. A viewer token reads but changes nothing.
		vs, vt, err := c.CreateToken(ctx, client.TokenRequest{Name: "dashboard", Roles: []string{"viewer"}, TTL: "720h"})
		if err != nil || len(vt.Roles) != 1 || vt.Roles[0] != "viewer" || vt.ExpiresAt == nil || !vt.ExpiresAt.Equal(e.Clock.Now().Add(720*time.Hour)) {
			t.Fatalf("CreateToken(viewer) = %+v, %v", vt, err)
		}
		viewer, _ := client.New(e.Server.URL, vs)
		if _, err := viewer.Devices(ctx, client.DeviceFilter{}); err != nil {
			t.Fatalf("viewer cannot list devices: %v", err)
		}
		if _, err := viewer.Approve(ctx, d1.ID); !client.IsForbidden(err) {
			t.Fatalf("viewer approved a device: %v", err)
		}
		if _, _, err := viewer.CreateToken(ctx, client.TokenRequest{Name: "escalate", Roles: []string{"admin"}}); !client.IsForbidden(err) {
			t.Fatalf("viewer created an admin token: %v", err)
		}
		// A token expires.
		e.Clock.Add(721 * time.Hour)
		if _, err := viewer.Devices(ctx, client.DeviceFilter{}); !client.IsUnauthorized(err) {
			t.Fatalf("expired token still works: %v", err)
		}
		secret, tok, err := c.CreateToken(ctx, client.TokenRequest{Name: "ci", Roles: []string{"admin"}})
		if err != nil || !strings.HasPrefix(secret, "ward_"+tok.ID+"_") {
			t.Fatalf("CreateToken = %q, %+v, %v", secret, tok, err)
		}
		c2, _ := client.New(e.Server.URL, secret)
		ts, err := c2.Tokens(ctx)
		if err != nil || len(ts) != 3 {
			t.Fatalf("Tokens = %+v, %v", ts, err)
		}
		raw, _ := json.Marshal(ts)
		if strings.Contains(string(raw), secret[len(secret)-43:]) {
			t.Fatal("token list holds a secret")
		}
		if rt, err := c2.RevokeToken(ctx, tokenID(e.Token)); err != nil || rt.RevokedAt == nil {
			t.Fatalf("RevokeToken = %+v, %v", rt, err)
		}
		if _, err := c.Devices(ctx, client.DeviceFilter{}); !client.IsUnauthorized(err) {
			t.Fatalf("revoked token still works: %v", err)
		}
		if _, err := c2.RevokeToken(ctx, tok.ID); !client.IsConflict(err) {
			t.Fatalf("revoke last token: %v", err)
		}
		if _, err := c2.RevokeToken(ctx, "nosuchtoken"); !client.IsNotFound(err) {
			t.Fatalf("revoke unknown token: %v", err)
		}
		if es, _ := c2.Audit(ctx, client.AuditFilter{Action: "token."}); len(es) != 4 || es[2].Actor != "token:"+tokenID(e.Token) || es[3].Actor != "token:"+tok.ID {
			t.Fatalf("token audit = %+v", es)
		}
		_ = mkey
	})
}

func tokenID(secret string) string { return strings.Split(secret, "_")[1] }

func statusOf(err error) int {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func issueTo(t *testing.T, e *apitest.Env, deviceID, serial string) *x509.Certificate {
	t.Helper()
	ctx := context.Background()
	_, key, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "throwaway"}) // any P-256 key
	if err != nil {
		t.Fatal(err)
	}
	der, err := pki.NewCSR(key, deviceID, serial)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := e.CA.IssueDevice(csr, pki.DeviceIdentity{ID: deviceID, Serial: serial})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Store.Tx(ctx, func(tx *store.Tx) error { return e.Fleet.RecordIssued(ctx, tx, deviceID, cert) }); err != nil {
		t.Fatal(err)
	}
	return cert
}

type problem struct {
	Type, Title, Detail string
	Status              int
}

func decodeProblem(t *testing.T, resp *http.Response) problem {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type %q, want application/problem+json", resp.Request.URL.Path, ct)
	}
	var p problem
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		t.Fatalf("%s: problem: %v", resp.Request.URL.Path, err)
	}
	if p.Status != resp.StatusCode || p.Title != http.StatusText(resp.StatusCode) {
		t.Errorf("%s: problem %+v for status %d", resp.Request.URL.Path, p, resp.StatusCode)
	}
	return p
}

var pathParam = regexp.MustCompile(`\{[^}]+\}`)

// TestAnonymousRefused walks every registered operation: without a valid
// token each one is 401, as RFC 9457 problem JSON that does not echo the
// token.
func TestAnonymousRefused(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	e := apitest.New(t, s, nil)
	ops, err := api.Operations(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) < 14 {
		t.Fatalf("only %d operations registered", len(ops))
	}
	forged := "ward_" + tokenID(e.Token) + "_" + strings.Repeat("A", 43)
	for _, op := range ops {
		if op.Metadata["ward-public"] == true {
			continue // the login flow; authz_test checks which those are
		}
		path := pathParam.ReplaceAllString(op.Path, "x")
		for _, auth := range []string{"", "Bearer", "Bearer " + forged, "Basic " + e.Token, "Bearer " + e.Token + "x"} {
			req, _ := http.NewRequest(op.Method, e.Server.URL+path, strings.NewReader(`{}`))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := e.Server.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s with %q: %d, want 401", op.Method, path, auth, resp.StatusCode)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: no WWW-Authenticate", op.Method, path)
			}
			p := decodeProblem(t, resp)
			resp.Body.Close()
			if strings.Contains(p.Detail, "ward_") || strings.Contains(p.Detail, strings.Repeat("A", 43)) {
				t.Errorf("%s %s: problem echoes the token: %q", op.Method, path, p.Detail)
			}
		}
	}
}

func TestOpenAPI(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	e := apitest.New(t, s, nil)
	resp, err := http.Get(e.Server.URL + "/api/v1/openapi.json") // no token
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi = %q", doc.OpenAPI)
	}
	var got []string
	for p, item := range doc.Paths {
		for m := range item {
			got = append(got, strings.ToUpper(m)+" "+p)
		}
	}
	sort.Strings(got)
	// The document describes exactly the registered operations.
	ops, err := api.Operations(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, op := range ops {
		want = append(want, op.Method+" "+op.Path)
	}
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("openapi paths:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// And the core of the admin API is there.
	for _, must := range []string{
		"GET /api/v1/devices", "POST /api/v1/devices", "GET /api/v1/devices/{ref}", "POST /api/v1/devices/{ref}/revoke",
		"POST /api/v1/manufacturers", "GET /api/v1/ca", "GET /api/v1/audit", "GET /api/v1/audit/verify",
		"POST /api/v1/tokens", "POST /api/v1/session", "GET /api/v1/approvals", "POST /api/v1/approvals/{id}/approve",
	} {
		if !slices.Contains(got, must) {
			t.Errorf("openapi.json lacks %s", must)
		}
	}
	// No docs page, no schema links.
	for _, p := range []string{"/docs", "/api/v1/docs", "/openapi.json", "/schemas/Device.json"} {
		r, err := http.Get(e.Server.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", p, r.StatusCode)
		}
	}
}

func TestHealthReadyHeaders(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	var ready error
	e := apitest.New(t, s, func(c *api.Config) {
		c.Ready = func(context.Context) error { return ready }
	})
	get := func(path string, auth bool) *http.Response {
		req, _ := http.NewRequest("GET", e.Server.URL+path, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer "+e.Token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	r := get("/healthz", false)
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 || strings.TrimSpace(string(b)) != "ok" {
		t.Errorf("healthz: %d %q", r.StatusCode, b)
	}
	if r := get("/readyz", false); r.StatusCode != 200 {
		t.Errorf("readyz: %d", r.StatusCode)
	}
	ready = errors.New("store unreachable")
	r = get("/readyz", false)
	if r.StatusCode != 503 {
		t.Errorf("readyz not ready: %d", r.StatusCode)
	}
	if p := decodeProblem(t, r); !strings.Contains(p.Detail, "store unreachable") {
		t.Errorf("readyz reason: %q", p.Detail)
	}

	for _, p := range []string{"/healthz", "/api/v1/devices", "/api/v1/openapi.json", "/api/v1/nothing"} {
		h := get(p, true).Header
		if h.Get("X-Content-Type-Options") != "nosniff" || !strings.Contains(h.Get("Content-Security-Policy"), "default-src 'none'") {
			t.Errorf("%s: headers %v", p, h)
		}
		if strings.HasPrefix(p, "/api/") && h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q", p, h.Get("Cache-Control"))
		}
	}
}

func TestProblems(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	e := apitest.New(t, s, nil)
	do := func(method, path, body string) *http.Response {
		req, _ := http.NewRequest(method, e.Server.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+e.Token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	big := `{"name":"x","ca_pem":"` + strings.Repeat("A", 300<<10) + `"}`
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/api/v1/devices/NOPE", "", 404},
		{"POST", "/api/v1/manufacturers", `{"name":"X","ca_pem":"not pem"}`, 422},
		{"POST", "/api/v1/manufacturers", `{"name":"X"}`, 422},
		{"POST", "/api/v1/manufacturers", `{"name":"X","ca_pem":"a","extra":1}`, 422},
		{"POST", "/api/v1/manufacturers", `{`, 400},
		{"POST", "/api/v1/manufacturers", big, 413},
		{"GET", "/api/v1/devices?bogus=1", "", 422},
		{"POST", "/api/v1/devices/NOPE/approve", "", 404},
		{"POST", "/api/v1/devices/NOPE/reject", "", 404},
		{"DELETE", "/api/v1/tokens/nope", "", 404},
	} {
		r := do(tc.method, tc.path, tc.body)
		if r.StatusCode != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, r.StatusCode, tc.status)
			continue
		}
		decodeProblem(t, r)
	}

	// An internal failure is a generic 500; the cause goes to the log only.
	ctx := context.Background()
	if _, err := s.ExecContext(ctx, `DROP TABLE certificates`); err != nil {
		t.Fatal(err)
	}
	mca, _ := e.ManufacturerCA(t, "Acme")
	if _, err := e.Fleet.AddManufacturer(ctx, "system", "Acme", pki.EncodeCertificates(mca)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.Preregister(ctx, client.Preregistration{Serial: "S1", Manufacturer: "Acme", Model: "M"}); err != nil {
		t.Fatal(err)
	}
	r := do("GET", "/api/v1/devices/S1", "")
	if r.StatusCode != 500 {
		t.Fatalf("broken store: %d", r.StatusCode)
	}
	p := decodeProblem(t, r)
	if strings.Contains(strings.ToLower(p.Detail), "certificates") || strings.Contains(p.Detail, "SQL") {
		t.Errorf("500 leaks internals: %q", p.Detail)
	}
	if !strings.Contains(e.Logs(), "certificates") {
		t.Errorf("500 cause not logged: %q", e.Logs())
	}
}
