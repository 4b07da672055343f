// Package load is the MQTT load generator behind bench/cmd/mqttload and the
// harness in bench/mqtt: simulated devices that connect over mutual TLS 1.3
// with their Ward-issued certificates and speak MQTT 5 with
// github.com/eclipse/paho.golang. It drives any broker that accepts those
// certificates (Ward's gateway, Mosquitto) the same way, so their figures
// can be compared.
package load

import (
	"bufio"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
)

// Device is one simulated device: its Ward device id (also its MQTT client
// id) and its operational certificate with the private key.
type Device struct {
	ID   string
	Cert tls.Certificate
}

// deviceIDHeader carries the device id on the certificate's PEM block.
const deviceIDHeader = "Device-Id"

// WriteDevice appends one device to a devices file: its certificate (PEM,
// with a Device-Id header) followed by its PKCS#8 private key.
func WriteDevice(w io.Writer, id string, certDER []byte, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Headers: map[string]string{deviceIDHeader: id}, Bytes: certDER}); err != nil {
		return err
	}
	return pem.Encode(w, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// ReadDevices reads count devices starting at the offset-th from a devices
// file written with WriteDevice (count <= 0: all from offset on).
func ReadDevices(path string, offset, count int) ([]Device, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var devs []Device
	for i := 0; ; i++ {
		var cert, key *pem.Block
		cert, b = pem.Decode(b)
		if cert == nil {
			break
		}
		key, b = pem.Decode(b)
		if key == nil || cert.Type != "CERTIFICATE" || key.Type != "PRIVATE KEY" || cert.Headers[deviceIDHeader] == "" {
			return nil, fmt.Errorf("load: %s: device %d is malformed", path, i)
		}
		if i < offset {
			continue
		}
		if count > 0 && len(devs) == count {
			break
		}
		leaf, err := x509.ParseCertificate(cert.Bytes)
		if err != nil {
			return nil, fmt.Errorf("load: %s: device %d: %w", path, i, err)
		}
		k, err := x509.ParsePKCS8PrivateKey(key.Bytes)
		if err != nil {
			return nil, fmt.Errorf("load: %s: device %d: key: %w", path, i, err)
		}
		devs = append(devs, Device{
			ID:   cert.Headers[deviceIDHeader],
			Cert: tls.Certificate{Certificate: [][]byte{cert.Bytes}, PrivateKey: k, Leaf: leaf},
		})
	}
	if count > 0 && len(devs) < count {
		return nil, fmt.Errorf("load: %s holds %d devices from %d, want %d", path, len(devs), offset, count)
	}
	if len(devs) == 0 {
		return nil, errors.New("load: no devices in " + path)
	}
	return devs, nil
}

// CountDevices returns how many devices a devices file holds (0 if it does
// not exist).
func CountDevices(path string) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() == "-----BEGIN CERTIFICATE-----" {
			n++
		}
	}
	return n, sc.Err()
}
