package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/bus"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
)

// Opening a CA costs a deliberately slow PBKDF2, so the tests share CAs,
// and one embedded NATS server; each test gets its own store, registry,
// audit log and gateway on a real TLS listener.

const testPass = "correct horse battery staple"

type sharedCAs struct {
	dir   string
	ward  *pki.Authority // now
	past  *pki.Authority // the same CA, its clock 30 days ago: issues expired certificates
	other *pki.Authority // a CA Ward does not trust
	bus   *bus.Bus
}

var (
	sharedOnce sync.Once
	shared     sharedCAs
	sharedErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.bus != nil {
		shared.bus.Close()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

func cas(tb testing.TB) *sharedCAs {
	tb.Helper()
	sharedOnce.Do(func() {
		if shared.dir, sharedErr = os.MkdirTemp("", "ward-gateway-test-"); sharedErr != nil {
			return
		}
		born := time.Now().Add(-60 * 24 * time.Hour)
		for _, name := range []string{"ward", "other"} {
			if sharedErr = pki.Init(pki.InitConfig{Dir: filepath.Join(shared.dir, name), Passphrase: []byte(testPass), Name: name, Now: func() time.Time { return born }}); sharedErr != nil {
				return
			}
		}
		open := func(name string, now func() time.Time) *pki.Authority {
			a, err := pki.Open(pki.Config{Dir: filepath.Join(shared.dir, name), Passphrase: []byte(testPass), Now: now})
			if err != nil {
				sharedErr = err
			}
			return a
		}
		shared.ward = open("ward", nil)
		shared.past = open("ward", func() time.Time { return time.Now().Add(-30 * 24 * time.Hour) })
		shared.other = open("other", nil)
		if sharedErr != nil {
			return
		}
		shared.bus, sharedErr = bus.Open(bus.Config{Dir: filepath.Join(shared.dir, "bus"), Name: "test"})
	})
	if sharedErr != nil {
		tb.Fatal(sharedErr)
	}
	return &shared
}

type fixture struct {
	t     *testing.T
	st    *store.Store
	cas   *sharedCAs
	fleet *fleet.Registry
	audit *audit.Log
	gw    *Gateway
	mfr   string
	dir   string // PEM files for the Mosquitto clients

	anyDevice device
}

// newFixture builds a registry with one manufacturer and a running
// gateway on 127.0.0.1.
func newFixture(t *testing.T, st *store.Store, adjust ...func(*Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{t: t, st: st, cas: cas(t), dir: t.TempDir()}
	f.audit = audit.New(st, nil)
	nc := f.cas.bus.Conn
	var err error
	f.fleet, err = fleet.New(ctx, fleet.Config{Store: st, Audit: f.audit,
		OnRevoke: func(serials []string) {
			b, _ := json.Marshal(serials)
			_ = nc.Publish(bus.SubjectRevoked, b)
		},
		OnStateChange: func(id string, s fleet.State) {
			b, _ := json.Marshal(bus.DeviceState{ID: id, State: string(s)})
			_ = nc.Publish(bus.SubjectDeviceState, b)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	mfrCA, _, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Acme Medical"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.fleet.AddManufacturer(ctx, "token:test", "Acme Medical", pki.EncodeCertificates(mfrCA)); err != nil {
		t.Fatal(err)
	}
	f.mfr = "Acme Medical"
	serverCert, err := f.cas.ward.IssueServer([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Listener: ln, Cert: func() *tls.Certificate { return &serverCert },
		CA: f.cas.ward, Fleet: f.fleet, Store: st, Audit: f.audit, Conn: nc, Node: "node-1",
		Limits: Limits{ConnectRatePerDevice: 100, ConnectBurstPerDevice: 100, ConnectRatePerSource: 1000, ConnectBurstPerSource: 1000},
	}
	for _, fn := range adjust {
		fn(&cfg)
	}
	if f.gw, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.gw.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("gateway run: %v", err)
		}
	})
	// Wait until it accepts.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", f.gw.Addr().String(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if i > 50 {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f
}

// device is an enrolled device: its Ward id, its key and certificate.
type device struct {
	id   string
	cert tls.Certificate
}

var serialSeq struct {
	sync.Mutex
	n int
}

// newDevice registers an active device and issues it a certificate from
// ca (nil: Ward's CA, now).
func (f *fixture) newDevice(ca *pki.Authority) device {
	f.t.Helper()
	ctx := context.Background()
	serialSeq.Lock()
	serialSeq.n++
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	serial := fmt.Sprintf("SN-%d-%x", serialSeq.n, rb)
	serialSeq.Unlock()
	d, err := f.fleet.Preregister(ctx, "token:test", fleet.Preregistration{Serial: serial, Manufacturer: f.mfr, Model: "Pump 3000"})
	if err != nil {
		f.t.Fatal(err)
	}
	if ca == nil {
		ca = f.cas.ward
	}
	cert := f.issue(ca, d.ID, serial)
	if ca == f.cas.ward || ca == f.cas.past {
		if err := f.st.Tx(ctx, func(tx *store.Tx) error { return f.fleet.RecordIssued(ctx, tx, d.ID, cert.Leaf) }); err != nil {
			f.t.Fatal(err)
		}
	}
	return device{id: d.ID, cert: cert}
}

func (f *fixture) issue(ca *pki.Authority, id, serial string) tls.Certificate {
	f.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.t.Fatal(err)
	}
	der, err := pki.NewCSR(key, id, serial)
	if err != nil {
		f.t.Fatal(err)
	}
	csr, err := pki.ParseCSR(der)
	if err != nil {
		f.t.Fatal(err)
	}
	leaf, err := ca.IssueDevice(csr, pki.DeviceIdentity{ID: id, Serial: serial, Manufacturer: "Acme Medical", Model: "Pump 3000"})
	if err != nil {
		f.t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// files writes the device's certificate and key as PEM, and Ward's root,
// for the Mosquitto clients.
func (f *fixture) files(d device) (cafile, certfile, keyfile string) {
	f.t.Helper()
	dir := filepath.Join(f.dir, d.id+"-"+d.cert.Leaf.SerialNumber.Text(16)[:8])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		f.t.Fatal(err)
	}
	cafile, certfile, keyfile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	write := func(path, typ string, b []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	write(cafile, "CERTIFICATE", f.cas.ward.Root().Raw)
	write(certfile, "CERTIFICATE", d.cert.Leaf.Raw)
	kb, err := x509.MarshalECPrivateKey(d.cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		f.t.Fatal(err)
	}
	write(keyfile, "EC PRIVATE KEY", kb)
	return
}

// dialTLS opens a TLS connection to the gateway presenting certs.
func (f *fixture) dialTLS(certs ...tls.Certificate) (*tls.Conn, error) {
	pool := x509.NewCertPool()
	pool.AddCert(f.cas.ward.Root())
	d := &net.Dialer{Timeout: 5 * time.Second}
	return tls.DialWithDialer(d, "tcp", f.gw.Addr().String(), &tls.Config{RootCAs: pool, Certificates: certs, ServerName: "localhost", MinVersion: tls.VersionTLS13})
}

// mqttClient is a paho client with what the tests watch.
type mqttClient struct {
	*paho.Client
	received   chan *paho.Publish
	disconnect chan *paho.Disconnect
}

// connect opens an MQTT 5 session as clientID with the device's
// certificate. The connack is returned even when refused.
func (f *fixture) connect(d device, clientID string) (*mqttClient, *paho.Connack, error) {
	f.t.Helper()
	var certs []tls.Certificate
	if d.cert.Leaf != nil {
		certs = append(certs, d.cert)
	}
	conn, err := f.dialTLS(certs...)
	if err != nil {
		return nil, nil, err
	}
	mc := &mqttClient{received: make(chan *paho.Publish, 16), disconnect: make(chan *paho.Disconnect, 1)}
	mc.Client = paho.NewClient(paho.ClientConfig{
		// paho writes a packet in several Writes, and its pinger writes
		// from its own goroutine: without the lock a PINGREQ can land
		// inside another packet.
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			mc.received <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { mc.disconnect <- d },
		OnClientError:      func(error) {},
		PacketTimeout:      5 * time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := mc.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{User: paho.UserProperties{{Key: "software_version", Value: "2.6A"}}}})
	if err != nil {
		conn.Close()
		return nil, ca, err
	}
	f.t.Cleanup(func() { _ = mc.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return mc, ca, nil
}

// history flushes the gateway's history and returns the device's rows.
func (f *fixture) history(deviceID string) []Connection {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.gw.History().Flush(ctx)
	rows, err := f.gw.History().List(ctx, deviceID, 100)
	if err != nil {
		f.t.Fatal(err)
	}
	return rows
}

// waitHistory waits until the device has a row with reason.
func (f *fixture) waitHistory(deviceID, reason string) Connection {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, c := range f.history(deviceID) {
			if c.Reason == reason {
				return c
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("device %q: no history row with reason %s; have %+v", deviceID, reason, f.history(deviceID))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}
