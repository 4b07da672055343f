package sim

import (
	"encoding/json"
	"testing"
	"time"
)

// fleetOf returns n devices of a mixed plan, started at t0.
func fleetOf(b *testing.B, n int) []Device {
	b.Helper()
	specs, err := Plan(PlanConfig{N: n, Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	devs := make([]Device, n)
	for i, s := range specs {
		if devs[i], err = New(s, t0); err != nil {
			b.Fatal(err)
		}
	}
	return devs
}

// BenchmarkStep is the simulator's own CPU cost: one op steps 10,000 mixed
// devices by one second each (collecting their events), as `ward sim`
// does once a second. ns/device is the cost of one device-second.
func BenchmarkStep(b *testing.B) {
	const n = 10000
	devs := fleetOf(b, n)
	now := t0
	events := 0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Second)
		for _, d := range devs {
			events += len(d.Step(now))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/device")
	b.ReportMetric(float64(events)/float64(b.N), "events/op")
}

// BenchmarkTelemetry: one op builds and marshals the telemetry of 10,000
// mixed devices, what they send in 10–60 s.
func BenchmarkTelemetry(b *testing.B) {
	const n = 10000
	devs := fleetOf(b, n)
	bytes := 0
	b.ReportAllocs()
	for b.Loop() {
		for _, d := range devs {
			p, err := json.Marshal(d.Telemetry())
			if err != nil {
				b.Fatal(err)
			}
			bytes += len(p)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/device")
	b.ReportMetric(float64(bytes)/float64(b.N)/n, "B/payload")
}
