package main

import (
	"bufio"
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
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/wardhq/ward/bench/mqtt/load"
	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/pki"
)

// wardCA is what the harness knows of a Ward node's CA.
type wardCA struct {
	root, issuer *x509.Certificate
}

// key names the devices cache: devices enrolled with one CA are reused
// for as long as that CA exists.
func (c wardCA) key() string {
	sum := sha256.Sum256(c.root.Raw)
	return hex.EncodeToString(sum[:8])
}

// bundlePEM is the root and the issuing CA, for Mosquitto's cafile and for
// the load generator's verification of Ward's listener.
func (c wardCA) bundlePEM() []byte {
	return append(pki.EncodeCertificates(c.root), pki.EncodeCertificates(c.issuer)...)
}

func readWardCA(caDir string) (wardCA, error) {
	var c wardCA
	var err error
	if c.root, err = readCert(filepath.Join(caDir, pki.RootCertFile)); err != nil {
		return c, err
	}
	c.issuer, err = readCert(filepath.Join(caDir, pki.IssuerCertFile))
	return c, err
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return x509.ParseCertificate(block.Bytes)
}

// ensureDevices returns a devices file holding at least n devices enrolled
// with the node's CA, enrolling the missing ones over EST (as devices do:
// preregistered serial, birth certificate, CSR, operational certificate).
func ensureDevices(ctx context.Context, cache string, ca wardCA, api *client.Client, deviceAddr string, n int) (string, error) {
	path := filepath.Join(cache, "devices-"+ca.key()+".pem")
	have, err := load.CountDevices(path)
	if err != nil {
		return "", err
	}
	if have >= n {
		log.Printf("reusing %d enrolled devices from %s", have, path)
		return path, nil
	}
	missing := n - have
	log.Printf("enrolling %d devices over EST (cached in %s for the next runs)", missing, path)
	start := time.Now()
	mfgName := fmt.Sprintf("Bench MQTT %d", time.Now().UnixNano())
	caCert, caKey, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: mfgName})
	if err != nil {
		return "", err
	}
	if _, err := api.AddManufacturer(ctx, mfgName, pki.EncodeCertificates(caCert)); err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next atomic.Int64
		done atomic.Int64
		fail atomic.Value
	)
	roots := x509.NewCertPool()
	roots.AddCert(ca.root)
	roots.AddCert(ca.issuer)
	tag := time.Now().UnixNano()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fail.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= missing {
					return
				}
				serial := fmt.Sprintf("MQTT-%x-%06d", tag, i)
				id, der, key, err := enrollOne(ctx, api, roots, deviceAddr, mfgName, caCert, caKey, serial)
				if err != nil {
					fail.CompareAndSwap(nil, fmt.Errorf("device %s: %w", serial, err))
					return
				}
				mu.Lock()
				err = load.WriteDevice(w, id, der, key)
				mu.Unlock()
				if err != nil {
					fail.CompareAndSwap(nil, err)
					return
				}
				if d := done.Add(1); d%2000 == 0 {
					log.Printf("  %d enrolled", d)
				}
			}
		}()
	}
	wg.Wait()
	if err := w.Flush(); err != nil {
		return "", err
	}
	if err, ok := fail.Load().(error); ok {
		return "", err
	}
	log.Printf("enrolled %d devices in %s", missing, time.Since(start).Round(time.Second))
	return path, nil
}

// enrollOne preregisters a serial and enrolls it over EST with a birth
// certificate, returning the device id, its certificate and its key.
func enrollOne(ctx context.Context, api *client.Client, roots *x509.CertPool, deviceAddr, mfg string, caCert *x509.Certificate, caKey crypto.Signer, serial string) (string, []byte, *ecdsa.PrivateKey, error) {
	birth, birthKey, err := pki.MintBirthCertificate(pki.BirthConfig{CA: caCert, CAKey: caKey, Serial: serial, Model: "LVP"})
	if err != nil {
		return "", nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", nil, nil, err
	}
	csr, err := pki.NewCSR(key, serial, serial)
	if err != nil {
		return "", nil, nil, err
	}
	if _, err := api.Preregister(ctx, client.Preregistration{Serial: serial, Manufacturer: mfg, Model: "LVP"}); err != nil {
		return "", nil, nil, err
	}
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{birth.Raw}, PrivateKey: birthKey, Leaf: birth}},
	}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+deviceAddr+"/.well-known/est/simpleenroll",
		bytes.NewReader([]byte(base64.StdEncoding.EncodeToString(csr))))
	req.Header.Set("Content-Type", "application/pkcs10")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", nil, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", nil, nil, fmt.Errorf("simpleenroll: status %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	der, err := base64.StdEncoding.DecodeString(string(bytes.Join(bytes.Fields(body), nil)))
	if err != nil {
		return "", nil, nil, fmt.Errorf("simpleenroll: %w", err)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return "", nil, nil, fmt.Errorf("simpleenroll: %w", err)
	}
	for _, c := range p7.Certificates {
		if id, err := pki.DeviceIDFromCert(c); err == nil {
			return id, c.Raw, key, nil
		}
	}
	return "", nil, nil, errors.New("simpleenroll: no device certificate in the response")
}
