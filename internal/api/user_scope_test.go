package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// A person is scoped by site exactly as a token is: a user of another site
// learns nothing about a device (404) and cannot act on it; a user of the
// device's site can. They authenticate by session cookie, with the CSRF
// token on every change.
func TestUserOfWrongSiteRefused(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	e := apitest.New(t, s, nil)
	ctx := context.Background()
	admin, _ := client.New(e.Server.URL, e.Token)
	caCert, _ := e.ManufacturerCA(t, "Acme")
	if _, err := admin.AddManufacturer(ctx, "Acme", pki.EncodeCertificates(caCert)); err != nil {
		t.Fatal(err)
	}
	d, err := admin.Preregister(ctx, client.Preregistration{Serial: "SN-A1", Manufacturer: "Acme", Model: "LVP", Site: "A"})
	if err != nil {
		t.Fatal(err)
	}
	boss := access.Principal{Kind: access.KindToken, ID: "test", Roles: []access.Role{access.RoleAdmin}}
	session := func(name, site string) (cookie, csrf string) {
		u, err := e.Users.Create(ctx, boss, access.NewUser{Username: name, Password: "a long enough password " + name,
			Roles: []access.Role{access.RoleBiomed}, Sites: []string{site}})
		if err != nil {
			t.Fatal(err)
		}
		// The login flow itself is tested in session_routes_test; here a
		// session that passed its second factor is enough.
		c, sess, err := e.Sessions.Start(ctx, u.ID, true, access.MethodPasswordTOTP, "test")
		if err != nil {
			t.Fatal(err)
		}
		return c, sess.CSRF
	}
	call := func(method, path, cookie, csrf string) int {
		req, _ := http.NewRequest(method, e.Server.URL+path, strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		req.AddCookie(&http.Cookie{Name: access.SessionCookie, Value: cookie})
		if csrf != "" {
			req.Header.Set("X-CSRF-Token", csrf)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	bCookie, bCSRF := session("bob-site-b", "B")
	aCookie, aCSRF := session("ann-site-a", "A")

	if code := call("GET", "/api/v1/devices/"+d.ID, bCookie, ""); code != http.StatusNotFound {
		t.Errorf("site B user reads a site A device: %d, want 404", code)
	}
	if code := call("POST", "/api/v1/devices/"+d.ID+"/reject", bCookie, bCSRF); code != http.StatusNotFound {
		t.Errorf("site B user rejects a site A device: %d, want 404", code)
	}
	if code := call("GET", "/api/v1/devices?site=A", bCookie, ""); code != http.StatusForbidden {
		t.Errorf("site B user lists site A: %d, want 403", code)
	}
	if code := call("GET", "/api/v1/devices/"+d.ID, aCookie, ""); code != http.StatusOK {
		t.Errorf("site A user reads a site A device: %d, want 200", code)
	}
	if code := call("POST", "/api/v1/devices/"+d.ID+"/reject", aCookie, ""); code != http.StatusForbidden {
		t.Errorf("site A user changes without the CSRF token: %d, want 403", code)
	}
	if code := call("POST", "/api/v1/devices/"+d.ID+"/reject", aCookie, aCSRF); code != http.StatusOK {
		t.Errorf("site A user rejects a site A device: %d, want 200", code)
	}
	// A biomed user may not manage tokens, whatever the site.
	if code := call("GET", "/api/v1/tokens", aCookie, ""); code != http.StatusForbidden {
		t.Errorf("biomed lists tokens: %d, want 403", code)
	}
}
