// Package sim simulates the medicine side of connected medical devices, so
// that Ward can be tried, demonstrated, tested and benchmarked with fleets of
// thousands without a single real pump. It holds the device models and the
// fleet plan; the security side (keys, enrollment, MQTT, updates) is package
// agent's, and `ward sim` joins the two with a thin adapter.
//
// The models use realistic ranges: their rates, limits and state machines
// follow typical device specifications and clinical practice, simplified
// for testing software. They are not physiological or pharmacological
// models, and nothing here is medical advice.
//
// # Models
//
//   - InfusionPump, a large-volume infusion pump (LVP). A program names a drug
//     from a short list of commonly infused drugs, its concentration and unit,
//     a rate (the pump accepts 0.1–999 mL/h, as typical LVPs do) and a volume
//     to be infused (VTBI). Modes: idle → infusing ⇄ paused; infusing or
//     paused → alarm → infusing (occlusion, air in line, battery depleted,
//     once cleared) or → idle (infusion complete, acknowledged). A simulated
//     nurse starts the next program some hours after the last one (5 min
//     plus a mean of 4 h, so pumps infuse about two thirds of the time) and
//     acknowledges an alarm after a delay (30 s plus a mean of 3 min; 1 min
//     plus 10 min for "infusion complete"). Downstream occlusion about once
//     per 12 h of infusing, air in line once per 72 h, a short pause (1–10
//     min) once per 10 h. The battery lasts about 6 h while infusing, 48 h
//     otherwise, and charges in about 5 h on mains; pumps are unplugged
//     about every 16 h for transport (10 min plus a mean of 90 min: now and
//     then one is forgotten). "low battery" at 15 % is an alarm that does
//     not stop the infusion; the nurse plugs the pump in 2 min plus a mean
//     of 15 min later, and if that is too late "battery depleted" stops it
//     until the pump is on mains. Neonatal units get their own drugs, low
//     rates and small volumes. The volume infused never exceeds the VTBI
//     (keep-vein-open after completion is not simulated). Telemetry every
//     10–30 s, fixed per pump.
//   - InsulinPump, a patient-worn insulin pump. A basal profile of 24 hourly
//     rates (0.5–1.5 U/h with a dawn rise, in 0.025 U/h steps); meal boluses
//     at 07:30, 12:30 and 18:30 local time ±45 min (30–90 g of carbohydrate,
//     an insulin-to-carbohydrate ratio of 1:8 to 1:15, in 0.05 U steps, at
//     most 25 U) and about one correction bolus a day; a 200 or 300 U
//     reservoir that never goes negative; insulin on board from boluses with
//     the exponential insulin action curve of OpenAPS and Loop (peak 75 min,
//     duration 6 h). Modes: delivering ⇄ suspended (a reservoir or
//     infusion-set change of 5–15 min, every 3 days or after the
//     low-reservoir alarm at 20 U); delivering or suspended → alarm (empty
//     reservoir, occlusion about once per 10 days of wear, battery depleted)
//     → suspended (the patient changes the set or reservoir) or delivering
//     (the pump charges). The battery lasts about 7 days; the patient charges
//     it 0.5–12 h after its low alarm at 20 %. Telemetry every 60 s.
//   - Monitor, a bedside patient monitor. Heart rate, SpO2 and respiration
//     rate follow a bounded mean-reverting random walk (Ornstein–Uhlenbeck,
//     one step a second) around a per-patient baseline, with desaturation
//     and tachycardia episodes (about every 8 h; every 2 h for the one
//     patient in seven with an abnormal baseline). NIBP is measured every 15
//     min. Healthy adult baselines: HR 60–95 /min, SpO2 95–99 %, RR 12–18
//     /min, NIBP 105–140/65–90 mmHg; neonates: HR 120–160, SpO2 92–98, RR
//     30–60. Threshold alarms (adult: HR < 50 or > 120, SpO2 < 90, RR < 8 or
//     > 30, systolic < 90 or > 160; neonatal limits in monitor.go) are
//     raised after 10 s beyond the limit and cleared after 10 s within it
//     (NIBP alarms at each measurement); the SpO2 probe comes off about
//     every 8 h for 20 s–2 min (a technical alarm, and no SpO2). Modes:
//     monitoring ⇄ standby: patients are discharged after 12–96 h and the
//     next one is admitted 20–180 min later. Telemetry every 10 s.
//
// Every model implements Device. Each mode change comes with an Event whose
// Mode is the new mode, and every alarm raised is cleared by a later
// alarm_cleared event with the same Code, so an adapter can publish the
// retained state whenever Step returns events, Telemetry every
// TelemetryInterval, and each Event as it comes. Idle reports when an
// update may install (DESIGN.md §4.1): an LVP in idle mode, an insulin pump
// while suspended, a monitor in standby; InstallSoftware and
// InstallDrugLibrary refuse with ErrBusy otherwise. StartProgram (LVP) and
// Bolus (insulin pump) are what a verified remote command would do.
//
// # Time and randomness
//
// A model has no goroutine and never reads the wall clock. Step(now)
// advances its simulation one second (Tick) at a time up to now; the first
// Step, or Config.Start, sets its origin, and the origin's location gives
// the time of day (a fixed offset: daylight saving is not followed). All
// randomness comes from one PCG generator per device, seeded from
// Config.Seed, and deadlines are drawn when a state is entered, so the
// same seed and origin give the same trace however Step is called:
// stepping every second or every ten minutes gives the same events with
// the same times. A device-second costs a few hundred nanoseconds
// (BenchmarkStep); catching up a day costs milliseconds. Models are safe
// for concurrent use.
//
// # Payloads
//
// State, Telemetry and every Event marshal to JSON objects with "v": 1 that
// pass protocol.CheckPayload, at most a few hundred bytes. States embed
// protocol.StatePayload (mode, idle, software and drug-library versions).
//
// # Fleet plan
//
// Plan turns a fleet size, a model mix and a list of hospital units into
// device Specs: a manufacturer-style serial (LVP-2025-000123, INS-…, PM-…)
// that satisfies Ward's serial rules, the model, site and unit, a software
// version from a few releases of which some are outdated (Releases), a
// drug-library version for infusion pumps (DrugLibraries), the device's
// seed, and for K devices a Misbehaviour that the agent layer acts out:
// Flood, Probe or AddressHop. The plan is deterministic for its config, so
// several simulator processes can compute the same plan and each run its
// own slice of it.
package sim

import (
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// Device models, as in Spec.Model and Device.Model.
const (
	ModelInfusionPump = "infusion-pump"
	ModelInsulinPump  = "insulin-pump"
	ModelMonitor      = "monitor"
	// ModelMix asks Plan for a mix of the three.
	ModelMix = "mix"
)

// Errors returned by the models' control methods.
var (
	// ErrBusy: the device is not idle (an update) or not in a mode that
	// accepts the request (a program, a bolus).
	ErrBusy = errors.New("sim: device busy")
	// ErrInvalid: the request is outside what the device accepts.
	ErrInvalid = errors.New("sim: invalid request")
	// ErrUnsupported: the device has no such feature (e.g. a monitor has no
	// drug library).
	ErrUnsupported = errors.New("sim: not supported by this model")
)

// Device is what every model offers to the adapter that plugs it into
// package agent. All methods are safe for concurrent use.
type Device interface {
	// Model is one of ModelInfusionPump, ModelInsulinPump, ModelMonitor.
	Model() string
	SoftwareVersion() string
	// DrugLibraryVersion is "" for devices without a drug library.
	DrugLibraryVersion() string
	// Step advances the simulation to now (whole seconds; a time before
	// the last step is ignored) and returns what happened meanwhile, oldest
	// first, or nil.
	Step(now time.Time) []Event
	// State is the current state, a JSON-able v1 payload for the retained
	// state topic.
	State() any
	// Telemetry is the current measurements, a JSON-able v1 payload.
	Telemetry() any
	// TelemetryInterval is how often the device sends Telemetry.
	TelemetryInterval() time.Duration
	// Idle reports whether an update may be installed now.
	Idle() bool
	// InstallSoftware and InstallDrugLibrary record a verified update as
	// installed; ErrBusy unless Idle.
	InstallSoftware(version string) error
	InstallDrugLibrary(version string) error
}

var (
	_ Device = (*InfusionPump)(nil)
	_ Device = (*InsulinPump)(nil)
	_ Device = (*Monitor)(nil)
)

// EventType says what an Event is about.
type EventType string

// Event types.
const (
	EventAlarm             EventType = "alarm"              // Code, Priority
	EventAlarmCleared      EventType = "alarm_cleared"      // Code
	EventInfusionStarted   EventType = "infusion_started"   // Drug, RateMLH, VolumeML (VTBI)
	EventInfusionPaused    EventType = "infusion_paused"    // Drug, VolumeML (infused so far)
	EventInfusionResumed   EventType = "infusion_resumed"   // Drug, RateMLH
	EventInfusionCompleted EventType = "infusion_completed" // Drug, VolumeML (infused)
	EventBolusDelivered    EventType = "bolus_delivered"    // Units, Value (carbohydrate g, 0 for a correction)
	EventSuspended         EventType = "suspended"          // Code: reservoir_change, set_change
	EventResumed           EventType = "resumed"            // Units (reservoir after a change)
	EventPatientAdmitted   EventType = "patient_admitted"
	EventPatientDischarged EventType = "patient_discharged"
	EventPowerChanged      EventType = "power_changed" // Code: mains, battery, charging
)

// Alarm priorities, after IEC 60601-1-8.
const (
	PriorityHigh   = "high"
	PriorityMedium = "medium"
	PriorityLow    = "low"
)

// Event is something that happened on a device: an alarm raised or cleared,
// a therapy event, a mode change. It marshals to a v1 payload for the
// events topic. Fields that do not apply are left out.
type Event struct {
	V        int       `json:"v"`
	Seq      uint64    `json:"seq"` // per device, from 1, never reused
	Time     time.Time `json:"ts"`
	Type     EventType `json:"type"`
	Mode     string    `json:"mode"` // the device's mode after the event
	Code     string    `json:"code,omitempty"`
	Priority string    `json:"priority,omitempty"`
	Drug     string    `json:"drug,omitempty"`
	RateMLH  float64   `json:"rate_ml_h,omitempty"`
	VolumeML float64   `json:"volume_ml,omitempty"`
	Units    float64   `json:"units,omitempty"`
	Value    float64   `json:"value,omitempty"` // a measurement, e.g. the heart rate that raised an alarm
	Limit    float64   `json:"limit,omitempty"` // the alarm limit it crossed
}

// Population selects physiological ranges and drug lists.
type Population string

// Populations.
const (
	Adult   Population = "adult"
	Neonate Population = "neonate"
)

// Config configures one simulated device.
type Config struct {
	// Seed makes the device's trace reproducible. Ignored when Rand is set.
	Seed uint64
	// Rand, if set, is the device's own generator; it must not be shared.
	Rand *rand.Rand
	// Start is the simulation's origin; zero: the first Step's time. Its
	// location gives the time of day (for meals); UTC if nil.
	Start              time.Time
	SoftwareVersion    string
	DrugLibraryVersion string // infusion pumps only
	Population         Population
}

// Tick is the simulation's resolution.
const Tick = time.Second

// never is a deadline that does not come.
const never = int64(1<<63 - 1)

// clock counts whole seconds since the origin. A model's fields are
// guarded by its own mutex; clock is not safe on its own.
type clock struct {
	origin  time.Time
	started bool
	sec     int64 // seconds since origin of the last tick simulated
}

// advance returns how many ticks lie in (last tick, now], starting the clock
// at now when it has no origin yet.
func (c *clock) advance(now time.Time) int64 {
	if !c.started {
		c.origin, c.started = now, true
		return 0
	}
	d := now.Sub(c.origin)
	if d < 0 {
		return 0
	}
	n := int64(d/Tick) - c.sec
	return max(n, 0)
}

func (c *clock) at(sec int64) time.Time { return c.origin.Add(time.Duration(sec) * Tick).UTC() }

func (c *clock) now() time.Time { return c.at(c.sec) }

// base holds what every model has: identity, versions, clock, generator,
// pending events.
type base struct {
	mu        sync.Mutex
	model     string
	software  string
	druglib   string
	clk       clock
	rng       *rand.Rand
	seq       uint64
	events    []Event
	telemetry time.Duration
}

func (b *base) init(model string, cfg Config) {
	b.rng = cfg.Rand
	if b.rng == nil {
		b.rng = rand.New(rand.NewPCG(cfg.Seed, splitmix(cfg.Seed)))
	}
	b.model, b.software, b.druglib = model, cfg.SoftwareVersion, cfg.DrugLibraryVersion
	if !cfg.Start.IsZero() {
		b.clk.origin, b.clk.started = cfg.Start, true
	}
}

// emit records an event at the current tick.
func (b *base) emit(e Event) {
	b.seq++
	e.V, e.Seq, e.Time = 1, b.seq, b.clk.now()
	b.events = append(b.events, e)
}

// take returns the pending events and forgets them.
func (b *base) take() []Event {
	ev := b.events
	b.events = nil
	return ev
}

func (b *base) Model() string { return b.model }

func (b *base) SoftwareVersion() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.software
}

func (b *base) DrugLibraryVersion() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.druglib
}

func (b *base) TelemetryInterval() time.Duration { return b.telemetry }

// install sets *field to version if idle.
func (b *base) install(field *string, version string, idle bool) error {
	if version == "" {
		return ErrInvalid
	}
	if !idle {
		return ErrBusy
	}
	*field = version
	return nil
}

// Random helpers. Durations are in whole seconds (ticks).

func (b *base) uniform(lo, hi float64) float64 { return lo + (hi-lo)*b.rng.Float64() }

// secs returns a uniform duration in [lo, hi].
func (b *base) secs(lo, hi time.Duration) int64 {
	l, h := int64(lo/Tick), int64(hi/Tick)
	return l + b.rng.Int64N(h-l+1)
}

// expSecs returns min plus an exponentially distributed duration of the
// given mean: the waiting time of a memoryless hazard.
func (b *base) expSecs(min, mean time.Duration) int64 {
	return int64(min/Tick) + int64(math.Ceil(b.rng.ExpFloat64()*float64(mean/Tick)))
}

func (b *base) chance(p float64) bool { return b.rng.Float64() < p }

// round rounds x to a multiple of step, without binary noise below 1e-6.
func round(x, step float64) float64 { return math.Round(math.Round(x/step)*step*1e6) / 1e6 }

// round1 rounds for payloads: one decimal.
func round1(x float64) float64 { return math.Round(x*10) / 10 }

func round2(x float64) float64 { return math.Round(x*100) / 100 }

// clamp bounds x to [lo, hi] (cheaper than min and max, which handle NaN).
func clamp(x, lo, hi float64) float64 {
	if x < lo {
		return lo
	}
	if x > hi {
		return hi
	}
	return x
}

// splitmix is SplitMix64's output function: it spreads seeds.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
