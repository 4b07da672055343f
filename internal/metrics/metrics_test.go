package metrics_test

import (
	"bytes"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/metrics"
)

// parse reads the text exposition the way Prometheus does.
func parse(t *testing.T, b []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, b)
	}
	return mfs
}

// value is the metric of family name whose labels include want.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no %s", name)
	}
next:
	for _, m := range mf.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s with %v", name, want)
	return 0
}

func TestGatewayMetrics(t *testing.T) {
	st := gateway.Status{Node: "node-1", Connected: 7,
		Refused:        map[string]int64{gateway.ReasonRevoked: 2, gateway.ReasonRefusedAuth: 3},
		Violations:     map[string]int64{gateway.ViolationACLPublish: 5},
		HistoryDropped: 1,
		Messages:       gateway.IngestStats{Stored: 40, Records: 4, Duplicates: 2, Invalid: 1, StoreFailed: 6, StateUpdates: 9}}
	reg, err := metrics.New(metrics.Config{Node: "node-1", Version: "v0.test", Gateway: func() gateway.Status { return st }})
	if err != nil {
		t.Fatal(err)
	}
	b, err := reg.Text()
	if err != nil {
		t.Fatal(err)
	}
	mfs := parse(t, b)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ward_node_info", map[string]string{"node": "node-1", "version": "v0.test"}, 1},
		{"ward_gateway_sessions", nil, 7},
		{"ward_gateway_refused_connections_total", map[string]string{"reason": gateway.ReasonRevoked}, 2},
		{"ward_gateway_refused_connections_total", map[string]string{"reason": gateway.ReasonRefusedAuth}, 3},
		{"ward_gateway_violations_total", map[string]string{"kind": gateway.ViolationACLPublish}, 5},
		{"ward_gateway_history_dropped_total", nil, 1},
		{"ward_gateway_messages_total", map[string]string{"outcome": "stored"}, 40},
		{"ward_gateway_messages_total", map[string]string{"outcome": "duplicate"}, 2},
		{"ward_gateway_messages_total", map[string]string{"outcome": "invalid"}, 1},
		{"ward_gateway_messages_total", map[string]string{"outcome": "unauthorized"}, 0},
		{"ward_gateway_messages_total", map[string]string{"outcome": "store_failed"}, 6},
		{"ward_gateway_records_total", nil, 4},
		{"ward_gateway_state_updates_total", nil, 9},
	} {
		if got := value(t, mfs, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Read at each scrape: a later status shows in the next one.
	st.Connected = 8
	b, _ = reg.Text()
	if got := value(t, parse(t, b), "ward_gateway_sessions", nil); got != 8 {
		t.Errorf("second scrape: %v sessions, want 8", got)
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes", "process_open_fds"} {
		if mfs[name] == nil {
			t.Errorf("no %s", name)
		}
	}
}

// Without a gateway (a node that runs none), its metrics are absent, not
// zero.
func TestNoGateway(t *testing.T) {
	reg, err := metrics.New(metrics.Config{Node: "n", Version: "v"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := reg.Text()
	if err != nil {
		t.Fatal(err)
	}
	if mfs := parse(t, b); mfs["ward_gateway_sessions"] != nil || mfs["ward_node_info"] == nil {
		t.Fatalf("families: %v", mfs)
	}
}
