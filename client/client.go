// Package client is the Go client of Ward's admin API. The ward CLI is built
// on it; integrations (a CMDB sync, a purchasing system that preregisters
// devices, a SIEM pulling the audit log) can use it too. It depends on the
// standard library only and on nothing inside Ward's server.
//
// Every call needs an API token (ward_<id>_<secret>), sent as a bearer
// token. Errors from the server are *Error values holding the RFC 9457
// problem document's status, title and detail; IsNotFound and friends test
// for the common statuses.
//
// Example:
//
//	c, err := client.New("https://ward.example.org:8443", os.Getenv("WARD_TOKEN"))
//	if err != nil {
//		return err
//	}
//	d, err := c.Preregister(ctx, client.Preregistration{
//		Serial: "PX-000123", Manufacturer: "Acme Infusion", Model: "Acme P7",
//		Site: "Main", Unit: "ICU-3",
//	})
//	if err != nil {
//		return err
//	}
//	fmt.Println(d.ID, d.State)
//
//	devs, err := c.Devices(ctx, client.DeviceFilter{State: client.StatePending})
//	if client.IsNotFound(err) { … }
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls one Ward server's admin API. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send its requests through hc (for a custom
// TLS configuration, a proxy, or timeouts).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.http = hc }
}

// New returns a client of the server at baseURL (scheme and host, optionally
// a path prefix) that authenticates with token.
func New(baseURL, token string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("ward client: server address: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("ward client: server address %q: want http(s)://host[:port]", baseURL)
	}
	if strings.ContainsAny(token, "\r\n") {
		return nil, errors.New("ward client: token contains a line break")
	}
	c := &Client{base: u, token: token, http: &http.Client{Timeout: 60 * time.Second}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Error is a problem (RFC 9457) the server answered with.
type Error struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	// Errors lists individual problems, e.g. one per invalid field.
	Errors []ErrorDetail `json:"errors,omitempty"`
}

// ErrorDetail is one entry of a problem's error list.
type ErrorDetail struct {
	Message  string `json:"message"`
	Location string `json:"location,omitempty"`
	Value    any    `json:"value,omitempty"`
}

func (e *Error) Error() string {
	msg := e.Detail
	if msg == "" {
		msg = e.Title
	}
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	for _, d := range e.Errors {
		if d.Location != "" {
			msg += "; " + d.Location + ": " + d.Message
		} else {
			msg += "; " + d.Message
		}
	}
	return msg
}

func hasStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// IsNotFound reports whether the server answered 404.
func IsNotFound(err error) bool { return hasStatus(err, http.StatusNotFound) }

// IsConflict reports whether the server answered 409: the object exists
// already, or is not in a state that allows the action.
func IsConflict(err error) bool { return hasStatus(err, http.StatusConflict) }

// IsUnauthorized reports whether the server refused the token (401).
func IsUnauthorized(err error) bool { return hasStatus(err, http.StatusUnauthorized) }

// IsForbidden reports whether the caller lacks the permission or the site
// for what it asked (403).
func IsForbidden(err error) bool { return hasStatus(err, http.StatusForbidden) }

// do sends a request and decodes a JSON answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	// path is already escaped (see refPath).
	target := c.base.String() + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("ward client: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return fmt.Errorf("ward client: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("ward client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("ward client: %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Status == 0 {
			e = &Error{Title: http.StatusText(resp.StatusCode), Detail: strings.TrimSpace(string(data))}
			if len(e.Detail) > 200 {
				e.Detail = e.Detail[:200]
			}
		}
		e.Status = resp.StatusCode
		return e
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], data...)
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("ward client: %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Raw performs a GET on an API path (e.g. "/api/v1/devices") and returns the
// JSON answer as it came.
func (c *Client) Raw(ctx context.Context, path string, query url.Values) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, path, query, nil, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// Health reports whether the server answers its liveness probe.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil)
}

type items[T any] struct {
	Items []T `json:"items"`
}

// Manufacturers lists the registered manufacturers.
func (c *Client) Manufacturers(ctx context.Context) ([]Manufacturer, error) {
	var out items[Manufacturer]
	err := c.do(ctx, http.MethodGet, "/api/v1/manufacturers", nil, nil, &out)
	return out.Items, err
}

// AddManufacturer registers a manufacturer and the PEM CA certificate(s)
// that sign its devices' birth certificates.
func (c *Client) AddManufacturer(ctx context.Context, name string, caPEM []byte) (Manufacturer, error) {
	var out Manufacturer
	err := c.do(ctx, http.MethodPost, "/api/v1/manufacturers", nil, map[string]string{"name": name, "ca_pem": string(caPEM)}, &out)
	return out, err
}

// Devices lists one page of devices, ordered by Ward id. To read the next
// page, set f.After to the last device's ID.
func (c *Client) Devices(ctx context.Context, f DeviceFilter) ([]Device, error) {
	page, err := c.DevicePage(ctx, f)
	return page.Items, err
}

// DevicePage lists one page of devices and the cursor of the next.
func (c *Client) DevicePage(ctx context.Context, f DeviceFilter) (DeviceList, error) {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("state", string(f.State))
	set("manufacturer", f.Manufacturer)
	set("site", f.Site)
	set("unit", f.Unit)
	set("after", f.After)
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out DeviceList
	err := c.do(ctx, http.MethodGet, "/api/v1/devices", q, nil, &out)
	return out, err
}

func refPath(ref string) (string, error) {
	if ref == "" {
		return "", errors.New("ward client: empty device reference")
	}
	return "/api/v1/devices/" + url.PathEscape(ref), nil
}

// Device returns a device, by Ward id or serial number, with its
// operational certificates.
func (c *Client) Device(ctx context.Context, ref string) (Device, error) {
	p, err := refPath(ref)
	if err != nil {
		return Device{}, err
	}
	var out Device
	err = c.do(ctx, http.MethodGet, p, nil, nil, &out)
	return out, err
}

// Preregister records a purchase: the device will be admitted without a
// person's approval when it first enrolls.
func (c *Client) Preregister(ctx context.Context, p Preregistration) (Device, error) {
	var out Device
	err := c.do(ctx, http.MethodPost, "/api/v1/devices", nil, p, &out)
	return out, err
}

func (c *Client) deviceAction(ctx context.Context, ref, action string, body any) (Device, error) {
	p, err := refPath(ref)
	if err != nil {
		return Device{}, err
	}
	var out Device
	err = c.do(ctx, http.MethodPost, p+"/"+action, nil, body, &out)
	return out, err
}

type reason struct {
	Reason string `json:"reason,omitempty"`
}

// Approve admits a pending device.
func (c *Client) Approve(ctx context.Context, ref string) (Device, error) {
	return c.deviceAction(ctx, ref, "approve", nil)
}

// Reject refuses a pending device for good.
func (c *Client) Reject(ctx context.Context, ref, why string) (Device, error) {
	return c.deviceAction(ctx, ref, "reject", reason{why})
}

// Revoke revokes every certificate of a device; why is required.
func (c *Client) Revoke(ctx context.Context, ref, why string) (Device, error) {
	return c.deviceAction(ctx, ref, "revoke", reason{why})
}

// Decommission retires a device for good.
func (c *Client) Decommission(ctx context.Context, ref, why string) (Device, error) {
	return c.deviceAction(ctx, ref, "decommission", reason{why})
}

// CA describes Ward's root and issuing CA.
func (c *Client) CA(ctx context.Context) (CAInfo, error) {
	var out CAInfo
	err := c.do(ctx, http.MethodGet, "/api/v1/ca", nil, nil, &out)
	return out, err
}

// Audit lists one page of audit entries in sequence order. To read the next
// page, set f.After to the last entry's Seq.
func (c *Client) Audit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	q := url.Values{}
	if f.Target != "" {
		q.Set("target", f.Target)
	}
	if f.Action != "" {
		q.Set("action", f.Action)
	}
	if f.Outcome != "" {
		q.Set("outcome", f.Outcome)
	}
	if f.After > 0 {
		q.Set("after", strconv.FormatInt(f.After, 10))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out items[AuditEntry]
	err := c.do(ctx, http.MethodGet, "/api/v1/audit", q, nil, &out)
	return out.Items, err
}

// Tokens lists the API tokens, revoked ones included. Secrets are never
// listed.
func (c *Client) Tokens(ctx context.Context) ([]Token, error) {
	var out items[Token]
	err := c.do(ctx, http.MethodGet, "/api/v1/tokens", nil, nil, &out)
	return out.Items, err
}

// CreateToken creates an API token and returns its secret, which the server
// shows only this once.
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (secret string, t Token, err error) {
	var out struct {
		Token  Token  `json:"token"`
		Secret string `json:"secret"`
	}
	err = c.do(ctx, http.MethodPost, "/api/v1/tokens", nil, req, &out)
	return out.Secret, out.Token, err
}

// RevokeToken revokes the token with this id.
func (c *Client) RevokeToken(ctx context.Context, id string) (Token, error) {
	if id == "" {
		return Token{}, errors.New("ward client: empty token id")
	}
	var out Token
	err := c.do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}
