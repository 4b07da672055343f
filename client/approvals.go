package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Approval states.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalRejected = "rejected"
	ApprovalExpired  = "expired"
	ApprovalFailed   = "failed"
)

// Approval is a two-person request: a critical action that a second party
// must approve before its deadline.
type Approval struct {
	ID          string          `json:"id"`
	Kind        string          `json:"kind"` // e.g. manufacturer.remove, devices.revoke, user.roles
	Params      json.RawMessage `json:"params"`
	Summary     string          `json:"summary"`
	RequestedBy string          `json:"requested_by"`
	RequestedAt time.Time       `json:"requested_at"`
	Deadline    time.Time       `json:"deadline"`
	State       string          `json:"state"`
	DecidedBy   string          `json:"decided_by,omitempty"`
	DecidedAt   *time.Time      `json:"decided_at,omitempty"`
	Reason      string          `json:"reason,omitempty"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       string          `json:"error,omitempty"`
	ExecutedAt  *time.Time      `json:"executed_at,omitempty"`
}

// ApprovalFilter selects approvals to list; zero fields select everything.
type ApprovalFilter struct {
	State string
	Kind  string
	Limit int // server default 100, at most 1000
}

// Approvals lists two-person requests, newest first.
func (c *Client) Approvals(ctx context.Context, f ApprovalFilter) ([]Approval, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", f.State)
	}
	if f.Kind != "" {
		q.Set("kind", f.Kind)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out items[Approval]
	err := c.do(ctx, http.MethodGet, "/api/v1/approvals", q, nil, &out)
	return out.Items, err
}

func approvalPath(id string) (string, error) {
	if id == "" {
		return "", errors.New("ward client: empty approval id")
	}
	return "/api/v1/approvals/" + url.PathEscape(id), nil
}

// Approval returns one two-person request.
func (c *Client) Approval(ctx context.Context, id string) (Approval, error) {
	p, err := approvalPath(id)
	if err != nil {
		return Approval{}, err
	}
	var out Approval
	err = c.do(ctx, http.MethodGet, p, nil, nil, &out)
	return out, err
}

// ApproveApproval approves a request made by someone else, which carries
// it out. If the action fails, the error says why and the request is left
// failed.
func (c *Client) ApproveApproval(ctx context.Context, id string) (Approval, error) {
	p, err := approvalPath(id)
	if err != nil {
		return Approval{}, err
	}
	var out Approval
	err = c.do(ctx, http.MethodPost, p+"/approve", nil, nil, &out)
	return out, err
}

// RejectApproval rejects a request (or withdraws one's own) with a reason.
func (c *Client) RejectApproval(ctx context.Context, id, why string) (Approval, error) {
	p, err := approvalPath(id)
	if err != nil {
		return Approval{}, err
	}
	var out Approval
	err = c.do(ctx, http.MethodPost, p+"/reject", nil, reason{Reason: why}, &out)
	return out, err
}

// RemoveManufacturer asks to stop trusting a manufacturer's CA. It returns
// the pending request, which a second person must approve.
func (c *Client) RemoveManufacturer(ctx context.Context, ref string) (Approval, error) {
	if ref == "" {
		return Approval{}, errors.New("ward client: empty manufacturer reference")
	}
	var out Approval
	err := c.do(ctx, http.MethodDelete, "/api/v1/manufacturers/"+url.PathEscape(ref), nil, nil, &out)
	return out, err
}

// MassRevocation is the answer to RevokeDevices: the revoked devices when
// they were few enough to revoke at once, else the pending request.
type MassRevocation struct {
	Devices  []Device  `json:"devices,omitempty"`
	Approval *Approval `json:"approval,omitempty"`
}

// RevokeDevices revokes several devices, all or none. Past the server's
// limit (default 5) it returns a pending request instead, which a second
// person must approve.
func (c *Client) RevokeDevices(ctx context.Context, refs []string, why string) (MassRevocation, error) {
	var out MassRevocation
	err := c.do(ctx, http.MethodPost, "/api/v1/devices/revoke", nil, struct {
		Refs   []string `json:"refs"`
		Reason string   `json:"reason"`
	}{refs, why}, &out)
	return out, err
}

// SetUserRoles asks to replace a person's roles and sites. It returns the
// pending request, which a second person must approve.
func (c *Client) SetUserRoles(ctx context.Context, user string, roles, sites []string) (Approval, error) {
	if user == "" {
		return Approval{}, errors.New("ward client: empty user")
	}
	var out Approval
	err := c.do(ctx, http.MethodPut, "/api/v1/users/"+url.PathEscape(user)+"/roles", nil, struct {
		Roles []string `json:"roles"`
		Sites []string `json:"sites,omitempty"`
	}{roles, sites}, &out)
	return out, err
}
