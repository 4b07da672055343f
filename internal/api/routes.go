package api

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/audit"
	"github.com/wardhq/ward/internal/fleet"
	"github.com/wardhq/ward/internal/pki"
)

func (s *server) routes() {
	s.manufacturerRoutes()
	s.deviceRoutes()
	s.gatewayRoutes()
	s.caRoutes()
	s.auditRoutes()
	s.auditChainRoutes()
	s.tokenRoutes()
	s.approvalRoutes()
	s.sessionRoutes()
	s.userRoutes()
	s.webauthnRoutes()
	s.oidcRoutes()
}

// ---- manufacturers

type manufacturerList struct {
	Body struct {
		Items []fleet.Manufacturer `json:"items"`
	}
}

type addManufacturerInput struct {
	Body struct {
		Name  string `json:"name" minLength:"1" maxLength:"128" doc:"Manufacturer name, unique"`
		CAPEM string `json:"ca_pem" minLength:"1" maxLength:"65536" doc:"PEM CA certificate(s) that sign the manufacturer's birth certificates"`
	}
}

type manufacturerOutput struct {
	Body fleet.Manufacturer
}

func (s *server) manufacturerRoutes() {
	register(s, huma.Operation{
		OperationID: "list-manufacturers", Metadata: perm(access.ManufacturersRead), Method: http.MethodGet, Path: Prefix + "/manufacturers",
		Summary: "List manufacturers", Tags: []string{"manufacturers"},
	}, func(ctx context.Context, _ *struct{}) (*manufacturerList, error) {
		all, err := s.cfg.Fleet.Manufacturers(ctx)
		if err != nil {
			return nil, err
		}
		out := &manufacturerList{}
		out.Body.Items = all
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "add-manufacturer", Metadata: perm(access.ManufacturersManage), Method: http.MethodPost, Path: Prefix + "/manufacturers", DefaultStatus: http.StatusCreated,
		Summary: "Register a manufacturer and the CA that signs its birth certificates", Tags: []string{"manufacturers"},
	}, func(ctx context.Context, in *addManufacturerInput) (*manufacturerOutput, error) {
		m, err := s.cfg.Fleet.AddManufacturer(ctx, actor(ctx), in.Body.Name, []byte(in.Body.CAPEM))
		if err != nil {
			return nil, err
		}
		return &manufacturerOutput{Body: m}, nil
	})
}

// ---- devices

type listDevicesInput struct {
	State        string `query:"state" enum:"pending,active,quarantined,revoked,decommissioned" doc:"Only devices in this state"`
	Manufacturer string `query:"manufacturer" doc:"Manufacturer name or id"`
	Site         string `query:"site"`
	Unit         string `query:"unit"`
	After        string `query:"after" doc:"Continue after this Ward id (the previous page's next)"`
	Limit        int    `query:"limit" minimum:"1" maximum:"1000" default:"100"`
}

type deviceList struct {
	Body struct {
		Items []fleet.Device `json:"items"`
		Next  string         `json:"next,omitempty" doc:"Pass as after for the next page; absent on the last page"`
	}
}

type preregisterInput struct {
	Body struct {
		Serial       string   `json:"serial" minLength:"1" maxLength:"128"`
		Manufacturer string   `json:"manufacturer" minLength:"1" doc:"Manufacturer name or id"`
		Model        string   `json:"model" minLength:"1" maxLength:"128"`
		Site         string   `json:"site,omitempty" maxLength:"128"`
		Unit         string   `json:"unit,omitempty" maxLength:"128"`
		Tags         []string `json:"tags,omitempty" maxItems:"32"`
	}
}

type deviceRef struct {
	Ref string `path:"ref" doc:"Ward id or serial number"`
}

type deviceDetail struct {
	fleet.Device
	Certificates []fleet.Certificate `json:"certificates"`
}

type deviceDetailOutput struct {
	Body deviceDetail
}

type deviceOutput struct {
	Body fleet.Device
}

type reasonBody struct {
	Reason string `json:"reason,omitempty" maxLength:"512" doc:"Why, for the audit log and the device record"`
}

type deviceActionInput struct {
	Ref  string `path:"ref" doc:"Ward id or serial number"`
	Body *reasonBody
}

type revokeInput struct {
	Ref  string `path:"ref" doc:"Ward id or serial number"`
	Body struct {
		Reason string `json:"reason" minLength:"1" maxLength:"512" doc:"Why, for the audit log and the device record"`
	}
}

func (s *server) deviceRoutes() {
	tags := []string{"devices"}
	register(s, huma.Operation{
		OperationID: "list-devices", Metadata: perm(access.DevicesRead), Method: http.MethodGet, Path: Prefix + "/devices",
		Summary: "List devices, ordered by Ward id", Tags: tags,
	}, func(ctx context.Context, in *listDevicesInput) (*deviceList, error) {
		p := caller(ctx)
		if in.Site != "" && !p.InSite(in.Site) {
			return nil, fmt.Errorf("%w: site %q is outside %s's sites", access.ErrForbidden, in.Site, p.Actor())
		}
		ds, err := s.cfg.Fleet.List(ctx, fleet.ListFilter{
			State: fleet.State(in.State), Manufacturer: in.Manufacturer, Site: in.Site, Unit: in.Unit, Sites: p.Sites, After: in.After, Limit: in.Limit,
		})
		if err != nil {
			return nil, err
		}
		out := &deviceList{}
		out.Body.Items = ds
		if len(ds) > 0 && len(ds) == in.Limit {
			out.Body.Next = ds[len(ds)-1].ID
		}
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "preregister-device", Metadata: perm(access.DevicesManage), Method: http.MethodPost, Path: Prefix + "/devices", DefaultStatus: http.StatusCreated,
		Summary:     "Preregister a device (a purchase record)",
		Description: "The device is created pending and approved, so its first enrollment is admitted at once.",
		Tags:        tags,
	}, func(ctx context.Context, in *preregisterInput) (*deviceOutput, error) {
		b := in.Body
		if p := caller(ctx); !p.InSite(b.Site) {
			return nil, fmt.Errorf("%w: site %q is outside %s's sites", access.ErrForbidden, b.Site, p.Actor())
		}
		d, err := s.cfg.Fleet.Preregister(ctx, actor(ctx), fleet.Preregistration{
			Serial: b.Serial, Manufacturer: b.Manufacturer, Model: b.Model, Site: b.Site, Unit: b.Unit, Tags: b.Tags,
		})
		if err != nil {
			return nil, err
		}
		return &deviceOutput{Body: d}, nil
	})
	register(s, huma.Operation{
		OperationID: "get-device", Metadata: perm(access.DevicesRead), Method: http.MethodGet, Path: Prefix + "/devices/{ref}",
		Summary: "Show a device and its operational certificates", Tags: tags,
	}, func(ctx context.Context, in *deviceRef) (*deviceDetailOutput, error) {
		d, err := s.device(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		certs, err := s.cfg.Fleet.Certificates(ctx, d.ID)
		if err != nil {
			return nil, err
		}
		return &deviceDetailOutput{Body: deviceDetail{Device: d, Certificates: certs}}, nil
	})
	register(s, huma.Operation{
		OperationID: "approve-device", Metadata: perm(access.DevicesManage), Method: http.MethodPost, Path: Prefix + "/devices/{ref}/approve",
		Summary: "Approve a pending device", Tags: tags,
	}, func(ctx context.Context, in *deviceRef) (*deviceOutput, error) {
		d, err := s.device(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		d, err = s.cfg.Fleet.Approve(ctx, actor(ctx), d.ID)
		if err != nil {
			return nil, err
		}
		return &deviceOutput{Body: d}, nil
	})
	for _, a := range []struct {
		name, summary string
		perm          access.Permission
		do            func(ctx context.Context, actor, ref, reason string) (fleet.Device, error)
	}{
		{"reject", "Reject a pending device for good", access.DevicesManage, s.cfg.Fleet.Reject},
		{"decommission", "Retire a device for good and revoke its certificates", access.DevicesRevoke, s.cfg.Fleet.Decommission},
	} {
		register(s, huma.Operation{
			OperationID: a.name + "-device", Metadata: perm(a.perm), Method: http.MethodPost, Path: Prefix + "/devices/{ref}/" + a.name,
			Summary: a.summary, Tags: tags,
		}, func(ctx context.Context, in *deviceActionInput) (*deviceOutput, error) {
			var why string
			if in.Body != nil {
				why = in.Body.Reason
			}
			d, err := s.device(ctx, in.Ref)
			if err != nil {
				return nil, err
			}
			d, err = a.do(ctx, actor(ctx), d.ID, why)
			if err != nil {
				return nil, err
			}
			return &deviceOutput{Body: d}, nil
		})
	}
	register(s, huma.Operation{
		OperationID: "revoke-device", Metadata: perm(access.DevicesRevoke), Method: http.MethodPost, Path: Prefix + "/devices/{ref}/revoke",
		Summary: "Revoke a device: every certificate revoked, refused on every listener", Tags: tags,
	}, func(ctx context.Context, in *revokeInput) (*deviceOutput, error) {
		d, err := s.device(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		d, err = s.cfg.Fleet.Revoke(ctx, actor(ctx), d.ID, in.Body.Reason)
		if err != nil {
			return nil, err
		}
		return &deviceOutput{Body: d}, nil
	})
}

// device returns the device ref names if the caller may act on its site.
// A device outside the caller's sites is reported as not found: a scoped
// caller learns nothing about other sites' devices.
func (s *server) device(ctx context.Context, ref string) (fleet.Device, error) {
	d, err := s.cfg.Fleet.Get(ctx, ref)
	if err != nil {
		return fleet.Device{}, err
	}
	if !caller(ctx).InSite(d.Site) {
		return fleet.Device{}, fmt.Errorf("device %q: %w", ref, fleet.ErrNotFound)
	}
	return d, nil
}

// ---- CA

type certInfo struct {
	Subject     string    `json:"subject"`
	Serial      string    `json:"serial" doc:"Lowercase hex"`
	Fingerprint string    `json:"fingerprint" doc:"SHA256:<hex of the DER>"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	PEM         string    `json:"pem"`
}

type caOutput struct {
	Body struct {
		Root                  certInfo `json:"root"`
		Issuer                certInfo `json:"issuer"`
		DeviceCertLifetime    string   `json:"device_certificate_lifetime" doc:"Go duration, e.g. 168h0m0s"`
		DeviceCertLifetimeSec int64    `json:"device_certificate_lifetime_seconds"`
	}
}

func describeCert(c *x509.Certificate) certInfo {
	return certInfo{
		Subject: c.Subject.String(), Serial: c.SerialNumber.Text(16), Fingerprint: pki.Fingerprint(c),
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
		PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})),
	}
}

func (s *server) caRoutes() {
	register(s, huma.Operation{
		OperationID: "get-ca", Metadata: perm(access.CARead), Method: http.MethodGet, Path: Prefix + "/ca",
		Summary: "Ward's root and issuing CA certificates", Tags: []string{"ca"},
	}, func(ctx context.Context, _ *struct{}) (*caOutput, error) {
		if s.cfg.CA == nil {
			return nil, fmt.Errorf("CA of this server: %w", pki.ErrNotInitialised)
		}
		out := &caOutput{}
		out.Body.Root = describeCert(s.cfg.CA.Root())
		out.Body.Issuer = describeCert(s.cfg.CA.Issuer())
		out.Body.DeviceCertLifetime = s.cfg.CA.Lifetime().String()
		out.Body.DeviceCertLifetimeSec = int64(s.cfg.CA.Lifetime() / time.Second)
		return out, nil
	})
}

// ---- audit

type listAuditInput struct {
	Target  string `query:"target" doc:"Exact target, e.g. device:<id>"`
	Action  string `query:"action" doc:"Action prefix, e.g. device."`
	Outcome string `query:"outcome" enum:"success,denied,pending,failed"`
	After   int64  `query:"after" minimum:"0" doc:"Entries after this sequence number"`
	Limit   int    `query:"limit" minimum:"1" maximum:"1000" default:"100"`
}

type auditList struct {
	Body struct {
		Items []audit.Entry `json:"items"`
		Next  int64         `json:"next,omitempty" doc:"Pass as after for the next page; absent on the last page"`
	}
}

func (s *server) auditRoutes() {
	register(s, huma.Operation{
		OperationID: "list-audit", Metadata: perm(access.AuditRead), Method: http.MethodGet, Path: Prefix + "/audit",
		Summary: "List audit entries in sequence order", Tags: []string{"audit"},
	}, func(ctx context.Context, in *listAuditInput) (*auditList, error) {
		es, err := s.cfg.Audit.List(ctx, audit.Filter{Target: in.Target, Action: in.Action, Outcome: in.Outcome, After: in.After, Limit: in.Limit})
		if err != nil {
			return nil, err
		}
		out := &auditList{}
		out.Body.Items = es
		if out.Body.Items == nil {
			out.Body.Items = []audit.Entry{}
		}
		if len(es) > 0 && len(es) == in.Limit {
			out.Body.Next = es[len(es)-1].Seq
		}
		return out, nil
	})
}

// ---- tokens

type tokenList struct {
	Body struct {
		Items []access.Token `json:"items"`
	}
}

type createTokenInput struct {
	Body struct {
		Name  string   `json:"name" minLength:"1" maxLength:"128"`
		Roles []string `json:"roles" minItems:"1" doc:"Roles the token holds; each within the creator's own"`
		Sites []string `json:"sites,omitempty" doc:"Sites the token may act on; empty: the creator's"`
		TTL   string   `json:"ttl,omitempty" doc:"Lifetime, e.g. 720h; default 2160h (90 days), at most 8784h"`
	}
}

type createTokenOutput struct {
	Body struct {
		Token  access.Token `json:"token"`
		Secret string       `json:"secret" doc:"The bearer secret. Shown this once; Ward keeps only its hash."`
	}
}

type tokenOutput struct {
	Body access.Token
}

type tokenRef struct {
	ID string `path:"id"`
}

func (s *server) tokenRoutes() {
	tags := []string{"tokens"}
	register(s, huma.Operation{
		OperationID: "list-tokens", Metadata: perm(access.TokensManage), Method: http.MethodGet, Path: Prefix + "/tokens",
		Summary: "List API tokens (never their secrets)", Tags: tags,
	}, func(ctx context.Context, _ *struct{}) (*tokenList, error) {
		ts, err := s.cfg.Tokens.List(ctx)
		if err != nil {
			return nil, err
		}
		out := &tokenList{}
		out.Body.Items = ts
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "create-token", Metadata: perm(access.TokensManage), Method: http.MethodPost, Path: Prefix + "/tokens", DefaultStatus: http.StatusCreated,
		Summary: "Create an API token; the response holds its secret, once", Tags: tags,
	}, func(ctx context.Context, in *createTokenInput) (*createTokenOutput, error) {
		roles, err := access.ParseRoles(in.Body.Roles)
		if err != nil {
			return nil, err
		}
		var ttl time.Duration
		if in.Body.TTL != "" {
			if ttl, err = time.ParseDuration(in.Body.TTL); err != nil {
				return nil, fmt.Errorf("%w: ttl: %v", access.ErrInvalid, err)
			}
		}
		secret, tok, err := s.cfg.Tokens.Create(ctx, caller(ctx), access.TokenSpec{Name: in.Body.Name, Roles: roles, Sites: in.Body.Sites, TTL: ttl})
		if err != nil {
			return nil, err
		}
		out := &createTokenOutput{}
		out.Body.Token, out.Body.Secret = tok, secret
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "revoke-token", Metadata: perm(access.TokensManage), Method: http.MethodDelete, Path: Prefix + "/tokens/{id}",
		Summary: "Revoke an API token", Tags: tags,
	}, func(ctx context.Context, in *tokenRef) (*tokenOutput, error) {
		tok, err := s.cfg.Tokens.Revoke(ctx, actor(ctx), in.ID)
		if err != nil {
			return nil, err
		}
		return &tokenOutput{Body: tok}, nil
	})
}
