package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
	"unicode"
)

// Misbehaviour is how a device planned to misbehave acts, like a
// compromised device, for Ward's monitor to catch. The behaviour itself is
// the agent layer's (`ward sim --misbehave K`); the models stay honest.
type Misbehaviour string

// Misbehaviours, assigned in turn to the K misbehaving devices of a plan.
const (
	// Flood: once connected, publish far above the gateway's per-device
	// message rate (hundreds of messages a second, some of them oversized),
	// as a hijacked device used to flood the network would.
	Flood Misbehaviour = "flood"
	// Probe: subscribe to and publish on other devices' topics, wildcard
	// filters (ward/v1/d/+/cmd, #) and $SYS, as malware mapping the fleet
	// would.
	Probe Misbehaviour = "probe"
	// AddressHop: connect again and again with the device's valid
	// credentials from many source addresses (127.0.0.x), as a cloned or
	// stolen credential used from several places would.
	AddressHop Misbehaviour = "address-hop"
)

var misbehaviours = []Misbehaviour{Flood, Probe, AddressHop}

// Release is a software (or drug-library) version found in the simulated
// fleet.
type Release struct {
	Version  string
	Year     int     // shipped in; the serial's year for devices that still run it
	Share    float64 // of the model's fleet, summing to 1
	Outdated bool    // not the newest release
}

// Simulated releases, newest first. The versions are made up.
var (
	releases = map[string][]Release{
		ModelInfusionPump: {{"4.2.1", 2025, 0.60, false}, {"4.1.3", 2024, 0.25, true}, {"3.8.0", 2022, 0.10, true}, {"3.6.2", 2020, 0.05, true}},
		ModelInsulinPump:  {{"2.6B", 2025, 0.65, false}, {"2.6A", 2024, 0.25, true}, {"2.4", 2021, 0.10, true}},
		ModelMonitor:      {{"5.1.0", 2025, 0.55, false}, {"5.0.2", 2024, 0.30, true}, {"4.7.1", 2021, 0.15, true}},
	}
	drugLibraries = map[string][]Release{
		ModelInfusionPump: {{"DL-2025.06", 2025, 0.70, false}, {"DL-2025.03", 2025, 0.20, true}, {"DL-2024.11", 2024, 0.10, true}},
	}
	serialPrefix = map[string]string{ModelInfusionPump: "LVP", ModelInsulinPump: "INS", ModelMonitor: "PM"}
	// mixShare is the share of each model in a "mix" fleet.
	mixShare = []struct {
		model string
		share float64
	}{{ModelInfusionPump, 0.5}, {ModelMonitor, 0.3}, {ModelInsulinPump, 0.2}}
)

// Models lists the device models, in a fixed order.
func Models() []string { return []string{ModelInfusionPump, ModelInsulinPump, ModelMonitor} }

// Releases returns the software releases of model in the simulated fleet,
// newest first.
func Releases(model string) []Release { return slices.Clone(releases[model]) }

// DrugLibraries returns the drug-library versions of model in the
// simulated fleet, newest first; none for models without a drug library.
func DrugLibraries(model string) []Release { return slices.Clone(drugLibraries[model]) }

// DefaultUnits are the hospital units of a plan that names none.
func DefaultUnits() []string {
	return []string{"ICU-3 North", "Oncology 5", "ED", "Med-Surg 7", "NICU"}
}

// Spec is one planned device: what its birth certificate and purchase
// record say, what it runs, and the seed of its model.
type Spec struct {
	Serial             string       `json:"serial"`
	Model              string       `json:"model"`
	Site               string       `json:"site,omitempty"`
	Unit               string       `json:"unit"`
	Population         Population   `json:"population"`
	SoftwareVersion    string       `json:"software_version"`
	DrugLibraryVersion string       `json:"druglib_version,omitempty"`
	Seed               uint64       `json:"seed"`
	Misbehave          Misbehaviour `json:"misbehave,omitempty"` // "" for a well-behaved device
}

// Config returns the model configuration of the device, starting at start
// (zero: at its first Step).
func (s Spec) Config(start time.Time) Config {
	return Config{Seed: s.Seed, Start: start, SoftwareVersion: s.SoftwareVersion,
		DrugLibraryVersion: s.DrugLibraryVersion, Population: s.Population}
}

// New returns the simulated device that s describes.
func New(s Spec, start time.Time) (Device, error) {
	cfg := s.Config(start)
	switch s.Model {
	case ModelInfusionPump:
		return NewInfusionPump(cfg), nil
	case ModelInsulinPump:
		return NewInsulinPump(cfg), nil
	case ModelMonitor:
		return NewMonitor(cfg), nil
	}
	return nil, fmt.Errorf("%w: unknown model %q", ErrInvalid, s.Model)
}

// PlanConfig configures Plan.
type PlanConfig struct {
	N int // devices
	// Model is ModelInfusionPump, ModelInsulinPump, ModelMonitor or
	// ModelMix (50 % infusion pumps, 30 % monitors, 20 % insulin pumps);
	// "" is ModelMix.
	Model string
	// Units are the hospital units the devices are spread over evenly;
	// nil: DefaultUnits. A unit whose name says NICU or neonatal gets
	// neonatal ranges.
	Units []string
	// Site labels every device, e.g. the hospital's name; optional.
	Site string
	// Misbehave is how many devices misbehave, at most N.
	Misbehave int
	// Seed makes the plan, and every device's trace, reproducible.
	Seed uint64
}

// Plan returns N device specs: models in the asked mix, shuffled, spread
// evenly over the units (counts differ by at most one), unique serials
// "<prefix>-<year>-<number>", software versions drawn by Releases' shares,
// and Misbehave set on cfg.Misbehave devices chosen at random, taking Flood,
// Probe and AddressHop in turn. The same config gives the same plan.
func Plan(cfg PlanConfig) ([]Spec, error) {
	if cfg.N < 0 || cfg.Misbehave < 0 || cfg.Misbehave > cfg.N {
		return nil, fmt.Errorf("%w: plan: %d devices, %d misbehaving", ErrInvalid, cfg.N, cfg.Misbehave)
	}
	units := cfg.Units
	if units == nil {
		units = DefaultUnits()
	}
	if err := checkLabels(units); err != nil {
		return nil, fmt.Errorf("%w: plan: %w", ErrInvalid, err)
	}
	if cfg.Site != "" {
		if err := checkLabels([]string{cfg.Site}); err != nil {
			return nil, fmt.Errorf("%w: plan: site: %w", ErrInvalid, err)
		}
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, splitmix(cfg.Seed^0x5ca1ab1e)))

	// The models, in exact proportions (largest remainder), shuffled so
	// that every unit gets a mix.
	var models []string
	switch m := cfg.Model; m {
	case ModelInfusionPump, ModelInsulinPump, ModelMonitor:
		models = slices.Repeat([]string{m}, cfg.N)
	case ModelMix, "":
		counts := make([]int, len(mixShare))
		left := cfg.N
		for i, s := range mixShare {
			counts[i] = int(float64(cfg.N) * s.share)
			left -= counts[i]
		}
		for i := 0; left > 0; i, left = i+1, left-1 {
			counts[i%len(counts)]++
		}
		for i, s := range mixShare {
			models = append(models, slices.Repeat([]string{s.model}, counts[i])...)
		}
		rng.Shuffle(len(models), func(i, j int) { models[i], models[j] = models[j], models[i] })
	default:
		return nil, fmt.Errorf("%w: plan: unknown model %q (infusion-pump, insulin-pump, monitor or mix)", ErrInvalid, m)
	}

	next := map[string]int{}
	specs := make([]Spec, cfg.N)
	for i := range specs {
		model, unit := models[i], units[i%len(units)]
		rel := pick(rng, releases[model])
		s := Spec{Model: model, Site: cfg.Site, Unit: unit, Population: populationOf(unit),
			SoftwareVersion: rel.Version, Seed: splitmix(cfg.Seed ^ splitmix(uint64(i)+1))}
		if libs := drugLibraries[model]; libs != nil {
			s.DrugLibraryVersion = pick(rng, libs).Version
		}
		prefix := serialPrefix[model]
		next[prefix]++
		s.Serial = fmt.Sprintf("%s-%d-%06d", prefix, rel.Year, next[prefix])
		specs[i] = s
	}
	for j, i := range rng.Perm(cfg.N)[:cfg.Misbehave] {
		specs[i].Misbehave = misbehaviours[j%len(misbehaviours)]
	}
	return specs, nil
}

// pick draws a release by its share.
func pick(rng *rand.Rand, rs []Release) Release {
	x := rng.Float64()
	for _, r := range rs {
		if x -= r.Share; x < 0 {
			return r
		}
	}
	return rs[len(rs)-1]
}

func populationOf(unit string) Population {
	u := strings.ToUpper(unit)
	if strings.Contains(u, "NICU") || strings.Contains(u, "NEONAT") {
		return Neonate
	}
	return Adult
}

// checkLabels checks unit and site names: not empty, printable, no space
// at either end, at most 128 bytes, no duplicates. (Ward's registry
// accepts letters, digits, spaces and . _ : / + -.)
func checkLabels(labels []string) error {
	if len(labels) == 0 {
		return errors.New("no units")
	}
	seen := map[string]bool{}
	for _, l := range labels {
		if l == "" || len(l) > 128 || strings.TrimSpace(l) != l || strings.IndexFunc(l, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
			return fmt.Errorf("unit or site %q: 1 to 128 printable characters, no space at either end", l)
		}
		if seen[l] {
			return fmt.Errorf("unit %q given twice", l)
		}
		seen[l] = true
	}
	return nil
}
