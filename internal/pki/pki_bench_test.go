package pki

import "testing"

// BenchmarkIssueDevice measures signing one LDevID for an ECDSA P-256 CSR,
// the work of every enrollment and renewal.
func BenchmarkIssueDevice(b *testing.B) {
	a := testCA(b)
	csr := newCSR(b, newP256(b), "pump-1", "SN-1")
	id := DeviceIdentity{ID: "pump-1", Serial: "SN-1", Manufacturer: "Acme Medical", Model: "Infusa 3"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.IssueDevice(csr, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyDevice measures checking a presented LDevID.
func BenchmarkVerifyDevice(b *testing.B) {
	a := testCA(b)
	leaf := issue(b, a, "pump-1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.VerifyDevice(leaf, nil); err != nil {
			b.Fatal(err)
		}
	}
}
