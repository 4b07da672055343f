package main

// Acceptance 3 of issue 4: a QoS 1 message the gateway acknowledged
// survives kill -9 of the node. A paho.golang client publishes over mutual
// TLS; the node is killed with SIGKILL while publishes are in flight; the
// node's JetStream directory is then opened by an embedded NATS server here
// and every acknowledged message must be in the device stream.
//
// The node is the real `ward serve`, on a data directory provisioned with
// a CA and one active device.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/protocol"
)

const gwPassphrase = "correct horse battery staple"

// gwProvision makes a data directory with a CA and one active device, and
// returns the device id, its TLS certificate and the root pool.
func gwProvision(t *testing.T, data string) (string, tls.Certificate, *x509.CertPool) {
	t.Helper()
	ctx := context.Background()
	caDir := filepath.Join(data, "ca")
	if err := pki.Init(pki.InitConfig{Dir: caDir, Passphrase: []byte(gwPassphrase)}); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Open(pki.Config{Dir: caDir, Passphrase: []byte(gwPassphrase)})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, "sqlite://"+filepath.Join(data, "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg, err := fleet.New(ctx, fleet.Config{Store: st, Audit: audit.New(st, nil)})
	if err != nil {
		t.Fatal(err)
	}
	mfrCA, _, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Acme Medical"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.AddManufacturer(ctx, "token:test", "Acme Medical", pki.EncodeCertificates(mfrCA)); err != nil {
		t.Fatal(err)
	}
	d, err := reg.Preregister(ctx, "token:test", fleet.Preregistration{Serial: "PUMP-0001", Manufacturer: "Acme Medical", Model: "LVP 3000"})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := pki.NewCSR(key, d.ID, d.Serial)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueDevice(csr, pki.DeviceIdentity{ID: d.ID, Serial: d.Serial, Manufacturer: d.Manufacturer})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tx(ctx, func(tx *store.Tx) error { return reg.RecordIssued(ctx, tx, d.ID, cert) }); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	return d.ID, tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Issuer().Raw}, PrivateKey: key, Leaf: cert}, roots
}

// gwStartNode starts `ward serve` on the provisioned data directory with
// the gateway on addr, and waits until it is ready. The message rate limit
// is raised: this test measures durability, not throttling.
func gwStartNode(t *testing.T, data, addr string) *exec.Cmd {
	t.Helper()
	bin := buildWard(t)
	conf := filepath.Join(t.TempDir(), "ward.yaml")
	if err := os.WriteFile(conf, []byte("gateway:\n  msg_rate: 100000\n  msg_burst: 100000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := freeAddr(t)
	cmd := exec.Command(bin, "serve", "--config", conf, "--data", data, "--mqtt-addr", addr,
		"--device-addr", freeAddr(t), "--admin-addr", admin, "--log-level", "warn")
	cmd.Env = append(os.Environ(), "WARD_CA_PASSPHRASE="+gwPassphrase)
	log := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(60 * time.Second); ; {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cmd
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("ward serve not ready after 60s:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestGatewayAckedMessagesSurviveKill9(t *testing.T) {
	data := t.TempDir()
	id, cert, roots := gwProvision(t, data)
	addr := freeAddr(t)
	node := gwStartNode(t, data, addr)

	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: id, Conn: packets.NewThreadSafeConn(conn)})
	ctx := context.Background()
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}

	// Four publishers, each waiting for its PUBACK before the next message;
	// the node is killed once 400 messages are acknowledged, with more in
	// flight.
	const killAfter = 400
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
		kill  = make(chan struct{})
		once  sync.Once
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				payload := fmt.Sprintf(`{"v":1,"w":%d,"seq":%d}`, w, i)
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := c.Publish(pctx, &paho.Publish{Topic: protocol.Topic(id, protocol.Telemetry), QoS: 1, Payload: []byte(payload)})
				cancel()
				if err != nil || resp == nil || resp.ReasonCode != 0 {
					return // the node is gone
				}
				mu.Lock()
				acked[payload] = true
				if len(acked) >= killAfter {
					once.Do(func() { close(kill) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-kill:
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d messages acknowledged in 60s", len(acked))
	}
	if err := node.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	node.Wait()
	conn.Close()
	wg.Wait()
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	t.Logf("killed with SIGKILL after %d acknowledged messages (%s ago)", n, time.Since(killedAt).Round(time.Millisecond))

	// Open the node's JetStream directory as the node would on restart.
	b, err := bus.Open(bus.Config{Dir: filepath.Join(data, "bus"), Name: "after-kill"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := b.JetStream.Stream(sctx, bus.StreamDevice)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(sctx)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(sctx, seq)
		if err == jetstream.ErrMsgNotFound {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := gateway.DecodeStreamMsg(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("stream message %d: %v", seq, err)
		}
		for _, dm := range msgs {
			if dm.DeviceID != id || dm.Kind != protocol.Telemetry {
				t.Fatalf("unexpected message %s: %+v", m.Subject, dm)
			}
			stored[string(dm.Payload)] = true
		}
	}
	missing := 0
	for p := range acked {
		if !stored[p] {
			missing++
			if missing <= 5 {
				t.Errorf("acknowledged but lost: %s", p)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged messages lost after kill -9", missing, n)
	}
	t.Logf("all %d acknowledged messages in the stream after kill -9 (%d stored in all)", n, len(stored))
}
