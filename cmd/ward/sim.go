package main

// ward sim: a simulated fleet against a running Ward. What it shares with
// ward demo (the manufacturer, the plan, preregistration, progress) is here
// too.

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/sim"
)

// simOptions are the flags ward sim and ward demo share.
type simOptions struct {
	devices, misbehave, maxStarting int
	model, site, dir, manufacturer  string
	units                           []string
	seed                            uint64
	preregister                     bool
	deviceAddr, mqttAddr            string
	agentLog                        bool
}

func (o *simOptions) flags(cmd *cobra.Command, devices int, units []string, dirHelp string) {
	f := cmd.Flags()
	f.IntVar(&o.devices, "devices", devices, "number of simulated devices")
	f.StringVar(&o.model, "model", sim.ModelMix, "device model: infusion-pump, insulin-pump, monitor or mix (50 % infusion pumps, 30 % monitors, 20 % insulin pumps)")
	f.IntVar(&o.misbehave, "misbehave", 0, "how many devices act like compromised ones (flood, probe other devices' topics, hop source addresses), in turn")
	f.StringSliceVar(&o.units, "units", nil, "hospital units to spread the devices over, comma-separated (default \""+strings.Join(units, ",")+"\")")
	f.StringVar(&o.site, "site", "", "site (hospital) of every device")
	f.StringVar(&o.manufacturer, "manufacturer", "Simulated Medical", "name of the simulated manufacturer")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the fleet plan and of every device's simulation")
	f.IntVar(&o.maxStarting, "max-starting", sim.DefaultMaxStarting, "devices starting (enrolling, connecting) at once")
	f.StringVar(&o.dir, "dir", "", dirHelp)
	f.BoolVar(&o.agentLog, "agent-log", false, "print the agents' own warnings on standard error (noisy with many devices)")
}

func newSimCmd(g *globals) *cobra.Command {
	o := &simOptions{}
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run a simulated fleet of medical devices against a running Ward (test tool)",
		Long: `Run N simulated devices (infusion pumps, insulin pumps, patient monitors) in
this process against a running Ward: each device generates its key, gets a
birth certificate from a simulated manufacturer, enrolls over EST, connects
over MQTT and reports state, telemetry and events, as the agent SDK does.

The simulated manufacturer's CA is created in --dir (mfg/ca.crt, ca.key,
as ward mfg init-ca writes them) or reused from there, and registered with
Ward through the admin API (so an admin token is needed: --data or
--token-file, as for the other commands). Ward's root CA, which the devices
trust, is read from the admin API. With --preregister (the default) every
serial is preregistered, so devices are admitted as they enroll; with
--preregister=false they wait, pending, for ward device approve.

Device keys and certificates are kept in --dir/devices/<serial>/: a second
run with the same --dir reuses them and enrolls nothing. When Ward's
listeners are on loopback, the devices connect from 127.0.0.1-254.

--misbehave K makes K devices act like compromised ones, some seconds after
they first connect and then every ten minutes, for Ward to catch: a flood
of telemetry, probing other devices' topics, connecting from many
addresses. See ward device history and the gateway's violations.

Runs until Ctrl-C (or --duration), with progress on standard error, then
prints a summary. With -o json, progress, the moment the whole fleet is
connected and the summary are JSON lines on standard output.`,
		Example: `  ward sim --devices 500
  ward sim --devices 10000 --model mix --misbehave 3 --dir ./sim-10k
  ward sim --server https://ward.example:8080 --device-addr ward.example:8443 \
      --mqtt-addr ward.example:8883 --devices 50 --preregister=false`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := g.jsonOutput()
			if err != nil {
				return err
			}
			if o.dir == "" {
				o.dir = "ward-sim"
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if addr := os.Getenv("WARD_PPROF_ADDR"); addr != "" {
				if err := servePprof(ctx, addr, slog.Default()); err != nil {
					return err
				}
			}
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			errw := cmd.ErrOrStderr()
			r := &simRun{o: o, c: c, out: cmd.OutOrStdout(), errw: errw, json: asJSON, tty: isTerminal(errw)}
			r.onConnected = func(p sim.Progress) {
				if !asJSON {
					r.statusLine(fmt.Sprintf("fleet connected: %d/%d devices connected in %s", p.EverConnected, p.Total, seconds(p.AllConnected)))
				}
			}
			return r.run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.deviceAddr, "device-addr", "127.0.0.1:8443", "Ward's device listener (EST), host:port")
	f.StringVar(&o.mqttAddr, "mqtt-addr", "127.0.0.1:8883", "Ward's MQTT listener, host:port")
	f.BoolVar(&o.preregister, "preregister", true, "preregister the serials (devices are admitted at once); false: they wait pending for approval")
	f.DurationVar(&duration, "duration", 0, "stop after this long (default: run until Ctrl-C)")
	o.flags(cmd, 100, sim.DefaultUnits(), "state directory: the manufacturer CA and the devices' keys and certificates (default ./ward-sim)")
	return cmd
}

// simRun is one run of a simulated fleet: set up at Ward, then run.
type simRun struct {
	o    *simOptions
	c    *client.Client
	out  io.Writer // summary (and JSON lines)
	errw io.Writer // progress
	json bool
	tty  bool
	// onConnected is called once, when every device has been connected.
	onConnected func(sim.Progress)
	// logger for the runner; default warnings on errw.
	logger *slog.Logger

	mu       sync.Mutex // guards the terminal line
	lineOpen bool
	lastLine time.Time
	fleet    *sim.Fleet
	specs    []sim.Spec
	mfrName  string
	prereg   time.Duration
	conn     atomic.Bool
	ctx      context.Context
	live     sim.Progress // the last progress before the end
}

// run sets up the manufacturer and the devices at Ward and runs the fleet
// until ctx ends.
func (r *simRun) run(ctx context.Context) error {
	if err := r.setup(ctx); err != nil {
		return err
	}
	if r.json {
		r.emit(map[string]any{"event": "started", "devices": len(r.specs), "fleet": describeFleet(r.specs),
			"preregistered_s": r.prereg.Seconds()})
	}
	err := r.fleet.Run(ctx)
	r.endLine()
	if err != nil {
		return err
	}
	return r.summary()
}

// setup prepares everything but runs nothing: the manufacturer CA (made or
// reused) registered at Ward, the plan, the preregistrations, the fleet.
func (r *simRun) setup(ctx context.Context) error {
	o := r.o
	r.ctx = ctx
	if r.logger == nil {
		r.logger = slog.New(slog.NewTextHandler(lineWriter{r}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if o.devices <= 0 {
		return fmt.Errorf("--devices must be at least 1")
	}
	units := o.units
	if len(units) == 0 {
		units = sim.DefaultUnits()
	}
	specs, err := sim.Plan(sim.PlanConfig{N: o.devices, Model: o.model, Units: units, Site: o.site, Misbehave: o.misbehave, Seed: o.seed})
	if err != nil {
		return err
	}
	r.specs = specs
	deviceAddr, mqttAddr := dialable(o.deviceAddr), dialable(o.mqttAddr)

	mfrCert, mfrKey, created, err := manufacturerCA(filepath.Join(o.dir, "mfg"), o.manufacturer)
	if err != nil {
		return err
	}
	if created {
		r.logf("Created the simulated manufacturer CA %q in %s.", mfrCert.Subject.CommonName, filepath.Join(o.dir, "mfg"))
	}
	if r.mfrName, err = registerManufacturer(ctx, r.c, o.manufacturer, mfrCert); err != nil {
		return err
	}
	info, err := r.c.CA(ctx)
	if err != nil {
		return fmt.Errorf("read Ward's root CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(info.Root.PEM)) {
		return errors.New("the root CA from Ward's admin API is not PEM")
	}
	r.logf("%s in %s; %s.", describeFleet(specs), strings.Join(units, ", "), misbehaving(specs))
	if o.preregister {
		start := time.Now()
		n, err := r.preregisterAll(ctx, specs)
		if err != nil {
			return err
		}
		r.prereg = time.Since(start)
		r.endLine()
		r.logf("Preregistered %d devices (%d already known) in %s.", len(specs), len(specs)-n, seconds(r.prereg))
	} else {
		r.logf("Not preregistered: devices wait, pending, until approved (ward device approve SERIAL).")
	}
	var agentLog *slog.Logger
	if o.agentLog {
		agentLog = r.logger
	}
	r.fleet, err = sim.NewFleet(sim.FleetConfig{
		Specs: specs, Dir: o.dir, Manufacturer: mfrCert, ManufacturerKey: mfrKey, Roots: roots,
		Server: deviceAddr, MQTT: mqttAddr, MaxStarting: o.maxStarting,
		Progress: r.progress, Logger: r.logger, AgentLogger: agentLog,
	})
	return err
}

// preregisterAll preregisters every spec, eight at a time; a device Ward
// already knows is left as it is, or approved if it waits pending. It
// returns how many it preregistered.
func (r *simRun) preregisterAll(ctx context.Context, specs []sim.Spec) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done, added atomic.Int64
		wg                sync.WaitGroup
		errOnce           sync.Once
		firstErr          error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	stopTicker := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopTicker:
				return
			case <-t.C:
				r.line(fmt.Sprintf("preregistering: %d/%d", done.Load(), len(specs)), false)
			}
		}
	}()
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(specs) || ctx.Err() != nil {
					return
				}
				s := specs[i]
				_, err := r.c.Preregister(ctx, client.Preregistration{Serial: s.Serial, Manufacturer: r.mfrName, Model: s.Model,
					Site: s.Site, Unit: s.Unit, Tags: []string{"simulated", s.Model}})
				switch {
				case err == nil:
					added.Add(1)
				case client.IsConflict(err):
					// Known already: approve it if it waits. A serial that
					// other manufacturers' devices share cannot be looked
					// up by serial; it is left as it is.
					d, err := r.c.Device(ctx, s.Serial)
					if err == nil && d.State == client.StatePending && d.Manufacturer == r.mfrName {
						_, err = r.c.Approve(ctx, d.ID)
					}
					if err != nil && !client.IsConflict(err) {
						fail(fmt.Errorf("device %s: %w", s.Serial, err))
						return
					}
				default:
					fail(fmt.Errorf("preregister %s: %w", s.Serial, err))
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(stopTicker)
	return int(added.Load()), firstErr
}

// progress is the fleet's progress callback.
func (r *simRun) progress(p sim.Progress) {
	if r.ctx.Err() != nil {
		return // stopping: the agents disconnect; the summary tells the rest
	}
	r.mu.Lock()
	r.live = p
	r.mu.Unlock()
	if p.AllConnected != 0 && r.conn.CompareAndSwap(false, true) {
		if r.json {
			r.emit(map[string]any{"event": "connected", "devices": p.Total, "elapsed_s": p.AllConnected.Seconds(),
				"enrollments_per_s": float64(p.Total) / p.AllConnected.Seconds()})
		}
		if r.onConnected != nil {
			r.onConnected(p)
		}
	}
	if r.json {
		r.emit(struct {
			Event string `json:"event"`
			sim.Progress
			ElapsedS float64 `json:"elapsed_s"`
		}{"progress", p, p.Elapsed.Seconds()})
		return
	}
	r.line(progressText(p), false)
}

// progressText says where the fleet is in one line.
func progressText(p sim.Progress) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d connected", p.Connected, p.Total)
	for _, c := range []struct {
		n    int
		what string
	}{{p.Waiting, "waiting"}, {p.Starting, "starting"}, {p.Enrolling, "enrolling"}, {p.Pending, "pending approval"},
		{p.Refused, "refused"}, {p.Enrolled, "enrolled, not connected"}, {p.Misbehaving, "misbehaving"}, {p.Failed, "failed"}} {
		if c.n > 0 {
			fmt.Fprintf(&b, " · %d %s", c.n, c.what)
		}
	}
	fmt.Fprintf(&b, " · %s", seconds(p.Elapsed))
	return b.String()
}

// line shows progress: on a terminal one line rewritten in place, else a
// line every five seconds. A status line (force) always prints.
func (r *simRun) line(s string, force bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tty {
		fmt.Fprintf(r.errw, "\r\033[K%s", s)
		r.lineOpen = true
		if force {
			fmt.Fprintln(r.errw)
			r.lineOpen = false
		}
		return
	}
	if !force && time.Since(r.lastLine) < 5*time.Second {
		return
	}
	r.lastLine = time.Now()
	fmt.Fprintln(r.errw, s)
}

// statusLine prints a line that stays, below the progress line.
func (r *simRun) statusLine(s string) { r.line(s, true) }

// endLine ends the progress line on a terminal.
func (r *simRun) endLine() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lineOpen {
		fmt.Fprintln(r.errw)
		r.lineOpen = false
	}
}

// logf prints a message for the person running the command on errw.
func (r *simRun) logf(format string, args ...any) {
	r.endLine()
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.errw, format+"\n", args...)
}

// emit writes one JSON line on out.
func (r *simRun) emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.out, "%s\n", b)
}

// lineWriter sends log lines through the progress display, so that they
// do not land in the middle of the progress line.
type lineWriter struct{ r *simRun }

func (w lineWriter) Write(p []byte) (int, error) {
	w.r.endLine()
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	return w.r.errw.Write(p)
}

// summary prints what the run did: the counts of the fleet's phases as
// they were last seen running, and the totals at the end.
func (r *simRun) summary() error {
	p := r.fleet.Progress()
	r.mu.Lock()
	live := r.live
	r.mu.Unlock()
	if r.json {
		r.emit(struct {
			Event string `json:"event"`
			sim.Progress
			ElapsedS       float64      `json:"elapsed_s"`
			AllConnectedS  float64      `json:"all_connected_s,omitempty"`
			PreregisteredS float64      `json:"preregistered_s,omitempty"`
			Fleet          string       `json:"fleet"`
			Manufacturer   string       `json:"manufacturer"`
			Last           sim.Progress `json:"last_running"`
		}{"summary", p, p.Elapsed.Seconds(), p.AllConnected.Seconds(), r.prereg.Seconds(), describeFleet(r.specs), r.mfrName, live})
		return nil
	}
	all := "never"
	if p.AllConnected > 0 {
		all = "after " + seconds(p.AllConnected)
	}
	fmt.Fprintf(r.out, "\n%s; %s.\n", describeFleet(r.specs), misbehaving(r.specs))
	return fields(r.out,
		"Ran for", seconds(p.Elapsed),
		"Every device connected", all,
		"Connected when stopped", fmt.Sprintf("%d of %d", live.Connected, p.Total),
		"Pending approval", fmt.Sprint(live.Pending),
		"Refused", fmt.Sprint(live.Refused),
		"Failed", fmt.Sprint(p.Failed),
		"Misbehaviour bouts", fmt.Sprint(p.Bouts),
		"Events", fmt.Sprintf("%d from the models; %d delivered, %d dropped, %d refused by Ward", p.Events, p.Delivered, p.Dropped, p.Rejected),
		"State", r.o.dir,
	)
}

// describeFleet says "200 devices: 100 infusion-pump, 60 monitor, 40
// insulin-pump".
func describeFleet(specs []sim.Spec) string {
	count := map[string]int{}
	for _, s := range specs {
		count[s.Model]++
	}
	models := make([]string, 0, len(count))
	for m := range count {
		models = append(models, m)
	}
	sort.Slice(models, func(i, j int) bool {
		return count[models[i]] > count[models[j]] || count[models[i]] == count[models[j]] && models[i] < models[j]
	})
	parts := make([]string, len(models))
	for i, m := range models {
		parts[i] = fmt.Sprintf("%d %s", count[m], m)
	}
	return fmt.Sprintf("%d devices (%s)", len(specs), strings.Join(parts, ", "))
}

func misbehaving(specs []sim.Spec) string {
	var names []string
	for _, s := range specs {
		if s.Misbehave != "" {
			names = append(names, s.Serial+" "+string(s.Misbehave))
		}
	}
	if len(names) == 0 {
		return "none misbehaving"
	}
	return "misbehaving: " + strings.Join(names, ", ")
}

// manufacturerCA loads DIR/ca.crt and DIR/ca.key, or creates them (as
// ward mfg init-ca does) when neither exists.
func manufacturerCA(dir, name string) (*x509.Certificate, crypto.Signer, bool, error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	b, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		if _, kerr := os.Stat(keyPath); kerr == nil {
			return nil, nil, false, fmt.Errorf("%s exists without %s", keyPath, certPath)
		}
		c, key, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: name})
		if err != nil {
			return nil, nil, false, err
		}
		if err := writePair(dir, certPath, keyPath, c, key); err != nil {
			return nil, nil, false, err
		}
		return c, key, true, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	certs, err := pki.ReadCertificates(b)
	if err != nil {
		return nil, nil, false, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := pki.ReadKeyFile(keyPath, nil)
	if err != nil {
		return nil, nil, false, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(certs[0].PublicKey) {
		return nil, nil, false, fmt.Errorf("%s is not the key of %s", keyPath, certPath)
	}
	return certs[0], key, false, nil
}

// registerManufacturer registers the CA under name, or finds it
// registered already (under any name), and returns the name Ward knows it
// by.
func registerManufacturer(ctx context.Context, c *client.Client, name string, ca *x509.Certificate) (string, error) {
	m, err := c.AddManufacturer(ctx, name, pki.EncodeCertificates(ca))
	if err == nil {
		return m.Name, nil
	}
	if !client.IsConflict(err) {
		return "", fmt.Errorf("register the simulated manufacturer: %w", err)
	}
	ms, lerr := c.Manufacturers(ctx)
	if lerr != nil {
		return "", fmt.Errorf("register the simulated manufacturer: %w", lerr)
	}
	fp := pki.Fingerprint(ca)
	for _, m := range ms {
		if m.Fingerprint == fp {
			return m.Name, nil
		}
	}
	return "", fmt.Errorf("a manufacturer %q is registered at Ward with another CA: choose another --manufacturer, or the --dir whose CA it is (%w)", name, err)
}

// dialable turns a listen address (":8443") into one to dial
// ("127.0.0.1:8443").
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "" && host != "0.0.0.0" && host != "::" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// seconds formats a duration to a tenth of a second.
func seconds(d time.Duration) string {
	if d >= time.Minute {
		return d.Round(time.Second).String()
	}
	return d.Round(100 * time.Millisecond).String()
}
