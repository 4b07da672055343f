package sim

import (
	"math"
	"time"

	"github.com/wardhq/ward/protocol"
)

// Monitor modes.
const (
	ModeMonitoring = "monitoring"
	ModeStandby    = "standby"
)

// Monitor alarm codes.
const (
	AlarmHRHigh       = "hr_high"
	AlarmHRLow        = "hr_low"
	AlarmSpO2Low      = "spo2_low"
	AlarmRRHigh       = "rr_high"
	AlarmRRLow        = "rr_low"
	AlarmNIBPSysHigh  = "nibp_sys_high"
	AlarmNIBPSysLow   = "nibp_sys_low"
	AlarmSpO2ProbeOff = "spo2_probe_off" // technical alarm: no SpO2 reading
)

// Rates of the simulated monitor's world; see the package doc.
const (
	monTelemetry    = 10 * time.Second
	monNIBPEvery    = 15 * time.Minute
	monAlarmDelay   = 10 // seconds beyond (or back within) a limit
	monEpisodeMean  = 8 * time.Hour
	monSickEpisodes = 2 * time.Hour
	monProbeOffMean = 8 * time.Hour
)

// vital is one mean-reverting random walk: each second
// x += theta·(target − x) + sigma·N(0,1), within [lo, hi].
type vital struct {
	x, base, sigma, theta, lo, hi float64
}

func (v *vital) step(m *Monitor, offset float64) {
	v.x = clamp(v.x+v.theta*(v.base+offset-v.x)+v.sigma*m.rng.NormFloat64(), v.lo, v.hi)
}

// limits are a population's alarm limits.
type limits struct {
	hrLo, hrHi, spo2Lo, rrLo, rrHi, sysLo, sysHi float64
}

var (
	adultLimits   = limits{hrLo: 50, hrHi: 120, spo2Lo: 90, rrLo: 8, rrHi: 30, sysLo: 90, sysHi: 160}
	neonateLimits = limits{hrLo: 100, hrHi: 180, spo2Lo: 85, rrLo: 20, rrHi: 70, sysLo: 45, sysHi: 90}
)

// threshold tracks one threshold alarm: how long the value has been beyond
// the limit (positive) or back within it (negative).
type threshold struct {
	code   string
	active bool
	count  int
}

// NIBP is one non-invasive blood pressure measurement, in mmHg.
type NIBP struct {
	Sys  int       `json:"sys"`
	Dia  int       `json:"dia"`
	MAP  int       `json:"map"`
	Time time.Time `json:"ts"`
}

// Monitor is a simulated bedside patient monitor.
type Monitor struct {
	base
	neonate bool
	lim     limits
	mode    string
	hr      vital
	spo2    vital
	rr      vital
	sys     float64 // baseline systolic and diastolic pressure
	dia     float64
	nibp    *NIBP

	alarms    [5]threshold // hr_high, hr_low, spo2_low, rr_high, rr_low
	nibpAlarm string       // nibp_sys_high or _low until a normal measurement
	probeOff  bool

	// An episode moves the targets of HR and SpO2 until episodeEnd.
	hrOffset, spo2Offset float64
	episodeEnd           int64

	nextEpisode, nextNIBP, nextProbeOff, probeOnAt int64
	dischargeAt, admitAt                           int64
	sick                                           bool
}

// NewMonitor returns a monitor, most likely with a patient admitted.
func NewMonitor(cfg Config) *Monitor {
	m := &Monitor{neonate: cfg.Population == Neonate}
	m.init(ModelMonitor, cfg)
	m.druglib = "" // monitors have no drug library
	m.telemetry = monTelemetry
	m.lim = adultLimits
	if m.neonate {
		m.lim = neonateLimits
	}
	m.alarms = [5]threshold{{code: AlarmHRHigh}, {code: AlarmHRLow}, {code: AlarmSpO2Low}, {code: AlarmRRHigh}, {code: AlarmRRLow}}
	if m.chance(0.85) {
		m.admit()
		// Part way through the stay.
		m.dischargeAt = m.secs(time.Hour, 96*time.Hour)
		m.nextNIBP = m.secs(0, monNIBPEvery)
	} else {
		m.standby()
	}
	return m
}

// admit starts monitoring a new patient with a new baseline.
func (m *Monitor) admit() {
	m.mode = ModeMonitoring
	m.sick = m.chance(1.0 / 7)
	if m.neonate {
		m.hr = vital{base: m.uniform(120, 160), sigma: 1.5, theta: 0.02, lo: 40, hi: 260}
		m.spo2 = vital{base: m.uniform(92, 98), sigma: 0.2, theta: 0.05, lo: 50, hi: 100}
		m.rr = vital{base: m.uniform(30, 60), sigma: 0.8, theta: 0.03, lo: 0, hi: 120}
		m.sys, m.dia = m.uniform(55, 75), m.uniform(30, 45)
	} else {
		m.hr = vital{base: m.uniform(60, 95), sigma: 0.8, theta: 0.02, lo: 25, hi: 220}
		m.spo2 = vital{base: m.uniform(95, 99), sigma: 0.15, theta: 0.05, lo: 50, hi: 100}
		m.rr = vital{base: m.uniform(12, 18), sigma: 0.3, theta: 0.03, lo: 0, hi: 60}
		m.sys, m.dia = m.uniform(105, 140), m.uniform(65, 90)
		if m.sick {
			m.hr.base = m.uniform(95, 115)
			m.spo2.base = m.uniform(91, 95)
			m.rr.base = m.uniform(18, 24)
			m.sys = m.uniform(90, 165)
		}
	}
	m.hr.x, m.spo2.x, m.rr.x = m.hr.base, m.spo2.base, m.rr.base
	m.hrOffset, m.spo2Offset, m.episodeEnd = 0, 0, 0
	t := m.clk.sec
	m.dischargeAt = t + m.secs(12*time.Hour, 96*time.Hour)
	m.nextNIBP = t + int64(time.Minute/Tick)
	m.nextEpisode = t + m.episodeWait()
	m.nextProbeOff = t + m.expSecs(0, monProbeOffMean)
	m.admitAt, m.probeOnAt = never, never
	m.nibp = nil
}

func (m *Monitor) episodeWait() int64 {
	if m.sick {
		return m.expSecs(0, monSickEpisodes)
	}
	return m.expSecs(0, monEpisodeMean)
}

// standby ends the stay: alarms are cleared, vitals are no longer measured.
func (m *Monitor) standby() {
	m.mode = ModeStandby
	m.admitAt = m.clk.sec + m.secs(20*time.Minute, 180*time.Minute)
	m.dischargeAt, m.nextNIBP, m.nextEpisode, m.nextProbeOff, m.probeOnAt = never, never, never, never, never
	m.nibp = nil
}

// Step implements Device.
func (m *Monitor) Step(now time.Time) []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := m.clk.advance(now); n > 0; n-- {
		m.clk.sec++
		m.tick()
	}
	return m.take()
}

func (m *Monitor) tick() {
	t := m.clk.sec
	switch m.mode {
	case ModeStandby:
		if t >= m.admitAt {
			m.admit()
			m.emit(Event{Type: EventPatientAdmitted, Mode: m.mode})
		}
		return
	case ModeMonitoring:
		if t >= m.dischargeAt {
			for i := range m.alarms {
				if a := &m.alarms[i]; a.active {
					*a = threshold{code: a.code}
					m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: a.code})
				}
			}
			for _, code := range []string{m.nibpAlarm, m.probeAlarm()} {
				if code != "" {
					m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: code})
				}
			}
			m.nibpAlarm, m.probeOff = "", false
			m.standby()
			m.emit(Event{Type: EventPatientDischarged, Mode: m.mode})
			return
		}
	}

	// Episodes: a desaturation (SpO2 down, HR up a little) or a
	// tachycardia, for seconds to minutes.
	if t >= m.episodeEnd && m.episodeEnd != 0 {
		m.hrOffset, m.spo2Offset, m.episodeEnd = 0, 0, 0
	}
	if t >= m.nextEpisode {
		if m.chance(0.5) {
			m.spo2Offset, m.hrOffset = -m.uniform(4, 12), m.uniform(5, 20)
			m.episodeEnd = t + m.secs(30*time.Second, 3*time.Minute)
		} else {
			m.hrOffset = m.uniform(20, 45)
			m.episodeEnd = t + m.secs(time.Minute, 10*time.Minute)
		}
		m.nextEpisode = m.episodeEnd + m.episodeWait()
	}
	m.hr.step(m, m.hrOffset)
	m.spo2.step(m, m.spo2Offset)
	m.rr.step(m, 0)

	// The SpO2 probe comes off now and then, and is put back.
	switch {
	case !m.probeOff && t >= m.nextProbeOff:
		m.probeOff = true
		m.probeOnAt = t + m.secs(20*time.Second, 2*time.Minute)
		m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: AlarmSpO2ProbeOff, Priority: PriorityLow})
	case m.probeOff && t >= m.probeOnAt:
		m.probeOff, m.probeOnAt = false, never
		m.nextProbeOff = t + m.expSecs(0, monProbeOffMean)
		m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: AlarmSpO2ProbeOff})
	}

	hr, spo2, rr := math.Round(m.hr.x), math.Round(m.spo2.x), math.Round(m.rr.x)
	m.check(0, hr > m.lim.hrHi, hr, m.lim.hrHi)
	m.check(1, hr < m.lim.hrLo, hr, m.lim.hrLo)
	m.check(2, !m.probeOff && spo2 < m.lim.spo2Lo, spo2, m.lim.spo2Lo)
	m.check(3, rr > m.lim.rrHi, rr, m.lim.rrHi)
	m.check(4, rr < m.lim.rrLo, rr, m.lim.rrLo)

	if t >= m.nextNIBP {
		m.measureNIBP(t)
	}
}

func (m *Monitor) probeAlarm() string {
	if m.probeOff {
		return AlarmSpO2ProbeOff
	}
	return ""
}

// check runs threshold alarm i with the value's current state.
func (m *Monitor) check(i int, beyond bool, value, limit float64) {
	a := &m.alarms[i]
	switch {
	case beyond && !a.active:
		if a.count = max(a.count, 0) + 1; a.count >= monAlarmDelay {
			a.active, a.count = true, 0
			m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: a.code, Priority: PriorityMedium, Value: value, Limit: limit})
		}
	case !beyond && a.active:
		if a.count = min(a.count, 0) - 1; a.count <= -monAlarmDelay {
			a.active, a.count = false, 0
			m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: a.code, Value: value})
		}
	default:
		a.count = 0
	}
}

func (m *Monitor) measureNIBP(t int64) {
	m.nextNIBP = t + int64(monNIBPEvery/Tick)
	// Pressure rises a little with the heart rate's excursion.
	sys := m.sys + 0.3*(m.hr.x-m.hr.base) + 7*m.rng.NormFloat64()
	dia := m.dia + 0.15*(m.hr.x-m.hr.base) + 5*m.rng.NormFloat64()
	sys = math.Round(clamp(sys, 30, 260))
	dia = math.Round(clamp(dia, 15, sys-10))
	m.nibp = &NIBP{Sys: int(sys), Dia: int(dia), MAP: int(math.Round((sys + 2*dia) / 3)), Time: m.clk.now()}
	code := ""
	switch {
	case sys > m.lim.sysHi:
		code = AlarmNIBPSysHigh
	case sys < m.lim.sysLo:
		code = AlarmNIBPSysLow
	}
	if code == m.nibpAlarm {
		return
	}
	if m.nibpAlarm != "" {
		m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: m.nibpAlarm, Value: sys})
	}
	if m.nibpAlarm = code; code != "" {
		limit := m.lim.sysHi
		if code == AlarmNIBPSysLow {
			limit = m.lim.sysLo
		}
		m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: code, Priority: PriorityMedium, Value: sys, Limit: limit})
	}
}

// activeAlarms lists the alarms that are on, in a fixed order.
func (m *Monitor) activeAlarms() []string {
	var out []string
	for _, a := range m.alarms {
		if a.active {
			out = append(out, a.code)
		}
	}
	if m.nibpAlarm != "" {
		out = append(out, m.nibpAlarm)
	}
	if m.probeOff {
		out = append(out, AlarmSpO2ProbeOff)
	}
	return out
}

// MonitorState is a patient monitor's state payload.
type MonitorState struct {
	protocol.StatePayload
	Population Population `json:"population"`
	Alarms     []string   `json:"alarms,omitempty"`
}

// MonitorTelemetry is a patient monitor's telemetry payload. Vital signs
// are left out in standby, and SpO2 while its probe is off.
type MonitorTelemetry struct {
	V      int       `json:"v"`
	Time   time.Time `json:"ts"`
	Mode   string    `json:"mode"`
	HR     *int      `json:"hr,omitempty"`   // /min
	SpO2   *int      `json:"spo2,omitempty"` // %
	RR     *int      `json:"rr,omitempty"`   // /min
	NIBP   *NIBP     `json:"nibp,omitempty"` // the last measurement
	Alarms []string  `json:"alarms,omitempty"`
}

// State implements Device; it returns a MonitorState.
func (m *Monitor) State() any {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := Adult
	if m.neonate {
		p = Neonate
	}
	return MonitorState{
		StatePayload: protocol.StatePayload{V: 1, Mode: m.mode, SoftwareVersion: m.software, Idle: m.idle()},
		Population:   p, Alarms: m.activeAlarms(),
	}
}

// Telemetry implements Device; it returns a MonitorTelemetry.
func (m *Monitor) Telemetry() any {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := MonitorTelemetry{V: 1, Time: m.clk.now(), Mode: m.mode, Alarms: m.activeAlarms()}
	if m.mode == ModeMonitoring {
		hr, rr := int(math.Round(m.hr.x)), int(math.Round(m.rr.x))
		t.HR, t.RR = &hr, &rr
		if !m.probeOff {
			spo2 := int(math.Round(m.spo2.x))
			t.SpO2 = &spo2
		}
		if m.nibp != nil {
			n := *m.nibp
			t.NIBP = &n
		}
	}
	return t
}

func (m *Monitor) idle() bool { return m.mode == ModeStandby }

// Idle implements Device: a monitor is idle in standby, between patients.
func (m *Monitor) Idle() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.idle()
}

// InstallSoftware implements Device.
func (m *Monitor) InstallSoftware(version string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.install(&m.software, version, m.idle())
}

// InstallDrugLibrary implements Device: ErrUnsupported.
func (m *Monitor) InstallDrugLibrary(string) error { return ErrUnsupported }
