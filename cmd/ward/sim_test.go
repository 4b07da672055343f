package main

// ward sim against the real ward serve: devices that are not preregistered
// wait, pending, until a person approves them; -o json reports progress;
// Ctrl-C ends the run with a summary.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/sim"
)

func TestSimPendingThenApproved(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ward serve and ward sim")
	}
	bin := buildWard(t)
	conf := filepath.Join(t.TempDir(), "ward.yaml")
	// Pending devices ask again every second instead of every 30.
	if err := os.WriteFile(conf, []byte("enroll:\n  retry_after: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, bin: bin, data: filepath.Join(t.TempDir(), "data"), dir: t.TempDir(), admin: freeAddr(t), dev: freeAddr(t),
		extra: []string{"--config", conf}}
	n.start()
	defer n.stop()

	const devices = 6
	cmd := exec.Command(bin, "sim", "--server", "http://"+n.admin, "--data", n.data, "-o", "json",
		"--device-addr", n.dev, "--mqtt-addr", n.mqtt, "--devices", "6", "--model", "monitor", "--units", "ICU,NICU",
		"--preregister=false", "--dir", filepath.Join(t.TempDir(), "sim"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, errLog := &lockedBuffer{}, &lockedBuffer{}
	cmd.Stderr = errLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	both := func() string { return out.String() + "\n--- stderr:\n" + errLog.String() }
	ch := lines(stdout, out)

	// progress reads JSON lines until one satisfies ok.
	progress := func(what string, ok func(p sim.Progress) bool) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case l, open := <-ch:
				if !open {
					t.Fatalf("ward sim ended before %s:\n%s", what, both())
				}
				var p struct {
					Event string `json:"event"`
					sim.Progress
				}
				if json.Unmarshal([]byte(l), &p) != nil {
					t.Fatalf("not a JSON line: %q", l)
				}
				if p.Event == "progress" && ok(p.Progress) {
					return
				}
			case <-deadline:
				t.Fatalf("no progress with %s after 30s:\n%s", what, both())
			}
		}
	}
	progress("every device pending", func(p sim.Progress) bool { return p.Pending == devices })

	var pending client.DeviceList
	if err := json.Unmarshal([]byte(n.ward("device", "list", "--state", "pending", "-o", "json")), &pending); err != nil {
		t.Fatal(err)
	}
	if len(pending.Items) != devices {
		t.Fatalf("%d pending devices at Ward, want %d", len(pending.Items), devices)
	}
	for _, d := range pending.Items[:2] {
		n.ward("device", "approve", d.ID)
	}
	progress("two approved devices connected", func(p sim.Progress) bool { return p.Connected == 2 && p.Pending == devices-2 })

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var summary struct {
		Event string `json:"event"`
		sim.Progress
		Last sim.Progress `json:"last_running"`
	}
	for l := range ch {
		if strings.Contains(l, `"summary"`) {
			if err := json.Unmarshal([]byte(l), &summary); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ward sim exited with %v after SIGINT:\n%s", err, both())
	}
	if summary.Event != "summary" || summary.Total != devices || summary.Last.Connected != 2 || summary.Last.Pending != devices-2 {
		t.Errorf("summary %+v", summary)
	}
	if !strings.Contains(errLog.String(), "devices wait, pending, until approved") {
		t.Errorf("stderr does not say the devices wait for approval:\n%s", errLog)
	}
}
