package fleet_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

type fixture struct {
	reg         *fleet.Registry
	st          *store.Store
	audit       *audit.Log
	ca          *pki.Authority
	revokedSeen [][]string
}

func newFixture(t *testing.T, st *store.Store) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ca")
	pass := []byte("correct horse battery staple")
	if err := pki.Init(pki.InitConfig{Dir: dir, Passphrase: pass}); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Open(pki.Config{Dir: dir, Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st, audit: audit.New(st, nil), ca: ca}
	f.reg, err = fleet.New(ctx, fleet.Config{Store: st, Audit: f.audit, OnRevoke: func(s []string) { f.revokedSeen = append(f.revokedSeen, s) }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) addManufacturer(t *testing.T, name string) (fleet.Manufacturer, *x509.Certificate, crypto.Signer) {
	t.Helper()
	caCert, caKey, err := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	m, err := f.reg.AddManufacturer(context.Background(), "token:test", name, pki.EncodeCertificates(caCert))
	if err != nil {
		t.Fatal(err)
	}
	return m, caCert, caKey
}

// issue signs an operational certificate for d and records it.
func (f *fixture) issue(t *testing.T, d fleet.Device) *x509.Certificate {
	t.Helper()
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := pki.NewCSR(key, d.ID, d.Serial)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := f.ca.IssueDevice(csr, pki.DeviceIdentity{ID: d.ID, Serial: d.Serial, Manufacturer: d.Manufacturer})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.Tx(ctx, func(tx *store.Tx) error { return f.reg.RecordIssued(ctx, tx, d.ID, cert) }); err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestLifecycle(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		f := newFixture(t, st)
		m, _, _ := f.addManufacturer(t, "Acme Medical")

		d, err := f.reg.Preregister(ctx, "token:t", fleet.Preregistration{Serial: "PUMP-0001", Manufacturer: "Acme Medical", Model: "LVP 3000", Site: "General", Unit: "ICU 4", Tags: []string{"infusion"}})
		if err != nil {
			t.Fatal(err)
		}
		if d.State != fleet.Pending || !d.Approved() || d.ManufacturerID != m.ID || !fleet.IsID(d.ID) {
			t.Fatalf("preregistered device: %+v", d)
		}
		if _, err := f.reg.Preregister(ctx, "token:t", fleet.Preregistration{Serial: "PUMP-0001", Manufacturer: m.ID, Model: "LVP 3000"}); !errors.Is(err, fleet.ErrConflict) {
			t.Fatalf("second preregistration: %v, want ErrConflict", err)
		}

		cert := f.issue(t, d)
		d, err = f.reg.Get(ctx, "PUMP-0001") // by serial
		if err != nil {
			t.Fatal(err)
		}
		if d.State != fleet.Active || d.CertSerial != fleet.CertSerial(cert) || d.LastSeenAt == nil {
			t.Fatalf("after issuance: %+v", d)
		}
		if _, err := f.reg.CheckAdmitted(ctx, d.ID, fleet.CertSerial(cert)); err != nil {
			t.Fatalf("active device not admitted: %v", err)
		}

		// Approve is only for pending devices.
		if _, err := f.reg.Approve(ctx, "token:t", d.ID); !errors.Is(err, fleet.ErrState) {
			t.Fatalf("approve active: %v", err)
		}

		// Revoke: state, certificate revoked in memory and store, hook called.
		d, err = f.reg.Revoke(ctx, "token:t", d.ID, "stolen from ward 4")
		if err != nil {
			t.Fatal(err)
		}
		if d.State != fleet.Revoked || d.StateReason != "revoked: stolen from ward 4" {
			t.Fatalf("after revoke: %+v", d)
		}
		if !f.reg.IsRevoked(fleet.CertSerial(cert)) {
			t.Fatal("certificate not in the revocation set")
		}
		if len(f.revokedSeen) != 1 || f.revokedSeen[0][0] != fleet.CertSerial(cert) {
			t.Fatalf("OnRevoke saw %v", f.revokedSeen)
		}
		entries, err := f.reg.RevokedEntries(ctx)
		if err != nil || len(entries) != 1 || entries[0].SerialNumber.Cmp(cert.SerialNumber) != 0 || entries[0].ReasonCode != 9 {
			t.Fatalf("revoked entries = %+v, %v", entries, err)
		}
		if _, err := f.reg.CheckAdmitted(ctx, d.ID, fleet.CertSerial(cert)); !errors.Is(err, fleet.ErrState) {
			t.Fatalf("revoked device admitted: %v", err)
		}
		// A certificate cannot be recorded for a revoked device.
		err = st.Tx(ctx, func(tx *store.Tx) error { return f.reg.RecordIssued(ctx, tx, d.ID, cert) })
		if !errors.Is(err, fleet.ErrState) {
			t.Fatalf("RecordIssued on revoked: %v", err)
		}
		// A second registry (another node) loads the revocation from the store.
		other, err := fleet.New(ctx, fleet.Config{Store: st, Audit: f.audit})
		if err != nil {
			t.Fatal(err)
		}
		if !other.IsRevoked(fleet.CertSerial(cert)) {
			t.Fatal("revocation not loaded by another registry")
		}

		if _, err := f.reg.Revoke(ctx, "token:t", d.ID, ""); !errors.Is(err, fleet.ErrState) {
			t.Fatalf("revoke twice: %v", err)
		}
		if d, err = f.reg.Decommission(ctx, "token:t", d.ID, "end of life"); err != nil || d.State != fleet.Decommissioned {
			t.Fatalf("decommission: %+v %v", d, err)
		}

		// The audit log holds each step, in order.
		got, err := f.audit.List(ctx, audit.Filter{Target: "device:" + d.ID})
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, e := range got {
			actions = append(actions, e.Action)
		}
		want := []string{"device.preregister", "device.revoke", "device.decommission"}
		if len(actions) != len(want) {
			t.Fatalf("audit actions = %v, want %v", actions, want)
		}
		for i := range want {
			if actions[i] != want[i] {
				t.Fatalf("audit actions = %v, want %v", actions, want)
			}
		}
	})
}

func TestPendingApproveReject(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		f := newFixture(t, st)
		m, _, _ := f.addManufacturer(t, "Acme")

		var a, b fleet.Device
		err := st.Tx(ctx, func(tx *store.Tx) error {
			var err error
			if a, err = f.reg.CreatePending(ctx, tx, m.ID, "SN-A", "LVP"); err != nil {
				return err
			}
			b, err = f.reg.CreatePending(ctx, tx, m.ID, "SN-B", "")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if a.State != fleet.Pending || a.Approved() || a.EnrollRequestedAt == nil {
			t.Fatalf("pending device: %+v", a)
		}
		// Not approved: no certificate can be recorded.
		err = st.Tx(ctx, func(tx *store.Tx) error {
			_, err := f.reg.CreatePending(ctx, tx, m.ID, "SN-A", "")
			return err
		})
		if !errors.Is(err, fleet.ErrConflict) {
			t.Fatalf("duplicate pending: %v", err)
		}
		if a, err = f.reg.Approve(ctx, "token:t", a.ID); err != nil || !a.Approved() || a.ApprovedBy != "token:t" {
			t.Fatalf("approve: %+v %v", a, err)
		}
		if b, err = f.reg.Reject(ctx, "token:t", "SN-B", "not ours"); err != nil || b.State != fleet.Revoked {
			t.Fatalf("reject: %+v %v", b, err)
		}
		list, err := f.reg.List(ctx, fleet.ListFilter{State: fleet.Pending})
		if err != nil || len(list) != 1 || list[0].ID != a.ID {
			t.Fatalf("pending list = %+v %v", list, err)
		}
		counts, err := f.reg.Counts(ctx)
		if err != nil || counts[fleet.Pending] != 1 || counts[fleet.Revoked] != 1 {
			t.Fatalf("counts = %v %v", counts, err)
		}
		// Preregistering a device that already asked approves it.
		err = st.Tx(ctx, func(tx *store.Tx) error {
			_, err := f.reg.CreatePending(ctx, tx, m.ID, "SN-C", "")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		c, err := f.reg.Preregister(ctx, "token:t", fleet.Preregistration{Serial: "SN-C", Manufacturer: "Acme", Model: "LVP", Unit: "ICU"})
		if err != nil || !c.Approved() || c.Unit != "ICU" {
			t.Fatalf("preregister pending: %+v %v", c, err)
		}
	})
}

func TestSerialAmbiguousAcrossManufacturers(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		f := newFixture(t, st)
		f.addManufacturer(t, "Acme")
		f.addManufacturer(t, "Globex")
		for _, m := range []string{"Acme", "Globex"} {
			if _, err := f.reg.Preregister(ctx, "token:t", fleet.Preregistration{Serial: "0001", Manufacturer: m, Model: "X"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.reg.Get(ctx, "0001"); !errors.Is(err, fleet.ErrAmbiguous) {
			t.Fatalf("Get(shared serial) = %v, want ErrAmbiguous", err)
		}
		if _, err := f.reg.Get(ctx, "nope"); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("Get(unknown) = %v", err)
		}
	})
}

func TestManufacturers(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		f := newFixture(t, st)
		m, caCert, caKey := f.addManufacturer(t, "Acme")
		if _, err := f.reg.AddManufacturer(ctx, "token:t", "Acme", pki.EncodeCertificates(caCert)); !errors.Is(err, fleet.ErrConflict) {
			t.Fatalf("duplicate manufacturer: %v", err)
		}
		// A leaf certificate is not a CA.
		birth, _, err := pki.MintBirthCertificate(pki.BirthConfig{CA: caCert, CAKey: caKey, Serial: "SN1"})
		if err != nil {
			t.Fatal(err)
		}
		for name, bad := range map[string][]byte{
			"leaf":    pki.EncodeCertificates(birth),
			"garbage": []byte("hello"),
			"key":     []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
		} {
			if _, err := f.reg.AddManufacturer(ctx, "token:t", "Bad "+name, bad); !errors.Is(err, fleet.ErrInvalid) {
				t.Fatalf("%s: %v, want ErrInvalid", name, err)
			}
		}
		got, err := f.reg.AttestBirthCertificate(ctx, birth, nil)
		if err != nil || got.ID != m.ID {
			t.Fatalf("attest: %+v %v", got, err)
		}
		// A birth certificate from an unregistered manufacturer.
		otherCA, otherKey, _ := pki.NewManufacturerCA(pki.ManufacturerCAConfig{Name: "Rogue"})
		rogue, _, _ := pki.MintBirthCertificate(pki.BirthConfig{CA: otherCA, CAKey: otherKey, Serial: "SN1"})
		if _, err := f.reg.AttestBirthCertificate(ctx, rogue, nil); !errors.Is(err, fleet.ErrUntrusted) {
			t.Fatalf("rogue attest: %v", err)
		}
		// Expired birth certificate: x509's reason is kept.
		old, _, _ := pki.MintBirthCertificate(pki.BirthConfig{CA: caCert, CAKey: caKey, Serial: "SN2", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
		if _, err := f.reg.AttestBirthCertificate(ctx, old, nil); !errors.Is(err, fleet.ErrUntrusted) {
			t.Fatal("expired birth certificate attested")
		}
	})
}

func TestRecordStatesMovesForwardOnly(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		f := newFixture(t, st)
		f.addManufacturer(t, "Acme Medical")
		a, err := f.reg.Preregister(ctx, "token:t", fleet.Preregistration{Serial: "PUMP-0001", Manufacturer: "Acme Medical", Model: "LVP 3000"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := f.reg.Preregister(ctx, "token:t", fleet.Preregistration{Serial: "PUMP-0002", Manufacturer: "Acme Medical", Model: "LVP 3000"})
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
		err = f.reg.RecordStates(ctx, []fleet.StateReport{
			{DeviceID: a.ID, State: json.RawMessage(`{"v":1,"mode":"infusing"}`), At: t0.Add(2 * time.Second)},
			{DeviceID: a.ID, State: json.RawMessage(`{"v":1,"mode":"idle"}`), At: t0}, // older: ignored
			{DeviceID: b.ID, State: json.RawMessage(`not json`), At: t0},              // skipped
			{DeviceID: b.ID, State: json.RawMessage(`{"v":1,"mode":"paused"}`), At: t0.Add(time.Second)},
			{DeviceID: "unknown", State: json.RawMessage(`{"v":1}`), At: t0},
		})
		if err != nil {
			t.Fatal(err)
		}
		for id, want := range map[string]string{a.ID: `{"v":1,"mode":"infusing"}`, b.ID: `{"v":1,"mode":"paused"}`} {
			got, _, err := f.reg.LastState(ctx, id)
			if err != nil || string(got) != want {
				t.Errorf("%s: last state %s (%v), want %s", id, got, err, want)
			}
		}
	})
}
