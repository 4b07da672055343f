package client_test

import (
	"context"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wardhq/ward/client"
)

// The client is public: it must build with the standard library alone.
func TestImportsStandardLibraryOnly(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s: the client may use the standard library only", f, p)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer tok" {
			t.Errorf("Authorization = %q", got)
		}
		switch r.URL.Path {
		case "/api/v1/devices/a%2Fb", "/api/v1/devices/a/b":
			if r.URL.RawPath != "/api/v1/devices/a%2Fb" {
				t.Errorf("ref not escaped: %q", r.URL.RawPath)
			}
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(404)
			w.Write([]byte(`{"title":"Not Found","status":404,"detail":"device \"a/b\": not found"}`))
		case "/api/v1/devices":
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(422)
			w.Write([]byte(`{"title":"Unprocessable Entity","status":422,"detail":"validation failed","errors":[{"message":"expected number","location":"query.limit"}]}`))
		default:
			w.WriteHeader(502)
			w.Write([]byte("bad gateway from a proxy"))
		}
	}))
	defer srv.Close()
	c, err := client.New(srv.URL+"/", "tok")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = c.Device(ctx, "a/b")
	if !client.IsNotFound(err) || err.Error() != `device "a/b": not found` {
		t.Errorf("Device: %v", err)
	}
	_, err = c.Devices(ctx, client.DeviceFilter{})
	if e, ok := err.(*client.Error); !ok || e.Status != 422 || !strings.Contains(e.Error(), "query.limit: expected number") {
		t.Errorf("Devices: %v", err)
	}
	if _, err := c.CA(ctx); err == nil || err.(*client.Error).Status != 502 || !strings.Contains(err.Error(), "bad gateway") {
		t.Errorf("CA: %v", err)
	}
	for _, bad := range []string{"", "ftp://x", "127.0.0.1:8080"} {
		if _, err := client.New(bad, "t"); err == nil {
			t.Errorf("New(%q) accepted", bad)
		}
	}
}
