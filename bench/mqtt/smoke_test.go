package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestSmoke runs the whole harness in miniature, as `go run ./bench/mqtt`
// does (ward serve and mqttload built and run as processes, devices
// enrolled over EST, Mosquitto with its own configuration): 20 connections
// held from two processes, a few seconds of connects, a second of QoS 1
// publishing, against both brokers, then two pairs of publish windows with
// both brokers up, and checks that nothing failed.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ward serve, mqttload and mosquitto")
	}
	o := options{
		brokers: "ward,mosquitto", figures: "hold,connect,publish,pairs",
		cache: t.TempDir(), mosquitto: "/usr/sbin/mosquitto",
		devices: 20, procs: 2, sourcesPerProc: 2, holdWorkers: 8,
		settle: 100 * time.Millisecond, idle: 200 * time.Millisecond,
		connectDuration: time.Second, connectWorkers: 4,
		publishers: 4, publishDuration: time.Second, warmup: 200 * time.Millisecond, payload: 128,
		pairs: 2, pairWindow: 500 * time.Millisecond, pairWarmup: 100 * time.Millisecond,
	}
	if _, err := os.Stat(o.mosquitto); err != nil {
		if p, lerr := exec.LookPath("mosquitto"); lerr == nil {
			o.mosquitto = p
		} else if os.Getenv("CI") != "true" {
			t.Skipf("mosquitto is not installed (%v): install Debian's mosquitto to run the broker comparison", err)
		} else {
			t.Fatalf("CI=true and mosquitto is not installed: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rs, ws, err := run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	report(&out, o, rs)
	reportPairs(&out, o, ws)
	t.Log(out.String())
	if len(ws) != 2*o.pairs {
		t.Errorf("%d pair windows, want %d", len(ws), 2*o.pairs)
	}
	for i, w := range ws {
		want := []string{"ward", "mosquitto", "mosquitto", "ward"}[i%4]
		if w.Broker != want || w.Pair != i/2+1 {
			t.Errorf("window %d: %s in pair %d, want %s in pair %d", i, w.Broker, w.Pair, want, i/2+1)
		}
		if w.Messages == 0 || w.Errors != 0 || w.Cores <= 0 {
			t.Errorf("pair %d, %s: %d messages, %d errors, %.2f cores; first error: %s", w.Pair, w.Broker, w.Messages, w.Errors, w.Cores, w.FirstErr)
		}
	}
	seen := map[string]bool{}
	for _, f := range rs {
		seen[f.Broker] = true
		if f.Held != int64(o.devices) || f.HoldErrors != 0 || f.Drops != 0 {
			t.Errorf("%s: held %d of %d, %d errors, %d dropped; first error: %s", f.Broker, f.Held, o.devices, f.HoldErrors, f.Drops, f.HoldFirstError)
		}
		if f.Connects == 0 || f.ConnectErrors != 0 {
			t.Errorf("%s: %d connects, %d errors; first error: %s", f.Broker, f.Connects, f.ConnectErrors, f.ConnectFirstErr)
		}
		if f.Messages == 0 || f.PublishErrors != 0 {
			t.Errorf("%s: %d messages, %d errors; first error: %s", f.Broker, f.Messages, f.PublishErrors, f.PublishFirstErr)
		}
		if f.BaselineKiB == 0 || f.HeldKiB == 0 {
			t.Errorf("%s: no memory reading", f.Broker)
		}
	}
	for _, b := range []string{"ward", "mosquitto"} {
		if !seen[b] {
			t.Errorf("%s was not measured (see the log: %s)", b, filepath.Join(o.cache, "ward.log"))
		}
	}
}
