package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

func TestPreregisteredEnrollAndReenroll(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st)
		ctx := context.Background()
		pre := f.preregister("SN-1001")
		birth := f.birth("SN-1001")
		key := newKey(t)
		before := f.snapshot()

		r := f.mustPost(f.client(birth), PathSimpleEnroll, csrBody(t, key, "SN-1001"), http.StatusOK)
		if ct := r.header.Get("Content-Type"); ct != "application/pkcs7-mime; smime-type=certs-only" {
			t.Errorf("Content-Type %q", ct)
		}
		certs := certsFrom(t, r)
		if len(certs) != 1 {
			t.Fatalf("response holds %d certificates, want the issued one only", len(certs))
		}
		cert := certs[0]
		checkLDevID(t, f, cert, pre.ID, "SN-1001", key)

		d, err := f.fleet.Get(ctx, pre.ID)
		if err != nil {
			t.Fatal(err)
		}
		if d.State != fleet.Active || d.CertSerial != fleet.CertSerial(cert) {
			t.Errorf("device state %s cert %s, want active with %s", d.State, d.CertSerial, fleet.CertSerial(cert))
		}
		es := f.auditAfter(before.auditSeq)
		if len(es) != 1 || es[0].Outcome != audit.Success || es[0].Action != ActionSimpleEnroll || es[0].Target != "device:"+pre.ID ||
			es[0].Actor != "birthcert:"+pki.Fingerprint(birth.Leaf) || !strings.HasPrefix(es[0].Source, "127.0.0.1:") {
			t.Errorf("audit after enroll: %+v", es)
		}

		// Renew with the LDevID: same device, new certificate.
		key2 := newKey(t)
		r = f.mustPost(f.client(ldevid(cert, key)), PathSimpleReenroll, csrBody(t, key2, "SN-1001"), http.StatusOK)
		certs = certsFrom(t, r)
		if len(certs) != 1 {
			t.Fatalf("reenroll response holds %d certificates", len(certs))
		}
		cert2 := certs[0]
		checkLDevID(t, f, cert2, pre.ID, "SN-1001", key2)
		if cert2.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			t.Error("reenroll returned the same serial number")
		}
		d, err = f.fleet.Get(ctx, pre.ID)
		if err != nil {
			t.Fatal(err)
		}
		if d.State != fleet.Active || d.CertSerial != fleet.CertSerial(cert2) {
			t.Errorf("after reenroll: state %s cert %s, want active with %s", d.State, d.CertSerial, fleet.CertSerial(cert2))
		}
		cs, err := f.fleet.Certificates(ctx, pre.ID)
		if err != nil || len(cs) != 2 {
			t.Errorf("certificates: %v %v, want 2", cs, err)
		}
		es = f.auditAfter(before.auditSeq + 1)
		if len(es) != 1 || es[0].Outcome != audit.Success || es[0].Action != ActionSimpleReenroll || es[0].Actor != "device:"+pre.ID {
			t.Errorf("audit after reenroll: %+v", es)
		}
	})
}

// checkLDevID verifies an issued certificate: chains to Ward's root, names
// the device, holds the CSR's key.
func checkLDevID(t *testing.T, f *fixture, cert *x509.Certificate, id, serial string, key *ecdsa.PrivateKey) {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(f.ca.Root())
	inter.AddCert(f.ca.Issuer())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("issued certificate does not chain to Ward's root: %v", err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "ward://device/"+id {
		t.Errorf("URI SANs %v, want ward://device/%s", cert.URIs, id)
	}
	if cert.Subject.CommonName != id || pki.SubjectSerial(cert.Subject) != serial {
		t.Errorf("subject %s, want CN=%s serialNumber=%s", cert.Subject, id, serial)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("issued certificate does not hold the CSR's key")
	}
	if got, err := f.ca.VerifyDevice(cert, nil); err != nil || got != id {
		t.Errorf("VerifyDevice: %q %v", got, err)
	}
}

func TestPendingUntilApproved(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st, func(c *Config) { c.RetryAfter = 90 * time.Second })
		ctx := context.Background()
		birth := f.birth("SN-2002")
		key := newKey(t)
		c := f.client(birth)
		before := f.snapshot()

		for i := range 2 {
			r := f.mustPost(c, PathSimpleEnroll, csrBody(t, key, "SN-2002"), http.StatusAccepted)
			if ra := r.header.Get("Retry-After"); ra != "90" {
				t.Errorf("attempt %d: Retry-After %q, want 90", i, ra)
			}
		}
		d, err := f.fleet.Get(ctx, "SN-2002")
		if err != nil {
			t.Fatal(err)
		}
		if d.State != fleet.Pending || d.Approved() || d.EnrollRequestedAt == nil || d.Model != "Infusomat" || d.Manufacturer != mfrName {
			t.Errorf("pending device: %+v", d)
		}
		if n, _ := f.fleet.Counts(ctx); n[fleet.Pending] != 1 || len(n) != 1 {
			t.Errorf("counts %v, want one pending device", n)
		}
		es := f.auditAfter(before.auditSeq)
		if len(es) != 2 || es[0].Outcome != audit.Pending || es[1].Outcome != audit.Pending || es[0].Target != "device:"+d.ID {
			t.Errorf("audit: %+v", es)
		}
		if cs, _ := f.fleet.Certificates(ctx, d.ID); len(cs) != 0 {
			t.Errorf("pending device has certificates: %v", cs)
		}

		if _, err := f.fleet.Approve(ctx, "token:admin", d.ID); err != nil {
			t.Fatal(err)
		}
		r := f.mustPost(c, PathSimpleEnroll, csrBody(t, key, "SN-2002"), http.StatusOK)
		checkLDevID(t, f, certsFrom(t, r)[0], d.ID, "SN-2002", key)
		if d, _ = f.fleet.Get(ctx, d.ID); d.State != fleet.Active {
			t.Errorf("after approval and enrollment: %s, want active", d.State)
		}
	})
}

// TestConcurrentFirstEnrollment: many first requests for one unknown serial
// race to create it; exactly one device results and every request gets 202.
func TestConcurrentFirstEnrollment(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st)
		birth := f.birth("SN-RACE")
		body := csrBody(t, newKey(t), "SN-RACE")
		errs := make(chan error, 8)
		for range 8 {
			go func() {
				r, err := f.post(f.client(birth), PathSimpleEnroll, mediaPKCS10, body)
				if err == nil && r.status != http.StatusAccepted {
					err = fmt.Errorf("status %d: %s", r.status, r.body)
				}
				errs <- err
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		if n, _ := f.fleet.Counts(context.Background()); n[fleet.Pending] != 1 {
			t.Errorf("counts %v, want exactly one pending device", n)
		}
	})
}

func TestRefusals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st, func(c *Config) { c.MaxBody = 4096 })
		ctx := context.Background()

		// An unregistered manufacturer.
		rogueCA, rogueKey, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Rogue"})
		if err != nil {
			t.Fatal(err)
		}
		// Devices in final states.
		_, revokedBirth, _ := f.enrolled("SN-REVOKED")
		if _, err := f.fleet.Revoke(ctx, "token:admin", "SN-REVOKED", "stolen"); err != nil {
			t.Fatal(err)
		}
		_, decomBirth, _ := f.enrolled("SN-DECOM")
		if _, err := f.fleet.Decommission(ctx, "token:admin", "SN-DECOM", "retired"); err != nil {
			t.Fatal(err)
		}
		rejectedBirth := f.birth("SN-REJECTED")
		f.mustPost(f.client(rejectedBirth), PathSimpleEnroll, csrBody(t, newKey(t), "SN-REJECTED"), http.StatusAccepted)
		if _, err := f.fleet.Reject(ctx, "token:admin", "SN-REJECTED", "not ours"); err != nil {
			t.Fatal(err)
		}
		active, activeBirth, activeLDevID := f.enrolled("SN-ACTIVE")
		// An operational certificate of the active device that expired a
		// minute ago: issued by the same CA, its clock set 3 minutes back,
		// for 2 minutes. (Not earlier: the issuing CA itself was made at
		// the start of this test binary, valid from 5 minutes before.)
		past, err := pki.Open(pki.Config{Dir: filepath.Join(caDir, "ca"), Passphrase: []byte(testPass), Lifetime: 2 * time.Minute,
			Now: func() time.Time { return time.Now().Add(-3 * time.Minute) }})
		if err != nil {
			t.Fatal(err)
		}
		oldKey := newKey(t)
		oldCSR, _ := pki.NewCSR(oldKey, active.ID, "SN-ACTIVE")
		oldChecked, _ := pki.ParseCSR(oldCSR)
		oldCert, err := past.IssueDevice(oldChecked, pki.DeviceIdentity{ID: active.ID, Serial: "SN-ACTIVE"})
		if err != nil {
			t.Fatal(err)
		}
		expiredLDevID := tls.Certificate{Certificate: [][]byte{oldCert.Raw}, PrivateKey: oldKey}

		good := f.birth("SN-3003")
		f.preregister("SN-3003")
		key := newKey(t)
		goodBody := csrBody(t, key, "SN-3003")

		badSig, err := pki.NewCSR(key, "SN-3003", "SN-3003")
		if err != nil {
			t.Fatal(err)
		}
		badSig[len(badSig)-5] ^= 0x40 // inside the signature BIT STRING
		weak, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		weakCSR, err := pki.NewCSR(weak, "SN-3003", "SN-3003")
		if err != nil {
			t.Fatal(err)
		}
		big := []byte(strings.Repeat("QUFB", 2000))

		tests := []struct {
			name     string
			certs    []tls.Certificate
			path     string
			ctype    string
			body     []byte
			status   int
			reason   string
			actor    string
			noRecord bool
		}{
			{name: "no client certificate", path: PathSimpleEnroll, body: goodBody, status: 401, reason: "birth certificate", actor: "anonymous"},
			{name: "no client certificate on reenroll", path: PathSimpleReenroll, body: goodBody, status: 401, reason: "operational certificate", actor: "anonymous"},
			{name: "unregistered manufacturer", certs: []tls.Certificate{mintBirth(t, rogueCA, rogueKey, "SN-3003")}, path: PathSimpleEnroll, body: goodBody, status: 403, reason: "registered manufacturer", actor: "birthcert:"},
			{name: "expired birth certificate", certs: []tls.Certificate{f.birth("SN-3003", func(c *pki.BirthConfig) {
				c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
			})}, path: PathSimpleEnroll, body: goodBody, status: 403, reason: "expired", actor: "birthcert:"},
			{name: "birth certificate not yet valid", certs: []tls.Certificate{f.birth("SN-3003", func(c *pki.BirthConfig) {
				c.NotBefore = time.Now().Add(24 * time.Hour)
			})}, path: PathSimpleEnroll, body: goodBody, status: 403, reason: "not valid before", actor: "birthcert:"},
			{name: "CSR serial differs from birth certificate", certs: []tls.Certificate{good}, path: PathSimpleEnroll, body: csrBody(t, key, "SN-9999"), status: 400, reason: "differs", actor: "birthcert:"},
			{name: "CSR with a bad signature", certs: []tls.Certificate{good}, path: PathSimpleEnroll, body: encodeBase64Lines(badSig), status: 400, reason: "signature", actor: "birthcert:"},
			{name: "CSR with a weak key", certs: []tls.Certificate{good}, path: PathSimpleEnroll, body: encodeBase64Lines(weakCSR), status: 400, reason: "key not accepted", actor: "birthcert:"},
			{name: "body not base64", certs: []tls.Certificate{good}, path: PathSimpleEnroll, body: []byte("not base64 at all!"), status: 400, reason: "base64", actor: "birthcert:"},
			{name: "body over the limit", certs: []tls.Certificate{good}, path: PathSimpleEnroll, body: big, status: 413, reason: "larger than 4096", actor: "birthcert:"},
			{name: "wrong content type", certs: []tls.Certificate{good}, path: PathSimpleEnroll, ctype: "application/octet-stream", body: goodBody, status: 415, reason: "application/pkcs10", actor: "birthcert:"},
			{name: "revoked device", certs: []tls.Certificate{revokedBirth}, path: PathSimpleEnroll, body: csrBody(t, key, "SN-REVOKED"), status: 403, reason: "is revoked", actor: "birthcert:"},
			{name: "decommissioned device", certs: []tls.Certificate{decomBirth}, path: PathSimpleEnroll, body: csrBody(t, key, "SN-DECOM"), status: 403, reason: "is decommissioned", actor: "birthcert:"},
			{name: "rejected device", certs: []tls.Certificate{rejectedBirth}, path: PathSimpleEnroll, body: csrBody(t, key, "SN-REJECTED"), status: 403, reason: "is revoked", actor: "birthcert:"},
			{name: "simplereenroll with a birth certificate", certs: []tls.Certificate{activeBirth}, path: PathSimpleReenroll, body: csrBody(t, key, "SN-ACTIVE"), status: 403, reason: "requires the operational certificate", actor: "birthcert:"},
			{name: "simpleenroll with an operational certificate", certs: []tls.Certificate{activeLDevID}, path: PathSimpleEnroll, body: csrBody(t, key, "SN-ACTIVE"), status: 403, reason: "use simplereenroll", actor: "device:" + active.ID},
			{name: "simplereenroll with an expired operational certificate", certs: []tls.Certificate{expiredLDevID}, path: PathSimpleReenroll, body: csrBody(t, key, "SN-ACTIVE"), status: 403, reason: "expired", actor: "device:" + active.ID},
			{name: "simplereenroll CSR for another serial", certs: []tls.Certificate{activeLDevID}, path: PathSimpleReenroll, body: csrBody(t, key, "SN-3003"), status: 400, reason: "differs", actor: "device:" + active.ID},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := f.snapshot()
				ctype := tc.ctype
				if ctype == "" {
					ctype = mediaPKCS10
				}
				r, err := f.post(f.client(tc.certs...), tc.path, ctype, tc.body)
				if err != nil {
					t.Fatal(err)
				}
				if r.status != tc.status || !strings.Contains(string(r.body), tc.reason) {
					t.Errorf("got %d %q, want %d with %q", r.status, r.body, tc.status, tc.reason)
				}
				if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("Content-Type %q, want text/plain", ct)
				}
				after := f.snapshot()
				if after.devices != before.devices || after.certs != before.certs {
					t.Errorf("refusal changed the registry:\nbefore %+v\nafter  %+v", before, after)
				}
				es := f.auditAfter(before.auditSeq)
				if len(es) != 1 {
					t.Fatalf("audit entries %+v, want exactly one", es)
				}
				e := es[0]
				if e.Outcome != audit.Denied || e.Action != "enroll."+strings.TrimPrefix(tc.path, "/.well-known/est/") ||
					!strings.HasPrefix(e.Actor, tc.actor) || e.Reason == "" || !strings.HasPrefix(e.Source, "127.0.0.1:") {
					t.Errorf("audit entry %+v", e)
				}
				if strings.Contains(fmt.Sprint(e), string(goodBody[:40])) {
					t.Error("audit entry holds the CSR")
				}
			})
		}
	})
}

func TestRevokedCertificateRefusedAtHandshake(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st)
		ctx := context.Background()
		d, _, op := f.enrolled("SN-4004")
		if _, err := f.fleet.Revoke(ctx, "token:admin", d.ID, "lost"); err != nil {
			t.Fatal(err)
		}
		before := f.snapshot()
		for _, path := range []string{PathSimpleReenroll, PathSimpleEnroll} {
			_, err := f.post(f.client(op), path, mediaPKCS10, csrBody(t, newKey(t), "SN-4004"))
			if err == nil || !strings.Contains(err.Error(), "tls: bad certificate") {
				t.Errorf("%s with a revoked LDevID: err %v, want a TLS bad certificate alert", path, err)
			}
		}
		after := f.snapshot()
		if after.devices != before.devices || after.certs != before.certs {
			t.Error("handshake refusal changed the registry")
		}
		es := f.auditAfter(before.auditSeq)
		if len(es) != 1 || es[0].Action != ActionHandshake || es[0].Outcome != audit.Denied || es[0].Actor != "device:"+d.ID {
			t.Errorf("audit: %+v, want one handshake denial (repeats are throttled)", es)
		}
	})
}

func TestReenrollChecksRegistry(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st)
		d, _, _ := f.enrolled("SN-5005")
		// Another LDevID for the same device, issued by Ward but never
		// recorded (e.g. the record transaction failed): the device is
		// admitted and the certificate not revoked, so renewal works.
		key := newKey(t)
		der, _ := pki.NewCSR(key, "x", "SN-5005")
		csr, _ := pki.ParseCSR(der)
		stray, err := f.ca.IssueDevice(csr, pki.DeviceIdentity{ID: d.ID, Serial: "SN-5005"})
		if err != nil {
			t.Fatal(err)
		}
		f.mustPost(f.client(ldevid(stray, key)), PathSimpleReenroll, csrBody(t, newKey(t), "SN-5005"), http.StatusOK)

		// A Ward certificate naming a device that is not in the registry.
		ghost, err := f.ca.IssueDevice(csr, pki.DeviceIdentity{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaa", Serial: "SN-5005"})
		if err != nil {
			t.Fatal(err)
		}
		r := f.mustPost(f.client(ldevid(ghost, key)), PathSimpleReenroll, csrBody(t, newKey(t), "SN-5005"), http.StatusForbidden)
		if !strings.Contains(string(r.body), "not in the registry") {
			t.Errorf("body %q", r.body)
		}
	})
}

func TestCACertsAndCRL(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st)
		ctx := context.Background()
		c := f.client()

		r := f.get(c, PathCACerts)
		if r.status != 200 || r.header.Get("Content-Type") != "application/pkcs7-mime" {
			t.Fatalf("cacerts: %d %q", r.status, r.header.Get("Content-Type"))
		}
		certs := certsFrom(t, r)
		if len(certs) != 2 || !certs[0].Equal(f.ca.Issuer()) || !certs[1].Equal(f.ca.Root()) {
			t.Errorf("cacerts holds %d certificates, want issuer then root", len(certs))
		}

		crl1 := f.crl(c)
		if len(crl1.RevokedCertificateEntries) != 0 {
			t.Errorf("fresh CRL lists %d entries", len(crl1.RevokedCertificateEntries))
		}
		if again := f.crl(c); again.Number.Cmp(crl1.Number) != 0 {
			t.Error("CRL rebuilt although nothing changed")
		}
		d, _, op := f.enrolled("SN-6006")
		if _, err := f.fleet.Revoke(ctx, "token:admin", d.ID, "test"); err != nil {
			t.Fatal(err)
		}
		crl2 := f.crl(c)
		if crl2.Number.Cmp(crl1.Number) <= 0 {
			t.Errorf("CRL number %v not above %v", crl2.Number, crl1.Number)
		}
		if len(crl2.RevokedCertificateEntries) != 1 || crl2.RevokedCertificateEntries[0].SerialNumber.Cmp(op.Leaf.SerialNumber) != 0 {
			t.Errorf("CRL entries %+v, want the revoked LDevID", crl2.RevokedCertificateEntries)
		}
		if got := crl2.NextUpdate.Sub(crl2.ThisUpdate); got != 24*time.Hour {
			t.Errorf("NextUpdate - ThisUpdate = %v, want 24h", got)
		}
	})
}

func (f *fixture) crl(c *http.Client) *x509.RevocationList {
	f.t.Helper()
	r := f.get(c, PathCRL)
	if r.status != 200 || r.header.Get("Content-Type") != "application/pkix-crl" {
		f.t.Fatalf("crl: %d %q", r.status, r.header.Get("Content-Type"))
	}
	crl, err := x509.ParseRevocationList(r.body)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(f.ca.Issuer()); err != nil {
		f.t.Fatalf("CRL not signed by the issuing CA: %v", err)
	}
	return crl
}

func TestRoutes(t *testing.T) {
	f := newFixture(t, storetest.Open(t, store.SQLite))
	c := f.client()
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{"GET", PathSimpleEnroll, 405},
		{"PUT", PathCACerts, 405},
		{"POST", PathCRL, 405},
		{"GET", "/.well-known/est/serverkeygen", 404},
		{"GET", "/", 404},
		{"GET", "/.well-known/est/csrattrs", 404},
	} {
		req, _ := http.NewRequest(tc.method, f.ts.URL+tc.path, nil)
		r, err := do(c, req)
		if err != nil {
			t.Fatal(err)
		}
		if r.status != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, r.status, tc.status)
		}
	}
}

func TestTLS12Refused(t *testing.T) {
	f := newFixture(t, storetest.Open(t, store.SQLite))
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.Root())
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12}}}
	_, err := c.Get(f.ts.URL + PathCACerts)
	if err == nil {
		t.Fatal("TLS 1.2 client accepted")
	}
}

func TestRateLimit(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		f := newFixture(t, st, func(c *Config) { c.RateLimit, c.RateBurst = 0.001, 2 })
		c := f.client()
		before := f.snapshot()
		var got []int
		for range 6 {
			r, err := f.post(c, PathSimpleEnroll, mediaPKCS10, nil)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, r.status)
		}
		if fmt.Sprint(got) != "[401 401 429 429 429 429]" {
			t.Errorf("statuses %v", got)
		}
		limited := 0
		for _, e := range f.auditAfter(before.auditSeq) {
			if strings.Contains(e.Reason, "too many") {
				limited++
			}
		}
		if limited != 1 {
			t.Errorf("%d rate-limit audit entries, want 1 (the rest throttled)", limited)
		}
		// GETs are not limited.
		if r := f.get(c, PathCACerts); r.status != 200 {
			t.Errorf("cacerts while limited: %d", r.status)
		}
	})
}

func TestStatusMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{refuse(ErrNoCertificate, "x"), 401},
		{refuse(ErrForbidden, "x"), 403},
		{refuse(ErrBadRequest, "x"), 400},
		{refuse(ErrTooLarge, "x"), 413},
		{refuse(ErrMediaType, "x"), 415},
		{refuse(ErrRateLimited, "x"), 429},
		{fmt.Errorf("wrapped: %w", refuse(ErrForbidden, "x")), 403},
		{errors.New("store: begin: disk full"), 500},
	} {
		if got := statusOf(tc.err); got != tc.want {
			t.Errorf("statusOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if m := messageOf(errors.New("store: secret path /x")); strings.Contains(m, "store") {
		t.Errorf("internal error leaks: %q", m)
	}
}
