package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
)

// TestPlan: 10,000 devices in the asked mix, spread evenly over the units,
// with unique serials that Ward's registry and the manufacturer's CA both
// accept, a few software versions, and K misbehaving devices.
func TestPlan(t *testing.T) {
	const n, k = 10000, 30
	cfg := PlanConfig{N: n, Model: ModelMix, Site: "St. Example General", Misbehave: k, Seed: 42}
	specs, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Plan(cfg)
	if len(specs) != n || !reflect.DeepEqual(specs, again) {
		t.Fatalf("%d specs, deterministic %v", len(specs), reflect.DeepEqual(specs, again))
	}

	ca, caKey, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Meridian Medical"})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	models, units, pairs := map[string]int{}, map[string]int{}, map[[2]string]int{}
	versions, libs, misbehave := map[string]int{}, map[string]int{}, map[Misbehaviour]int{}
	serials, seeds := map[string]bool{}, map[uint64]bool{}
	for i, s := range specs {
		models[s.Model]++
		units[s.Unit]++
		pairs[[2]string{s.Unit, s.Model}]++
		versions[s.Model+" "+s.SoftwareVersion]++
		libs[s.DrugLibraryVersion]++
		misbehave[s.Misbehave]++
		if serials[s.Serial] || seeds[s.Seed] || !fleet.ValidSerial(s.Serial) {
			t.Fatalf("spec %d: serial %q (valid %v) or seed %d repeated", i, s.Serial, fleet.ValidSerial(s.Serial), s.Seed)
		}
		serials[s.Serial], seeds[s.Seed] = true, true
		// A birth certificate for every tenth (each costs a signature;
		// the serials differ only in their digits).
		if i%10 == 0 {
			if _, _, err := pki.MintBirthCertificate(pki.BirthConfig{CA: ca, CAKey: caKey, Serial: s.Serial, Model: s.Model, Key: key}); err != nil {
				t.Fatalf("spec %d: %v", i, err)
			}
		}
		if s.Site != cfg.Site || (s.Population == Neonate) != (s.Unit == "NICU") || (s.DrugLibraryVersion != "") != (s.Model == ModelInfusionPump) {
			t.Fatalf("spec %+v", s)
		}
		if _, err := New(s, t0); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("models %v; versions %v; drug libraries %v; misbehaving %v; e.g. %+v", models, versions, libs, misbehave, specs[0])
	for _, m := range mixShare {
		if want := float64(n) * m.share; math.Abs(float64(models[m.model])-want) > 1 {
			t.Errorf("%d %s, want %v", models[m.model], m.model, want)
		}
	}
	per := n / len(DefaultUnits())
	for _, u := range DefaultUnits() {
		if units[u] < per || units[u] > per+1 {
			t.Errorf("%d devices in %s, want %d", units[u], u, per)
		}
		for _, m := range Models() {
			if pairs[[2]string{u, m}] < per/10 {
				t.Errorf("%d %s in %s", pairs[[2]string{u, m}], m, u)
			}
		}
	}
	for _, m := range Models() {
		for _, r := range Releases(m) {
			got := float64(versions[m+" "+r.Version]) / float64(models[m])
			if math.Abs(got-r.Share) > 0.03 {
				t.Errorf("%s %s on %.3f of the fleet, want %.2f", m, r.Version, got, r.Share)
			}
		}
	}
	if misbehave[Flood] != k/3 || misbehave[Probe] != k/3 || misbehave[AddressHop] != k/3 || misbehave[""] != n-k {
		t.Errorf("misbehaving: %v", misbehave)
	}
	if len(libs) != len(DrugLibraries(ModelInfusionPump))+1 {
		t.Errorf("drug libraries %v", libs)
	}
}

func TestPlanOneModel(t *testing.T) {
	specs, err := Plan(PlanConfig{N: 7, Model: ModelMonitor, Units: []string{"ICU-3 North", "Neonatal Unit B"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ICU-3 North", "Neonatal Unit B"}
	for i, s := range specs {
		if s.Model != ModelMonitor || s.Unit != want[i%2] || (s.Population == Neonate) != (i%2 == 1) || s.Misbehave != "" || s.Site != "" {
			t.Errorf("spec %d: %+v", i, s)
		}
	}
	if specs[0].Serial[:3] != "PM-" {
		t.Errorf("serial %q", specs[0].Serial)
	}
	if specs, err := Plan(PlanConfig{}); err != nil || len(specs) != 0 {
		t.Errorf("empty plan: %v %v", specs, err)
	}
}

func TestPlanRefuses(t *testing.T) {
	for _, cfg := range []PlanConfig{
		{N: -1},
		{N: 3, Misbehave: 4},
		{N: 3, Misbehave: -1},
		{N: 3, Model: "defibrillator"},
		{N: 3, Units: []string{}},
		{N: 3, Units: []string{"ED", "ED"}},
		{N: 3, Units: []string{" ED"}},
		{N: 3, Units: []string{"E\nD"}},
		{N: 3, Site: "St. Example\x00"},
	} {
		if _, err := Plan(cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}

// TestPlanRuns: a planned fleet runs, and its devices differ.
func TestPlanRuns(t *testing.T) {
	specs, err := Plan(PlanConfig{N: 30, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range specs {
		d, _ := New(s, t0)
		d.Step(t0.Add(time.Hour))
		seen[mustJSON(t, d.Telemetry())] = true
	}
	if len(seen) != len(specs) {
		t.Errorf("%d different telemetries of %d devices", len(seen), len(specs))
	}
}
