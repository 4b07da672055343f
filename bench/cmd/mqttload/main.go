// Command mqttload is Ward's MQTT 5 load generator: simulated devices that
// connect to a broker over mutual TLS 1.3 with their Ward-issued
// certificates (github.com/eclipse/paho.golang). It drives Ward's gateway
// and Mosquitto the same way; bench/mqtt runs it against both and compares.
//
//	mqttload -mode connect -addr 127.0.0.1:8883 -devices devs.pem -server-ca ca.pem -duration 20s
//	mqttload -mode hold    ... -offset 0 -count 5000 -sources 127.0.0.2-127.0.0.5 -hold 2m
//	mqttload -mode publish ... -publishers 100 -warmup 3s -duration 15s
//	mqttload -mode publish ... -publishers 100 -warmup 2s -duration 6s -windows
//
// Every run is bounded (a count, a duration, or both), targets only
// 127.0.0.0/8, closes every connection it opened, and prints its result as
// one JSON line on standard output (a hold run prints a line with
// "event":"held" first, once every client is connected, and releases them
// when -hold passes, standard input closes, or it is interrupted; a
// publish run with -windows prints "event":"connected" once its publishers
// are, then publishes one window per line it reads on standard input and
// prints a "window" line for each).
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wardhq/ward/bench/mqtt/load"
)

// maxRun bounds every duration a run accepts.
const maxRun = 10 * time.Minute

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mqttload:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg                 load.Config
		devices, serverCA   string
		sources             string
		offset, count       int
		connections         int
		releaseOnEOF, quiet bool
		windows             bool
	)
	flag.StringVar(&cfg.Mode, "mode", load.Connect, "connect, hold or publish")
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:8883", "broker address (127.0.0.0/8 only)")
	flag.StringVar(&devices, "devices", "", "devices file (certificates with Device-Id headers and PKCS#8 keys)")
	flag.IntVar(&offset, "offset", 0, "first device to use from the file")
	flag.IntVar(&count, "count", 0, "devices to use from the file (0: all from -offset); hold connects all of them")
	flag.StringVar(&serverCA, "server-ca", "", "PEM file of CA certificates that verify the broker's certificate (once; then pinned)")
	flag.StringVar(&cfg.ServerName, "server-name", "localhost", "name the broker's certificate carries")
	flag.StringVar(&sources, "sources", "", "local source addresses, e.g. 127.0.0.2-127.0.0.9 or a comma list (default: the kernel's choice)")
	flag.IntVar(&cfg.Workers, "workers", 32, "concurrent connection attempts")
	flag.IntVar(&connections, "connections", 0, "connect: stop after this many connections (0: only -duration)")
	flag.DurationVar(&cfg.Duration, "duration", 10*time.Second, "connect: stop after; publish: measured window")
	flag.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "publish: time before the measured window")
	flag.DurationVar(&cfg.Hold, "hold", time.Minute, "hold: keep the clients this long at most")
	flag.BoolVar(&releaseOnEOF, "release-on-eof", false, "hold: release the clients when standard input closes")
	flag.IntVar(&cfg.Publishers, "publishers", 50, "publish: concurrent publishers, one connection each")
	flag.IntVar(&cfg.Payload, "payload", 128, "publish: message size in bytes")
	flag.BoolVar(&windows, "windows", false, "publish: stay connected and publish one window (warm-up + duration) per line read on standard input, a result line each, until it closes")
	flag.BoolVar(&cfg.OneWrite, "one-write", false, "send each packet in one write (agent.NewPacketConn) instead of paho's write per part")
	keepAlive := flag.Uint("keepalive", 300, "MQTT keepalive in seconds")
	flag.BoolVar(&quiet, "quiet", false, "no progress lines on standard error")
	flag.Parse()

	for name, d := range map[string]time.Duration{"duration": cfg.Duration, "warmup": cfg.Warmup, "hold": cfg.Hold} {
		if d < 0 || d > maxRun {
			return fmt.Errorf("-%s must be between 0 and %s", name, maxRun)
		}
	}
	if cfg.Mode == load.Connect && cfg.Duration == 0 && connections == 0 {
		return errors.New("connect needs -duration or -connections")
	}
	if *keepAlive > 65535 {
		return errors.New("-keepalive must fit 16 bits")
	}
	cfg.KeepAlive = uint16(*keepAlive)
	cfg.Count = connections
	if devices == "" || serverCA == "" {
		return errors.New("-devices and -server-ca are required")
	}
	var err error
	if cfg.Devices, err = load.ReadDevices(devices, offset, count); err != nil {
		return err
	}
	if cfg.Mode == load.Hold {
		cfg.Count = len(cfg.Devices)
	}
	pem, err := os.ReadFile(serverCA)
	if err != nil {
		return err
	}
	cfg.ServerCA = x509.NewCertPool()
	if !cfg.ServerCA.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s: no certificates", serverCA)
	}
	if cfg.Sources, err = parseSources(sources); err != nil {
		return err
	}
	if !quiet {
		cfg.Progress = os.Stderr
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	out := json.NewEncoder(os.Stdout)
	release := make(chan struct{})
	cfg.Release = release
	cfg.Held = func(r load.Result) {
		_ = out.Encode(r)
		if releaseOnEOF {
			go func() {
				_, _ = io.Copy(io.Discard, os.Stdin)
				close(release)
			}()
		}
	}
	if windows {
		if cfg.Mode != load.Publish {
			return errors.New("-windows is for -mode publish")
		}
		gate := make(chan struct{})
		cfg.Windows = gate
		cfg.Connected = func(r load.Result) {
			_ = out.Encode(r)
			go func() {
				defer close(gate)
				sc := bufio.NewScanner(os.Stdin)
				for sc.Scan() {
					gate <- struct{}{}
				}
			}()
		}
		cfg.Window = func(r load.Result) { _ = out.Encode(r) }
	}
	r, err := load.Run(ctx, cfg)
	if err != nil {
		return err
	}
	return out.Encode(r)
}

// parseSources reads "127.0.0.2-127.0.0.9" or "127.0.0.2,127.0.0.3".
func parseSources(s string) ([]net.IP, error) {
	if s == "" {
		return nil, nil
	}
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		a, b := net.ParseIP(lo).To4(), net.ParseIP(hi).To4()
		if a == nil || b == nil || a[0] != b[0] || a[1] != b[1] || a[2] != b[2] || a[3] > b[3] {
			return nil, fmt.Errorf("-sources %q: want a range within one /24, e.g. 127.0.0.2-127.0.0.9", s)
		}
		var ips []net.IP
		for i := int(a[3]); i <= int(b[3]); i++ {
			ips = append(ips, net.IPv4(a[0], a[1], a[2], byte(i)))
		}
		return ips, nil
	}
	var ips []net.IP
	for _, f := range strings.Split(s, ",") {
		ip := net.ParseIP(strings.TrimSpace(f))
		if ip == nil {
			return nil, fmt.Errorf("-sources: %q is not an address", f)
		}
		ips = append(ips, ip)
	}
	return ips, nil
}
