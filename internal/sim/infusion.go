package sim

import (
	"fmt"
	"time"

	"github.com/wardhq/ward/protocol"
)

// Infusion pump modes.
const (
	ModeIdle     = "idle"
	ModeInfusing = "infusing"
	ModePaused   = "paused"
	ModeAlarm    = "alarm"
)

// Infusion pump alarm codes.
const (
	AlarmOcclusion        = "occlusion"         // downstream occlusion: stops the infusion
	AlarmAirInLine        = "air_in_line"       // stops the infusion
	AlarmInfusionComplete = "infusion_complete" // VTBI reached: stops the infusion
	AlarmBatteryDepleted  = "battery_depleted"  // stops the infusion until on mains
	AlarmLowBattery       = "low_battery"       // does not stop the infusion
)

// Limits of what the simulated LVP accepts, as typical LVPs do.
const (
	MinRateMLH = 0.1
	MaxRateMLH = 999
	MaxVTBIML  = 9999
)

// Program is an infusion program.
type Program struct {
	Drug     string  `json:"drug"`
	Conc     float64 `json:"conc"`      // amount of drug per mL, in ConcUnit
	ConcUnit string  `json:"conc_unit"` // e.g. "units/mL", "mg/mL", "mcg/mL"
	RateMLH  float64 `json:"rate_ml_h"`
	VTBIML   float64 `json:"vtbi_ml"`
}

func (p Program) validate() error {
	if p.Drug == "" || p.ConcUnit == "" || p.Conc <= 0 {
		return fmt.Errorf("%w: program needs a drug and its concentration", ErrInvalid)
	}
	if p.RateMLH < MinRateMLH || p.RateMLH > MaxRateMLH {
		return fmt.Errorf("%w: rate %v mL/h outside %v–%v", ErrInvalid, p.RateMLH, MinRateMLH, MaxRateMLH)
	}
	if p.VTBIML < MinRateMLH || p.VTBIML > MaxVTBIML {
		return fmt.Errorf("%w: VTBI %v mL outside %v–%v", ErrInvalid, p.VTBIML, MinRateMLH, MaxVTBIML)
	}
	return nil
}

// drug is a line of the simulated pumps' programming habits: a drug, the
// concentration it is usually prepared in, the rates and bag volumes it is
// usually run at. Typical adult and neonatal practice, simplified.
type drug struct {
	name     string
	conc     float64
	unit     string
	rateLo   float64 // mL/h
	rateHi   float64
	vtbi     []float64 // mL
	weight   int
	neonatal bool
}

var drugs = []drug{
	{name: "Sodium chloride 0.9%", conc: 9, unit: "mg/mL", rateLo: 50, rateHi: 150, vtbi: []float64{500, 1000}, weight: 5},
	{name: "Dextrose 5%", conc: 50, unit: "mg/mL", rateLo: 50, rateHi: 125, vtbi: []float64{500, 1000}, weight: 2},
	{name: "Heparin", conc: 100, unit: "units/mL", rateLo: 8, rateHi: 20, vtbi: []float64{250}, weight: 2},
	{name: "Norepinephrine", conc: 16, unit: "mcg/mL", rateLo: 2, rateHi: 30, vtbi: []float64{250}, weight: 1},
	{name: "Propofol", conc: 10, unit: "mg/mL", rateLo: 5, rateHi: 40, vtbi: []float64{100}, weight: 1},
	{name: "Insulin regular", conc: 1, unit: "units/mL", rateLo: 1, rateHi: 15, vtbi: []float64{100}, weight: 1},
	{name: "Vancomycin", conc: 5, unit: "mg/mL", rateLo: 125, rateHi: 250, vtbi: []float64{200, 250}, weight: 2},
	{name: "Piperacillin-tazobactam", conc: 45, unit: "mg/mL", rateLo: 25, rateHi: 200, vtbi: []float64{100}, weight: 2},
	{name: "Potassium chloride", conc: 0.1, unit: "mmol/mL", rateLo: 50, rateHi: 100, vtbi: []float64{100}, weight: 1},
	{name: "Magnesium sulfate", conc: 40, unit: "mg/mL", rateLo: 25, rateHi: 50, vtbi: []float64{50}, weight: 1},
	{name: "Morphine", conc: 1, unit: "mg/mL", rateLo: 1, rateHi: 10, vtbi: []float64{100}, weight: 1},

	{name: "Dextrose 10%", conc: 100, unit: "mg/mL", rateLo: 2, rateHi: 15, vtbi: []float64{50, 100, 150}, weight: 4, neonatal: true},
	{name: "Dopamine", conc: 0.8, unit: "mg/mL", rateLo: 0.5, rateHi: 3, vtbi: []float64{50}, weight: 1, neonatal: true},
	{name: "Gentamicin", conc: 1, unit: "mg/mL", rateLo: 5, rateHi: 10, vtbi: []float64{4, 8}, weight: 1, neonatal: true},
	{name: "Heparin", conc: 0.5, unit: "units/mL", rateLo: 0.5, rateHi: 1, vtbi: []float64{50}, weight: 1, neonatal: true},
}

// Rates of the simulated LVP world; see the package doc.
const (
	lvpOcclusionMean   = 12 * time.Hour // of infusing time
	lvpAirMean         = 72 * time.Hour
	lvpPauseMean       = 10 * time.Hour
	lvpUnplugMean      = 16 * time.Hour
	lvpNextProgramMean = 4 * time.Hour
	lvpLowBattery      = 15.0                // percent
	lvpDrainInfusing   = 100.0 / (6 * 3600)  // percent per second on battery
	lvpDrainIdle       = 100.0 / (48 * 3600) // idle or paused
	lvpCharge          = 100.0 / (5 * 3600)  // on mains
	lvpTelemetryMin    = 10 * time.Second    // per pump, fixed
	lvpTelemetryMax    = 30 * time.Second
	nurseMean          = 3 * time.Minute  // typical delay to acknowledge an alarm
	nurseBatteryMean   = 15 * time.Minute // to plug a pump in after its low-battery alarm
	transportMin       = 10 * time.Minute // unplugged for transport or a walk,
	transportMean      = 90 * time.Minute // and now and then forgotten
	completeAckMean    = 10 * time.Minute // an infusion-complete alarm is less urgent
	pauseMin, pauseMax = 1 * time.Minute, 10 * time.Minute
)

// InfusionPump is a simulated large-volume infusion pump.
type InfusionPump struct {
	base
	neonatal bool
	mode     string
	alarm    string // the stopping alarm while in ModeAlarm
	program  Program
	vi       float64 // mL infused of the current program
	battery  float64 // percent
	onMains  bool
	low      bool // low-battery alarm active

	nextProgram, nextOcclusion, nextAir, nextPause int64
	resumeAt, ackAt, unplugAt, plugAt              int64
}

// NewInfusionPump returns a pump in a random plausible state: most pumps
// are already infusing a partly run program.
func NewInfusionPump(cfg Config) *InfusionPump {
	m := &InfusionPump{neonatal: cfg.Population == Neonate}
	m.init(ModelInfusionPump, cfg)
	m.telemetry = time.Duration(m.secs(lvpTelemetryMin, lvpTelemetryMax)) * Tick
	m.battery = m.uniform(30, 100)
	m.onMains = m.chance(0.85)
	m.resumeAt, m.ackAt = never, never
	m.unplugAt, m.plugAt = never, never
	if m.onMains {
		m.unplugAt = m.expSecs(0, lvpUnplugMean)
	} else {
		m.plugAt = m.expSecs(transportMin, transportMean)
	}
	if m.chance(0.65) {
		m.program = m.newProgram()
		m.vi = round1(m.program.VTBIML * m.uniform(0, 0.9))
		m.startInfusing()
	} else {
		m.mode = ModeIdle
		m.nextProgram = m.expSecs(5*time.Minute, lvpNextProgramMean)
	}
	return m
}

func (m *InfusionPump) newProgram() Program {
	total := 0
	for _, d := range drugs {
		if d.neonatal == m.neonatal {
			total += d.weight
		}
	}
	n := m.rng.IntN(total)
	var d drug
	for _, d = range drugs {
		if d.neonatal != m.neonatal {
			continue
		}
		if n -= d.weight; n < 0 {
			break
		}
	}
	rate := m.uniform(d.rateLo, d.rateHi)
	if rate >= 100 {
		rate = round(rate, 1)
	} else {
		rate = round1(rate)
	}
	return Program{Drug: d.name, Conc: d.conc, ConcUnit: d.unit, RateMLH: rate, VTBIML: d.vtbi[m.rng.IntN(len(d.vtbi))]}
}

// startInfusing enters ModeInfusing and draws the next hazards.
func (m *InfusionPump) startInfusing() {
	m.mode, m.alarm = ModeInfusing, ""
	m.nextOcclusion = m.clk.sec + m.expSecs(0, lvpOcclusionMean)
	m.nextAir = m.clk.sec + m.expSecs(0, lvpAirMean)
	m.nextPause = m.clk.sec + m.expSecs(0, lvpPauseMean)
}

// Step implements Device.
func (m *InfusionPump) Step(now time.Time) []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := m.clk.advance(now); n > 0; n-- {
		m.clk.sec++
		m.tick()
	}
	return m.take()
}

func (m *InfusionPump) raise(code, priority string) {
	m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: code, Priority: priority, Drug: m.program.Drug, VolumeML: round1(m.vi)})
}

// tick simulates one second. At most one mode change happens per tick.
func (m *InfusionPump) tick() {
	t := m.clk.sec
	m.power(t)
	switch m.mode {
	case ModeIdle:
		if t >= m.nextProgram {
			m.program, m.vi = m.newProgram(), 0
			m.startInfusing()
			p := m.program
			m.emit(Event{Type: EventInfusionStarted, Mode: m.mode, Drug: p.Drug, RateMLH: p.RateMLH, VolumeML: p.VTBIML})
		}
	case ModeInfusing:
		m.vi += m.program.RateMLH / 3600
		switch {
		case m.vi >= m.program.VTBIML:
			m.vi = m.program.VTBIML
			m.mode, m.alarm = ModeAlarm, AlarmInfusionComplete
			m.ackAt = t + m.expSecs(time.Minute, completeAckMean)
			m.emit(Event{Type: EventInfusionCompleted, Mode: m.mode, Drug: m.program.Drug, VolumeML: round1(m.vi)})
			m.raise(AlarmInfusionComplete, PriorityMedium)
		case m.battery <= 0:
			m.stop(AlarmBatteryDepleted)
		case t >= m.nextOcclusion:
			m.stop(AlarmOcclusion)
			m.ackAt = t + m.expSecs(30*time.Second, nurseMean)
		case t >= m.nextAir:
			m.stop(AlarmAirInLine)
			m.ackAt = t + m.expSecs(time.Minute, nurseMean+time.Minute)
		case t >= m.nextPause:
			m.mode = ModePaused
			m.resumeAt = t + m.secs(pauseMin, pauseMax)
			m.emit(Event{Type: EventInfusionPaused, Mode: m.mode, Drug: m.program.Drug, VolumeML: round1(m.vi)})
		}
	case ModePaused:
		switch {
		case m.battery <= 0:
			m.stop(AlarmBatteryDepleted)
		case t >= m.resumeAt:
			m.resumeAt = never
			m.startInfusing()
			m.emit(Event{Type: EventInfusionResumed, Mode: m.mode, Drug: m.program.Drug, RateMLH: m.program.RateMLH})
		}
	case ModeAlarm:
		switch {
		case m.alarm == AlarmBatteryDepleted && m.onMains:
			m.clear(ModeInfusing)
		case m.alarm != AlarmBatteryDepleted && t >= m.ackAt:
			if m.alarm == AlarmInfusionComplete {
				m.clear(ModeIdle)
			} else {
				m.clear(ModeInfusing)
			}
		}
	}
}

// stop raises a stopping alarm.
func (m *InfusionPump) stop(code string) {
	m.mode, m.alarm = ModeAlarm, code
	m.ackAt = never
	m.raise(code, PriorityHigh)
}

// clear acknowledges the stopping alarm and moves to mode.
func (m *InfusionPump) clear(mode string) {
	code := m.alarm
	m.ackAt = never
	if mode == ModeIdle {
		m.mode, m.alarm = ModeIdle, ""
		m.program, m.vi = Program{}, 0
		m.nextProgram = m.clk.sec + m.expSecs(5*time.Minute, lvpNextProgramMean)
	} else {
		m.startInfusing()
	}
	m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: code})
}

// power runs the battery and the mains plug.
func (m *InfusionPump) power(t int64) {
	if m.onMains {
		m.battery = min(m.battery+lvpCharge, 100)
		if t >= m.unplugAt {
			m.onMains, m.unplugAt = false, never
			m.plugAt = t + m.expSecs(transportMin, transportMean)
			m.emit(Event{Type: EventPowerChanged, Mode: m.mode, Code: "battery"})
		}
		return
	}
	if m.mode == ModeInfusing || m.mode == ModeAlarm {
		m.battery = max(m.battery-lvpDrainInfusing, 0)
	} else {
		m.battery = max(m.battery-lvpDrainIdle, 0)
	}
	if !m.low && m.battery <= lvpLowBattery {
		m.low = true
		m.plugAt = min(m.plugAt, t+m.expSecs(2*time.Minute, nurseBatteryMean))
		m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: AlarmLowBattery, Priority: PriorityMedium, Value: round1(m.battery)})
	}
	if t >= m.plugAt {
		m.onMains, m.plugAt = true, never
		m.unplugAt = t + m.expSecs(0, lvpUnplugMean)
		m.emit(Event{Type: EventPowerChanged, Mode: m.mode, Code: "mains"})
		if m.low {
			m.low = false
			m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: AlarmLowBattery})
		}
	}
}

// StartProgram starts p now, as a nurse at the pump or a verified remote
// command would. The pump must be idle. The start is reported by the next
// Step.
func (m *InfusionPump) StartProgram(p Program) error {
	if err := p.validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mode != ModeIdle {
		return fmt.Errorf("%w: pump is %s", ErrBusy, m.mode)
	}
	m.program, m.vi = p, 0
	m.startInfusing()
	m.emit(Event{Type: EventInfusionStarted, Mode: m.mode, Drug: p.Drug, RateMLH: p.RateMLH, VolumeML: p.VTBIML})
	return nil
}

// InfusionState is an infusion pump's state payload.
type InfusionState struct {
	protocol.StatePayload
	Alarm      string   `json:"alarm,omitempty"` // the stopping alarm in mode "alarm"
	LowBattery bool     `json:"low_battery,omitempty"`
	Program    *Program `json:"program,omitempty"`
	VIML       float64  `json:"vi_ml"`
	BatteryPct int      `json:"battery_pct"`
	OnMains    bool     `json:"on_mains"`
}

// InfusionTelemetry is an infusion pump's telemetry payload.
type InfusionTelemetry struct {
	V          int       `json:"v"`
	Time       time.Time `json:"ts"`
	Mode       string    `json:"mode"`
	Drug       string    `json:"drug,omitempty"`
	RateMLH    float64   `json:"rate_ml_h"` // actual rate: 0 unless infusing
	VTBIML     float64   `json:"vtbi_ml,omitempty"`
	VIML       float64   `json:"vi_ml"`
	BatteryPct int       `json:"battery_pct"`
	OnMains    bool      `json:"on_mains"`
	Alarm      string    `json:"alarm,omitempty"`
}

// State implements Device; it returns an InfusionState.
func (m *InfusionPump) State() any {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := InfusionState{
		StatePayload: protocol.StatePayload{V: 1, Mode: m.mode, SoftwareVersion: m.software, DrugLibVersion: m.druglib, Idle: m.idle()},
		Alarm:        m.alarm, LowBattery: m.low, VIML: round1(m.vi), BatteryPct: int(m.battery + 0.5), OnMains: m.onMains,
	}
	if m.mode != ModeIdle {
		p := m.program
		s.Program = &p
	}
	return s
}

// Telemetry implements Device; it returns an InfusionTelemetry.
func (m *InfusionPump) Telemetry() any {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := InfusionTelemetry{V: 1, Time: m.clk.now(), Mode: m.mode, Drug: m.program.Drug, VTBIML: m.program.VTBIML,
		VIML: round1(m.vi), BatteryPct: int(m.battery + 0.5), OnMains: m.onMains, Alarm: m.alarm}
	if m.mode == ModeInfusing {
		t.RateMLH = m.program.RateMLH
	}
	if t.Alarm == "" && m.low {
		t.Alarm = AlarmLowBattery
	}
	return t
}

func (m *InfusionPump) idle() bool { return m.mode == ModeIdle }

// Idle implements Device: an LVP is idle when no program is loaded.
func (m *InfusionPump) Idle() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.idle()
}

// InstallSoftware implements Device.
func (m *InfusionPump) InstallSoftware(version string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.install(&m.software, version, m.idle())
}

// InstallDrugLibrary implements Device.
func (m *InfusionPump) InstallDrugLibrary(version string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.install(&m.druglib, version, m.idle())
}
