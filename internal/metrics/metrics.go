// Package metrics is Ward's Prometheus exposition: what a node's device
// gateway has done since it started, and the Go runtime and process
// figures, served as GET /metrics on the admin listener (package api).
//
// The gateway's figures are read from gateway.Status at each scrape, so the
// metrics and `ward gateway status` never disagree and nothing counts
// twice. Counters start at zero with the node, as Prometheus expects of a
// counter that resets when its process restarts.
package metrics

import (
	"bytes"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"

	"github.com/wardhq/ward/internal/gateway"
)

// Config is what the registry reads.
type Config struct {
	Node    string
	Version string
	// Gateway reports the node's gateway; nil leaves its metrics out.
	Gateway func() gateway.Status
}

// Registry gathers a node's metrics.
type Registry struct {
	reg *prometheus.Registry
}

// New builds the registry: the node's identity, its gateway, the Go
// runtime and the process.
func New(cfg Config) (*Registry, error) {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "ward_node_info",
		Help:        "Always 1: the node's name and Ward's version, as labels.",
		ConstLabels: prometheus.Labels{"node": cfg.Node, "version": cfg.Version},
	})
	info.Set(1)
	cs := []prometheus.Collector{info,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	if cfg.Gateway != nil {
		cs = append(cs, gatewayCollector{status: cfg.Gateway})
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return &Registry{reg: reg}, nil
}

// ContentType is the exposition format Text writes.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Text gathers the metrics and writes them in Prometheus's text format.
func (r *Registry) Text() ([]byte, error) {
	mfs, err := r.reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return b.Bytes(), nil
}

var (
	descSessions = prometheus.NewDesc("ward_gateway_sessions",
		"Device MQTT sessions on this node now.", nil, nil)
	descRefused = prometheus.NewDesc("ward_gateway_refused_connections_total",
		"Device connections the gateway refused, by reason (ward device history lists each).", []string{"reason"}, nil)
	descViolations = prometheus.NewDesc("ward_gateway_violations_total",
		"Messages, subscriptions and attempts the gateway refused, by kind; each is also an event for the monitor.", []string{"kind"}, nil)
	descHistoryDropped = prometheus.NewDesc("ward_gateway_history_dropped_total",
		"Connection history rows lost to a full queue or a store error.", nil, nil)
	descMessages = prometheus.NewDesc("ward_gateway_messages_total",
		"Device messages by outcome: stored in the stream, duplicate (a redelivery already stored), invalid (not a v1 JSON object), unauthorized (not the device's own topic), store_failed (refused because the stream did not store it).",
		[]string{"outcome"}, nil)
	descRecords = prometheus.NewDesc("ward_gateway_records_total",
		"Stream records the stored messages were written in (many messages a record on a busy node).", nil, nil)
	descStates = prometheus.NewDesc("ward_gateway_state_updates_total",
		"Last known device states written to the registry.", nil, nil)
)

// gatewayCollector reads the gateway's status at each scrape.
type gatewayCollector struct {
	status func() gateway.Status
}

func (c gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descRefused, descViolations, descHistoryDropped, descMessages, descRecords, descStates} {
		ch <- d
	}
}

func (c gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(st.Connected))
	for reason, n := range st.Refused {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), reason)
	}
	for kind, n := range st.Violations {
		ch <- prometheus.MustNewConstMetric(descViolations, prometheus.CounterValue, float64(n), kind)
	}
	ch <- prometheus.MustNewConstMetric(descHistoryDropped, prometheus.CounterValue, float64(st.HistoryDropped))
	m := st.Messages
	for _, o := range []struct {
		outcome string
		n       uint64
	}{{"stored", m.Stored}, {"duplicate", m.Duplicates}, {"invalid", m.Invalid}, {"unauthorized", m.Unauthorized}, {"store_failed", m.StoreFailed}} {
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(o.n), o.outcome)
	}
	ch <- prometheus.MustNewConstMetric(descRecords, prometheus.CounterValue, float64(m.Records))
	ch <- prometheus.MustNewConstMetric(descStates, prometheus.CounterValue, float64(m.StateUpdates))
}
