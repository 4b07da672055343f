package api

// Two-person rule: the critical actions this API serves become pending
// approvals (package access) that a second party approves; the approval
// routes list, show, approve and reject them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/fleet"
)

// Kinds of critical action this API registers.
const (
	KindRemoveManufacturer = "manufacturer.remove"
	KindRevokeDevices      = "devices.revoke"
	KindSetUserRoles       = "user.roles"
)

// DefaultMassRevokeLimit is how many devices one request revokes without a
// second person.
const DefaultMassRevokeLimit = 5

type removeManufacturerParams struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
}

type revokeDevicesParams struct {
	IDs     []string `json:"ids"`
	Serials []string `json:"serials"`
	Sites   []string `json:"sites"` // of the devices, so scoped callers see only their own
	Reason  string   `json:"reason"`
}

type setRolesParams struct {
	ID       string   `json:"id"`
	Username string   `json:"username"`
	Roles    []string `json:"roles"`
	Sites    []string `json:"sites"`
}

func decodeParams[T any](raw json.RawMessage) (T, error) {
	var p T
	if err := json.Unmarshal(raw, &p); err != nil {
		return p, fmt.Errorf("%w: approval params: %v", access.ErrInvalid, err)
	}
	return p, nil
}

// registerKinds tells the approval keeper how to carry out each critical
// action. The party that approves is the actor of the action itself; the
// requester is named in the approval's audit entries.
func (s *server) registerKinds(approvals *access.Approvals) {
	a := publicKinds{s: s, a: approvals}
	a.Register(KindRemoveManufacturer, access.Kind{
		Permission: access.ManufacturersManage,
		Describe: func(raw json.RawMessage) string {
			p, _ := decodeParams[removeManufacturerParams](raw)
			return fmt.Sprintf("remove manufacturer %q (CA %s): its birth certificates are no longer trusted", p.Name, p.Fingerprint)
		},
		Execute: func(ctx context.Context, approver access.Principal, _ string, raw json.RawMessage) (any, error) {
			p, err := decodeParams[removeManufacturerParams](raw)
			if err != nil {
				return nil, err
			}
			return s.cfg.Fleet.RemoveManufacturer(ctx, approver.Actor(), p.ID)
		},
	})
	a.Register(KindRevokeDevices, access.Kind{
		Permission: access.DevicesRevoke,
		Describe: func(raw json.RawMessage) string {
			p, _ := decodeParams[revokeDevicesParams](raw)
			shown := p.Serials
			if len(shown) > 10 {
				shown = append(shown[:10:10], fmt.Sprintf("and %d more", len(p.Serials)-10))
			}
			return fmt.Sprintf("revoke %d devices (%s): %s", len(p.IDs), strings.Join(shown, ", "), p.Reason)
		},
		// A scoped party may decide only on devices of its own sites.
		Check: func(ctx context.Context, who access.Principal, raw json.RawMessage) error {
			if len(who.Sites) == 0 {
				return nil
			}
			p, err := decodeParams[revokeDevicesParams](raw)
			if err != nil {
				return err
			}
			for _, id := range p.IDs {
				d, err := s.cfg.Fleet.Get(ctx, id)
				if err != nil {
					return err
				}
				if !who.InSite(d.Site) {
					return fmt.Errorf("%w: the request covers devices outside %s's sites", access.ErrForbidden, who.Actor())
				}
			}
			return nil
		},
		Execute: func(ctx context.Context, approver access.Principal, _ string, raw json.RawMessage) (any, error) {
			p, err := decodeParams[revokeDevicesParams](raw)
			if err != nil {
				return nil, err
			}
			ds, err := s.cfg.Fleet.RevokeMany(ctx, approver.Actor(), p.IDs, p.Reason)
			if err != nil {
				return nil, err
			}
			ids := make([]string, len(ds))
			for i, d := range ds {
				ids[i] = d.ID
			}
			return map[string]any{"revoked": ids}, nil
		},
	})
	s.registerUserRolesKind(a)
}

// ---- routes

type approvalsInput struct {
	State string `query:"state" enum:"pending,approved,rejected,expired,failed" doc:"Only requests in this state"`
	Kind  string `query:"kind" doc:"Only requests of this kind, e.g. devices.revoke"`
	Limit int    `query:"limit" minimum:"1" maximum:"1000" default:"100"`
}

type approvalList struct {
	Body struct {
		Items []access.Approval `json:"items"`
	}
}

type approvalRef struct {
	ID string `path:"id" doc:"Approval id"`
}

type approvalOutput struct {
	Status int
	Body   access.Approval
}

type rejectApprovalInput struct {
	ID   string `path:"id" doc:"Approval id"`
	Body struct {
		Reason string `json:"reason" minLength:"1" maxLength:"512" doc:"Why, for the requester and the audit log"`
	}
}

type removeManufacturerInput struct {
	Ref string `path:"ref" doc:"Manufacturer name or id"`
	TTL string `query:"ttl" doc:"How long the request stays open, e.g. 48h; default 24h, at most 168h"`
}

type massRevokeInput struct {
	Body struct {
		Refs   []string `json:"refs" minItems:"1" maxItems:"10000" doc:"Ward ids or serial numbers"`
		Reason string   `json:"reason" minLength:"1" maxLength:"512" doc:"Why, for the audit log and the device records"`
		TTL    string   `json:"ttl,omitempty" doc:"If a second person must approve: how long the request stays open; default 24h, at most 168h"`
	}
}

type massRevokeOutput struct {
	Status int
	Body   struct {
		Devices  []fleet.Device   `json:"devices,omitempty" doc:"The revoked devices, when revoked at once (200)"`
		Approval *access.Approval `json:"approval,omitempty" doc:"The pending request, when a second person must approve (202)"`
	}
}

type setRolesInput struct {
	ID   string `path:"id" doc:"User id or username"`
	Body struct {
		Roles []string `json:"roles" minItems:"1" doc:"The user's roles from now on"`
		Sites []string `json:"sites,omitempty" doc:"Sites the user may act on; empty: every site"`
		TTL   string   `json:"ttl,omitempty" doc:"How long the request stays open; default 24h, at most 168h"`
	}
}

func parseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: ttl: %v", access.ErrInvalid, err)
	}
	return d, nil
}

// visible reports whether p may see ap: a caller scoped to sites does not
// see requests about devices of other sites, as it does not see the
// devices.
func visible(p access.Principal, ap access.Approval) bool {
	if len(p.Sites) == 0 || ap.Kind != KindRevokeDevices {
		return true
	}
	params, err := decodeParams[revokeDevicesParams](ap.Params)
	if err != nil {
		return false
	}
	for _, site := range params.Sites {
		if !p.InSite(site) {
			return false
		}
	}
	return true
}

// visibleApproval returns the request if the caller may see it, and
// reports one it may not see as not found.
func (s *server) visibleApproval(ctx context.Context, a *access.Approvals, id string) (access.Approval, error) {
	ap, err := a.Get(ctx, id)
	if err != nil {
		return access.Approval{}, err
	}
	if !visible(caller(ctx), ap) {
		return access.Approval{}, fmt.Errorf("approval %q: %w", id, access.ErrNotFound)
	}
	return ap, nil
}

// approvals returns the approval keeper, or a 503 if the server has none.
func (s *server) approvals() (*access.Approvals, error) {
	if s.cfg.Approvals == nil {
		return nil, huma.Error503ServiceUnavailable("two-person approvals are not configured on this server")
	}
	return s.cfg.Approvals, nil
}

func (s *server) approvalRoutes() {
	if s.cfg.Approvals != nil {
		s.registerKinds(s.cfg.Approvals)
	}
	tags := []string{"approvals"}
	register(s, huma.Operation{
		OperationID: "list-approvals", Metadata: perm(access.ApprovalsRead), Method: http.MethodGet, Path: Prefix + "/approvals",
		Summary: "List two-person requests, newest first", Tags: tags,
	}, func(ctx context.Context, in *approvalsInput) (*approvalList, error) {
		a, err := s.approvals()
		if err != nil {
			return nil, err
		}
		items, err := a.List(ctx, access.ApprovalFilter{State: access.ApprovalState(in.State), Kind: in.Kind, Limit: in.Limit})
		if err != nil {
			return nil, err
		}
		out := &approvalList{}
		out.Body.Items = slices.DeleteFunc(items, func(ap access.Approval) bool { return !visible(caller(ctx), ap) })
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "get-approval", Metadata: perm(access.ApprovalsRead), Method: http.MethodGet, Path: Prefix + "/approvals/{id}",
		Summary: "Show a two-person request", Tags: tags,
	}, func(ctx context.Context, in *approvalRef) (*approvalOutput, error) {
		a, err := s.approvals()
		if err != nil {
			return nil, err
		}
		ap, err := s.visibleApproval(ctx, a, in.ID)
		if err != nil {
			return nil, err
		}
		return &approvalOutput{Status: http.StatusOK, Body: ap}, nil
	})
	register(s, huma.Operation{
		OperationID: "approve-approval", Metadata: perm(access.ApprovalsRead), Method: http.MethodPost, Path: Prefix + "/approvals/{id}/approve",
		Summary:     "Approve a two-person request, which carries it out",
		Description: "The approver must differ from the requester (and from the requesting token's creator) and hold the permission of the request's kind.",
		Tags:        tags,
	}, func(ctx context.Context, in *approvalRef) (*approvalOutput, error) {
		a, err := s.approvals()
		if err != nil {
			return nil, err
		}
		if _, err := s.visibleApproval(ctx, a, in.ID); err != nil {
			return nil, err
		}
		ap, err := a.Approve(ctx, caller(ctx), in.ID)
		if err != nil {
			return nil, err
		}
		return &approvalOutput{Status: http.StatusOK, Body: ap}, nil
	})
	register(s, huma.Operation{
		OperationID: "reject-approval", Metadata: perm(access.ApprovalsRead), Method: http.MethodPost, Path: Prefix + "/approvals/{id}/reject",
		Summary:     "Reject a two-person request (or withdraw one's own)",
		Description: "Anyone holding the permission of the request's kind may reject it; the requester may withdraw it.",
		Tags:        tags,
	}, func(ctx context.Context, in *rejectApprovalInput) (*approvalOutput, error) {
		a, err := s.approvals()
		if err != nil {
			return nil, err
		}
		if _, err := s.visibleApproval(ctx, a, in.ID); err != nil {
			return nil, err
		}
		ap, err := a.Reject(ctx, caller(ctx), in.ID, in.Body.Reason)
		if err != nil {
			return nil, err
		}
		return &approvalOutput{Status: http.StatusOK, Body: ap}, nil
	})

	// Critical actions.
	register(s, huma.Operation{
		OperationID: "remove-manufacturer", Metadata: perm(access.ManufacturersManage), Method: http.MethodDelete, Path: Prefix + "/manufacturers/{ref}",
		DefaultStatus: http.StatusAccepted,
		Summary:       "Ask to remove a manufacturer (stop trusting its CA); a second person must approve",
		Description:   "Answers 202 with the pending approval. Once approved, birth certificates from the manufacturer's CA are refused; enrolled devices keep their operational certificates.",
		Tags:          []string{"manufacturers"},
	}, func(ctx context.Context, in *removeManufacturerInput) (*approvalOutput, error) {
		a, err := s.approvals()
		if err != nil {
			return nil, err
		}
		ttl, err := parseTTL(in.TTL)
		if err != nil {
			return nil, err
		}
		m, err := s.cfg.Fleet.Manufacturer(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		ap, err := a.Request(ctx, caller(ctx), KindRemoveManufacturer, removeManufacturerParams{ID: m.ID, Name: m.Name, Fingerprint: m.Fingerprint}, ttl)
		if err != nil {
			return nil, err
		}
		return &approvalOutput{Status: http.StatusAccepted, Body: ap}, nil
	})
	register(s, huma.Operation{
		OperationID: "revoke-devices", Metadata: perm(access.DevicesRevoke), Method: http.MethodPost, Path: Prefix + "/devices/revoke",
		Summary: "Revoke several devices at once; past the mass-revocation limit a second person must approve",
		Description: "Up to the server's limit (default 5) the devices are revoked at once, all or none, and the answer is 200 with them. " +
			"More become a pending approval (202) that revokes them all in one transaction when approved.",
		Tags: []string{"devices"},
	}, func(ctx context.Context, in *massRevokeInput) (*massRevokeOutput, error) {
		ttl, err := parseTTL(in.Body.TTL)
		if err != nil {
			return nil, err
		}
		p := revokeDevicesParams{Reason: in.Body.Reason}
		seen := map[string]bool{}
		for _, ref := range in.Body.Refs {
			d, err := s.device(ctx, ref)
			if err != nil {
				return nil, err
			}
			if !seen[d.ID] {
				seen[d.ID] = true
				p.IDs, p.Serials = append(p.IDs, d.ID), append(p.Serials, d.Serial)
				if !slices.Contains(p.Sites, d.Site) {
					p.Sites = append(p.Sites, d.Site)
				}
			}
		}
		limit := s.cfg.MassRevokeLimit
		if limit <= 0 {
			limit = DefaultMassRevokeLimit
		}
		out := &massRevokeOutput{}
		if len(p.IDs) <= limit {
			if out.Body.Devices, err = s.cfg.Fleet.RevokeMany(ctx, actor(ctx), p.IDs, p.Reason); err != nil {
				return nil, err
			}
			out.Status = http.StatusOK
			return out, nil
		}
		a, err := s.approvals()
		if err != nil {
			return nil, err
		}
		ap, err := a.Request(ctx, caller(ctx), KindRevokeDevices, p, ttl)
		if err != nil {
			return nil, err
		}
		out.Status, out.Body.Approval = http.StatusAccepted, &ap
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "set-user-roles", Metadata: perm(access.UsersManage), Method: http.MethodPut, Path: Prefix + "/users/{id}/roles",
		DefaultStatus: http.StatusAccepted,
		Summary:       "Ask to change a person's roles and sites; a second person must approve",
		Tags:          []string{"users"},
	}, func(ctx context.Context, in *setRolesInput) (*approvalOutput, error) {
		a, err := s.approvals()
		if err != nil {
			return nil, err
		}
		ttl, err := parseTTL(in.Body.TTL)
		if err != nil {
			return nil, err
		}
		roles, err := access.ParseRoles(in.Body.Roles)
		if err != nil {
			return nil, err
		}
		id, username, err := s.findUser(ctx, in.ID)
		if err != nil {
			return nil, err
		}
		names := make([]string, len(roles))
		for i, r := range roles {
			names[i] = string(r)
		}
		sites := in.Body.Sites
		if sites == nil {
			sites = []string{}
		}
		ap, err := a.Request(ctx, caller(ctx), KindSetUserRoles, setRolesParams{ID: id, Username: username, Roles: names, Sites: sites}, ttl)
		if err != nil {
			return nil, err
		}
		return &approvalOutput{Status: http.StatusAccepted, Body: ap}, nil
	})
}

// registerUserRolesKind registers the change of a person's roles, if this
// server manages accounts.
func (s *server) registerUserRolesKind(a publicKinds) {
	a.Register(KindSetUserRoles, access.Kind{
		Permission: access.UsersManage,
		Describe: func(raw json.RawMessage) string {
			p, _ := decodeParams[setRolesParams](raw)
			where := "every site"
			if len(p.Sites) > 0 {
				where = "sites " + strings.Join(p.Sites, ", ")
			}
			return fmt.Sprintf("set the roles of user %s (%s) to %s, on %s", p.Username, p.ID, strings.Join(p.Roles, ", "), where)
		},
		Execute: func(ctx context.Context, approver access.Principal, _ string, raw json.RawMessage) (any, error) {
			p, err := decodeParams[setRolesParams](raw)
			if err != nil {
				return nil, err
			}
			if s.cfg.Users == nil {
				return nil, fmt.Errorf("%w: this server manages no user accounts", access.ErrConflict)
			}
			roles, err := access.ParseRoles(p.Roles)
			if err != nil {
				return nil, err
			}
			u, err := s.cfg.Users.SetRoles(ctx, approver, p.ID, roles, p.Sites)
			if err != nil {
				return nil, err
			}
			return map[string]any{"id": u.ID, "username": u.Username, "roles": u.Roles, "sites": u.Sites}, nil
		},
	})
}

// findUser returns the id and username of the account ref names.
func (s *server) findUser(ctx context.Context, ref string) (id, username string, err error) {
	if s.cfg.Users == nil {
		return "", "", fmt.Errorf("user %q: %w", ref, access.ErrNotFound)
	}
	u, err := s.cfg.Users.Get(ctx, ref)
	if err != nil {
		return "", "", err
	}
	return u.ID, u.Username, nil
}

// publicKinds registers approval kinds whose execution errors are fit to
// store and show: a domain error keeps its message; anything else is logged
// here and recorded as a generic internal error, so a failed approval never
// shows a database's words to whoever reads it.
type publicKinds struct {
	s *server
	a *access.Approvals
}

func (p publicKinds) Register(name string, k access.Kind) {
	exec := k.Execute
	k.Execute = func(ctx context.Context, approver access.Principal, requester string, raw json.RawMessage) (any, error) {
		out, err := exec(ctx, approver, requester, raw)
		if err != nil && status(err) == http.StatusInternalServerError {
			p.s.log.ErrorContext(ctx, "api: approved action failed", "kind", name, "err", err)
			return out, errors.New(internalDetail)
		}
		return out, err
	}
	p.a.Register(name, k)
}
