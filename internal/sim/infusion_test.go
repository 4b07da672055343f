package sim

import (
	"errors"
	"testing"
	"time"
)

// idlePump returns a pump that is idle, on mains, with a full battery.
func idlePump(t *testing.T, seed uint64) *InfusionPump {
	t.Helper()
	for ; ; seed++ {
		if m := NewInfusionPump(Config{Seed: seed, Start: t0}); m.Idle() {
			m.onMains, m.battery, m.unplugAt, m.plugAt = true, 100, never, never
			return m
		}
	}
}

var saline = Program{Drug: "Sodium chloride 0.9%", Conc: 9, ConcUnit: "mg/mL", RateMLH: 125, VTBIML: 1000}

// TestInfusionContinues: a program started once runs to its end with no
// further input, through the alarms and pauses the simulated nurse clears,
// and the next program starts by itself.
func TestInfusionContinues(t *testing.T) {
	m := idlePump(t, 1)
	if err := m.StartProgram(saline); err != nil {
		t.Fatal(err)
	}
	var infusing, completed, restarted int
	var lastVI float64
	now := t0
	for ; now.Before(t0.Add(24*time.Hour)) && restarted == 0; now = now.Add(time.Minute) {
		for _, e := range m.Step(now) {
			switch e.Type {
			case EventInfusionCompleted:
				completed++
				if e.VolumeML != saline.VTBIML || e.Drug != saline.Drug {
					t.Errorf("completed: %+v", e)
				}
			case EventInfusionStarted:
				if completed > 0 {
					restarted++
				}
			}
		}
		st := m.State().(InfusionState)
		if completed == 0 {
			if st.VIML < lastVI || st.Program == nil || *st.Program != saline {
				t.Fatalf("%v: %+v after VI %v", now, st, lastVI)
			}
			lastVI = st.VIML
			if st.Mode == ModeInfusing {
				infusing++
			}
		}
	}
	// 1000 mL at 125 mL/h is 8 h of infusing, plus interruptions.
	if completed != 1 || restarted != 1 || infusing < 8*60-1 || infusing > 8*60+1 {
		t.Errorf("completed %d, restarted %d, %d min infusing", completed, restarted, infusing)
	}
	if d := now.Sub(t0); d < 8*time.Hour || d > 12*time.Hour {
		t.Errorf("completed and restarted after %v", d)
	}
}

func TestStartProgram(t *testing.T) {
	m := idlePump(t, 1)
	for _, p := range []Program{
		{Drug: "Heparin", Conc: 100, ConcUnit: "units/mL", RateMLH: 0, VTBIML: 250},
		{Drug: "Heparin", Conc: 100, ConcUnit: "units/mL", RateMLH: 1000, VTBIML: 250},
		{Drug: "Heparin", Conc: 100, ConcUnit: "units/mL", RateMLH: 10, VTBIML: 0},
		{Drug: "Heparin", Conc: 100, ConcUnit: "units/mL", RateMLH: 10, VTBIML: 10000},
		{Drug: "", Conc: 100, ConcUnit: "units/mL", RateMLH: 10, VTBIML: 250},
		{Drug: "Heparin", Conc: 0, ConcUnit: "units/mL", RateMLH: 10, VTBIML: 250},
	} {
		if err := m.StartProgram(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", p, err)
		}
	}
	p := Program{Drug: "Heparin", Conc: 100, ConcUnit: "units/mL", RateMLH: 0.1, VTBIML: 0.1}
	if err := m.StartProgram(p); err != nil {
		t.Fatal(err)
	}
	if err := m.StartProgram(saline); !errors.Is(err, ErrBusy) {
		t.Errorf("second program: %v", err)
	}
	evs := m.Step(t0.Add(time.Second))
	if len(evs) != 1 || evs[0].Type != EventInfusionStarted || evs[0].RateMLH != 0.1 || evs[0].Time != t0 {
		t.Fatalf("events %+v", evs)
	}
	// 0.1 mL at 0.1 mL/h takes an hour.
	evs = m.Step(t0.Add(time.Hour - 2*time.Second))
	if len(evs) != 0 || m.vi >= p.VTBIML {
		t.Fatalf("after 1 h: %+v, VI %v", evs, m.vi)
	}
	m.nextOcclusion, m.nextAir, m.nextPause = never, never, never
	evs = m.Step(t0.Add(time.Hour + time.Second))
	if len(evs) != 2 || evs[0].Type != EventInfusionCompleted || evs[1].Code != AlarmInfusionComplete || m.vi != p.VTBIML {
		t.Fatalf("after 1 h: %+v, VI %v", evs, m.vi)
	}
}

// TestInfusionBattery: a low battery alarms without stopping the infusion;
// a depleted one stops it, in infusing or paused mode, until the pump is
// on mains again.
func TestInfusionBattery(t *testing.T) {
	for _, paused := range []bool{false, true} {
		m := idlePump(t, 1)
		if err := m.StartProgram(saline); err != nil {
			t.Fatal(err)
		}
		m.nextOcclusion, m.nextAir, m.nextPause = never, never, never
		if paused {
			m.mode, m.resumeAt = ModePaused, never
		}
		m.Step(t0)
		was := m.mode
		m.onMains, m.battery = false, lvpLowBattery+lvpDrainIdle/2
		m.plugAt = never
		evs := m.Step(t0.Add(time.Second))
		if len(evs) != 1 || evs[0].Code != AlarmLowBattery || evs[0].Type != EventAlarm || m.mode != was || m.plugAt == never {
			t.Fatalf("low battery: %+v, mode %s", evs, m.mode)
		}
		m.plugAt, m.battery = never, lvpDrainIdle/2
		evs = m.Step(t0.Add(2 * time.Second))
		if len(evs) != 1 || evs[0].Code != AlarmBatteryDepleted || m.mode != ModeAlarm || m.battery != 0 {
			t.Fatalf("depleted: %+v, mode %s, battery %v", evs, m.mode, m.battery)
		}
		m.plugAt = 10
		var types []EventType
		for _, e := range m.Step(t0.Add(time.Hour)) {
			types = append(types, e.Type)
		}
		if m.mode != ModeInfusing || len(types) != 3 || types[2] != EventAlarmCleared || !m.onMains || m.low {
			t.Fatalf("on mains: %v, mode %s", types, m.mode)
		}
	}
}

// TestInfusionRates: over many pump-days, the rates of the package doc.
func TestInfusionRates(t *testing.T) {
	const pumps, days = 100, 5
	count := map[string]int{}
	var infusingSec int64
	for seed := range uint64(pumps) {
		m := NewInfusionPump(Config{Seed: seed, Start: t0})
		for now := t0; now.Before(t0.Add(days * 24 * time.Hour)); now = now.Add(time.Minute) {
			for _, e := range m.Step(now) {
				count[string(e.Type)+" "+e.Code]++
			}
			if m.mode == ModeInfusing {
				infusingSec += 60
			}
		}
	}
	h := float64(infusingSec) / 3600
	t.Logf("%.0f h infusing of %d: %v", h, pumps*days*24, count)
	for _, c := range []struct {
		what     string
		lo, hi   float64
		per, got float64
	}{
		{"occlusions per infusing hour", 1.0 / 16, 1.0 / 9, h, float64(count["alarm occlusion"])},
		{"air in line per infusing hour", 1.0 / 100, 1.0 / 50, h, float64(count["alarm air_in_line"])},
		{"programs per pump-day", 1.5, 5, pumps * days, float64(count["infusion_started "])},
		{"share of time infusing", 0.5, 0.9, pumps * days * 24, h},
	} {
		if r := c.got / c.per; r < c.lo || r > c.hi {
			t.Errorf("%s: %.3f, want %.3f–%.3f", c.what, r, c.lo, c.hi)
		}
	}
	if count["alarm low_battery"] == 0 || count["alarm occlusion"] != count["alarm_cleared occlusion"] {
		t.Errorf("battery and occlusion alarms: %v", count)
	}
}
