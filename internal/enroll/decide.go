package enroll

import (
	"context"
	"crypto/x509"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
	"github.com/wardhq/ward/internal/store"
)

// attempt is one enrollment request as the audit log sees it. The handler
// fills in who is asking as it learns it.
type attempt struct {
	action string
	actor  string
	target string
	source string
	detail map[string]any
}

// result is a successful decision: a certificate (200) or pending (202).
type result struct {
	cert    *x509.Certificate
	pending bool
}

type decideFunc func(ctx context.Context, w http.ResponseWriter, r *http.Request, a *attempt) (result, error)

// serveEnroll runs a decision and turns its outcome into a response. The
// decision audits its own successes inside its transaction; refusals are
// audited here.
func (s *Server) serveEnroll(w http.ResponseWriter, r *http.Request, action string, decide decideFunc) {
	a := &attempt{action: action, actor: audit.Anonymous, source: r.RemoteAddr, detail: map[string]any{}}
	if s.limiter != nil {
		ip := remoteIP(r)
		if !s.limiter.Allow(ip, s.now()) {
			// A flood must not become a flood of audit writes.
			if ok, suppressed := s.quiet.Allow("rate:"+ip, time.Now()); ok {
				a.detail["suppressed"] = suppressed
				s.deny(r.Context(), a, refuse(ErrRateLimited, "too many enrollment requests from %s; slow down", ip))
			}
			w.Header().Set("Retry-After", "1")
			writeText(w, http.StatusTooManyRequests, "too many enrollment requests; slow down")
			return
		}
	}
	res, err := decide(r.Context(), w, r, a)
	switch {
	case err != nil:
		status := statusOf(err)
		if status >= 500 {
			s.log.Error("enroll: internal error", "action", action, "actor", a.actor, "source", a.source, "err", err)
			s.record(r.Context(), audit.Entry{Actor: a.actor, Action: a.action, Target: a.target, Outcome: audit.Failed,
				Reason: "internal error", Source: a.source, Detail: a.detail})
		} else {
			s.deny(r.Context(), a, err)
		}
		writeText(w, status, messageOf(err))
	case res.pending:
		secs := int(math.Ceil(s.retryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(max(1, secs)))
		writeText(w, http.StatusAccepted, "enrollment pending approval; retry after "+strconv.Itoa(max(1, secs))+" seconds")
	default:
		body, err := certsOnly(res.cert)
		if err != nil { // cannot happen for a certificate we just parsed
			s.log.Error("enroll: encode certificate", "action", action, "actor", a.actor, "err", err)
			writeText(w, http.StatusInternalServerError, messageOf(err))
			return
		}
		writeCerts(w, mediaCertsOnly, body)
	}
}

// deny audits a refusal, in a transaction of its own.
func (s *Server) deny(ctx context.Context, a *attempt, err error) {
	reason := messageOf(err)
	s.log.Info("enroll: refused", "action", a.action, "actor", a.actor, "source", a.source, "status", statusOf(err), "reason", reason)
	// A client that hung up must not cost us the record.
	ctx = context.WithoutCancel(ctx)
	s.record(ctx, audit.Entry{Actor: a.actor, Action: a.action, Target: a.target, Outcome: audit.Denied, Reason: reason, Source: a.source, Detail: a.detail})
}

// peer returns the client certificate and the chain the client sent with it.
func peer(r *http.Request) (*x509.Certificate, []*x509.Certificate) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, nil
	}
	return r.TLS.PeerCertificates[0], r.TLS.PeerCertificates[1:]
}

// readCSR checks the media type, reads the body and parses the CSR.
func (s *Server) readCSR(w http.ResponseWriter, r *http.Request) (*pki.CSR, error) {
	if err := checkMediaType(r.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	body, err := readBody(w, r, s.maxBody)
	if err != nil {
		return nil, err
	}
	return parseCSR(body)
}

// simpleEnroll admits a device by its birth certificate (RFC 7030 §4.2.1).
func (s *Server) simpleEnroll(ctx context.Context, w http.ResponseWriter, r *http.Request, a *attempt) (result, error) {
	leaf, inter := peer(r)
	if leaf == nil {
		return result{}, refuse(ErrNoCertificate, "simpleenroll requires the device's birth certificate as TLS client certificate")
	}
	a.actor = "birthcert:" + pki.Fingerprint(leaf)
	if s.wardIssued(leaf) {
		if id, err := pki.DeviceIDFromCert(leaf); err == nil {
			a.actor, a.target = "device:"+id, "device:"+id
		}
		return result{}, refuse(ErrForbidden, "this is a Ward operational certificate; use simplereenroll to renew it")
	}
	mfr, err := s.attest(ctx, leaf, inter)
	if err != nil {
		return result{}, err
	}
	serial := pki.SubjectSerial(leaf.Subject)
	a.detail["manufacturer"] = mfr.Name
	a.detail["serial"] = serial
	if serial == "" {
		return result{}, refuse(ErrForbidden, "birth certificate has no (or more than one) subject serialNumber attribute")
	}
	if !fleet.ValidSerial(serial) {
		return result{}, refuse(ErrForbidden, "birth certificate serial number is not acceptable to Ward (1 to 128 letters, digits and . _ : / + -)")
	}

	csr, err := s.readCSR(w, r)
	if err != nil {
		return result{}, err
	}
	if got := pki.SubjectSerial(csr.Request().Subject); got != serial {
		return result{}, refuse(ErrBadRequest, "certificate request serialNumber %q differs from the birth certificate's %q", got, serial)
	}

	d, err := s.fleet.BySerial(ctx, s.st, mfr.ID, serial)
	if errors.Is(err, fleet.ErrNotFound) {
		var model string
		if ou := leaf.Subject.OrganizationalUnit; len(ou) > 0 {
			model = ou[0]
		}
		d, err = s.createPending(ctx, a, mfr, serial, model)
		if err == nil {
			return result{pending: true}, nil
		}
		if errors.Is(err, fleet.ErrConflict) { // another request created it first
			d, err = s.fleet.BySerial(ctx, s.st, mfr.ID, serial)
		}
	}
	if err != nil {
		return result{}, err
	}
	a.target = "device:" + d.ID

	switch {
	case d.State == fleet.Pending && !d.Approved():
		err := s.st.Tx(ctx, func(tx *store.Tx) error {
			if err := s.fleet.NoteEnrollRequest(ctx, tx, d.ID); err != nil {
				return err
			}
			return s.audit.Append(ctx, tx, s.entry(a, audit.Pending, "awaiting approval"))
		})
		if err != nil {
			return result{}, err
		}
		return result{pending: true}, nil
	case d.State == fleet.Pending, d.State.Admitted():
		cert, err := s.issue(ctx, a, csr, d)
		return result{cert: cert}, err
	default:
		return result{}, refuse(ErrForbidden, "device %s is %s", d.ID, d.State)
	}
}

// attest checks the birth certificate against the registered manufacturers.
func (s *Server) attest(ctx context.Context, leaf *x509.Certificate, inter []*x509.Certificate) (fleet.Manufacturer, error) {
	m, err := s.fleet.AttestBirthCertificate(ctx, leaf, inter)
	if err == nil {
		return m, nil
	}
	if !errors.Is(err, fleet.ErrUntrusted) {
		return m, err // the store's
	}
	var invalid x509.CertificateInvalidError
	switch {
	case errors.Is(err, fleet.ErrUnknownIssuer):
		return m, refuse(ErrForbidden, "birth certificate is not signed by a registered manufacturer CA")
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		if now := s.now(); now.Before(leaf.NotBefore) {
			return m, refuse(ErrForbidden, "birth certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
		}
		return m, refuse(ErrForbidden, "birth certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		return m, refuse(ErrForbidden, "birth certificate does not allow client authentication")
	}
	return m, refuse(ErrForbidden, "birth certificate not trusted: %v", err)
}

// simpleReenroll renews an operational certificate (RFC 7030 §4.2.2).
func (s *Server) simpleReenroll(ctx context.Context, w http.ResponseWriter, r *http.Request, a *attempt) (result, error) {
	leaf, inter := peer(r)
	if leaf == nil {
		return result{}, refuse(ErrNoCertificate, "simplereenroll requires the device's current operational certificate as TLS client certificate")
	}
	id, err := s.ca.VerifyDevice(leaf, inter)
	switch {
	case errors.Is(err, pki.ErrCertExpired):
		a.actor = "birthcert:" + pki.Fingerprint(leaf)
		if id, err := pki.DeviceIDFromCert(leaf); err == nil {
			a.actor, a.target = "device:"+id, "device:"+id
		}
		return result{}, refuse(ErrForbidden, "operational certificate expired at %s; enroll again with the birth certificate", leaf.NotAfter.UTC().Format(time.RFC3339))
	case errors.Is(err, pki.ErrCertNotYetValid):
		return result{}, refuse(ErrForbidden, "operational certificate not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case err != nil:
		a.actor = "birthcert:" + pki.Fingerprint(leaf)
		return result{}, refuse(ErrForbidden, "simplereenroll requires the operational certificate issued by Ward")
	}
	a.actor, a.target = "device:"+id, "device:"+id
	certSerial := fleet.CertSerial(leaf)
	a.detail["previous_cert_serial"] = certSerial
	d, err := s.fleet.CheckAdmitted(ctx, id, certSerial)
	switch {
	case errors.Is(err, fleet.ErrState):
		if d.ID != "" {
			return result{}, refuse(ErrForbidden, "device %s is %s", id, d.State)
		}
		return result{}, refuse(ErrForbidden, "operational certificate revoked")
	case errors.Is(err, fleet.ErrNotFound), errors.Is(err, fleet.ErrAmbiguous), errors.Is(err, fleet.ErrInvalid):
		return result{}, refuse(ErrForbidden, "device %s is not in the registry", id)
	case err != nil:
		return result{}, err
	}
	a.detail["manufacturer"] = d.Manufacturer
	a.detail["serial"] = d.Serial

	csr, err := s.readCSR(w, r)
	if err != nil {
		return result{}, err
	}
	if got := pki.SubjectSerial(csr.Request().Subject); got != d.Serial {
		return result{}, refuse(ErrBadRequest, "certificate request serialNumber %q differs from the device's %q", got, d.Serial)
	}
	cert, err := s.issue(ctx, a, csr, d)
	return result{cert: cert}, err
}

// createPending records an unknown device and its request in one
// transaction.
func (s *Server) createPending(ctx context.Context, a *attempt, mfr fleet.Manufacturer, serial, model string) (fleet.Device, error) {
	var d fleet.Device
	err := s.st.Tx(ctx, func(tx *store.Tx) error {
		var err error
		if d, err = s.fleet.CreatePending(ctx, tx, mfr.ID, serial, model); err != nil {
			return err
		}
		a.target = "device:" + d.ID
		return s.audit.Append(ctx, tx, s.entry(a, audit.Pending, "new device awaiting approval"))
	})
	if err != nil {
		a.target = ""
	}
	return d, err
}

// issue signs the certificate outside any transaction, then records it with
// its audit entry in one.
func (s *Server) issue(ctx context.Context, a *attempt, csr *pki.CSR, d fleet.Device) (*x509.Certificate, error) {
	cert, err := s.ca.IssueDevice(csr, pki.DeviceIdentity{ID: d.ID, Serial: d.Serial, Manufacturer: d.Manufacturer, Model: d.Model})
	if errors.Is(err, pki.ErrWeakKey) {
		return nil, refuse(ErrBadRequest, "certificate request key not accepted: use ECDSA P-256/P-384, Ed25519 or RSA of at least 2048 bits")
	}
	if err != nil {
		return nil, err
	}
	a.detail["cert_serial"] = fleet.CertSerial(cert)
	a.detail["not_after"] = cert.NotAfter.UTC().Format(time.RFC3339)
	err = s.st.Tx(ctx, func(tx *store.Tx) error {
		if err := s.fleet.RecordIssued(ctx, tx, d.ID, cert); err != nil {
			return err
		}
		return s.audit.Append(ctx, tx, s.entry(a, audit.Success, "certificate issued"))
	})
	if errors.Is(err, fleet.ErrState) {
		delete(a.detail, "cert_serial")
		delete(a.detail, "not_after")
		return nil, refuse(ErrForbidden, "device %s may no longer be issued a certificate", d.ID)
	}
	if err != nil {
		return nil, err
	}
	return cert, nil
}

func (s *Server) entry(a *attempt, outcome, reason string) audit.Entry {
	return audit.Entry{At: s.now().UTC(), Actor: a.actor, Action: a.action, Target: a.target, Outcome: outcome, Reason: reason, Source: a.source, Detail: a.detail}
}

func (s *Server) serveCACerts(w http.ResponseWriter, r *http.Request) {
	writeCerts(w, mediaPKCS7, s.cacerts)
}
