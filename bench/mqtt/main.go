// Command mqtt benchmarks Ward's device gateway against Mosquitto on the
// same machine, in one run, with the same load generator
// (bench/cmd/mqttload) and the same Ward-issued device certificates:
//
//	go run ./bench/mqtt                    # every figure, both brokers (≈ 5 min)
//	go run ./bench/mqtt -figure connect    # mTLS connections per second
//	go run ./bench/mqtt -figure hold       # 19,000 connections held: memory and CPU per connection
//	go run ./bench/mqtt -figure publish    # QoS 1 throughput and publish→PUBACK latency
//	go run ./bench/mqtt -figure pairs      # the same, both brokers up, in alternating windows (pairs.go)
//
// It builds ward and mqttload, starts `ward serve` (embedded NATS and
// SQLite) with its data directory in -cache, enrolls the devices it needs
// over EST once (the devices file is keyed by Ward's root CA and reused by
// later runs and by Mosquitto), measures Ward, stops it, starts Mosquitto
// (TLS 1.3, require_certificate, use_identity_as_username, Ward's CAs),
// measures it, and prints the figures and the Ward/Mosquitto ratios.
// Broker memory is VmRSS and CPU is utime+stime of the broker's process,
// read from /proc. The load generators are separate processes (each
// process here may hold at most 20,000 open files) on source addresses
// 127.0.0.2 and up; every one of them stops on its own.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/wardhq/ward/bench/mqtt/load"
)

type options struct {
	brokers, figures string
	cache            string
	mosquitto        string

	devices, procs, sourcesPerProc, holdWorkers int
	settle, idle, steady                        time.Duration

	connectDuration time.Duration
	connectWorkers  int

	rounds int

	publishers      int
	publishDuration time.Duration
	warmup          time.Duration
	payload         int
	oneWrite        bool

	pairs                  int
	pairWindow, pairWarmup time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.brokers, "broker", "ward,mosquitto", "brokers to measure: ward, mosquitto or both (comma list)")
	flag.StringVar(&o.figures, "figure", "hold,connect,publish", "figures to measure: hold, connect, publish, pairs (comma list)")
	flag.StringVar(&o.cache, "cache", filepath.Join(os.TempDir(), "ward-bench-mqtt"), "directory for binaries, Ward's data and the enrolled devices")
	flag.StringVar(&o.mosquitto, "mosquitto", "/usr/sbin/mosquitto", "mosquitto binary")
	flag.IntVar(&o.devices, "devices", 19000, "hold: connections held on the broker")
	flag.IntVar(&o.procs, "procs", 4, "hold: load generator processes (each holds devices/procs)")
	flag.IntVar(&o.sourcesPerProc, "sources", 4, "hold: source addresses per load generator process")
	flag.IntVar(&o.holdWorkers, "hold-workers", 64, "hold: concurrent connection attempts, over all processes")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "hold: wait after the last connection before reading memory")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "hold: window over which idle CPU is measured")
	flag.DurationVar(&o.steady, "steady", 150*time.Second, "hold: keep holding this much longer and read memory again (0: skip); Go's runtime collects at least every 2 minutes")
	flag.DurationVar(&o.connectDuration, "connect-duration", 20*time.Second, "connect: how long to open connections")
	flag.IntVar(&o.connectWorkers, "connect-workers", 64, "connect: concurrent clients")
	flag.IntVar(&o.publishers, "publishers", 100, "publish: concurrent publishers, one connection each")
	flag.DurationVar(&o.publishDuration, "publish-duration", 15*time.Second, "publish: measured window")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "publish: warm-up before the window")
	flag.IntVar(&o.payload, "payload", 128, "publish: bytes per message")
	flag.BoolVar(&o.oneWrite, "one-write", false, "publish: the load generator sends each packet in one write, as Ward's agent does (paho.golang's default is a write per part)")
	flag.IntVar(&o.pairs, "pairs", 10, "pairs: pairs of publish windows, one on each broker")
	flag.DurationVar(&o.pairWindow, "pair-window", 6*time.Second, "pairs: measured window")
	flag.DurationVar(&o.pairWarmup, "pair-warmup", 2*time.Second, "pairs: warm-up before each window")
	flag.IntVar(&o.rounds, "rounds", 1, "measure each broker this many times, alternating which goes first, and report each round and the medians")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench/mqtt: ")
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	rs, ws, err := run(ctx, o)
	if err != nil {
		log.Fatal(err)
	}
	if len(ws) > 0 {
		reportPairs(os.Stdout, o, ws)
	}
	if len(rs) == 0 {
		return
	}
	if o.rounds <= 1 {
		report(os.Stdout, o, rs)
		return
	}
	rounds(os.Stdout, o, rs)
	fmt.Printf("\nMedians of %d rounds:\n", o.rounds)
	report(os.Stdout, o, []figures{median(rs, "ward"), median(rs, "mosquitto")})
}

// rounds prints the main figures of each round and their ratios.
func rounds(w io.Writer, o options, rs []figures) {
	fmt.Fprintf(w, "\n%d cores, %s, %s\n\n", runtime.NumCPU(), runtime.Version(), time.Now().Format(time.DateOnly))
	type col struct {
		name string
		v    func(*figures) float64
		show string
	}
	var cols []col
	if has(o.figures, "connect") {
		cols = append(cols, col{"mTLS connects/s", func(f *figures) float64 { return f.ConnectRate }, "%.0f"})
	}
	if has(o.figures, "hold") {
		cols = append(cols, col{"KiB per held connection", func(f *figures) float64 { return f.KiBPerConn }, "%.1f"})
	}
	if has(o.figures, "publish") {
		cols = append(cols, col{"QoS 1 msg/s", func(f *figures) float64 { return f.PublishRate }, "%.0f"},
			col{"broker µs per message", func(f *figures) float64 { return f.PublishCPUUs }, "%.1f"})
	}
	fmt.Fprint(w, "| round | first |")
	for _, c := range cols {
		fmt.Fprintf(w, " %s: Ward | Mosquitto | ratio |", c.name)
	}
	fmt.Fprint(w, "\n|---|---|")
	for range cols {
		fmt.Fprint(w, "---|---|---|")
	}
	fmt.Fprintln(w)
	for r := 1; r <= o.rounds; r++ {
		var ward, mosq *figures
		first := ""
		for i := range rs {
			if rs[i].Round != r {
				continue
			}
			if first == "" {
				first = rs[i].Broker
			}
			switch rs[i].Broker {
			case "ward":
				ward = &rs[i]
			case "mosquitto":
				mosq = &rs[i]
			}
		}
		fmt.Fprintf(w, "| %d | %s |", r, first)
		for _, c := range cols {
			cell := func(f *figures) string {
				if f == nil {
					return "—"
				}
				return fmt.Sprintf(c.show, c.v(f))
			}
			ratio := "—"
			if ward != nil && mosq != nil && c.v(mosq) != 0 {
				ratio = fmt.Sprintf("%.2f×", c.v(ward)/c.v(mosq))
			}
			fmt.Fprintf(w, " %s | %s | %s |", cell(ward), cell(mosq), ratio)
		}
		fmt.Fprintln(w)
	}
}

// median returns the broker's figures with each number the median of its
// rounds (first errors are the first round's).
func median(rs []figures, broker string) figures {
	var mine []figures
	for _, f := range rs {
		if f.Broker == broker {
			mine = append(mine, f)
		}
	}
	if len(mine) == 0 {
		return figures{}
	}
	out := mine[0]
	ov := reflect.ValueOf(&out).Elem()
	for i := range ov.NumField() {
		fv := ov.Field(i)
		switch fv.Kind() {
		case reflect.Float64, reflect.Int64, reflect.Int:
			vals := make([]float64, len(mine))
			for j := range mine {
				x := reflect.ValueOf(mine[j]).Field(i)
				if x.Kind() == reflect.Float64 {
					vals[j] = x.Float()
				} else {
					vals[j] = float64(x.Int())
				}
			}
			slices.Sort(vals)
			m := vals[len(vals)/2]
			if len(vals)%2 == 0 {
				m = (vals[len(vals)/2-1] + vals[len(vals)/2]) / 2
			}
			if fv.Kind() == reflect.Float64 {
				fv.SetFloat(m)
			} else {
				fv.SetInt(int64(m))
			}
		}
	}
	return out
}

func has(list, item string) bool {
	for _, f := range strings.Split(list, ",") {
		if strings.TrimSpace(f) == item {
			return true
		}
	}
	return false
}

func run(ctx context.Context, o options) ([]figures, []window, error) {
	if err := os.MkdirAll(filepath.Join(o.cache, "bin"), 0o700); err != nil {
		return nil, nil, err
	}
	wardBin, loadBin := filepath.Join(o.cache, "bin", "ward"), filepath.Join(o.cache, "bin", "mqttload")
	log.Printf("building ward and mqttload into %s", filepath.Join(o.cache, "bin"))
	for bin, pkg := range map[string]string{wardBin: "github.com/wardhq/ward/cmd/ward", loadBin: "github.com/wardhq/ward/bench/cmd/mqttload"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, nil, fmt.Errorf("go build %s: %w", pkg, err)
		}
	}

	log.Printf("starting ward serve (data in %s)", filepath.Join(o.cache, "ward-data"))
	node, err := startWard(ctx, wardBin, o.cache)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = node.stop() }()
	need := max(o.devices, o.publishers)
	devices, err := ensureDevices(ctx, o.cache, node.ca, node.api, node.deviceAddr, need)
	if err != nil {
		return nil, nil, err
	}
	h := &harness{o: o, loadBin: loadBin, devices: devices, logDir: o.cache}
	if err := node.stop(); err != nil {
		log.Print(err)
	}
	// The machine's speed drifts (it is shared): with several rounds, the
	// brokers take turns going first, so a drift does not favour either.
	var results []figures
	roundFigures := has(o.figures, "hold") || has(o.figures, "connect") || has(o.figures, "publish")
	for round := 1; roundFigures && round <= max(o.rounds, 1); round++ {
		order := []string{"ward", "mosquitto"}
		if round%2 == 0 {
			order = []string{"mosquitto", "ward"}
		}
		for _, b := range order {
			if !has(o.brokers, b) {
				continue
			}
			if o.rounds > 1 {
				log.Printf("round %d of %d: %s", round, o.rounds, b)
			}
			f, err := h.measureOne(ctx, b, wardBin, node.ca)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", b, err)
			}
			f.Round = round
			results = append(results, f)
		}
	}
	var windows []window
	if has(o.figures, "pairs") {
		if !has(o.brokers, "ward") || !has(o.brokers, "mosquitto") {
			return nil, nil, errors.New("-figure pairs needs both brokers")
		}
		if windows, err = h.pairs(ctx, wardBin, node.ca); err != nil {
			return nil, nil, fmt.Errorf("pairs: %w", err)
		}
	}
	b, _ := json.MarshalIndent(struct {
		Rounds []figures `json:"rounds,omitempty"`
		Pairs  []window  `json:"pairs,omitempty"`
	}{results, windows}, "", "  ")
	out := filepath.Join(o.cache, "results-"+time.Now().Format("20060102-150405")+".json")
	if err := os.WriteFile(out, b, 0o600); err != nil {
		return nil, nil, err
	}
	log.Printf("results in %s", out)
	return results, windows, nil
}

// measureOne starts broker b, measures it and stops it.
func (h *harness) measureOne(ctx context.Context, b, wardBin string, ca wardCA) (figures, error) {
	if b == "ward" {
		node, err := startWard(ctx, wardBin, h.o.cache)
		if err != nil {
			return figures{}, err
		}
		if node.mqttErr != nil {
			_ = node.stop()
			return figures{}, fmt.Errorf("not measured: %w", node.mqttErr)
		}
		f, err := h.measure(ctx, &node.broker)
		if serr := node.stop(); serr != nil {
			log.Print(serr)
		}
		return f, err
	}
	log.Printf("starting %s", h.o.mosquitto)
	m, err := startMosquitto(ctx, h.o.mosquitto, filepath.Join(h.o.cache, "mosquitto"), ca)
	if err != nil {
		return figures{}, err
	}
	f, err := h.measure(ctx, m)
	if serr := m.stop(); serr != nil {
		log.Print(serr)
	}
	return f, err
}

type harness struct {
	o       options
	loadBin string
	devices string
	logDir  string
}

// figures is what one broker measured.
type figures struct {
	Broker string `json:"broker"`
	Round  int    `json:"round"`

	// hold
	Held           int64   `json:"held,omitempty"`
	HoldErrors     int64   `json:"hold_errors,omitempty"`
	HoldFirstError string  `json:"hold_first_error,omitempty"`
	Drops          int64   `json:"drops,omitempty"`
	BaselineKiB    int64   `json:"baseline_kib,omitempty"`
	HeldKiB        int64   `json:"held_kib,omitempty"`
	KiBPerConn     float64 `json:"kib_per_conn,omitempty"`
	IdleCPU        float64 `json:"idle_cpu_cores,omitempty"` // CPU cores used while holding, idle clients
	SteadyKiB      int64   `json:"steady_kib,omitempty"`     // RSS after -steady more of holding
	SteadyPerConn  float64 `json:"steady_kib_per_conn,omitempty"`
	HoldRate       float64 `json:"hold_connect_rate,omitempty"`

	// connect
	Connects        int64   `json:"connects,omitempty"`
	ConnectErrors   int64   `json:"connect_errors,omitempty"`
	ConnectFirstErr string  `json:"connect_first_error,omitempty"`
	ConnectRate     float64 `json:"connect_rate,omitempty"`
	ConnectP50Ms    float64 `json:"connect_p50_ms,omitempty"`
	ConnectP99Ms    float64 `json:"connect_p99_ms,omitempty"`
	ConnectCPUMs    float64 `json:"connect_cpu_ms,omitempty"`     // broker CPU per connection, the work after the last one included
	ConnectAfterS   float64 `json:"connect_after_s,omitempty"`    // seconds the broker took to fall quiet after the last connection
	ConnectCores    float64 `json:"connect_cores,omitempty"`      // broker CPU cores busy while connecting
	ConnectLoadCPU  float64 `json:"connect_load_cores,omitempty"` // load generator CPU cores busy

	// publish
	Publishers      int     `json:"publishers,omitempty"`
	Messages        int64   `json:"messages,omitempty"`
	PublishErrors   int64   `json:"publish_errors,omitempty"`
	PublishFirstErr string  `json:"publish_first_error,omitempty"`
	PublishRate     float64 `json:"publish_rate,omitempty"`
	PublishP50Ms    float64 `json:"publish_p50_ms,omitempty"`
	PublishP99Ms    float64 `json:"publish_p99_ms,omitempty"`
	PublishCPUUs    float64 `json:"publish_cpu_us,omitempty"` // broker CPU per message
	PublishCores    float64 `json:"publish_cores,omitempty"`
	PublishLoadCPU  float64 `json:"publish_load_cores,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// loadProc is one running mqttload.
type loadProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan load.Result
	exited chan error
}

func (h *harness) startLoad(ctx context.Context, b *broker, name string, args ...string) (*loadProc, error) {
	args = append([]string{"-addr", b.addr, "-server-ca", b.serverCA, "-devices", h.devices}, args...)
	cmd := exec.CommandContext(ctx, h.loadBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(h.logDir, fmt.Sprintf("mqttload-%s-%s.log", b.name, name)))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	p := &loadProc{cmd: cmd, lines: make(chan load.Result, 4), exited: make(chan error, 1)}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r load.Result
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				p.lines <- r
			}
		}
		err := cmd.Wait()
		logf.Close()
		close(p.lines)
		if err != nil {
			err = fmt.Errorf("%s: %w (log: %s)", name, err, logf.Name())
		}
		p.exited <- err
	}()
	return p, nil
}

// result waits for the process's next result line, or its end.
func (p *loadProc) result(timeout time.Duration) (load.Result, error) {
	select {
	case r, ok := <-p.lines:
		if ok {
			return r, nil
		}
		return load.Result{}, <-p.exited
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		return load.Result{}, errors.New("mqttload timed out")
	}
}

func (h *harness) measure(ctx context.Context, b *broker) (figures, error) {
	f := figures{Broker: b.name}
	if has(h.o.figures, "hold") {
		if err := h.hold(ctx, b, &f); err != nil {
			return f, err
		}
	}
	if has(h.o.figures, "connect") {
		if err := h.connect(ctx, b, &f); err != nil {
			return f, err
		}
	}
	if has(h.o.figures, "publish") {
		if err := h.publish(ctx, b, &f); err != nil {
			return f, err
		}
	}
	return f, nil
}

func (h *harness) hold(ctx context.Context, b *broker, f *figures) error {
	o := h.o
	time.Sleep(2 * time.Second)
	base, err := readProc(b.pid)
	if err != nil {
		return err
	}
	f.BaselineKiB = base.rssKiB
	log.Printf("%s: holding %d connections from %d processes (RSS before: %d KiB)", b.name, o.devices, o.procs, base.rssKiB)
	per := o.devices / o.procs
	var procs []*loadProc
	defer func() {
		for _, p := range procs {
			_ = p.cmd.Process.Kill()
		}
	}()
	start := time.Now()
	for k := range o.procs {
		n := per
		if k == o.procs-1 {
			n = o.devices - per*(o.procs-1)
		}
		lo, hi := 2+k*o.sourcesPerProc, 1+(k+1)*o.sourcesPerProc
		if hi > 254 {
			return errors.New("too many source addresses")
		}
		p, err := h.startLoad(ctx, b, fmt.Sprintf("hold%d", k), "-mode", "hold", "-offset", fmt.Sprint(k*per), "-count", fmt.Sprint(n),
			"-sources", fmt.Sprintf("127.0.0.%d-127.0.0.%d", lo, hi), "-workers", fmt.Sprint(max(1, o.holdWorkers/o.procs)),
			"-hold", "5m", "-release-on-eof")
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	for _, p := range procs {
		r, err := p.result(8 * time.Minute)
		if err != nil {
			return err
		}
		f.Held += r.OK
		f.HoldErrors += r.Errors
		if f.HoldFirstError == "" {
			f.HoldFirstError = r.FirstError
		}
	}
	f.HoldRate = float64(f.Held) / time.Since(start).Seconds()
	time.Sleep(o.settle)
	s1, err := readProc(b.pid)
	if err != nil {
		return err
	}
	time.Sleep(o.idle)
	s2, err := readProc(b.pid)
	if err != nil {
		return err
	}
	f.HeldKiB = s2.rssKiB
	if f.Held > 0 {
		f.KiBPerConn = float64(s2.rssKiB-base.rssKiB) / float64(f.Held)
	}
	f.IdleCPU = float64(s2.cpu-s1.cpu) / float64(s2.at.Sub(s1.at))
	log.Printf("%s: held %d (%d errors), RSS %d KiB → %.1f KiB per connection; idle CPU %.3f cores",
		b.name, f.Held, f.HoldErrors, s2.rssKiB, f.KiBPerConn, f.IdleCPU)
	if o.steady > 0 {
		time.Sleep(o.steady)
		s3, err := readProc(b.pid)
		if err != nil {
			return err
		}
		f.SteadyKiB = s3.rssKiB
		if f.Held > 0 {
			f.SteadyPerConn = float64(s3.rssKiB-base.rssKiB) / float64(f.Held)
		}
		log.Printf("%s: %s later, RSS %d KiB → %.1f KiB per connection", b.name, o.steady, s3.rssKiB, f.SteadyPerConn)
	}
	for _, p := range procs {
		p.stdin.Close()
	}
	for _, p := range procs {
		r, err := p.result(2 * time.Minute)
		if err != nil {
			return err
		}
		f.Drops += r.Drops
	}
	procs = nil
	// Let the broker finish closing (Ward writes the connections' history).
	after, busy, err := quiesce(b.pid)
	if err != nil {
		return err
	}
	log.Printf("%s: quiet %.1f s after closing (%.2f s of CPU since)", b.name, after.Seconds(), busy.Seconds())
	return nil
}

func (h *harness) connect(ctx context.Context, b *broker, f *figures) error {
	o := h.o
	log.Printf("%s: mTLS connect rate, %d clients for %s", b.name, o.connectWorkers, o.connectDuration)
	s1, err := readProc(b.pid)
	if err != nil {
		return err
	}
	p, err := h.startLoad(ctx, b, "connect", "-mode", "connect", "-duration", o.connectDuration.String(),
		"-connections", fmt.Sprint(int(o.connectDuration.Seconds())*10000), "-workers", fmt.Sprint(o.connectWorkers),
		"-sources", "127.0.0.2-127.0.0.33")
	if err != nil {
		return err
	}
	r, err := p.result(o.connectDuration + 2*time.Minute)
	if err != nil {
		return err
	}
	s2, err := readProc(b.pid)
	if err != nil {
		return err
	}
	<-p.exited
	f.Connects, f.ConnectErrors, f.ConnectFirstErr, f.ConnectRate = r.OK, r.Errors, r.FirstError, r.Rate
	f.ConnectP50Ms, f.ConnectP99Ms = ms(r.P50()), ms(r.P99())
	if r.OK > 0 {
		f.ConnectCPUMs = ms(s2.cpu-s1.cpu) / float64(r.OK)
	}
	f.ConnectCores = float64(s2.cpu-s1.cpu) / float64(s2.at.Sub(s1.at))
	f.ConnectLoadCPU = r.CPUSeconds / r.Seconds
	log.Printf("%s: %.0f connections/s (%d, %d errors), broker %.2f ms CPU each", b.name, f.ConnectRate, r.OK, r.Errors, f.ConnectCPUMs)
	// The broker may still be at work on the connections (Ward writes their
	// history): the next figure starts once it is done, and the work is
	// counted in the connect figure's CPU.
	after, busy, err := quiesce(b.pid)
	if err != nil {
		return err
	}
	f.ConnectAfterS = after.Seconds()
	if r.OK > 0 {
		f.ConnectCPUMs += ms(busy) / float64(r.OK)
	}
	log.Printf("%s: quiet %.1f s after the last connection (%.2f s of CPU since)", b.name, after.Seconds(), busy.Seconds())
	return nil
}

// quiesce waits until the broker at pid uses less than 5 % of a core over
// half a second, at least 2 seconds and at most a minute, and returns how
// long that took and the CPU the broker used meanwhile.
func quiesce(pid int) (waited, busy time.Duration, err error) {
	const step, idle = 500 * time.Millisecond, 0.05
	start, err := readProc(pid)
	if err != nil {
		return 0, 0, err
	}
	prev := start
	for {
		time.Sleep(step)
		s, err := readProc(pid)
		if err != nil {
			return 0, 0, err
		}
		waited, busy = s.at.Sub(start.at), s.cpu-start.cpu
		quiet := float64(s.cpu-prev.cpu) < idle*float64(s.at.Sub(prev.at))
		if (quiet && waited >= 2*time.Second) || waited >= time.Minute {
			return waited, busy, nil
		}
		prev = s
	}
}

func (h *harness) publish(ctx context.Context, b *broker, f *figures) error {
	o := h.o
	log.Printf("%s: QoS 1 publish, %d publishers, %s + %s warm-up", b.name, o.publishers, o.publishDuration, o.warmup)
	args := []string{"-mode", "publish", "-count", fmt.Sprint(o.publishers), "-publishers", fmt.Sprint(o.publishers),
		"-warmup", o.warmup.String(), "-duration", o.publishDuration.String(), "-payload", fmt.Sprint(o.payload)}
	if o.oneWrite {
		args = append(args, "-one-write")
	}
	p, err := h.startLoad(ctx, b, "publish", args...)
	if err != nil {
		return err
	}
	// Broker CPU over the measured window only.
	time.Sleep(o.warmup + time.Second) // + connecting the publishers
	s1, err := readProc(b.pid)
	if err != nil {
		return err
	}
	r, err := p.result(o.warmup + o.publishDuration + 2*time.Minute)
	if err != nil {
		return err
	}
	s2, err := readProc(b.pid)
	if err != nil {
		return err
	}
	<-p.exited
	f.Publishers, f.Messages, f.PublishErrors, f.PublishFirstErr, f.PublishRate = o.publishers, r.OK, r.Errors, r.FirstError, r.Rate
	f.PublishP50Ms, f.PublishP99Ms = ms(r.P50()), ms(r.P99())
	cores := float64(s2.cpu-s1.cpu) / float64(s2.at.Sub(s1.at))
	f.PublishCores = cores
	f.PublishLoadCPU = r.CPUSeconds / (o.warmup + o.publishDuration).Seconds()
	if f.PublishRate > 0 {
		f.PublishCPUUs = cores * 1e6 / f.PublishRate
	}
	log.Printf("%s: %.0f msg/s (%d errors), p50 %.2f ms, p99 %.2f ms", b.name, f.PublishRate, r.Errors, f.PublishP50Ms, f.PublishP99Ms)
	return nil
}

// report prints the figures as Markdown, with the Ward/Mosquitto ratios
// and a projection to 100,000 connections.
func report(w io.Writer, o options, rs []figures) {
	fmt.Fprintf(w, "\n%d cores, %s, %s\n\n", runtime.NumCPU(), runtime.Version(), time.Now().Format(time.DateOnly))
	var ward, mosq *figures
	for i := range rs {
		switch {
		case rs[i].Broker == "ward":
			ward = &rs[i]
		case rs[i].Broker == "mosquitto":
			mosq = &rs[i]
		}
	}
	cols := []*figures{ward, mosq}
	ratio := func(name string, v func(*figures) float64, x func(*figures) string) {
		fmt.Fprintf(w, "| %s |", name)
		for _, f := range cols {
			if f == nil {
				fmt.Fprint(w, " — |")
			} else {
				fmt.Fprintf(w, " %s |", x(f))
			}
		}
		if ward != nil && mosq != nil && v(mosq) != 0 {
			fmt.Fprintf(w, " %.2f× |", v(ward)/v(mosq))
		} else {
			fmt.Fprint(w, " — |")
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "| figure | Ward | Mosquitto | Ward / Mosquitto |")
	fmt.Fprintln(w, "|---|---|---|---|")
	if has(o.figures, "connect") {
		ratio("mTLS connects/s", func(f *figures) float64 { return f.ConnectRate }, func(f *figures) string {
			return fmt.Sprintf("%.0f (%d errors)", f.ConnectRate, f.ConnectErrors)
		})
		ratio("connect p50 / p99 (ms; ratio of p99)", func(f *figures) float64 { return f.ConnectP99Ms }, func(f *figures) string {
			return fmt.Sprintf("%.1f / %.1f", f.ConnectP50Ms, f.ConnectP99Ms)
		})
		ratio("broker CPU per connect (ms)", func(f *figures) float64 { return f.ConnectCPUMs }, func(f *figures) string {
			return fmt.Sprintf("%.2f (%.2f cores busy)", f.ConnectCPUMs, f.ConnectCores)
		})
		ratio("load generator CPU while connecting (cores)", func(f *figures) float64 { return f.ConnectLoadCPU }, func(f *figures) string {
			return fmt.Sprintf("%.2f", f.ConnectLoadCPU)
		})
	}
	if has(o.figures, "hold") {
		ratio("connections held", func(f *figures) float64 { return float64(f.Held) }, func(f *figures) string {
			return fmt.Sprintf("%d (%d errors, %d dropped)", f.Held, f.HoldErrors, f.Drops)
		})
		ratio("broker RSS: 0 → held (MiB)", func(f *figures) float64 { return float64(f.HeldKiB) }, func(f *figures) string {
			return fmt.Sprintf("%.1f → %.1f", float64(f.BaselineKiB)/1024, float64(f.HeldKiB)/1024)
		})
		ratio("KiB per held connection", func(f *figures) float64 { return f.KiBPerConn }, func(f *figures) string {
			return fmt.Sprintf("%.1f", f.KiBPerConn)
		})
		if o.steady > 0 {
			ratio(fmt.Sprintf("KiB per held connection, %s later", o.steady), func(f *figures) float64 { return f.SteadyPerConn }, func(f *figures) string {
				return fmt.Sprintf("%.1f", f.SteadyPerConn)
			})
		}
		ratio("idle CPU while holding (cores)", func(f *figures) float64 { return f.IdleCPU }, func(f *figures) string {
			return fmt.Sprintf("%.3f", f.IdleCPU)
		})
		ratio("projected RSS at 100,000 (GiB)", func(f *figures) float64 { return proj(f) }, func(f *figures) string {
			return fmt.Sprintf("%.2f", proj(f))
		})
		ratio("projected idle CPU at 100,000 (cores)", func(f *figures) float64 { return f.IdleCPU * 100000 / float64(max(f.Held, 1)) }, func(f *figures) string {
			return fmt.Sprintf("%.2f", f.IdleCPU*100000/float64(max(f.Held, 1)))
		})
		if has(o.figures, "connect") {
			ratio("projected CPU to connect 100,000 (core·s)", func(f *figures) float64 { return f.ConnectCPUMs * 100 }, func(f *figures) string {
				return fmt.Sprintf("%.0f", f.ConnectCPUMs*100)
			})
		}
	}
	if has(o.figures, "publish") {
		ratio(fmt.Sprintf("QoS 1 msg/s (%d publishers, %d B%s)", o.publishers, o.payload, oneWriteNote(o.oneWrite)), func(f *figures) float64 { return f.PublishRate }, func(f *figures) string {
			return fmt.Sprintf("%.0f (%d errors)", f.PublishRate, f.PublishErrors)
		})
		ratio("publish→PUBACK p50 / p99 (ms; ratio of p99)", func(f *figures) float64 { return f.PublishP99Ms }, func(f *figures) string {
			return fmt.Sprintf("%.2f / %.2f", f.PublishP50Ms, f.PublishP99Ms)
		})
		ratio("broker CPU per message (µs)", func(f *figures) float64 { return f.PublishCPUUs }, func(f *figures) string {
			return fmt.Sprintf("%.1f (%.2f cores busy)", f.PublishCPUUs, f.PublishCores)
		})
		ratio("load generator CPU while publishing (cores)", func(f *figures) float64 { return f.PublishLoadCPU }, func(f *figures) string {
			return fmt.Sprintf("%.2f", f.PublishLoadCPU)
		})
	}
	for _, f := range rs {
		for _, e := range []string{f.HoldFirstError, f.ConnectFirstErr, f.PublishFirstErr} {
			if e != "" {
				fmt.Fprintf(w, "\n%s, first error: %s", f.Broker, e)
			}
		}
	}
	fmt.Fprintln(w)
}

// proj is the broker's RSS at 100,000 connections in GiB: its baseline
// plus 100,000 times the measured per-connection memory.
func proj(f *figures) float64 {
	return (float64(f.BaselineKiB) + 100000*f.KiBPerConn) / (1 << 20)
}

func oneWriteNote(on bool) string {
	if on {
		return ", one write a packet"
	}
	return ""
}
