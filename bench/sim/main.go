// Command sim measures one `ward serve` with a simulated fleet of `ward
// sim` (issue 5, acceptance 3):
//
//	go run ./bench/sim -devices 10000
//
// It builds ward, starts `ward serve` on a fresh data directory (SQLite,
// embedded NATS, Ward's default configuration and limits) on free loopback
// ports, then runs `ward sim --devices N -o json` as a separate process:
// the simulator registers its manufacturer, preregisters the serials, and
// its devices generate their keys, enroll over EST, connect over MQTT
// (from 127.0.0.1–254) and report. The harness reads the simulator's JSON
// lines and samples both processes' /proc (VmRSS, utime+stime) until the
// whole fleet is connected, then holds the fleet for -hold to measure the
// steady state (telemetry every 10–60 s per device), stops both, and
// prints:
//
//   - time to full fleet (from the first device starting to every device
//     connected) and devices enrolled and connected per second;
//   - each process's resident memory at full fleet and after the hold, and
//     its CPU during the ramp and per second of the hold;
//   - per-device figures and a linear projection.
//
// Both processes share the machine's cores, so the time to full fleet is
// that of the pair. Every process here may hold at most 20,000 open files:
// one simulator process holds up to about 19,000 devices.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	devices   int
	model     string
	hold      time.Duration
	timeout   time.Duration
	keep      bool
	misbehave int
	jsonOut   bool
}

func main() {
	var o options
	flag.IntVar(&o.devices, "devices", 1000, "simulated devices (at most about 19,000: one simulator process)")
	flag.StringVar(&o.model, "model", "mix", "device model: infusion-pump, insulin-pump, monitor or mix")
	flag.IntVar(&o.misbehave, "misbehave", 0, "misbehaving devices")
	flag.DurationVar(&o.hold, "hold", time.Minute, "how long to hold the connected fleet for the steady-state figures")
	flag.DurationVar(&o.timeout, "timeout", 20*time.Minute, "give up if the fleet is not connected by then")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (binary, data, logs, device keys)")
	flag.BoolVar(&o.jsonOut, "json", false, "print the result as JSON too")
	flag.Parse()
	log.SetFlags(0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		log.Fatalf("bench/sim: %v", err)
	}
}

// sample is a process's memory and CPU so far.
type sample struct {
	RSSKiB int64         `json:"rss_kib"`
	CPU    time.Duration `json:"cpu_ns"`
}

// procSample reads VmRSS and utime+stime of pid from /proc.
func procSample(pid int) (sample, error) {
	var s sample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				s.RSSKiB, _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	rest := string(stat[bytes.LastIndexByte(stat, ')')+2:]) // after "(comm)"
	f := strings.Fields(rest)
	if len(f) < 13 {
		return s, errors.New("short /proc stat")
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	s.CPU = time.Duration(utime+stime) * time.Second / 100 // USER_HZ
	return s, nil
}

// proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan error
}

func startProc(name string, cmd *exec.Cmd, logPath string, stdout io.Writer) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = f
	cmd.Stdout = f
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.done <- err
	}()
	return p, nil
}

// stop signals the process and waits for it, killing it after 30 s.
func (p *proc) stop(sig os.Signal) error {
	_ = p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		return err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 30 s; killed", p.name)
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// event is a JSON line of `ward sim -o json`.
type event struct {
	Event          string  `json:"event"`
	Fleet          string  `json:"fleet"`
	PreregisteredS float64 `json:"preregistered_s"`
	ElapsedS       float64 `json:"elapsed_s"`
	Total          int     `json:"total"`
	Connected      int     `json:"connected"`
	EverConnected  int     `json:"ever_connected"`
	Enrolling      int     `json:"enrolling"`
	Waiting        int     `json:"waiting"`
	Failed         int     `json:"failed"`
	Delivered      uint64  `json:"delivered"`
}

// result is what the harness reports.
type result struct {
	Devices        int     `json:"devices"`
	Fleet          string  `json:"fleet"`
	CPUs           int     `json:"cpus"`
	Go             string  `json:"go"`
	PreregisterS   float64 `json:"preregister_s"`
	FullFleetS     float64 `json:"full_fleet_s"`
	DevicesPerS    float64 `json:"devices_per_s"`
	HoldS          float64 `json:"hold_s"`
	ServerStart    sample  `json:"server_at_start"`
	ServerFull     sample  `json:"server_at_full_fleet"`
	ServerHeld     sample  `json:"server_after_hold"`
	ServerPeakKiB  int64   `json:"server_peak_rss_kib"`
	SimStart       sample  `json:"sim_at_start"`
	SimFull        sample  `json:"sim_at_full_fleet"`
	SimHeld        sample  `json:"sim_after_hold"`
	SimPeakKiB     int64   `json:"sim_peak_rss_kib"`
	EventsAtFull   uint64  `json:"events_delivered_at_full_fleet"`
	EventsAfterAll uint64  `json:"events_delivered_after_hold"`
}

func run(ctx context.Context, o options) (err error) {
	if o.devices <= 0 || o.devices > 19000 {
		return fmt.Errorf("-devices %d: 1 to 19,000 (one simulator process; 20,000 open files each)", o.devices)
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ward-bench-sim-")
	if err != nil {
		return err
	}
	if o.keep {
		log.Printf("work directory: %s (kept)", work)
	} else {
		defer os.RemoveAll(work)
	}
	bin := filepath.Join(work, "ward")
	log.Printf("building ward…")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/ward")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}

	var admin, dev, mqtt string
	for _, a := range []*string{&admin, &dev, &mqtt} {
		if *a, err = freeAddr(); err != nil {
			return err
		}
	}
	data := filepath.Join(work, "data")
	srv, err := startProc("ward serve", exec.Command(bin, "serve", "--data", data, "--admin-addr", admin,
		"--device-addr", dev, "--mqtt-addr", mqtt, "--log-level", "warn"), filepath.Join(work, "serve.log"), nil)
	if err != nil {
		return err
	}
	defer func() {
		if serr := srv.stop(syscall.SIGTERM); serr != nil && err == nil {
			err = fmt.Errorf("ward serve: %w (log: %s)", serr, filepath.Join(work, "serve.log"))
		}
	}()
	if err := waitReady(ctx, "http://"+admin+"/readyz", srv, time.Minute); err != nil {
		return fmt.Errorf("ward serve: %w (log: %s)", err, filepath.Join(work, "serve.log"))
	}
	log.Printf("ward serve ready (pid %d); starting ward sim with %d devices", srv.cmd.Process.Pid, o.devices)

	pr, pw := io.Pipe()
	simCmd := exec.Command(bin, "sim", "--server", "http://"+admin, "--data", data, "-o", "json",
		"--device-addr", dev, "--mqtt-addr", mqtt, "--devices", strconv.Itoa(o.devices), "--model", o.model,
		"--misbehave", strconv.Itoa(o.misbehave), "--dir", filepath.Join(work, "sim"))
	sim, err := startProc("ward sim", simCmd, filepath.Join(work, "sim.log"), pw)
	if err != nil {
		return err
	}
	simStopped := false
	defer func() {
		if !simStopped {
			_ = sim.stop(os.Interrupt)
		}
		pw.Close()
	}()
	events := make(chan event, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				select {
				case events <- e:
				default: // progress lines may be skipped; the harness keeps up with the rest
					if e.Event != "progress" {
						events <- e
					}
				}
			}
		}
	}()

	res := result{Devices: o.devices, CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var (
		peakMu             sync.Mutex
		srvPeak, simPeak   int64
		sampling           = make(chan struct{})
		samplingDone       = make(chan struct{})
		srvPID, simPID     = srv.cmd.Process.Pid, sim.cmd.Process.Pid
		lastPrint          time.Time
		started, connected bool
	)
	go func() {
		defer close(samplingDone)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sampling:
				return
			case <-t.C:
			}
			a, _ := procSample(srvPID)
			b, _ := procSample(simPID)
			peakMu.Lock()
			srvPeak, simPeak = max(srvPeak, a.RSSKiB), max(simPeak, b.RSSKiB)
			peakMu.Unlock()
		}
	}()
	stopSampling := func() {
		select {
		case <-sampling:
		default:
			close(sampling)
			<-samplingDone
		}
	}
	defer stopSampling()

	deadline := time.After(o.timeout)
	for !connected {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("the fleet was not connected after %s (logs in %s; use -keep)", o.timeout, work)
		case err := <-sim.done:
			simStopped = true
			return fmt.Errorf("ward sim exited early: %v (log: %s; use -keep)", err, filepath.Join(work, "sim.log"))
		case e := <-events:
			switch e.Event {
			case "started":
				started = true
				res.Fleet, res.PreregisterS = e.Fleet, e.PreregisteredS
				res.ServerStart, _ = procSample(srvPID)
				res.SimStart, _ = procSample(simPID)
				log.Printf("preregistered %d devices in %.1f s; devices starting", o.devices, e.PreregisteredS)
			case "connected":
				if !started {
					return errors.New("ward sim reported the fleet connected before it started")
				}
				connected = true
				res.FullFleetS = e.ElapsedS
				res.ServerFull, _ = procSample(srvPID)
				res.SimFull, _ = procSample(simPID)
			case "progress":
				res.EventsAtFull = e.Delivered
				if e.Failed > 0 {
					return fmt.Errorf("%d devices failed to start (log: %s; use -keep)", e.Failed, filepath.Join(work, "sim.log"))
				}
				if time.Since(lastPrint) >= 5*time.Second {
					lastPrint = time.Now()
					log.Printf("%6.1f s: %d/%d connected, %d starting or enrolling, %d waiting",
						e.ElapsedS, e.Connected, e.Total, e.Enrolling, e.Waiting)
				}
			}
		}
	}
	res.DevicesPerS = float64(o.devices) / res.FullFleetS
	log.Printf("fleet connected: %d devices in %.1f s; holding for %s", o.devices, res.FullFleetS, o.hold)

	holdStart := time.Now()
	hold := time.After(o.hold)
	for held := false; !held; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-sim.done:
			simStopped = true
			return fmt.Errorf("ward sim exited during the hold: %v (log: %s)", err, filepath.Join(work, "sim.log"))
		case e := <-events:
			if e.Event == "progress" {
				res.EventsAfterAll = e.Delivered
				if e.Connected < e.Total && time.Since(lastPrint) >= 5*time.Second {
					lastPrint = time.Now()
					log.Printf("during the hold: %d/%d connected", e.Connected, e.Total)
				}
			}
		case <-hold:
			held = true
		}
	}
	res.HoldS = time.Since(holdStart).Seconds()
	res.ServerHeld, _ = procSample(srvPID)
	res.SimHeld, _ = procSample(simPID)
	stopSampling()
	res.ServerPeakKiB, res.SimPeakKiB = srvPeak, simPeak

	simStopped = true
	if err := sim.stop(os.Interrupt); err != nil {
		log.Printf("ward sim: %v", err)
	}
	report(os.Stdout, res)
	if o.jsonOut {
		b, _ := json.MarshalIndent(res, "", "  ")
		fmt.Printf("%s\n", b)
	}
	return nil
}

// report prints the figures.
func report(w io.Writer, r result) {
	mib := func(kib int64) string { return fmt.Sprintf("%.0f MiB", float64(kib)/1024) }
	perDev := func(kib int64) string { return fmt.Sprintf("%.1f KiB", float64(kib)/float64(r.Devices)) }
	ramp := func(a, b sample) time.Duration { return b.CPU - a.CPU }
	perSec := func(a, b sample) float64 { return (b.CPU - a.CPU).Seconds() / r.HoldS }
	srvRamp, simRamp := ramp(r.ServerStart, r.ServerFull), ramp(r.SimStart, r.SimFull)
	srvHold, simHold := perSec(r.ServerFull, r.ServerHeld), perSec(r.SimFull, r.SimHeld)
	srvGrow, simGrow := r.ServerHeld.RSSKiB-r.ServerStart.RSSKiB, r.SimHeld.RSSKiB-r.SimStart.RSSKiB

	fmt.Fprintf(w, "\nward sim against one ward serve: %s\n", r.Fleet)
	fmt.Fprintf(w, "%d CPUs, %s, SQLite and embedded NATS, Ward's default configuration\n\n", r.CPUs, r.Go)
	fmt.Fprintf(w, "preregistration (admin API)    %6.1f s   %6.0f devices/s\n", r.PreregisterS, float64(r.Devices)/max(r.PreregisterS, 0.001))
	fmt.Fprintf(w, "time to full fleet             %6.1f s   %6.0f devices/s enrolled and connected\n\n", r.FullFleetS, r.DevicesPerS)
	fmt.Fprintf(w, "%-12s %14s %14s %10s %16s %18s\n", "", "RSS at start", "RSS full fleet", "peak RSS", "CPU during ramp", "CPU held (per s)")
	fmt.Fprintf(w, "%-12s %14s %14s %10s %14.1f s %14.3f s/s\n", "ward serve", mib(r.ServerStart.RSSKiB), mib(r.ServerFull.RSSKiB), mib(r.ServerPeakKiB), srvRamp.Seconds(), srvHold)
	fmt.Fprintf(w, "%-12s %14s %14s %10s %14.1f s %14.3f s/s\n\n", "ward sim", mib(r.SimStart.RSSKiB), mib(r.SimFull.RSSKiB), mib(r.SimPeakKiB), simRamp.Seconds(), simHold)
	fmt.Fprintf(w, "per device    ward serve: %s RSS, %.2f ms CPU to enroll and connect, %.1f µs CPU per second held\n",
		perDev(srvGrow), srvRamp.Seconds()*1000/float64(r.Devices), srvHold*1e6/float64(r.Devices))
	fmt.Fprintf(w, "              ward sim:   %s RSS, %.2f ms CPU to start (key, birth certificate, EST, MQTT), %.1f µs CPU per second held\n",
		perDev(simGrow), simRamp.Seconds()*1000/float64(r.Devices), simHold*1e6/float64(r.Devices))
	fmt.Fprintf(w, "events delivered: %d at full fleet, %d after the hold (%.1f s)\n\n", r.EventsAtFull, r.EventsAfterAll, r.HoldS)

	// A linear projection from the per-device figures: memory and CPU
	// grow with the fleet; the ramp is CPU-bound on this machine.
	for _, n := range []int{19000, 100000} {
		mem := float64(r.ServerStart.RSSKiB+srvGrow*int64(n)/int64(r.Devices)) / 1024
		held := srvHold * float64(n) / float64(r.Devices)
		rampS := srvRamp.Seconds() * float64(n) / float64(r.Devices) / float64(r.CPUs)
		fmt.Fprintf(w, "projection, %6d devices on one node: ≈ %.0f MiB RSS, ≈ %.2f cores held, ≥ %.0f s to enroll and connect them with the server alone on %d cores\n",
			n, mem, held, rampS, r.CPUs)
	}
	fmt.Fprintln(w, "(linear in the per-device figures; one node holds at most max_connections and its open-file limit)")
}

func waitReady(ctx context.Context, url string, p *proc, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s", d)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside Ward's module")
	}
	return filepath.Dir(mod), nil
}
