package sim

import (
	"errors"
	"math"
	"testing"
	"time"
)

// TestIOB: the insulin action curve starts at the whole bolus, falls
// steadily, and reaches zero at its duration.
func TestIOB(t *testing.T) {
	m := NewInsulinPump(Config{Seed: 1, Start: t0})
	m.boluses = []bolus{{at: 0, units: 4}}
	prev := math.Inf(1)
	for s := int64(0); s <= int64(insDuration/Tick)+60; s += 60 {
		m.clk.sec = s
		iob := m.iob()
		if iob > prev || iob < 0 || (s == 0 && math.Abs(iob-4) > 1e-9) || (s >= int64(insDuration/Tick) && iob != 0) {
			t.Fatalf("IOB %v at %v after %v", iob, time.Duration(s)*Tick, prev)
		}
		// About half is left after 2 h with a 75 min peak and 6 h duration.
		if s == 7200 && (iob < 1.6 || iob > 2.8) {
			t.Errorf("IOB after 2 h: %v", iob)
		}
		prev = iob
	}
}

// TestMealBoluses: meal boluses come around breakfast, lunch and dinner
// local time, once each.
func TestMealBoluses(t *testing.T) {
	cet := time.FixedZone("CET", 3600)
	start := time.Date(2025, 3, 1, 9, 0, 0, 0, cet)
	var meals, late, corrections int
	for seed := range uint64(10) {
		m := NewInsulinPump(Config{Seed: seed, Start: start})
		var last time.Time
		for now := start; now.Before(start.Add(7 * 24 * time.Hour)); now = now.Add(5 * time.Minute) {
			for _, e := range m.Step(now) {
				if e.Type != EventBolusDelivered {
					continue
				}
				if e.Units <= 0 || e.Units > insMaxBolus {
					t.Errorf("bolus %+v", e)
				}
				if e.Value == 0 {
					corrections++
					continue
				}
				meals++
				if e.Value < 30 || e.Value > 90 || e.Time.Sub(last) < 2*time.Hour {
					t.Errorf("meal %+v, %v after the last", e, e.Time.Sub(last))
				}
				last = e.Time
				local := e.Time.In(cet)
				min := local.Hour()*60 + local.Minute()
				in := false
				for _, c := range []int{7*60 + 30, 12*60 + 30, 18*60 + 30} {
					in = in || (min >= c-45 && min <= c+45)
				}
				if !in {
					late++ // delayed by a suspension or an alarm
				}
			}
		}
	}
	t.Logf("%d meals (%d late), %d corrections in 70 patient-days", meals, late, corrections)
	if meals < 3*70-10 || meals > 3*70 || late > 3 || corrections < 30 || corrections > 120 {
		t.Errorf("%d meals (%d late), %d corrections in 70 patient-days", meals, late, corrections)
	}
}

func TestBolus(t *testing.T) {
	m := NewInsulinPump(Config{Seed: 1, Start: t0})
	m.reservoir = 10
	for _, u := range []float64{0, 0.01, 26, 11} {
		if err := m.Bolus(u); !errors.Is(err, ErrInvalid) {
			t.Errorf("bolus %v: %v", u, err)
		}
	}
	if err := m.Bolus(2.5); err != nil || m.reservoir != 7.5 || m.iob() != 2.5 {
		t.Fatalf("bolus: %v, reservoir %v, IOB %v", err, m.reservoir, m.iob())
	}
	evs := m.Step(t0)
	if len(evs) != 1 || evs[0].Type != EventBolusDelivered || evs[0].Units != 2.5 {
		t.Fatalf("events %+v", evs)
	}
	m.mode = ModeSuspended
	if err := m.Bolus(1); !errors.Is(err, ErrBusy) {
		t.Errorf("suspended: %v", err)
	}
}

// TestReservoirEmpty: a reservoir that runs dry raises a stopping alarm,
// never goes below zero, and is refilled when the patient changes it.
func TestReservoirEmpty(t *testing.T) {
	m := NewInsulinPump(Config{Seed: 1, Start: t0})
	m.Step(t0)
	m.reservoir, m.lowRes = 0.31, true
	m.nextOcclusion, m.changeAt, m.nextCorrection = never, never, 1
	var got []string
	for now := t0.Add(time.Second); now.Before(t0.Add(2 * time.Hour)); now = now.Add(time.Second) {
		for _, e := range m.Step(now) {
			got = append(got, string(e.Type)+" "+e.Code)
		}
		if m.reservoir < 0 {
			t.Fatalf("reservoir %v", m.reservoir)
		}
	}
	want := []string{"bolus_delivered ", "alarm empty_reservoir", "alarm_cleared empty_reservoir", "suspended reservoir_change", "alarm_cleared low_reservoir", "resumed "}
	if len(got) < len(want) {
		t.Fatalf("events %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events %v, want %v first", got, want)
		}
	}
	if m.mode != ModeDelivering || m.reservoir < 140 || m.lowRes {
		t.Errorf("after the change: %s, %v U", m.mode, m.reservoir)
	}
}

// TestInsulinBatteryDepleted: a dead battery stops delivery, even while
// suspended, until the pump charges.
func TestInsulinBatteryDepleted(t *testing.T) {
	m := NewInsulinPump(Config{Seed: 1, Start: t0})
	m.Step(t0)
	m.mode, m.resumeAt, m.change = ModeSuspended, 100, SetChange
	m.battery, m.lowBatt, m.chargeAt = insDrain/2, true, never
	evs := m.Step(t0.Add(time.Second))
	if len(evs) != 1 || evs[0].Code != AlarmBatteryDepleted || m.mode != ModeAlarm || m.chargeAt == never {
		t.Fatalf("%+v, mode %s", evs, m.mode)
	}
	var got []string
	for now := t0.Add(time.Second); now.Before(t0.Add(2 * time.Hour)); now = now.Add(time.Minute) {
		for _, e := range m.Step(now) {
			got = append(got, string(e.Type)+" "+e.Code+" "+e.Mode)
		}
	}
	want := []string{"power_changed charging alarm", "alarm_cleared low_battery alarm", "alarm_cleared battery_depleted delivering",
		"suspended set_change suspended", "resumed  delivering"}
	if len(got) < len(want) {
		t.Fatalf("events %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events %v, want %v first", got, want)
		}
	}
}
