package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// AuditReport is the outcome of verifying the audit chain.
type AuditReport struct {
	OK             bool   `json:"ok"`
	Entries        int    `json:"entries"`
	Checkpoints    int    `json:"checkpoints"`
	LastSeq        int64  `json:"last_seq"`
	LastHash       string `json:"last_hash"`
	LastCheckpoint int64  `json:"last_checkpoint"`
	// KeyID names the checkpoint key the server verified signatures
	// with; empty when it has none configured.
	KeyID string `json:"key_id,omitempty"`
	// FirstBad and Problem name the first entry (or checkpoint) found bad.
	FirstBad int64  `json:"first_bad,omitempty"`
	Problem  string `json:"problem,omitempty"`
}

// VerifyAudit asks the server to verify the whole audit chain. A broken
// chain is not an error: the report says so (OK false).
func (c *Client) VerifyAudit(ctx context.Context) (AuditReport, error) {
	var r AuditReport
	err := c.do(ctx, http.MethodGet, "/api/v1/audit/verify", nil, nil, &r)
	return r, err
}

// Audit export formats.
const (
	AuditJSONL = "jsonl"
	AuditCEF   = "cef"
)

// AuditExport selects what ExportAudit streams.
type AuditExport struct {
	Format string // AuditJSONL (default) or AuditCEF
	After  int64  // entries with a greater Seq
	Limit  int    // at most this many; 0: all
}

// ExportAudit streams audit entries to w as the server writes them. The
// export may be long: it is bounded by ctx, not by the HTTP client's
// timeout. A stream the server cut short is an error.
func (c *Client) ExportAudit(ctx context.Context, w io.Writer, o AuditExport) error {
	q := url.Values{}
	if o.Format != "" {
		q.Set("format", o.Format)
	}
	if o.After > 0 {
		q.Set("after", strconv.FormatInt(o.After, 10))
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	const path = "/api/v1/audit/export"
	target := c.base.String() + path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("ward client: %w", err)
	}
	req.Header.Set("Accept", "application/x-ndjson, text/plain, application/problem+json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	hc := *c.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("ward client: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
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
	body := &readErr{r: resp.Body}
	if _, err := io.Copy(w, body); err != nil {
		if body.err != nil {
			return fmt.Errorf("ward client: GET %s: export cut short: %w", path, err)
		}
		return fmt.Errorf("ward client: export: %w", err)
	}
	return nil
}

// readErr remembers a read error other than io.EOF, to tell a broken
// stream from a failing writer.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}
