package sim

import (
	"math"
	"testing"
	"time"
)

// admitted returns a monitor with a patient of the given health.
func admitted(t *testing.T, pop Population, sick bool) *Monitor {
	t.Helper()
	for seed := uint64(1); ; seed++ {
		m := NewMonitor(Config{Seed: seed, Start: t0, Population: pop})
		if m.mode == ModeMonitoring && m.sick == sick {
			m.dischargeAt = never
			return m
		}
	}
}

// TestVitals: a healthy patient's vital signs stay near the baseline, in
// the healthy ranges most of the time; NIBP comes every 15 minutes.
func TestVitals(t *testing.T) {
	for _, c := range []struct {
		pop                   Population
		hrLo, hrHi, spo2Lo    float64
		rrLo, rrHi, sysLo, hi float64
	}{
		{Adult, 40, 140, 92, 6, 24, 85, 165},
		{Neonate, 90, 210, 85, 15, 75, 40, 100},
	} {
		m := admitted(t, c.pop, false)
		var n, spo2Sum, hrSum float64
		var nibps []NIBP
		for now := t0; now.Before(t0.Add(24 * time.Hour)); now = now.Add(10 * time.Second) {
			m.Step(now)
			tel := m.Telemetry().(MonitorTelemetry)
			if tel.HR == nil || tel.RR == nil {
				t.Fatalf("%+v", tel)
			}
			hr, rr := float64(*tel.HR), float64(*tel.RR)
			if hr < c.hrLo || hr > c.hrHi || rr < c.rrLo || rr > c.rrHi {
				t.Fatalf("%v: %s HR %v RR %v", now, c.pop, hr, rr)
			}
			if tel.SpO2 != nil {
				spo2 := float64(*tel.SpO2)
				if spo2 < c.spo2Lo-12 || spo2 > 100 {
					t.Fatalf("%v: SpO2 %v", now, spo2)
				}
				spo2Sum, hrSum, n = spo2Sum+spo2, hrSum+hr, n+1
			}
			if p := tel.NIBP; p != nil && (len(nibps) == 0 || nibps[len(nibps)-1].Time != p.Time) {
				if float64(p.Sys) < c.sysLo || float64(p.Sys) > c.hi || p.Dia >= p.Sys || p.MAP <= p.Dia || p.MAP >= p.Sys {
					t.Errorf("NIBP %+v", p)
				}
				nibps = append(nibps, *p)
			}
		}
		if got := spo2Sum / n; math.Abs(got-m.spo2.base) > 1 {
			t.Errorf("%s: mean SpO2 %.1f, baseline %.1f", c.pop, got, m.spo2.base)
		}
		if got := hrSum / n; math.Abs(got-m.hr.base) > 5 {
			t.Errorf("%s: mean HR %.1f, baseline %.1f", c.pop, got, m.hr.base)
		}
		if len(nibps) < 95 || len(nibps) > 97 {
			t.Errorf("%d NIBP measurements in 24 h", len(nibps))
		}
		for i := 1; i < len(nibps); i++ {
			if d := nibps[i].Time.Sub(nibps[i-1].Time); d != monNIBPEvery {
				t.Errorf("NIBP %v after the last", d)
			}
		}
	}
}

// TestThresholdAlarms: an alarm is raised after 10 s beyond its limit,
// cleared after 10 s within it, and listed while it is on.
func TestThresholdAlarms(t *testing.T) {
	m := admitted(t, Adult, false)
	m.nextEpisode, m.nextProbeOff = never, never
	m.Step(t0)
	m.hr.base, m.hr.x, m.hr.sigma = 150, 150, 0
	for s := 1; s <= 9; s++ {
		if evs := m.Step(t0.Add(time.Duration(s) * time.Second)); len(evs) != 0 {
			t.Fatalf("after %d s: %+v", s, evs)
		}
	}
	evs := m.Step(t0.Add(10 * time.Second))
	if len(evs) != 1 || evs[0].Code != AlarmHRHigh || evs[0].Value != 150 || evs[0].Limit != 120 || evs[0].Priority != PriorityMedium {
		t.Fatalf("after 10 s: %+v", evs)
	}
	if st := m.State().(MonitorState); len(st.Alarms) != 1 || st.Alarms[0] != AlarmHRHigh {
		t.Fatalf("state %+v", st)
	}
	m.hr.base, m.hr.x = 80, 80
	evs = m.Step(t0.Add(30 * time.Second))
	if len(evs) != 1 || evs[0].Type != EventAlarmCleared || evs[0].Code != AlarmHRHigh || evs[0].Time != t0.Add(20*time.Second) {
		t.Fatalf("cleared: %+v", evs)
	}
	if st := m.State().(MonitorState); len(st.Alarms) != 0 {
		t.Fatalf("state %+v", st)
	}
}

// TestDischarge: a discharge clears the alarms and ends the vital signs;
// a new patient comes.
func TestDischarge(t *testing.T) {
	m := admitted(t, Adult, false)
	m.Step(t0)
	m.probeOff, m.probeOnAt = true, never
	m.alarms[2].active = true
	m.dischargeAt = 1
	var got []string
	for _, e := range m.Step(t0.Add(time.Second)) {
		got = append(got, string(e.Type)+" "+e.Code)
	}
	if len(got) != 3 || got[0] != "alarm_cleared spo2_low" || got[1] != "alarm_cleared spo2_probe_off" || got[2] != "patient_discharged " {
		t.Fatalf("events %v", got)
	}
	if tel := m.Telemetry().(MonitorTelemetry); tel.HR != nil || tel.SpO2 != nil || tel.Alarms != nil || !m.Idle() {
		t.Fatalf("standby telemetry %+v", tel)
	}
	evs := m.Step(t0.Add(3*time.Hour + time.Second))
	if len(evs) == 0 || evs[0].Type != EventPatientAdmitted || m.Idle() {
		t.Fatalf("events %+v", evs)
	}
}
