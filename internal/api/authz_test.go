package api_test

// The route-permission walk: every operation huma serves (all under
// /api/v1 but the OIDC browser redirects) is
// tried anonymously, with tokens of every role, with a token of no role, and
// (for device operations) with tokens scoped to the device's site and to
// another. The list of operations comes from the running API, so a route
// added tomorrow is walked without anyone editing this file.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// Metadata keys of register() in api.go.
const (
	permKey   = "ward-permission"
	publicKey = "ward-public"
)

// loginFlow lists the operations that may be open to anonymous callers:
// the steps of logging in, each of which authenticates on its own (a
// password, a pending-session cookie, an OIDC state). Adding one here is a
// security decision; say why in the commit.
var loginFlow = []string{
	"GET /auth/oidc/callback",
	"GET /auth/oidc/login",
	"POST /api/v1/session",
	"POST /api/v1/session/totp",
	"POST /api/v1/session/totp/confirm",
	"POST /api/v1/session/totp/setup",
	"POST /api/v1/session/webauthn/login/begin",
	"POST /api/v1/session/webauthn/login/finish",
	"POST /api/v1/session/webauthn/register/begin",
	"POST /api/v1/session/webauthn/register/finish",
}

func TestEveryRouteAuthorised(t *testing.T) {
	// SQLite walks everything; PostgreSQL walks it too, once, so that the
	// site scoping that happens in SQL is proven on both.
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) { walkRoutes(t, storetest.Open(t, d)) })
	}
}

type walker struct {
	t   *testing.T
	e   *apitest.Env
	doc map[string]any // the OpenAPI document, for request body schemas
}

func walkRoutes(t *testing.T, s *store.Store) {
	ctx := context.Background()
	e := apitest.New(t, s, nil)
	w := &walker{t: t, e: e}
	w.loadOpenAPI()
	ops, err := api.Operations(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(ops, func(i, j int) bool { return opName(ops[i]) < opName(ops[j]) })

	// One token per role, one holding no role at all (roles can be emptied
	// by an older row or a bug: it must still be refused everywhere), and
	// admins scoped to site A and to site B.
	system := access.Principal{Kind: "system", ID: "walk", Roles: access.Roles()}
	mint := func(name string, roles []access.Role, sites []string) string {
		t.Helper()
		secret, _, err := e.Tokens.Create(ctx, system, access.TokenSpec{Name: name, Roles: roles, Sites: sites})
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	byRole := map[access.Role]string{}
	for _, r := range access.Roles() {
		byRole[r] = mint("role-"+string(r), []access.Role{r}, nil)
	}
	none := mint("no-role", []access.Role{access.RoleViewer}, nil)
	if _, err := s.ExecContext(ctx, `UPDATE api_tokens SET roles = '[]' WHERE name = 'no-role'`); err != nil {
		t.Fatal(err)
	}
	siteA := mint("site-a", []access.Role{access.RoleAdmin}, []string{"A"})
	siteB := mint("site-b", []access.Role{access.RoleAdmin}, []string{"B"})

	var public []string
	for _, op := range ops {
		if op.Metadata[publicKey] == true {
			public = append(public, opName(op))
			continue
		}
		need, ok := op.Metadata[permKey].(access.Permission)
		if !ok || need == "" {
			t.Errorf("%s declares neither a permission nor public()", opName(op))
			continue
		}
		t.Run(op.OperationID, func(t *testing.T) {
			w := &walker{t: t, e: e, doc: w.doc}
			var holders []access.Role
			for _, r := range access.Roles() {
				if slices.Contains(r.Permissions(), need) {
					holders = append(holders, r)
				}
			}
			if len(holders) == 0 {
				t.Fatalf("needs %q, which no role grants: nobody can call it", need)
			}
			if !slices.Contains(holders, access.RoleAdmin) {
				t.Errorf("needs %q, which admin lacks", need)
			}
			// The refusal of a caller without the route's permission; a
			// 403 with another detail is the handler's own rule about the
			// object (e.g. only one's own password), past the route's check.
			routeRefusal := fmt.Sprintf("it needs the %q permission", need)
			// (a) Anonymous.
			if code, _ := w.call(op, "", "zz-dummy"); code != http.StatusUnauthorized {
				t.Errorf("anonymous: %d, want 401", code)
			}
			// (b) A token whose roles lack the permission.
			if code, detail := w.call(op, none, "zz-dummy"); code != http.StatusForbidden || !strings.Contains(detail, routeRefusal) {
				t.Errorf("token without roles: %d %q, want 403 for lack of %q", code, detail, need)
			}
			for _, r := range access.Roles() {
				if slices.Contains(holders, r) {
					continue
				}
				if code, detail := w.call(op, byRole[r], "zz-dummy"); code != http.StatusForbidden || !strings.Contains(detail, routeRefusal) {
					t.Errorf("role %s (lacks %q): %d %q, want 403", r, need, code, detail)
				}
			}
			// (c) Every role that holds it gets past the route's check.
			for _, r := range holders {
				code, detail := w.call(op, byRole[r], "zz-dummy")
				if code == http.StatusUnauthorized || code == http.StatusInternalServerError || (code == http.StatusForbidden && strings.Contains(detail, routeRefusal)) {
					t.Errorf("role %s (holds %q): %d %q, want past authorisation", r, need, code, detail)
				}
			}
		})
	}
	if slices.Sort(public); !slices.Equal(public, loginFlow) {
		t.Errorf("public operations:\n got  %q\n want %q (only the login flow may be open)", public, loginFlow)
	}

	// (d) Device operations: a token of another site learns nothing (404,
	// the same as a device that does not exist); one of the device's site
	// gets through.
	t.Run("sites", func(t *testing.T) {
		w := &walker{t: t, e: e, doc: w.doc}
		mca, _ := e.ManufacturerCA(t, "Walk Medical")
		if _, err := e.Fleet.AddManufacturer(ctx, "test", "Walk Medical", pki.EncodeCertificates(mca)); err != nil {
			t.Fatal(err)
		}
		d, err := e.Fleet.Preregister(ctx, "test", fleet.Preregistration{Serial: "WALK-1", Manufacturer: "Walk Medical", Model: "M", Site: "A"})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, op := range ops {
			if !strings.HasPrefix(op.Path, api.Prefix+"/devices/{ref}") || op.Metadata[publicKey] == true {
				continue
			}
			n++
			for _, ref := range []string{d.ID, d.Serial} {
				if code, _ := w.call(op, siteB, ref); code != http.StatusNotFound {
					t.Errorf("%s on a site A device with a site B token: %d, want 404", opName(op), code)
				}
			}
			if code, _ := w.call(op, siteA, d.ID); code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusNotFound {
				t.Errorf("%s on a site A device with a site A token: %d", opName(op), code)
			}
		}
		if n < 5 {
			t.Errorf("only %d device operations take {ref}", n)
		}
		// Revoking several at once names devices in the body: same rule.
		d2, err := e.Fleet.Preregister(ctx, "test", fleet.Preregistration{Serial: "WALK-2", Manufacturer: "Walk Medical", Model: "M", Site: "A"})
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf(`{"refs":[%q],"reason":"walk"}`, d2.ID)
		if code, _ := w.send(http.MethodPost, api.Prefix+"/devices/revoke", siteB, body); code != http.StatusNotFound {
			t.Errorf("mass revoke of a site A device with a site B token: %d, want 404", code)
		}
		if code, _ := w.send(http.MethodPost, api.Prefix+"/devices/revoke", siteA, body); code != http.StatusOK {
			t.Errorf("mass revoke of a site A device with a site A token: %d, want 200", code)
		}

		// A request to revoke many site A devices is invisible to site B.
		var refs []string
		for i := range 6 {
			d, err := e.Fleet.Preregister(ctx, "test", fleet.Preregistration{Serial: fmt.Sprintf("WALK-M%d", i), Manufacturer: "Walk Medical", Model: "M", Site: "A"})
			if err != nil {
				t.Fatal(err)
			}
			refs = append(refs, d.ID)
		}
		got, err := e.Client.RevokeDevices(ctx, refs, "walk")
		if err != nil || got.Approval == nil {
			t.Fatalf("mass revoke of 6: %+v, %v", got, err)
		}
		id := got.Approval.ID
		for _, op := range []struct{ method, path, body string }{
			{http.MethodGet, "/approvals/" + id, ""},
			{http.MethodPost, "/approvals/" + id + "/approve", ""},
			{http.MethodPost, "/approvals/" + id + "/reject", `{"reason":"walk"}`},
		} {
			if code, _ := w.send(op.method, api.Prefix+op.path, siteB, op.body); code != http.StatusNotFound {
				t.Errorf("%s %s with a site B token: %d, want 404", op.method, op.path, code)
			}
		}
		if code, _ := w.send(http.MethodGet, api.Prefix+"/approvals", siteB, ""); code != http.StatusOK {
			t.Errorf("list approvals with a site B token: %d", code)
		}
		b := w.e.Client // the requester; its list shows the request
		if list, err := b.Approvals(ctx, client.ApprovalFilter{}); err != nil || !slices.ContainsFunc(list, func(a client.Approval) bool { return a.ID == id }) {
			t.Errorf("requester's list lacks %s: %v", id, err)
		}
		bList := mustList(t, w, siteB)
		if slices.Contains(bList, id) {
			t.Errorf("site B token lists a site A request")
		}
		if code, _ := w.send(http.MethodPost, api.Prefix+"/approvals/"+id+"/approve", siteA, ""); code != http.StatusOK {
			t.Errorf("approve with a site A token: %d, want 200", code)
		}
	})
}

func opName(op *huma.Operation) string { return op.Method + " " + op.Path }

func (w *walker) loadOpenAPI() {
	resp, err := w.e.Server.Client().Get(w.e.Server.URL + api.Prefix + "/openapi.json")
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&w.doc); err != nil {
		w.t.Fatal(err)
	}
}

// call performs op with every path parameter set to param and, if op takes
// a body, the smallest body its schema accepts, and returns the status and
// the problem's detail.
func (w *walker) call(op *huma.Operation, token, param string) (int, string) {
	w.t.Helper()
	path := pathParam.ReplaceAllString(op.Path, param)
	body := ""
	if op.RequestBody != nil {
		b, err := json.Marshal(w.sampleBody(op))
		if err != nil {
			w.t.Fatal(err)
		}
		body = string(b)
	}
	return w.send(op.Method, path, token, body)
}

func (w *walker) send(method, path, token, body string) (int, string) {
	w.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, w.e.Server.URL+path, rd)
	if err != nil {
		w.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := w.e.Server.Client().Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		Detail string `json:"detail"`
	}
	if b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20)); err == nil && resp.StatusCode >= 400 {
		_ = json.Unmarshal(b, &p)
	}
	return resp.StatusCode, p.Detail
}

// sampleBody builds the smallest JSON value the operation's body schema
// accepts: required properties only, the first enum value, minimum lengths.
func (w *walker) sampleBody(op *huma.Operation) any {
	paths, _ := w.doc["paths"].(map[string]any)
	item, _ := paths[op.Path].(map[string]any)
	o, _ := item[strings.ToLower(op.Method)].(map[string]any)
	rb, _ := o["requestBody"].(map[string]any)
	content, _ := rb["content"].(map[string]any)
	for _, ct := range content {
		if schema, ok := ct.(map[string]any)["schema"].(map[string]any); ok {
			return w.sample(schema, 0)
		}
	}
	return map[string]any{}
}

func (w *walker) sample(schema map[string]any, depth int) any {
	if depth > 8 {
		return nil
	}
	if ref, ok := schema["$ref"].(string); ok {
		comps, _ := w.doc["components"].(map[string]any)
		schemas, _ := comps["schemas"].(map[string]any)
		s, _ := schemas[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any)
		return w.sample(s, depth+1)
	}
	if enum, ok := schema["enum"].([]any); ok && len(enum) > 0 {
		return enum[0]
	}
	typ, _ := schema["type"].(string)
	if ts, ok := schema["type"].([]any); ok {
		for _, x := range ts {
			if s, _ := x.(string); s != "null" {
				typ = s
				break
			}
		}
	}
	num := func(key string, def float64) float64 {
		if v, ok := schema[key].(float64); ok {
			return v
		}
		return def
	}
	switch typ {
	case "object":
		out := map[string]any{}
		props, _ := schema["properties"].(map[string]any)
		req, _ := schema["required"].([]any)
		for _, r := range req {
			name, _ := r.(string)
			p, _ := props[name].(map[string]any)
			out[name] = w.sample(p, depth+1)
		}
		return out
	case "array":
		n := int(num("minItems", 0))
		items, _ := schema["items"].(map[string]any)
		out := make([]any, n)
		for i := range out {
			out[i] = w.sample(items, depth+1)
		}
		return out
	case "string":
		switch schema["format"] {
		case "date-time":
			return "2026-03-01T12:00:00Z"
		case "email":
			return "walk@example.org"
		case "uri":
			return "https://example.org/"
		}
		return strings.Repeat("x", max(1, int(num("minLength", 1))))
	case "integer", "number":
		return num("minimum", 1)
	case "boolean":
		return false
	}
	return nil
}

// mustList returns the ids of the approvals token sees.
func mustList(t *testing.T, w *walker, token string) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.e.Server.URL+api.Prefix+"/approvals", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := w.e.Server.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Items []struct {
			ID string `json:"id"`
		} `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range out.Items {
		ids = append(ids, a.ID)
	}
	return ids
}
