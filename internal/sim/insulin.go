package sim

import (
	"fmt"
	"math"
	"time"

	"github.com/wardhq/ward/protocol"
)

// Insulin pump modes.
const (
	ModeDelivering = "delivering"
	ModeSuspended  = "suspended"
	// ModeAlarm ("alarm") is shared with the infusion pump.
)

// Insulin pump alarm codes (AlarmOcclusion, AlarmLowBattery and
// AlarmBatteryDepleted are shared with the infusion pump).
const (
	AlarmLowReservoir   = "low_reservoir"   // does not stop delivery
	AlarmEmptyReservoir = "empty_reservoir" // stops delivery
)

// Reasons for a suspension, in the suspended event's Code.
const (
	ReservoirChange = "reservoir_change"
	SetChange       = "set_change"
)

// Rates of the simulated insulin pump's world; see the package doc.
const (
	insLowReservoir   = 20.0 // U
	insLowBattery     = 20.0 // percent
	insDrain          = 100.0 / (7 * 86400)
	insCharge         = 100.0 / (2 * 3600)
	insOcclusionMean  = 10 * 24 * time.Hour
	insCorrectionMean = 24 * time.Hour
	insSetLife        = 72 * time.Hour
	insTelemetry      = time.Minute
	insMaxBolus       = 25.0  // U, a typical pump's maximum
	insBolusStep      = 0.05  // U
	insBasalStep      = 0.025 // U/h
	insPeak           = 75 * time.Minute
	insDuration       = 6 * time.Hour
	insMaxBoluses     = 16 // remembered for IOB; more than fit in insDuration
)

// meals are the centres of meal times, seconds after local midnight.
var meals = [...]int64{7*3600 + 1800, 12*3600 + 1800, 18*3600 + 1800}

type bolus struct {
	at    int64
	units float64
}

// InsulinPump is a simulated patient-worn insulin pump.
type InsulinPump struct {
	base
	tod0      int64 // seconds after local midnight at the origin
	basal     [24]float64
	icr       float64 // grams of carbohydrate per unit
	capacity  float64
	mode      string
	alarm     string // the stopping alarm in ModeAlarm
	reservoir float64
	lowRes    bool
	battery   float64
	charging  bool
	lowBatt   bool
	boluses   []bolus // recent boluses, oldest first, for IOB
	setAt     int64   // when the infusion set was last changed
	change    string  // what the current suspension is for

	nextMeal, nextCorrection, nextOcclusion int64
	changeAt, resumeAt, chargeAt            int64
}

// NewInsulinPump returns a delivering pump with a random patient's profile,
// a partly used reservoir and infusion set.
func NewInsulinPump(cfg Config) *InsulinPump {
	m := &InsulinPump{}
	m.init(ModelInsulinPump, cfg)
	m.druglib = "" // insulin pumps have no drug library
	m.telemetry = insTelemetry
	total := m.uniform(0.5, 1.5)
	for h := range m.basal {
		f := 1.0
		switch {
		case h >= 3 && h < 8:
			f = 1.25 // dawn phenomenon
		case h >= 13 && h < 18:
			f = 0.85
		}
		m.basal[h] = max(round(total*f, insBasalStep), insBasalStep)
	}
	m.icr = float64(8 + m.rng.IntN(8))
	m.capacity = 200
	if m.chance(0.5) {
		m.capacity = 300
	}
	m.reservoir = round(m.uniform(40, m.capacity-20), insBolusStep)
	m.battery = m.uniform(30, 100)
	m.setAt = -m.secs(0, insSetLife)
	m.mode = ModeDelivering
	m.changeAt, m.resumeAt, m.chargeAt = never, never, never
	m.nextOcclusion = m.expSecs(0, insOcclusionMean)
	m.nextCorrection = m.expSecs(time.Hour, insCorrectionMean)
	m.nextMeal = never
	if m.clk.started {
		m.setTimeOfDay()
		m.nextMeal = m.mealAfter(0)
	}
	return m
}

// setTimeOfDay reads the time of day of the origin (fixed offset: daylight
// saving changes are not followed).
func (m *InsulinPump) setTimeOfDay() {
	o := m.clk.origin
	m.tod0 = int64(o.Hour()*3600 + o.Minute()*60 + o.Second())
}

// mealAfter returns the time of the next meal after a meal (or the start)
// at t: the first meal centre more than 45 min after t, ±45 min, so that a
// meal eaten late is not eaten twice.
func (m *InsulinPump) mealAfter(t int64) int64 {
	const window = 45 * 60
	day := (m.tod0 + t) / 86400 * 86400
	for {
		for _, c := range meals {
			if centre := day + c - m.tod0; centre > t+window {
				return centre + m.secs(0, 2*window*Tick) - window
			}
		}
		day += 86400
	}
}

// Step implements Device.
func (m *InsulinPump) Step(now time.Time) []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.clk.started {
		m.clk.advance(now)
		m.setTimeOfDay()
		m.nextMeal = m.mealAfter(0)
	}
	for n := m.clk.advance(now); n > 0; n-- {
		m.clk.sec++
		m.tick()
	}
	return m.take()
}

func (m *InsulinPump) basalNow() float64 {
	return m.basal[(m.tod0+m.clk.sec)%86400/3600]
}

func (m *InsulinPump) tick() {
	t := m.clk.sec
	m.power(t)
	switch m.mode {
	case ModeDelivering:
		m.reservoir = max(m.reservoir-m.basalNow()/3600, 0)
		if t >= m.nextMeal {
			carbs := float64(30 + 5*m.rng.IntN(13))
			m.deliver(carbs/m.icr, carbs)
			m.nextMeal = m.mealAfter(t)
		}
		if t >= m.nextCorrection {
			m.deliver(m.uniform(0.5, 3), 0)
			m.nextCorrection = t + m.expSecs(time.Hour, insCorrectionMean)
		}
		if !m.lowRes && m.reservoir <= insLowReservoir {
			m.lowRes = true
			m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: AlarmLowReservoir, Priority: PriorityMedium, Units: round2(m.reservoir)})
			m.plan(ReservoirChange, t+m.secs(30*time.Minute, 8*time.Hour))
		}
		if m.change == "" && t-m.setAt >= int64(insSetLife/Tick) {
			m.plan(SetChange, t+m.secs(0, 2*time.Hour))
		}
		switch {
		case m.reservoir <= 0:
			m.stop(AlarmEmptyReservoir)
			m.plan(ReservoirChange, t+m.secs(5*time.Minute, 45*time.Minute))
		case m.battery <= 0:
			m.stop(AlarmBatteryDepleted)
		case t >= m.nextOcclusion:
			m.stop(AlarmOcclusion)
			m.plan(SetChange, t+m.expSecs(5*time.Minute, 20*time.Minute))
		case t >= m.changeAt:
			m.mode, m.changeAt = ModeSuspended, never
			m.resumeAt = t + m.secs(5*time.Minute, 15*time.Minute)
			m.emit(Event{Type: EventSuspended, Mode: m.mode, Code: m.change})
		}
	case ModeSuspended:
		switch {
		case m.battery <= 0:
			m.stop(AlarmBatteryDepleted)
		case t >= m.resumeAt:
			m.resumeAt = never
			m.setAt = t
			if m.change == ReservoirChange || m.reservoir < 50 {
				m.reservoir = round(m.uniform(150, m.capacity), insBolusStep)
				if m.lowRes {
					m.lowRes = false
					m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: AlarmLowReservoir})
				}
			}
			m.change = ""
			m.deliverMode()
			m.emit(Event{Type: EventResumed, Mode: m.mode, Units: round2(m.reservoir)})
		}
	case ModeAlarm:
		switch {
		case m.alarm == AlarmBatteryDepleted:
			if m.charging {
				m.clear()
			}
		case t >= m.changeAt:
			// The patient has noticed and starts the change.
			m.changeAt = never
			m.resumeAt = t + m.secs(5*time.Minute, 15*time.Minute)
			code := m.alarm
			m.mode, m.alarm = ModeSuspended, ""
			m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: code})
			m.emit(Event{Type: EventSuspended, Mode: m.mode, Code: m.change})
		}
	}
}

// plan schedules a reservoir or set change at the latest at at.
func (m *InsulinPump) plan(what string, at int64) {
	if m.change == "" || what == ReservoirChange {
		m.change = what
	}
	m.changeAt = min(m.changeAt, at)
}

func (m *InsulinPump) deliverMode() {
	m.mode, m.alarm = ModeDelivering, ""
	m.nextOcclusion = m.clk.sec + m.expSecs(0, insOcclusionMean)
}

func (m *InsulinPump) stop(code string) {
	m.mode, m.alarm = ModeAlarm, code
	m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: code, Priority: PriorityHigh, Units: round2(m.reservoir)})
}

func (m *InsulinPump) clear() {
	code := m.alarm
	if m.change != "" && m.changeAt == never {
		m.changeAt = m.clk.sec // a change was under way: finish it
	}
	m.deliverMode()
	m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: code})
}

// deliver gives a bolus of about units, at most what the reservoir holds.
func (m *InsulinPump) deliver(units, carbs float64) {
	u := math.Floor(min(units, insMaxBolus, m.reservoir)/insBolusStep) * insBolusStep
	if u <= 0 {
		return
	}
	m.reservoir = max(m.reservoir-u, 0)
	if len(m.boluses) == insMaxBoluses {
		m.boluses = append(m.boluses[:0], m.boluses[1:]...)
	}
	m.boluses = append(m.boluses, bolus{at: m.clk.sec, units: u})
	m.emit(Event{Type: EventBolusDelivered, Mode: m.mode, Units: round2(u), Value: carbs})
}

func (m *InsulinPump) power(t int64) {
	if m.charging {
		m.battery = min(m.battery+insCharge, 100)
		if m.battery >= 100 {
			m.charging = false
			m.emit(Event{Type: EventPowerChanged, Mode: m.mode, Code: "battery"})
		}
		return
	}
	m.battery = max(m.battery-insDrain, 0)
	if !m.lowBatt && m.battery <= insLowBattery {
		m.lowBatt = true
		m.chargeAt = t + m.secs(30*time.Minute, 12*time.Hour)
		m.emit(Event{Type: EventAlarm, Mode: m.mode, Code: AlarmLowBattery, Priority: PriorityMedium, Value: round1(m.battery)})
	}
	if m.battery <= 0 {
		m.chargeAt = min(m.chargeAt, t+m.secs(10*time.Minute, 60*time.Minute))
	}
	if t >= m.chargeAt {
		m.charging, m.chargeAt = true, never
		m.emit(Event{Type: EventPowerChanged, Mode: m.mode, Code: "charging"})
		if m.lowBatt {
			m.lowBatt = false
			m.emit(Event{Type: EventAlarmCleared, Mode: m.mode, Code: AlarmLowBattery})
		}
	}
}

// Bolus delivers units now, as the patient at the pump or a verified remote
// command would. The pump must be delivering; it is reported by the next
// Step.
func (m *InsulinPump) Bolus(units float64) error {
	if units < insBolusStep || units > insMaxBolus {
		return fmt.Errorf("%w: bolus %v U outside %v–%v", ErrInvalid, units, insBolusStep, insMaxBolus)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mode != ModeDelivering {
		return fmt.Errorf("%w: pump is %s", ErrBusy, m.mode)
	}
	if units > m.reservoir {
		return fmt.Errorf("%w: bolus %v U, reservoir holds %.2f U", ErrInvalid, units, m.reservoir)
	}
	m.deliver(units, 0)
	return nil
}

// iob is insulin on board from boluses: the exponential insulin action
// curve of OpenAPS and Loop (ExponentialInsulinModel), peak insPeak, active
// for insDuration.
func (m *InsulinPump) iob() float64 {
	td, tp := insDuration.Seconds(), insPeak.Seconds()
	tau := tp * (1 - tp/td) / (1 - 2*tp/td)
	a := 2 * tau / td
	s := 1 / (1 - a + (1+a)*math.Exp(-td/tau))
	var sum float64
	for _, b := range m.boluses {
		t := float64(m.clk.sec - b.at)
		if t >= td {
			continue
		}
		f := 1 - s*(1-a)*((t*t/(tau*td*(1-a))-t/tau-1)*math.Exp(-t/tau)+1)
		sum += b.units * clamp(f, 0, 1)
	}
	return sum
}

// InsulinState is an insulin pump's state payload.
type InsulinState struct {
	protocol.StatePayload
	Alarm        string      `json:"alarm,omitempty"` // the stopping alarm in mode "alarm"
	LowReservoir bool        `json:"low_reservoir,omitempty"`
	LowBattery   bool        `json:"low_battery,omitempty"`
	BasalProfile [24]float64 `json:"basal_profile_u_h"` // by local hour
	ReservoirU   float64     `json:"reservoir_u"`
	CapacityU    float64     `json:"capacity_u"`
	IOBU         float64     `json:"iob_u"`
	BatteryPct   int         `json:"battery_pct"`
	Charging     bool        `json:"charging"`
}

// InsulinTelemetry is an insulin pump's telemetry payload.
type InsulinTelemetry struct {
	V          int       `json:"v"`
	Time       time.Time `json:"ts"`
	Mode       string    `json:"mode"`
	BasalUH    float64   `json:"basal_u_h"` // actual rate: 0 unless delivering
	ReservoirU float64   `json:"reservoir_u"`
	IOBU       float64   `json:"iob_u"`
	BatteryPct int       `json:"battery_pct"`
	Charging   bool      `json:"charging"`
	Alarm      string    `json:"alarm,omitempty"`
}

// State implements Device; it returns an InsulinState.
func (m *InsulinPump) State() any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return InsulinState{
		StatePayload: protocol.StatePayload{V: 1, Mode: m.mode, SoftwareVersion: m.software, Idle: m.idle()},
		Alarm:        m.alarm, LowReservoir: m.lowRes, LowBattery: m.lowBatt, BasalProfile: m.basal,
		ReservoirU: round2(m.reservoir), CapacityU: m.capacity, IOBU: round2(m.iob()),
		BatteryPct: int(m.battery + 0.5), Charging: m.charging,
	}
}

// Telemetry implements Device; it returns an InsulinTelemetry.
func (m *InsulinPump) Telemetry() any {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := InsulinTelemetry{V: 1, Time: m.clk.now(), Mode: m.mode, ReservoirU: round2(m.reservoir), IOBU: round2(m.iob()),
		BatteryPct: int(m.battery + 0.5), Charging: m.charging, Alarm: m.alarm}
	if m.mode == ModeDelivering {
		t.BasalUH = m.basalNow()
	}
	switch {
	case t.Alarm != "":
	case m.lowRes:
		t.Alarm = AlarmLowReservoir
	case m.lowBatt:
		t.Alarm = AlarmLowBattery
	}
	return t
}

func (m *InsulinPump) idle() bool { return m.mode == ModeSuspended }

// Idle implements Device: an insulin pump is idle only while suspended.
func (m *InsulinPump) Idle() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.idle()
}

// InstallSoftware implements Device.
func (m *InsulinPump) InstallSoftware(version string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.install(&m.software, version, m.idle())
}

// InstallDrugLibrary implements Device: ErrUnsupported.
func (m *InsulinPump) InstallDrugLibrary(string) error { return ErrUnsupported }
