package enroll

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// BenchmarkSimpleEnroll measures enrollments of admitted devices through
// real HTTPS, one TLS 1.3 handshake with a client certificate per request,
// on SQLite: attestation, CSR check, signing and one write transaction.
func BenchmarkSimpleEnroll(b *testing.B) {
	f := newFixture(b, storetest.Open(b, store.SQLite))
	const devices = 64
	type dev struct {
		client *http.Client
		body   []byte
	}
	devs := make([]dev, devices)
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.Root())
	for i := range devs {
		serial := fmt.Sprintf("SN-BENCH-%03d", i)
		f.preregister(serial)
		tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{f.birth(serial)}, MinVersion: tls.VersionTLS13}}
		b.Cleanup(tr.CloseIdleConnections)
		devs[i] = dev{client: &http.Client{Transport: tr}, body: csrBody(b, newKey(b), serial)}
	}
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d := devs[next.Add(1)%devices]
			r, err := f.post(d.client, PathSimpleEnroll, mediaPKCS10, d.body)
			if err != nil || r.status != http.StatusOK {
				b.Errorf("enroll: %v %d %s", err, r.status, r.body)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enrollments/s")
}
