// Package bench holds Ward's benchmarks. Each drives a real Ward node through
// its real listeners; figures and the commands that reproduce them are in
// README.md beside this file.
package bench

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/config"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/server"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// ward is a running node for a benchmark.
type ward struct {
	deviceAddr string
	// serverLeaf is the device listener's certificate, verified once
	// against the root and then pinned, so that the load generator, which
	// shares the machine's two cores with the server, does not spend them
	// re-verifying the same chain for every simulated device.
	serverLeaf []byte
	api        *client.Client
	root       *x509.Certificate
	stop       func()
}

func startWard(b *testing.B, d store.Dialect) *ward {
	b.Helper()
	dir := b.TempDir()
	cfg := config.Default()
	cfg.Data = dir
	if d == store.Postgres {
		cfg.Store = storetest.URL(b, store.Postgres)
	}
	cfg.DeviceAddr = "127.0.0.1:0"
	cfg.AdminAddr = "127.0.0.1:0"
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.Enroll.RateLimit = -1 // one source address drives thousands per second
	cfg.Log.Level = "error"
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	var devAddr, adminAddr net.Addr
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, log, server.WithListenHook(func(dv, ad net.Addr) { devAddr, adminAddr = dv, ad }), server.WithNotice(io.Discard))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	<-srv.Ready()
	token, err := os.ReadFile(cfg.AdminTokenPath())
	if err != nil {
		b.Fatal(err)
	}
	api, err := client.New("http://"+adminAddr.String(), strings.TrimSpace(string(token)))
	if err != nil {
		b.Fatal(err)
	}
	root, err := pki.ReadRoot(cfg.CADir())
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	conn, err := tls.Dial("tcp", devAddr.String(), &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		b.Fatal(err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0].Raw
	conn.Close()
	return &ward{deviceAddr: devAddr.String(), serverLeaf: leaf, api: api, root: root, stop: func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}}
}

// device is what a factory and the device itself prepared before enrolling.
type device struct {
	birth tls.Certificate
	body  []byte // base64 PKCS#10, as EST sends it
}

// makeFleet mints n birth certificates, registers the manufacturer and
// pre-registers every serial, so each enrollment is admitted at once.
func makeFleet(b *testing.B, w *ward, n int) []device {
	b.Helper()
	ctx := context.Background()
	caCert, caKey, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Bench Medical"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.api.AddManufacturer(ctx, "Bench Medical", pki.EncodeCertificates(caCert)); err != nil {
		b.Fatal(err)
	}
	devs := make([]device, n)
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		fail atomic.Value
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				serial := fmt.Sprintf("BENCH-%07d", i)
				cert, key, err := pki.MintBirthCertificate(pki.BirthConfig{CA: caCert, CAKey: caKey, Serial: serial, Model: "LVP"})
				if err != nil {
					fail.Store(err)
					return
				}
				opKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				csr, err := pki.NewCSR(opKey, serial, serial)
				if err != nil {
					fail.Store(err)
					return
				}
				if _, err := w.api.Preregister(ctx, client.Preregistration{Serial: serial, Manufacturer: "Bench Medical", Model: "LVP"}); err != nil {
					fail.Store(err)
					return
				}
				devs[i] = device{
					birth: tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert},
					body:  []byte(base64.StdEncoding.EncodeToString(csr)),
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := fail.Load().(error); ok {
		b.Fatal(err)
	}
	return devs
}

// deviceTLS is a device's TLS configuration: its birth certificate, the
// server's certificate pinned (see ward.serverLeaf), and X25519 key
// exchange, as the embedded TLS stacks in today's devices offer (a client
// that offers X25519MLKEM768 gets it; it costs the server ~60 µs more).
func (w *ward) deviceTLS(d device) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		Certificates:       []tls.Certificate{d.birth},
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, w.serverLeaf) {
				return errors.New("server certificate is not the pinned one")
			}
			return nil
		},
	}
}

// enroll performs one EST simpleenroll on a fresh mutual-TLS connection,
// as a device does.
func enroll(w *ward, d device) error {
	tr := &http.Transport{TLSClientConfig: w.deviceTLS(d), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, "https://"+w.deviceAddr+"/.well-known/est/simpleenroll", bytes.NewReader(d.body))
	req.Header.Set("Content-Type", "application/pkcs10")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return nil
}

// BenchmarkEnroll measures enrollments per second through the whole path a
// device takes: a fresh TLS 1.3 connection authenticated by the birth
// certificate, EST simpleenroll, attestation, CSR checks, issuance, the
// store transaction with its audit entry, and the PKCS#7 response.
// Run with a fixed count, e.g. -benchtime=20000x.
func BenchmarkEnroll(b *testing.B) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		b.Run(string(d), func(b *testing.B) {
			w := startWard(b, d)
			defer w.stop()
			devs := makeFleet(b, w, b.N)
			roots := x509.NewCertPool()
			roots.AddCert(w.root)
			workers := 64
			var (
				next atomic.Int64
				errs atomic.Int64
				wg   sync.WaitGroup
				last atomic.Value
			)
			b.ResetTimer()
			start := time.Now()
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1)) - 1
						if i >= len(devs) {
							return
						}
						if err := enroll(w, devs[i]); err != nil {
							errs.Add(1)
							last.Store(err)
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if n := errs.Load(); n > 0 {
				b.Fatalf("%d of %d enrollments failed; last: %v", n, b.N, last.Load())
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "enroll/s")
		})
	}
}

// BenchmarkHandshake is the ceiling for BenchmarkEnroll: mutual TLS 1.3
// connections per second against the same listener, with the same client
// certificates, each carrying one request the server answers 404 at once.
func BenchmarkHandshake(b *testing.B) {
	w := startWard(b, store.SQLite)
	defer w.stop()
	devs := makeFleet(b, w, 256)
	roots := x509.NewCertPool()
	roots.AddCert(w.root)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs atomic.Int64
	)
	b.ResetTimer()
	start := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for int(next.Add(1)) <= b.N {
				d := devs[int(next.Load())%len(devs)]
				tr := &http.Transport{TLSClientConfig: w.deviceTLS(d), DisableKeepAlives: true}
				// The smallest request that needs the whole handshake: a 404.
				req, _ := http.NewRequest(http.MethodGet, "https://"+w.deviceAddr+"/nothing-here", nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				tr.CloseIdleConnections()
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
	if errs.Load() > 0 {
		b.Fatalf("%d handshakes failed", errs.Load())
	}
}

// BenchmarkECDSASign is the signing limit: ECDSA P-256 signatures per
// second on one core, the operation every issuance and every server
// handshake performs once.
func BenchmarkECDSASign(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("ward"))
	b.ResetTimer()
	for b.Loop() {
		if _, err := key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkECDSAVerify is the verification cost: the server checks four
// ECDSA P-256 signatures per enrollment (the client's handshake signature,
// the birth certificate, the CSR, and the issued certificate, which
// crypto/x509 re-checks after signing).
func BenchmarkECDSAVerify(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("ward"))
	sig, _ := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	b.ResetTimer()
	for b.Loop() {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			b.Fatal("verify failed")
		}
	}
}
