package api

import (
	"context"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/audit"
)

// ---- the audit chain: verify and export

type verifyAuditOutput struct {
	Body audit.Report
}

type exportAuditInput struct {
	Format string `query:"format" enum:"jsonl,cef" default:"jsonl" doc:"jsonl: one JSON object per line with seq, prev_hash and hash; cef: ArcSight CEF, one event per line"`
	After  int64  `query:"after" minimum:"0" doc:"Only entries after this sequence number"`
	Limit  int    `query:"limit" minimum:"0" doc:"At most this many entries; 0 or absent: all"`
}

// exportDeadline bounds how long one export may stream, past the admin
// listener's write timeout.
const exportDeadline = 30 * time.Minute

func (s *server) auditChainRoutes() {
	register(s, huma.Operation{
		OperationID: "verify-audit", Metadata: perm(access.AuditExport), Method: http.MethodGet, Path: Prefix + "/audit/verify",
		Summary:     "Verify the audit chain and its signed checkpoints",
		Description: "Reads the whole chain and answers 200 with ok false, the first bad entry and the problem when it is broken.",
		Tags:        []string{"audit"},
	}, func(ctx context.Context, _ *struct{}) (*verifyAuditOutput, error) {
		rep, err := s.cfg.Audit.Verify(ctx, s.cfg.AuditKey)
		if err != nil {
			return nil, err
		}
		e := audit.Entry{Actor: actor(ctx), Action: "audit.verify", Target: "audit", Outcome: audit.Success,
			Detail: map[string]any{"ok": rep.OK, "last_seq": rep.LastSeq}}
		if !rep.OK {
			e.Reason = rep.Problem
			e.Detail["first_bad"] = rep.FirstBad
		}
		if err := s.cfg.Audit.Record(ctx, e); err != nil {
			return nil, err
		}
		return &verifyAuditOutput{Body: rep}, nil
	})

	register(s, huma.Operation{
		OperationID: "export-audit", Metadata: perm(access.AuditExport), Method: http.MethodGet, Path: Prefix + "/audit/export",
		Summary:     "Export audit entries as JSON lines or CEF",
		Description: "Streams entries in sequence order. A stream cut short (the connection closes without the end of the chunked body) means the export failed midway.",
		Tags:        []string{"audit"},
		Responses: map[string]*huma.Response{
			"200": {
				Description: "The entries, one per line",
				Content: map[string]*huma.MediaType{
					"application/x-ndjson":      {Schema: &huma.Schema{Type: "string"}},
					"text/plain; charset=utf-8": {Schema: &huma.Schema{Type: "string"}},
				},
			},
		},
	}, func(ctx context.Context, in *exportAuditInput) (*huma.StreamResponse, error) {
		f := audit.Filter{After: in.After, Limit: in.Limit}
		if err := s.cfg.Audit.Record(ctx, audit.Entry{Actor: actor(ctx), Action: "audit.export", Target: "audit", Outcome: audit.Success,
			Detail: map[string]any{"format": in.Format, "after": in.After, "limit": in.Limit}}); err != nil {
			return nil, err
		}
		contentType := "application/x-ndjson"
		if in.Format == audit.FormatCEF {
			contentType = "text/plain; charset=utf-8"
		}
		return &huma.StreamResponse{Body: func(hctx huma.Context) {
			w := &startWriter{hctx: hctx, contentType: contentType}
			if rw, ok := hctx.BodyWriter().(http.ResponseWriter); ok {
				_ = http.NewResponseController(rw).SetWriteDeadline(time.Now().Add(exportDeadline))
			}
			err := s.cfg.Audit.Export(hctx.Context(), w, in.Format, f)
			switch {
			case err == nil && !w.started:
				w.start() // nothing to export: an empty body
			case err != nil && !w.started:
				se := s.problem(hctx.Context(), err)
				_ = huma.WriteErr(s.api, hctx, se.GetStatus(), se.Error())
			case err != nil:
				// Too late for a status: cut the stream so that the client
				// sees a truncated body, not a short but complete export.
				s.log.ErrorContext(hctx.Context(), "api: audit export failed midway", "err", err)
				panic(http.ErrAbortHandler)
			}
		}}, nil
	})
}

// startWriter sends the status and headers of a streamed answer on its
// first write, so that an error before any output can still be a problem
// document.
type startWriter struct {
	hctx        huma.Context
	contentType string
	started     bool
}

func (w *startWriter) start() {
	w.started = true
	w.hctx.SetHeader("Content-Type", w.contentType)
	w.hctx.SetStatus(http.StatusOK)
}

func (w *startWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.start()
	}
	n, err := w.hctx.BodyWriter().Write(p)
	if f, ok := w.hctx.BodyWriter().(http.Flusher); ok {
		f.Flush()
	}
	return n, err
}
