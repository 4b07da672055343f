package ward_test

// Hygiene as tests: the layering rules of the design hold, and every
// package opens with a doc comment.

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Name       string
	Doc        string
	Imports    []string
	GoFiles    []string
}

func packages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var all []pkg
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		all = append(all, p)
	}
	return all
}

const module = "github.com/wardhq/ward/"

func TestPackagesAreDocumented(t *testing.T) {
	for _, p := range packages(t) {
		if len(p.GoFiles) == 0 {
			continue // test-only packages
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment: say what it is for, its parties and states", p.ImportPath)
		}
	}
}

func TestLayering(t *testing.T) {
	public := []string{"agent", "protocol", "client"}
	platform := []string{"internal/store", "internal/bus", "internal/config"}
	domains := []string{"internal/pki", "internal/enroll", "internal/fleet", "internal/audit", "internal/access",
		"internal/gateway", "internal/release", "internal/rollout", "internal/druglib", "internal/command",
		"internal/vuln", "internal/monitor", "internal/notify", "internal/sim"}
	within := func(path string, roots []string) bool {
		for _, r := range roots {
			if path == module+r || strings.HasPrefix(path, module+r+"/") {
				return true
			}
		}
		return false
	}
	for _, p := range packages(t) {
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			switch {
			case within(p.ImportPath, public) && strings.Contains(imp, "/internal/"):
				t.Errorf("%s is public and imports %s: a device maker must build with agent/ and protocol/ alone", p.ImportPath, imp)
			case within(p.ImportPath, platform) && within(imp, domains) && !strings.HasSuffix(p.ImportPath, "test"):
				t.Errorf("platform package %s imports domain %s", p.ImportPath, imp)
			case within(p.ImportPath, domains) && (within(imp, []string{"internal/api", "internal/console", "internal/server"})):
				t.Errorf("domain %s imports %s", p.ImportPath, imp)
			case imp == module+"internal/server" && p.ImportPath != module+"cmd/ward" && !strings.HasPrefix(p.ImportPath, module+"bench/"):
				t.Errorf("%s imports internal/server: only cmd/ward (and tests and benchmarks) may", p.ImportPath)
			}
			if strings.HasSuffix(imp, "/util") || strings.HasSuffix(imp, "/utils") || strings.HasSuffix(imp, "/common") {
				t.Errorf("%s imports a grab-bag package %s", p.ImportPath, imp)
			}
		}
	}
}
