package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/wardhq/ward/protocol"
)

var t0 = time.Date(2025, 3, 1, 6, 0, 0, 0, time.UTC)

// models builds each model from a config.
var models = []struct {
	name string
	new  func(Config) Device
}{
	{ModelInfusionPump, func(c Config) Device { return NewInfusionPump(c) }},
	{ModelInsulinPump, func(c Config) Device { return NewInsulinPump(c) }},
	{ModelMonitor, func(c Config) Device { return NewMonitor(c) }},
}

// trace steps d from start for dur, every step, and returns its events and
// its telemetry every hour, as JSON lines.
func trace(t testing.TB, d Device, start time.Time, dur, step time.Duration) []string {
	t.Helper()
	var out []string
	nextHour := start.Add(time.Hour)
	for now := start; !now.After(start.Add(dur)); now = now.Add(step) {
		for _, e := range d.Step(now) {
			out = append(out, mustJSON(t, e))
		}
		if !now.Before(nextHour) && now.Equal(nextHour) {
			out = append(out, mustJSON(t, d.Telemetry()), mustJSON(t, d.State()))
			nextHour = nextHour.Add(time.Hour)
		}
	}
	return out
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDeterminism: the same seed gives the same trace, whether the origin
// is given or taken from the first Step, and however often Step is called.
func TestDeterminism(t *testing.T) {
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) {
			for seed := range uint64(3) {
				a := trace(t, m.new(Config{Seed: seed, Start: t0}), t0, 48*time.Hour, time.Second)
				b := trace(t, m.new(Config{Seed: seed}), t0, 48*time.Hour, time.Second)
				// Every 7 min 30 s, which divides an hour: the hourly
				// snapshots fall on the same instants.
				c := trace(t, m.new(Config{Seed: seed, Start: t0}), t0, 48*time.Hour, 450*time.Second)
				if len(a) < 48*2 {
					t.Fatalf("seed %d: only %d lines", seed, len(a))
				}
				for name, o := range map[string][]string{"lazy origin": b, "coarse steps": c} {
					if !reflect.DeepEqual(a, o) {
						t.Errorf("seed %d: %s: trace differs:\n%s", seed, name, firstDiff(a, o))
					}
				}
				if d := trace(t, m.new(Config{Seed: seed + 100, Start: t0}), t0, 48*time.Hour, time.Second); reflect.DeepEqual(a, d) {
					t.Errorf("seeds %d and %d give the same trace", seed, seed+100)
				}
				// A generator handed in is used as given.
				r := rand.New(rand.NewPCG(seed, splitmix(seed)))
				if e := trace(t, m.new(Config{Rand: r, Seed: 999, Start: t0}), t0, 48*time.Hour, time.Second); !reflect.DeepEqual(a, e) {
					t.Errorf("seed %d: Config.Rand: trace differs:\n%s", seed, firstDiff(a, e))
				}
			}
		})
	}
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("line %d:\n  %s\n  %s", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("lengths %d and %d", len(a), len(b))
}

// TestPayloads: every state, telemetry and event is a v1 JSON object that
// protocol.CheckPayload accepts; events are numbered from 1 without gaps
// and stamped within the step that returned them; the versions are
// reported.
func TestPayloads(t *testing.T) {
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) {
			kinds := map[string]bool{}
			for seed := range uint64(20) {
				d := m.new(Config{Seed: seed, Start: t0, SoftwareVersion: "9.9.9", DrugLibraryVersion: "DL-X", Population: []Population{Adult, Neonate}[seed%2]})
				var seq uint64
				prev := t0
				for now := t0; now.Before(t0.Add(72 * time.Hour)); now = now.Add(10 * time.Second) {
					evs := d.Step(now)
					for _, e := range evs {
						seq++
						if e.Seq != seq || e.Time.Before(prev) || e.Time.After(now) || e.Mode == "" || e.Type == "" {
							t.Fatalf("seed %d: event %+v after seq %d, step (%v, %v]", seed, e, seq-1, prev, now)
						}
						checkPayload(t, e)
						kinds[string(e.Type)+" "+e.Code] = true
					}
					prev = now
					if len(evs) > 0 || now.Second() == 0 && now.Minute()%30 == 0 {
						checkPayload(t, d.Telemetry())
						st := checkPayload(t, d.State())
						if st["software_version"] != "9.9.9" || st["idle"] != d.Idle() {
							t.Fatalf("state %v", st)
						}
						if lib, _ := st["druglib_version"].(string); (lib == "DL-X") != (m.name == ModelInfusionPump) {
							t.Fatalf("druglib_version %q", lib)
						}
					}
				}
			}
			t.Logf("%d kinds of event: %v", len(kinds), kinds)
		})
	}
}

// checkPayload marshals v, checks it with protocol.CheckPayload and
// returns it decoded.
func checkPayload(t testing.TB, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.CheckPayload(b); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if len(b) > 2048 {
		t.Fatalf("payload of %d bytes: %s", len(b), b)
	}
	var obj map[string]any
	if err := json.Unmarshal(b, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// legal are the mode transitions of each model's state machine.
var legal = map[string]map[[2]string]bool{
	ModelInfusionPump: {
		{ModeIdle, ModeInfusing}: true, {ModeInfusing, ModePaused}: true, {ModeInfusing, ModeAlarm}: true,
		{ModePaused, ModeInfusing}: true, {ModePaused, ModeAlarm}: true,
		{ModeAlarm, ModeInfusing}: true, {ModeAlarm, ModeIdle}: true,
	},
	ModelInsulinPump: {
		{ModeDelivering, ModeSuspended}: true, {ModeDelivering, ModeAlarm}: true,
		{ModeSuspended, ModeDelivering}: true, {ModeSuspended, ModeAlarm}: true,
		{ModeAlarm, ModeSuspended}: true, {ModeAlarm, ModeDelivering}: true,
	},
	ModelMonitor: {
		{ModeMonitoring, ModeStandby}: true, {ModeStandby, ModeMonitoring}: true,
	},
}

// mode reads a device's mode without building its state.
func mode(d Device) string {
	switch d := d.(type) {
	case *InfusionPump:
		return d.mode
	case *InsulinPump:
		return d.mode
	case *Monitor:
		return d.mode
	}
	panic("unknown model")
}

// TestStateMachines steps devices a second at a time, with no input, and
// checks that every mode change is a legal transition and comes with an
// event that names the new mode, that alarm and alarm_cleared events
// alternate per code and agree with the state, and the invariants of each
// model at every second.
func TestStateMachines(t *testing.T) {
	const devices, days = 8, 3
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			seen := map[[2]string]int{}
			for seed := range uint64(devices) {
				d := m.new(Config{Seed: seed, Start: t0, SoftwareVersion: "1"})
				was := mode(d)
				alarms := activeAlarms(t, d)
				for now := t0.Add(time.Second); now.Before(t0.Add(days * 24 * time.Hour)); now = now.Add(time.Second) {
					evs := d.Step(now)
					is := mode(d)
					checkInvariants(t, d)
					for _, e := range evs {
						switch {
						case e.Type == EventAlarm && !alarms[e.Code]:
							alarms[e.Code] = true
						case e.Type == EventAlarmCleared && alarms[e.Code]:
							delete(alarms, e.Code)
						case e.Type == EventAlarm || e.Type == EventAlarmCleared:
							t.Fatalf("seed %d at %v: %s %s with alarms %v", seed, now, e.Type, e.Code, alarms)
						}
					}
					if len(evs) > 0 {
						if got := activeAlarms(t, d); !reflect.DeepEqual(got, alarms) {
							t.Fatalf("seed %d at %v: alarms %v, from events %v", seed, now, got, alarms)
						}
					}
					if is == was {
						continue
					}
					tr := [2]string{was, is}
					if !legal[m.name][tr] {
						t.Fatalf("seed %d at %v: illegal transition %s → %s", seed, now, was, is)
					}
					if len(evs) == 0 || evs[len(evs)-1].Mode != is {
						t.Fatalf("seed %d at %v: %s → %s without an event: %+v", seed, now, was, is, evs)
					}
					seen[tr]++
					was = is
				}
			}
			// The rare ones (battery depleted) have their own tests.
			t.Logf("transitions in %d device-days: %v", devices*days, seen)
		})
	}
}

// activeAlarms returns the alarms that the device's state says are on.
func activeAlarms(t *testing.T, d Device) map[string]bool {
	st := checkPayload(t, d.State())
	on := map[string]bool{}
	for _, k := range []string{"alarm", "low_battery", "low_reservoir"} {
		switch v := st[k].(type) {
		case string:
			on[v] = true
		case bool:
			on[k] = v
		}
	}
	if l, ok := st["alarms"].([]any); ok {
		for _, a := range l {
			on[a.(string)] = true
		}
	}
	for k, v := range on {
		if !v {
			delete(on, k)
		}
	}
	return on
}

// checkInvariants checks what must hold of a model at any time.
func checkInvariants(t *testing.T, d Device) {
	t.Helper()
	idle := d.Idle()
	switch d := d.(type) {
	case *InfusionPump:
		if d.vi < 0 || d.vi > d.program.VTBIML || (d.mode == ModeIdle) != (d.program == Program{}) {
			t.Fatalf("%v: VI %v, program %+v in mode %s", d.clk.now(), d.vi, d.program, d.mode)
		}
		if d.battery < 0 || d.battery > 100 || idle != (d.mode == ModeIdle) || (d.mode == ModeAlarm) != (d.alarm != "") {
			t.Fatalf("%v: battery %v, mode %s, alarm %q, idle %v", d.clk.now(), d.battery, d.mode, d.alarm, idle)
		}
	case *InsulinPump:
		iob := d.iob()
		if d.reservoir < 0 || d.reservoir > d.capacity || iob < 0 || iob > insMaxBolus*insMaxBoluses {
			t.Fatalf("%v: reservoir %v of %v, IOB %v", d.clk.now(), d.reservoir, d.capacity, iob)
		}
		if d.battery < 0 || d.battery > 100 || idle != (d.mode == ModeSuspended) || (d.mode == ModeAlarm) != (d.alarm != "") {
			t.Fatalf("%v: battery %v, mode %s, alarm %q, idle %v", d.clk.now(), d.battery, d.mode, d.alarm, idle)
		}
	case *Monitor:
		if idle != (d.mode == ModeStandby) {
			t.Fatalf("idle %v in %s", idle, d.mode)
		}
		if d.mode == ModeMonitoring {
			if d.spo2.x < 0 || d.spo2.x > 100 || d.hr.x < 25 || d.hr.x > 260 || d.rr.x < 0 || d.rr.x > 120 {
				t.Fatalf("%v: HR %v, SpO2 %v, RR %v", d.clk.now(), d.hr.x, d.spo2.x, d.rr.x)
			}
		}
	}
}

// TestInstall: an update installs only when the device is idle; a monitor
// and an insulin pump have no drug library.
func TestInstall(t *testing.T) {
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) {
			d := m.new(Config{Seed: 1, Start: t0, SoftwareVersion: "1.0", DrugLibraryVersion: "DL-1"})
			if err := d.InstallSoftware(""); !errors.Is(err, ErrInvalid) {
				t.Errorf("empty version: %v", err)
			}
			var busy, idle bool
			for now := t0; now.Before(t0.Add(30*24*time.Hour)) && !(busy && idle); now = now.Add(time.Minute) {
				d.Step(now)
				err := d.InstallSoftware(now.Format("2006.01.02.1504"))
				if d.Idle() {
					idle = true
					if err != nil || d.SoftwareVersion() != now.Format("2006.01.02.1504") {
						t.Fatalf("idle: %v, version %q", err, d.SoftwareVersion())
					}
					err = d.InstallDrugLibrary("DL-2")
					if m.name == ModelInfusionPump && (err != nil || d.DrugLibraryVersion() != "DL-2") {
						t.Fatalf("drug library: %v, version %q", err, d.DrugLibraryVersion())
					}
					if m.name != ModelInfusionPump && (!errors.Is(err, ErrUnsupported) || d.DrugLibraryVersion() != "") {
						t.Fatalf("drug library on a %s: %v, version %q", m.name, err, d.DrugLibraryVersion())
					}
				} else {
					busy = true
					if !errors.Is(err, ErrBusy) {
						t.Fatalf("busy: %v", err)
					}
				}
			}
			if !busy || !idle {
				t.Fatalf("in 30 days: busy %v, idle %v", busy, idle)
			}
		})
	}
}

// TestConcurrentUse: Step, State, Telemetry and Idle may be called from
// several goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	for _, m := range models {
		d := m.new(Config{Seed: 7, Start: t0})
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 2000 {
					switch g {
					case 0:
						d.Step(t0.Add(time.Duration(i) * time.Second))
					case 1:
						_ = mustJSON(t, d.State())
					case 2:
						_ = mustJSON(t, d.Telemetry())
					case 3:
						_ = d.Idle()
						_ = d.InstallSoftware("2")
						_ = d.SoftwareVersion()
					}
				}
			})
		}
		wg.Wait()
	}
}

func TestNew(t *testing.T) {
	for _, m := range Models() {
		d, err := New(Spec{Model: m, Seed: 1, SoftwareVersion: "1"}, t0)
		if err != nil || d.Model() != m || d.TelemetryInterval() < 10*time.Second || d.TelemetryInterval() > time.Minute {
			t.Errorf("%s: %v %v", m, d, err)
		}
	}
	if _, err := New(Spec{Model: "toaster"}, t0); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown model: %v", err)
	}
}
