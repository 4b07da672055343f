package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/wardhq/ward/client"
	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/api/apitest"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
	"github.com/wardhq/ward/internal/store/storetest"
)

// twoPeople is an Env with a second admin, unrelated to the first.
type twoPeople struct {
	e             *apitest.Env
	first, second *client.Client
	firstID       string // token id of the first admin
	secondActor   string
	clientFor     func(secret string) *client.Client
	mintFrom      func(creator *client.Client, name string, roles ...string) *client.Client
	auditOf       func(target string) []audit.Entry
}

func newTwoPeople(t *testing.T, s *store.Store) twoPeople {
	t.Helper()
	ctx := context.Background()
	e := apitest.New(t, s, nil)
	tp := twoPeople{e: e, first: e.Client, firstID: tokenID(e.Token)}
	tp.clientFor = func(secret string) *client.Client {
		c, err := client.New(e.Server.URL, secret, client.WithHTTPClient(e.Server.Client()))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	secret, tok, err := e.Tokens.Create(ctx, access.Principal{Kind: "system", ID: "second", Roles: []access.Role{access.RoleAdmin}},
		access.TokenSpec{Name: "second-admin", Roles: []access.Role{access.RoleAdmin}})
	if err != nil {
		t.Fatal(err)
	}
	tp.second, tp.secondActor = tp.clientFor(secret), tok.Actor()
	tp.mintFrom = func(creator *client.Client, name string, roles ...string) *client.Client {
		t.Helper()
		secret, _, err := creator.CreateToken(ctx, client.TokenRequest{Name: name, Roles: roles})
		if err != nil {
			t.Fatal(err)
		}
		return tp.clientFor(secret)
	}
	tp.auditOf = func(target string) []audit.Entry {
		t.Helper()
		es, err := e.Audit.List(ctx, audit.Filter{Target: target, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	return tp
}

func TestMassRevocation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		tp := newTwoPeople(t, s)
		e, c := tp.e, tp.first
		mca, _ := e.ManufacturerCA(t, "Acme Infusion")
		if _, err := c.AddManufacturer(ctx, "Acme Infusion", pki.EncodeCertificates(mca)); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for i := range 18 {
			d, err := c.Preregister(ctx, client.Preregistration{Serial: fmt.Sprintf("P-%02d", i), Manufacturer: "Acme Infusion", Model: "P7", Site: "Main"})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, d.ID)
		}
		cert := issueTo(t, e, ids[0], "P-00")

		// Up to five: revoked at once, certificates too.
		got, err := c.RevokeDevices(ctx, []string{ids[0], "P-01", "P-02", "P-03", ids[4], "P-00"}, "lost shipment")
		if err != nil {
			t.Fatal(err)
		}
		if got.Approval != nil || len(got.Devices) != 5 {
			t.Fatalf("5 devices: %+v", got)
		}
		for _, d := range got.Devices {
			if d.State != client.StateRevoked {
				t.Fatalf("device %s is %s", d.Serial, d.State)
			}
		}
		if !e.Fleet.IsRevoked(fleet.CertSerial(cert)) {
			t.Fatal("certificate of a mass-revoked device not revoked")
		}
		// All or none: one device already revoked refuses the lot.
		if _, err := c.RevokeDevices(ctx, []string{ids[5], ids[0]}, "again"); !client.IsConflict(err) {
			t.Fatalf("revoking a revoked device among others: %v", err)
		}
		if d, _ := c.Device(ctx, ids[5]); d.State != client.StatePending {
			t.Fatalf("device %s revoked although its batch was refused", d.Serial)
		}
		if _, err := c.RevokeDevices(ctx, []string{"NOPE"}, "x"); !client.IsNotFound(err) {
			t.Fatalf("unknown device: %v", err)
		}
		if _, err := c.RevokeDevices(ctx, []string{ids[5]}, ""); statusOf(err) != 422 {
			t.Fatalf("no reason: %v", err)
		}

		// Six: a pending request; nothing revoked yet.
		six := ids[5:11]
		got, err = c.RevokeDevices(ctx, six, "firmware backdoor")
		if err != nil {
			t.Fatal(err)
		}
		ap := got.Approval
		if ap == nil || len(got.Devices) != 0 || ap.State != client.ApprovalPending || ap.Kind != "devices.revoke" ||
			!strings.HasPrefix(ap.Summary, "revoke 6 devices (P-05, P-06") {
			t.Fatalf("6 devices: %+v", got)
		}
		for _, id := range six {
			if d, _ := c.Device(ctx, id); d.State != client.StatePending {
				t.Fatalf("device %s is %s before approval", d.Serial, d.State)
			}
		}
		// The requester cannot approve; a token the requester made cannot;
		// a viewer cannot.
		if _, err := c.ApproveApproval(ctx, ap.ID); !client.IsForbidden(err) {
			t.Fatalf("self-approval: %v", err)
		}
		mine := tp.mintFrom(c, "my-other-token", "security")
		if _, err := mine.ApproveApproval(ctx, ap.ID); !client.IsForbidden(err) {
			t.Fatalf("approval by the requester's own token: %v", err)
		}
		viewer := tp.mintFrom(tp.second, "viewer", "viewer")
		if _, err := viewer.ApproveApproval(ctx, ap.ID); !client.IsForbidden(err) {
			t.Fatalf("approval by a viewer: %v", err)
		}
		if list, err := viewer.Approvals(ctx, client.ApprovalFilter{State: client.ApprovalPending}); err != nil || len(list) != 1 || list[0].ID != ap.ID {
			t.Fatalf("pending list = %+v, %v", list, err)
		}
		// A second person approves: all six revoked, by the approver.
		done, err := tp.second.ApproveApproval(ctx, ap.ID)
		if err != nil {
			t.Fatal(err)
		}
		var result struct {
			Revoked []string `json:"revoked"`
		}
		if done.State != client.ApprovalApproved || done.DecidedBy != tp.secondActor || json.Unmarshal(done.Result, &result) != nil || len(result.Revoked) != 6 {
			t.Fatalf("approved = %+v %s", done, done.Result)
		}
		for _, id := range six {
			d, _ := c.Device(ctx, id)
			if d.State != client.StateRevoked || !strings.Contains(d.StateReason, "firmware backdoor") {
				t.Fatalf("device %s after approval: %s %q", d.Serial, d.State, d.StateReason)
			}
			es := tp.auditOf("device:" + id)
			if last := es[len(es)-1]; last.Action != "device.revoke" || last.Actor != tp.secondActor {
				t.Fatalf("device %s audit: %+v", d.Serial, last)
			}
		}
		var trail []string
		for _, en := range tp.auditOf("approval:" + ap.ID) {
			trail = append(trail, en.Action+"/"+en.Outcome)
		}
		if want := "approval.request/pending approval.approve/denied approval.approve/denied approval.approve/denied approval.approve/success approval.execute/success"; strings.Join(trail, " ") != want {
			t.Fatalf("approval audit = %v", trail)
		}

		// In one transaction: if one device cannot be revoked when the
		// request is approved, none is, and the request is failed.
		seven := ids[11:18]
		got, err = c.RevokeDevices(ctx, seven, "recall")
		if err != nil || got.Approval == nil {
			t.Fatalf("7 devices: %+v, %v", got, err)
		}
		if _, err := c.Revoke(ctx, seven[3], "stolen"); err != nil {
			t.Fatal(err)
		}
		if _, err := tp.second.ApproveApproval(ctx, got.Approval.ID); !client.IsConflict(err) {
			t.Fatalf("approval of a batch with a revoked device: %v", err)
		}
		failed, err := c.Approval(ctx, got.Approval.ID)
		if err != nil || failed.State != client.ApprovalFailed || !strings.Contains(failed.Error, "revoked") {
			t.Fatalf("failed approval = %+v, %v", failed, err)
		}
		for i, id := range seven {
			if d, _ := c.Device(ctx, id); i != 3 && d.State != client.StatePending {
				t.Fatalf("device %s is %s after a failed batch", d.Serial, d.State)
			}
		}
	})
}

func TestRemoveManufacturer(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		tp := newTwoPeople(t, s)
		e, c := tp.e, tp.first
		mca, mkey := e.ManufacturerCA(t, "Acme Infusion")
		m, err := c.AddManufacturer(ctx, "Acme Infusion", pki.EncodeCertificates(mca))
		if err != nil {
			t.Fatal(err)
		}
		d, err := c.Preregister(ctx, client.Preregistration{Serial: "PX-1", Manufacturer: "Acme Infusion", Model: "P7"})
		if err != nil {
			t.Fatal(err)
		}
		cert := issueTo(t, e, d.ID, "PX-1")
		birth, _, err := pki.MintBirthCertificate(pki.BirthConfig{CA: mca, CAKey: mkey, Serial: "PX-2", Now: e.Clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Fleet.AttestBirthCertificate(ctx, birth, nil); err != nil {
			t.Fatalf("attest before removal: %v", err)
		}

		if _, err := c.RemoveManufacturer(ctx, "Nobody"); !client.IsNotFound(err) {
			t.Fatalf("remove unknown: %v", err)
		}
		ap, err := c.RemoveManufacturer(ctx, "Acme Infusion")
		if err != nil {
			t.Fatal(err)
		}
		if ap.State != client.ApprovalPending || ap.Kind != "manufacturer.remove" || !strings.Contains(ap.Summary, m.Fingerprint) {
			t.Fatalf("request = %+v", ap)
		}
		// Still trusted until a second person approves.
		if ms, _ := c.Manufacturers(ctx); len(ms) != 1 {
			t.Fatalf("manufacturers before approval: %d", len(ms))
		}
		if _, err := c.ApproveApproval(ctx, ap.ID); !client.IsForbidden(err) {
			t.Fatalf("self-approval: %v", err)
		}
		// A biomed engineer (no manufacturers:manage) may not decide.
		biomed := tp.mintFrom(tp.second, "biomed", "biomed")
		if _, err := biomed.ApproveApproval(ctx, ap.ID); !client.IsForbidden(err) {
			t.Fatalf("approval without the permission: %v", err)
		}
		if _, err := biomed.RejectApproval(ctx, ap.ID, "no"); !client.IsForbidden(err) {
			t.Fatalf("rejection without the permission: %v", err)
		}
		sec := tp.mintFrom(tp.second, "security", "security")
		done, err := sec.ApproveApproval(ctx, ap.ID)
		if err != nil || done.State != client.ApprovalApproved {
			t.Fatalf("approve = %+v, %v", done, err)
		}
		if ms, _ := c.Manufacturers(ctx); len(ms) != 0 {
			t.Fatalf("manufacturers after removal: %+v", ms)
		}
		if _, err := e.Fleet.AttestBirthCertificate(ctx, birth, nil); !errors.Is(err, fleet.ErrUntrusted) {
			t.Fatalf("attest after removal: %v", err)
		}
		if _, err := c.Preregister(ctx, client.Preregistration{Serial: "PX-3", Manufacturer: m.ID, Model: "P7"}); !client.IsNotFound(err) {
			t.Fatalf("preregister for a removed manufacturer: %v", err)
		}
		// Devices already enrolled keep their certificates.
		if got, err := c.Device(ctx, d.ID); err != nil || got.State != client.StateActive || e.Fleet.IsRevoked(fleet.CertSerial(cert)) {
			t.Fatalf("enrolled device after removal: %+v, %v", got, err)
		}
		es := tp.auditOf("manufacturer:" + m.ID)
		if last := es[len(es)-1]; last.Action != "manufacturer.remove" || last.Outcome != audit.Success {
			t.Fatalf("manufacturer audit: %+v", last)
		}
		if _, err := c.RemoveManufacturer(ctx, m.ID); !client.IsNotFound(err) {
			t.Fatalf("remove twice: %v", err)
		}

		// Rejection keeps the reason; a rejected request cannot be approved.
		m2ca, _ := e.ManufacturerCA(t, "Beta Pumps")
		if _, err := c.AddManufacturer(ctx, "Beta Pumps", pki.EncodeCertificates(m2ca)); err != nil {
			t.Fatal(err)
		}
		ap2, err := c.RemoveManufacturer(ctx, "Beta Pumps")
		if err != nil {
			t.Fatal(err)
		}
		rej, err := sec.RejectApproval(ctx, ap2.ID, "wrong manufacturer")
		if err != nil || rej.State != client.ApprovalRejected || rej.Reason != "wrong manufacturer" {
			t.Fatalf("reject = %+v, %v", rej, err)
		}
		if _, err := tp.second.ApproveApproval(ctx, ap2.ID); !client.IsConflict(err) {
			t.Fatalf("approve a rejected request: %v", err)
		}
		if ms, _ := c.Manufacturers(ctx); len(ms) != 1 {
			t.Fatalf("rejected removal removed: %+v", ms)
		}
	})
}

func TestSetUserRolesNeedsApproval(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		tp := newTwoPeople(t, s)
		e, c := tp.e, tp.first
		u, err := e.Users.Create(ctx, access.Principal{Kind: "system", ID: "test", Roles: []access.Role{access.RoleAdmin}},
			access.NewUser{Username: "nora", Password: "a long enough passphrase", Roles: []access.Role{access.RoleViewer}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetUserRoles(ctx, "nobody", []string{"biomed"}, nil); !client.IsNotFound(err) {
			t.Fatalf("unknown user: %v", err)
		}
		if _, err := c.SetUserRoles(ctx, "nora", []string{"wizard"}, nil); statusOf(err) != 422 {
			t.Fatalf("unknown role: %v", err)
		}
		ap, err := c.SetUserRoles(ctx, "nora", []string{"biomed"}, []string{"Main"})
		if err != nil {
			t.Fatal(err)
		}
		if ap.State != client.ApprovalPending || !strings.Contains(ap.Summary, "nora") {
			t.Fatalf("request = %+v", ap)
		}
		if got, _ := e.Users.Get(ctx, u.ID); len(got.Roles) != 1 || got.Roles[0] != access.RoleViewer {
			t.Fatalf("roles changed before approval: %v", got.Roles)
		}
		if _, err := c.ApproveApproval(ctx, ap.ID); !client.IsForbidden(err) {
			t.Fatalf("self-approval: %v", err)
		}
		if _, err := tp.second.ApproveApproval(ctx, ap.ID); err != nil {
			t.Fatal(err)
		}
		got, _ := e.Users.Get(ctx, u.ID)
		if len(got.Roles) != 1 || got.Roles[0] != access.RoleBiomed || len(got.Sites) != 1 || got.Sites[0] != "Main" {
			t.Fatalf("roles after approval: %v %v", got.Roles, got.Sites)
		}
	})
}

// TestApprovalExpiresOverHTTP: with the clock past the deadline the request
// reads expired and cannot be approved.
func TestApprovalExpiresOverHTTP(t *testing.T) {
	s := storetest.Open(t, store.SQLite)
	ctx := context.Background()
	tp := newTwoPeople(t, s)
	mca, _ := tp.e.ManufacturerCA(t, "Acme Infusion")
	if _, err := tp.first.AddManufacturer(ctx, "Acme Infusion", pki.EncodeCertificates(mca)); err != nil {
		t.Fatal(err)
	}
	ap, err := tp.first.RemoveManufacturer(ctx, "Acme Infusion")
	if err != nil {
		t.Fatal(err)
	}
	tp.e.Clock.Add(access.DefaultApprovalTTL)
	if _, err := tp.second.ApproveApproval(ctx, ap.ID); !client.IsConflict(err) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("approve expired: %v", err)
	}
	if got, _ := tp.first.Approval(ctx, ap.ID); got.State != client.ApprovalExpired {
		t.Fatalf("state = %s", got.State)
	}
	if ms, _ := tp.first.Manufacturers(ctx); len(ms) != 1 {
		t.Fatal("an expired request was carried out")
	}
}
