package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wardhq/ward/client"
)

// broker is a running broker under test.
type broker struct {
	name     string
	addr     string // MQTT over TLS
	serverCA string // PEM file that verifies the broker's certificate
	pid      int    // the process whose memory and CPU are measured
	stop     func() error
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitTCP waits until addr accepts TCP connections or the process exits.
func waitTCP(ctx context.Context, addr string, exited <-chan struct{}, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("the process exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %s", addr, within)
		}
	}
}

// start runs a command with its output to logFile and returns a channel
// closed when it exits.
func start(cmd *exec.Cmd, logFile string) (<-chan struct{}, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the harness
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(exited) }()
	return exited, nil
}

// stopProcess sends SIGTERM, then SIGKILL after 20 s.
func stopProcess(cmd *exec.Cmd, exited <-chan struct{}) error {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return nil
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("%s did not stop within 20 s; killed", filepath.Base(cmd.Path))
	}
}

// wardNode is `ward serve` in its own process, with its data directory in
// the cache so that its CA, and the devices enrolled with it, outlive a run.
type wardNode struct {
	broker
	api        *client.Client
	ca         wardCA
	deviceAddr string
	mqttErr    error // the node does not serve MQTT
}

// wardConfig is the node's configuration: every gateway limit opened wide,
// since one load generator on a few source addresses stands for a fleet.
const wardConfig = `log:
  level: warn
enroll:
  rate_limit: -1
gateway:
  msg_rate: 1000000
  msg_burst: 1000000
  connect_rate_per_device: 1000
  connect_rate_per_source: 1000000
  max_connections: 19500
  message_retention: 1h
`

// startWard starts ward serve on free loopback ports. A port found free
// can be taken by another socket before ward binds it (after a connect
// phase, tens of thousands of client sockets share the port range): then
// it starts again on other ports.
func startWard(ctx context.Context, bin, cache string) (*wardNode, error) {
	for attempt := 1; ; attempt++ {
		n, err := startWardOnce(ctx, bin, cache)
		if err == nil || attempt == 3 || !errors.Is(err, errPortTaken) {
			return n, err
		}
		log.Printf("ward serve: %v; starting it again on other ports", err)
	}
}

var errPortTaken = errors.New("a port was taken before ward could listen on it")

func startWardOnce(ctx context.Context, bin, cache string) (*wardNode, error) {
	data := filepath.Join(cache, "ward-data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	// The registry and CA are kept (the enrolled devices stay valid), the
	// bus is not: messages stored by earlier runs would make the node
	// load and consume them while it is being measured.
	if err := os.RemoveAll(filepath.Join(data, "bus")); err != nil {
		return nil, err
	}
	conf := filepath.Join(cache, "ward.yaml")
	if err := os.WriteFile(conf, []byte(wardConfig), 0o600); err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	devAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	mqttAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	adminAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	cmd := exec.Command(bin, "--data", data, "serve", "--config", conf,
		"--device-addr", devAddr, "--mqtt-addr", mqttAddr, "--admin-addr", adminAddr, "--device-name", "localhost")
	cmd.Env = os.Environ()
	exited, err := start(cmd, filepath.Join(cache, "ward.log"))
	if err != nil {
		return nil, err
	}
	n := &wardNode{deviceAddr: devAddr}
	n.broker = broker{name: "ward", addr: mqttAddr, pid: cmd.Process.Pid, stop: func() error { return stopProcess(cmd, exited) }}
	fail := func(err error) (*wardNode, error) {
		_ = n.stop()
		if out, _ := os.ReadFile(filepath.Join(cache, "ward.log")); bytes.Contains(out, []byte("address already in use")) {
			err = fmt.Errorf("%w: %w", errPortTaken, err)
		}
		return nil, fmt.Errorf("ward serve (log: %s): %w", filepath.Join(cache, "ward.log"), err)
	}
	if err := waitTCP(ctx, adminAddr, exited, time.Minute); err != nil {
		return fail(err)
	}
	if err := waitTCP(ctx, devAddr, exited, 30*time.Second); err != nil {
		return fail(err)
	}
	if err := waitTCP(ctx, mqttAddr, exited, 10*time.Second); err != nil {
		n.mqttErr = fmt.Errorf("no MQTT listener on --mqtt-addr (is the gateway wired into ward serve?): %w", err)
	}
	token, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		return fail(err)
	}
	if n.api, err = client.New("http://"+adminAddr, strings.TrimSpace(string(token))); err != nil {
		return fail(err)
	}
	if n.ca, err = readWardCA(filepath.Join(data, "ca")); err != nil {
		return fail(err)
	}
	n.serverCA = filepath.Join(cache, "ward-ca.pem")
	if err := os.WriteFile(n.serverCA, n.ca.bundlePEM(), 0o600); err != nil {
		return fail(err)
	}
	return n, nil
}

// startMosquitto runs Debian's mosquitto on its own port with its own
// configuration: TLS 1.3 only, client certificates verified against Ward's
// root and issuing CA, the certificate's CN as the user name, no limit on
// connections, no logging, no persistence. Its server certificate is an
// ECDSA P-256 one, as Ward's, from a CA the harness makes.
func startMosquitto(ctx context.Context, bin, dir string, ca wardCA) (*broker, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	serverCA, certFile, keyFile, err := mosquittoServerCert(dir)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "clients-ca.pem")
	if err := os.WriteFile(caFile, ca.bundlePEM(), 0o644); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`# written by bench/mqtt
user %s
per_listener_settings false
persistence false
log_dest none
log_type none
listener %d 127.0.0.1
max_connections -1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
set_tcp_nodelay true
`, u.Username, port, caFile, certFile, keyFile)
	confFile := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-c", confFile)
	exited, err := start(cmd, filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		return nil, err
	}
	b := &broker{name: "mosquitto", addr: fmt.Sprintf("127.0.0.1:%d", port), serverCA: serverCA, pid: cmd.Process.Pid,
		stop: func() error { return stopProcess(cmd, exited) }}
	if err := waitTCP(ctx, b.addr, exited, 10*time.Second); err != nil {
		_ = b.stop()
		log, _ := os.ReadFile(filepath.Join(dir, "mosquitto.log"))
		return nil, fmt.Errorf("mosquitto: %w: %s", err, bytes.TrimSpace(log))
	}
	return b, nil
}

// mosquittoServerCert writes a CA and an ECDSA P-256 server certificate for
// localhost and 127.0.0.1.
func mosquittoServerCert(dir string) (caFile, certFile, keyFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench mosquitto CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return
	}
	caFile, certFile, keyFile = filepath.Join(dir, "server-ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	// The chain Mosquitto sends: leaf and CA, two certificates, as Ward's listener sends.
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	for _, f := range []struct {
		path string
		b    []byte
	}{
		{caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})},
		{certFile, chain},
		{keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})},
	} {
		if err = os.WriteFile(f.path, f.b, 0o600); err != nil {
			return
		}
	}
	return
}

// procStat is a process's resident memory and CPU time so far.
type procStat struct {
	rssKiB int64
	cpu    time.Duration // user + system
	at     time.Time
}

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
const clockTick = 100

func readProc(pid int) (procStat, error) {
	s := procStat{at: time.Now()}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				s.rssKiB, _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	rest := string(stat[bytes.LastIndexByte(stat, ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return s, errors.New("short /proc stat")
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	s.cpu = time.Duration(utime+stime) * time.Second / clockTick
	return s, nil
}
