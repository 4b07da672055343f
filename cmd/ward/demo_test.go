package main

// ward demo as a person runs it: the real binary, a fresh data directory,
// a (smaller) fleet, the CLI against it, Ctrl-C.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardhq/ward/client"
)

// lines collects a process's output and hands each line to a channel.
func lines(r io.Reader, all *lockedBuffer) <-chan string {
	ch := make(chan string, 1024)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			all.Write([]byte(sc.Text() + "\n"))
			select {
			case ch <- sc.Text():
			default:
			}
		}
	}()
	return ch
}

// waitLine waits for a line containing want.
func waitLine(t *testing.T, ch <-chan string, want string, d time.Duration, log func() string) string {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				t.Fatalf("output ended before %q:\n%s", want, log())
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-deadline:
			t.Fatalf("no %q after %s:\n%s", want, d, log())
		}
	}
}

func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ward demo")
	}
	bin := buildWard(t)
	data := filepath.Join(t.TempDir(), "data")
	admin := freeAddr(t)
	const devices = 40
	cmd := exec.Command(bin, "demo", "--data", data, "--devices", "40",
		"--admin-addr", admin, "--device-addr", freeAddr(t), "--mqtt-addr", freeAddr(t))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, errLog := &lockedBuffer{}, &lockedBuffer{}
	cmd.Stderr = errLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	both := func() string { return out.String() + "\n--- stderr:\n" + errLog.String() }
	ch := lines(stdout, out)

	tokenLine := waitLine(t, ch, "Admin token:", 60*time.Second, both)
	connected := waitLine(t, ch, "fleet connected:", 60*time.Second, both)
	t.Logf("%s (seen %s after start)", connected, time.Since(started).Round(100*time.Millisecond))
	if !strings.Contains(connected, "40/40 devices active and connected") {
		t.Errorf("fleet line: %q", connected)
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tokenLine, strings.TrimSpace(string(tok))) {
		t.Errorf("the printed token is not the one in the data directory: %q", tokenLine)
	}

	ward := func(args ...string) []byte {
		t.Helper()
		c := exec.Command(bin, append([]string{"--server", "http://" + admin, "--data", data}, args...)...)
		b, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return b
	}
	var list client.DeviceList
	if err := json.Unmarshal(ward("device", "list", "--limit", "1000", "-o", "json"), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != devices {
		t.Fatalf("ward device list shows %d devices, want %d", len(list.Items), devices)
	}
	units := map[string]int{}
	for _, d := range list.Items {
		if d.State != client.StateActive {
			t.Errorf("%s is %s, want active", d.Serial, d.State)
		}
		if d.Manufacturer != "Simulated Medical" || d.Unit == "" {
			t.Errorf("%s: manufacturer %q, unit %q", d.Serial, d.Manufacturer, d.Unit)
		}
		units[d.Unit]++
	}
	if len(units) != len(demoUnits) {
		t.Errorf("devices in units %v, want all of %v", units, demoUnits)
	}
	// The node's gateway holds the whole fleet and has stored what it
	// sent, in fewer stream records than messages.
	var gs client.GatewayStatus
	if err := json.Unmarshal(ward("gateway", "status", "-o", "json"), &gs); err != nil {
		t.Fatal(err)
	}
	if gs.Connected != devices || gs.Messages.Stored == 0 || gs.Messages.Records == 0 || gs.Messages.Records > gs.Messages.Stored {
		t.Errorf("ward gateway status: %+v, want %d sessions and stored messages", gs, devices)
	}
	if out := string(ward("gateway", "status")); !strings.Contains(out, "Sessions:") || !strings.Contains(out, "Messages stored:") {
		t.Errorf("ward gateway status:\n%s", out)
	}
	// The same figures for Prometheus, with the token the demo printed.
	api, err := client.New("http://"+admin, strings.TrimSpace(string(tok)))
	if err != nil {
		t.Fatal(err)
	}
	body, err := api.Metrics(context.Background())
	if want := fmt.Sprintf("\nward_gateway_sessions %d\n", devices); err != nil || !strings.Contains(string(body), want) {
		t.Errorf("/metrics: %v, no %q in\n%s", err, want, body)
	}
	var users []client.User
	if err := json.Unmarshal(ward("user", "list", "-o", "json"), &struct{ Items *[]client.User }{&users}); err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || users[0].Username != "admin" {
		t.Errorf("users: %+v, want the demo's admin", users)
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for range ch { // drain, so the process never blocks on its output
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ward demo exited with %v after SIGINT:\n%s", err, both())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("ward demo did not stop within 30s of SIGINT:\n%s", both())
	}
	if !strings.Contains(out.String(), "Stopped after") {
		t.Errorf("no closing line:\n%s", both())
	}
}
