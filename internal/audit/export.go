package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Export formats.
const (
	FormatJSONL = "jsonl" // one JSON object per line, with seq, prev_hash and hash
	FormatCEF   = "cef"   // ArcSight Common Event Format, one event per line
)

// ErrFormat is returned for an export format Ward does not know.
var ErrFormat = errors.New("audit: unknown export format: use jsonl or cef")

// exportPage is how many entries Export reads at a time.
const exportPage = 1000

// Export writes the entries f selects to w in sequence order, in format
// FormatJSONL or FormatCEF. f.Limit <= 0 exports every entry after f.After.
// It reads the store a page at a time, so the log may be of any size.
func (l *Log) Export(ctx context.Context, w io.Writer, format string, f Filter) error {
	var line func(*bufio.Writer, *record) error
	switch format {
	case FormatJSONL:
		line = writeJSONLine
	case FormatCEF:
		line = func(b *bufio.Writer, r *record) error { return writeCEF(b, l.version, r) }
	default:
		return ErrFormat
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	left := f.Limit
	for {
		n := exportPage
		if f.Limit > 0 && left < n {
			n = left
		}
		if n == 0 {
			break
		}
		got := 0
		err := l.scan(ctx, f, n, false, func(r *record) error {
			got++
			f.After = r.Seq
			return line(bw, r)
		})
		if err != nil {
			return fmt.Errorf("audit: export: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("audit: export: %w", err)
		}
		left -= got
		if got < n {
			break
		}
	}
	return nil
}

// exportLine is one line of a JSON-lines export. Detail is the stored
// canonical JSON, verbatim, so the line holds exactly what was hashed.
type exportLine struct {
	Seq       int64           `json:"seq"`
	At        string          `json:"at"`
	Actor     string          `json:"actor"`
	Action    string          `json:"action"`
	Target    string          `json:"target"`
	Outcome   string          `json:"outcome"`
	Reason    string          `json:"reason"`
	Source    string          `json:"source"`
	RequestID string          `json:"request_id"`
	Detail    json.RawMessage `json:"detail"`
	PrevHash  string          `json:"prev_hash"`
	Hash      string          `json:"hash"`
}

func writeJSONLine(w *bufio.Writer, r *record) error {
	detail := json.RawMessage(r.detail)
	if !json.Valid(detail) {
		// Not JSON, so tampered with: export the text as a JSON string,
		// which keeps the line valid and will not re-verify.
		b, _ := json.Marshal(r.detail)
		detail = b
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(exportLine{
		Seq: r.Seq, At: r.At.UTC().Format(time.RFC3339Nano),
		Actor: r.Actor, Action: r.Action, Target: r.Target, Outcome: r.Outcome, Reason: r.Reason,
		Source: r.Source, RequestID: r.RequestID, Detail: detail, PrevHash: r.PrevHash, Hash: r.Hash,
	})
}

// severity is the CEF severity (0-10) of an outcome.
func severity(outcome string) int {
	switch outcome {
	case Denied:
		return 7
	case Failed:
		return 6
	case Pending:
		return 4
	}
	return 3
}

// writeCEF writes one CEF:0 event:
//
//	CEF:0|Ward|Ward|<version>|<action>|<action>|<severity>|rt=<ms> suser=<actor> act=<action> outcome=<outcome> duser=<target> src=<ip> msg=<reason> cs1Label=requestId cs1=<id> cs2Label=hash cs2=<hash> externalId=<seq>
//
// Extension keys whose value is empty are left out; src only when the
// source is an IP address.
func writeCEF(w *bufio.Writer, version string, r *record) error {
	var b strings.Builder
	b.WriteString("CEF:0|Ward|Ward|")
	for _, h := range []string{version, r.Action, r.Action, strconv.Itoa(severity(r.Outcome))} {
		b.WriteString(cefHeader(h))
		b.WriteByte('|')
	}
	first := true
	ext := func(k, v string) {
		if v == "" {
			return
		}
		if !first {
			b.WriteByte(' ')
		}
		first = false
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(cefValue(v))
	}
	ext("rt", strconv.FormatInt(r.At.UnixMilli(), 10))
	ext("suser", r.Actor)
	ext("act", r.Action)
	ext("outcome", r.Outcome)
	ext("duser", r.Target)
	ext("src", sourceIP(r.Source))
	ext("msg", r.Reason)
	if r.RequestID != "" {
		ext("cs1Label", "requestId")
		ext("cs1", r.RequestID)
	}
	ext("cs2Label", "hash")
	ext("cs2", r.Hash)
	ext("externalId", strconv.FormatInt(r.Seq, 10))
	b.WriteByte('\n')
	_, err := w.WriteString(b.String())
	return err
}

// cefHeader escapes a CEF header field: backslash and pipe are escaped, and
// a line break, which a header may not hold, becomes a space.
func cefHeader(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '|':
			b.WriteString(`\|`)
		case '\r', '\n':
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// cefValue escapes a CEF extension value: backslash and equals sign are
// escaped, and line breaks are written \n (CR LF and LF) or \r (a lone CR).
func cefValue(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '=':
			b.WriteString(`\=`)
		case '\r':
			if i+1 < len(s) && s[i+1] == '\n' {
				i++
				b.WriteString(`\n`)
			} else {
				b.WriteString(`\r`)
			}
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// sourceIP returns the IP address of a "host:port" or bare address, or ""
// when the source is not an IP address.
func sourceIP(s string) string {
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return ""
	}
	return ip.String()
}
