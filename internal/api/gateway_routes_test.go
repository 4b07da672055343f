package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/api"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/metrics"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func TestQuarantineReleaseHistoryRoutes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		e := apitest.New(t, st, func(c *api.Config) { c.History = gateway.NewHistory(gateway.HistoryConfig{Store: st}) })
		ctx := context.Background()
		mfrCA, _ := e.ManufacturerCA(t, "Acme")
		if _, err := e.Client.AddManufacturer(ctx, "Acme", pki.EncodeCertificates(mfrCA)); err != nil {
			t.Fatal(err)
		}
		d, err := e.Client.Preregister(ctx, client.Preregistration{Serial: "PX-1", Manufacturer: "Acme", Model: "P7"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Client.Quarantine(ctx, "PX-1", "odd"); statusOf(err) != http.StatusConflict {
			t.Errorf("quarantine a pending device: %v", err)
		}
		issueTo(t, e, d.ID, "PX-1")
		q, err := e.Client.Quarantine(ctx, "PX-1", "odd traffic")
		if err != nil || string(q.State) != string(fleet.Quarantined) {
			t.Fatalf("quarantine: %+v %v", q, err)
		}
		if _, err := e.Client.Quarantine(ctx, "PX-1", "again"); statusOf(err) != http.StatusConflict {
			t.Errorf("quarantine twice: %v", err)
		}
		if _, err := e.Client.Quarantine(ctx, "PX-1", ""); statusOf(err) != http.StatusUnprocessableEntity && statusOf(err) != http.StatusBadRequest {
			t.Errorf("quarantine without reason: %v", err)
		}
		r, err := e.Client.Release(ctx, d.ID)
		if err != nil || string(r.State) != string(fleet.Active) {
			t.Fatalf("release: %+v %v", r, err)
		}
		if _, err := e.Client.Release(ctx, d.ID); statusOf(err) != http.StatusConflict {
			t.Errorf("release an active device: %v", err)
		}
		h, err := e.Client.History(ctx, "PX-1", 10)
		if err != nil || len(h) != 0 {
			t.Errorf("history: %+v %v", h, err)
		}
		if _, err := e.Client.History(ctx, "nope", 0); statusOf(err) != http.StatusNotFound {
			t.Errorf("history of an unknown device: %v", err)
		}
		entries, err := e.Audit.List(ctx, audit.Filter{Target: "device:" + d.ID})
		if err != nil {
			t.Fatal(err)
		}
		var seen int
		for _, en := range entries {
			if en.Action == "device.quarantine" || en.Action == "device.release" {
				seen++
			}
		}
		if seen != 2 {
			t.Errorf("audit: %d quarantine/release entries", seen)
		}
	})
}

func TestGatewayStatusRoute(t *testing.T) {
	st := storetest.Open(t, store.SQLite)
	ctx := context.Background()
	e := apitest.New(t, st, nil)
	if _, err := e.Client.GatewayStatus(ctx); statusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("without a gateway: %v, want 503", err)
	}
	since := time.Date(2026, 11, 22, 5, 0, 0, 0, time.UTC)
	e = apitest.New(t, storetest.Open(t, store.SQLite), func(c *api.Config) {
		c.GatewayStatus = func() gateway.Status {
			return gateway.Status{Node: "node-1", Address: "127.0.0.1:8883", Since: since, Connected: 3,
				Refused: map[string]int64{gateway.ReasonRevoked: 2}, Violations: map[string]int64{gateway.ViolationACLPublish: 5},
				Messages: gateway.IngestStats{Stored: 40, Records: 4, Invalid: 1}}
		}
	})
	got, err := e.Client.GatewayStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != "node-1" || got.Address != "127.0.0.1:8883" || !got.Since.Equal(since) || got.Connected != 3 ||
		got.Refused[gateway.ReasonRevoked] != 2 || got.Violations[gateway.ViolationACLPublish] != 5 ||
		got.Messages.Stored != 40 || got.Messages.Records != 4 || got.Messages.Invalid != 1 {
		t.Fatalf("status %+v", got)
	}
}

// TestMetricsRoute: GET /metrics is Prometheus's text, for a token with
// devices:read (every role, a viewer's included), and 503 on a node
// without metrics.
func TestMetricsRoute(t *testing.T) {
	e := apitest.New(t, storetest.Open(t, store.SQLite), nil)
	if resp := get(t, e, e.Token, "/metrics"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("without metrics: %d, want 503", resp.StatusCode)
	}
	e = apitest.New(t, storetest.Open(t, store.SQLite), func(c *api.Config) {
		reg, err := metrics.New(metrics.Config{Node: "node-1", Version: "v0.test",
			Gateway: func() gateway.Status { return gateway.Status{Connected: 3} }})
		if err != nil {
			t.Fatal(err)
		}
		c.Metrics = reg.Text
	})
	if resp := get(t, e, "", "/metrics"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a token: %d, want 401", resp.StatusCode)
	}
	// A viewer's token, read-only, is what a Prometheus server needs.
	viewer, _, err := e.Client.CreateToken(context.Background(), client.TokenRequest{Name: "prometheus", Roles: []string{"viewer"}})
	if err != nil {
		t.Fatal(err)
	}
	resp := get(t, e, viewer, "/metrics")
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") ||
		!strings.Contains(body, "\nward_gateway_sessions 3\n") || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("metrics: %d %q %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"), body)
	}
}
