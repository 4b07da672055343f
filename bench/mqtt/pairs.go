package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"path/filepath"
	"runtime"
	"slices"
	"time"
)

// The pairs figure: QoS 1 throughput with both brokers running at once and
// loaded in turn. Each broker has its own load generator, connected once;
// the harness opens one publish window on one, then on the other, and so on,
// swapping which goes first every pair. A pair's two windows are seconds
// apart, where rounds (which start each broker afresh) are half a minute
// apart: on a shared machine whose speed drifts by a tenth within minutes,
// the ratio within a pair is the steadier comparison. The idle broker costs
// next to nothing (its publishers wait, connected, with a 5-minute
// keepalive).

// window is one broker's measured publish window.
type window struct {
	Pair      int     `json:"pair"`
	Broker    string  `json:"broker"`
	Messages  int64   `json:"messages"`
	Errors    int64   `json:"errors"`
	FirstErr  string  `json:"first_error,omitempty"`
	Rate      float64 `json:"rate"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	Cores     float64 `json:"cores"`      // broker CPU while publishing
	CPUUs     float64 `json:"cpu_us"`     // broker CPU per message
	LoadCores float64 `json:"load_cores"` // load generator CPU, warm-up included
}

func (h *harness) pairs(ctx context.Context, wardBin string, ca wardCA) ([]window, error) {
	o := h.o
	node, err := startWard(ctx, wardBin, o.cache)
	if err != nil {
		return nil, err
	}
	defer func() { _ = node.stop() }()
	if node.mqttErr != nil {
		return nil, fmt.Errorf("ward: not measured: %w", node.mqttErr)
	}
	log.Printf("starting %s", o.mosquitto)
	m, err := startMosquitto(ctx, o.mosquitto, filepath.Join(o.cache, "mosquitto"), ca)
	if err != nil {
		return nil, err
	}
	defer func() { _ = m.stop() }()

	brokers := map[string]*broker{"ward": &node.broker, "mosquitto": m}
	loads := map[string]*loadProc{}
	defer func() {
		for _, p := range loads {
			_ = p.stdin.Close()
			_ = p.cmd.Process.Kill()
		}
	}()
	for _, name := range []string{"ward", "mosquitto"} {
		args := []string{"-mode", "publish", "-count", fmt.Sprint(o.publishers), "-publishers", fmt.Sprint(o.publishers),
			"-warmup", o.pairWarmup.String(), "-duration", o.pairWindow.String(), "-payload", fmt.Sprint(o.payload), "-windows"}
		if o.oneWrite {
			args = append(args, "-one-write")
		}
		p, err := h.startLoad(ctx, brokers[name], "pairs", args...)
		if err != nil {
			return nil, err
		}
		loads[name] = p
		r, err := p.result(2 * time.Minute)
		if err != nil {
			return nil, fmt.Errorf("%s: connecting the publishers: %w", name, err)
		}
		if r.Event != "connected" || r.Errors > 0 {
			return nil, fmt.Errorf("%s: %d of %d publishers failed to connect: %s", name, r.Errors, o.publishers, r.FirstError)
		}
	}
	log.Printf("pairs: %d publishers connected to each broker; %d pairs of %s + %s warm-up windows", o.publishers, o.pairs, o.pairWindow, o.pairWarmup)

	var out []window
	for pair := 1; pair <= o.pairs; pair++ {
		order := []string{"ward", "mosquitto"}
		if pair%2 == 0 {
			order = []string{"mosquitto", "ward"}
		}
		for _, name := range order {
			w, err := h.window(brokers[name], loads[name])
			if err != nil {
				return nil, fmt.Errorf("%s, pair %d: %w", name, pair, err)
			}
			w.Pair = pair
			log.Printf("pair %d: %s %.0f msg/s, %.1f µs per message, p50 %.2f ms", pair, name, w.Rate, w.CPUUs, w.P50Ms)
			out = append(out, w)
		}
	}
	return out, nil
}

// window opens one publish window on p and measures the broker over it.
func (h *harness) window(b *broker, p *loadProc) (window, error) {
	o := h.o
	if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
		return window{}, err
	}
	time.Sleep(o.pairWarmup)
	s1, err := readProc(b.pid)
	if err != nil {
		return window{}, err
	}
	r, err := p.result(o.pairWindow + time.Minute)
	if err != nil {
		return window{}, err
	}
	s2, err := readProc(b.pid)
	if err != nil {
		return window{}, err
	}
	if r.Event != "window" {
		return window{}, errors.New("the load generator ended")
	}
	w := window{Broker: b.name, Messages: r.OK, Errors: r.Errors, FirstErr: r.FirstError, Rate: r.Rate,
		P50Ms: ms(r.P50()), P99Ms: ms(r.P99()), LoadCores: r.CPUSeconds / (o.pairWarmup + o.pairWindow).Seconds()}
	w.Cores = float64(s2.cpu-s1.cpu) / float64(s2.at.Sub(s1.at))
	if w.Rate > 0 {
		w.CPUUs = w.Cores * 1e6 / w.Rate
	}
	return w, nil
}

// reportPairs prints each pair, its ratios, and the medians.
func reportPairs(w io.Writer, o options, ws []window) {
	fmt.Fprintf(w, "\n%d cores, %s, %s: QoS 1, %d publishers, %d B%s, %d pairs of %s windows (both brokers running)\n\n",
		runtime.NumCPU(), runtime.Version(), time.Now().Format(time.DateOnly), o.publishers, o.payload, oneWriteNote(o.oneWrite), o.pairs, o.pairWindow)
	fmt.Fprintln(w, "| pair | first | msg/s: Ward | Mosquitto | **ratio** | µs per message: Ward | Mosquitto | ratio | p50 ms: Ward | Mosquitto |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	var rates, cpus []float64
	by := map[string][]window{}
	for i := 0; i+1 < len(ws); i += 2 {
		first := ws[i].Broker
		a, b := ws[i], ws[i+1]
		if a.Broker != "ward" {
			a, b = b, a
		}
		by["ward"], by["mosquitto"] = append(by["ward"], a), append(by["mosquitto"], b)
		rr, cr := a.Rate/b.Rate, a.CPUUs/b.CPUUs
		rates, cpus = append(rates, rr), append(cpus, cr)
		fmt.Fprintf(w, "| %d | %s | %.0f | %.0f | **%.2f×** | %.1f | %.1f | %.2f× | %.2f | %.2f |\n",
			a.Pair, first, a.Rate, b.Rate, rr, a.CPUUs, b.CPUUs, cr, a.P50Ms, b.P50Ms)
	}
	if len(rates) == 0 {
		return
	}
	med := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	field := func(b string, f func(window) float64) float64 {
		var v []float64
		for _, x := range by[b] {
			v = append(v, f(x))
		}
		return med(v)
	}
	wins := 0
	for _, r := range rates {
		if r >= 1 {
			wins++
		}
	}
	fmt.Fprintf(w, "\n| median of %d pairs | Ward | Mosquitto | Ward / Mosquitto |\n|---|---|---|---|\n", len(rates))
	fmt.Fprintf(w, "| QoS 1 msg/s | %.0f | %.0f | **%.2f×** (median of the pairs' ratios; %.2f×–%.2f×; Ward ahead in %d of %d) |\n",
		field("ward", func(x window) float64 { return x.Rate }), field("mosquitto", func(x window) float64 { return x.Rate }),
		med(rates), slices.Min(rates), slices.Max(rates), wins, len(rates))
	fmt.Fprintf(w, "| broker CPU per message (µs) | %.1f | %.1f | %.2f× |\n",
		field("ward", func(x window) float64 { return x.CPUUs }), field("mosquitto", func(x window) float64 { return x.CPUUs }), med(cpus))
	fmt.Fprintf(w, "| publish→PUBACK p50 / p99 (ms) | %.2f / %.2f | %.2f / %.2f | |\n",
		field("ward", func(x window) float64 { return x.P50Ms }), field("ward", func(x window) float64 { return x.P99Ms }),
		field("mosquitto", func(x window) float64 { return x.P50Ms }), field("mosquitto", func(x window) float64 { return x.P99Ms }))
	fmt.Fprintf(w, "| load generator CPU (cores) | %.2f | %.2f | |\n",
		field("ward", func(x window) float64 { return x.LoadCores }), field("mosquitto", func(x window) float64 { return x.LoadCores }))
	var errs int64
	for _, x := range ws {
		errs += x.Errors
	}
	fmt.Fprintf(w, "\nPublish errors over all windows: %d.\n", errs)
}
