package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// GenesisHash is the prev_hash of entry 1: 64 zeros.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// entryDomain starts every entry's hash input, so that an entry hash can
// never be confused with any other SHA-256 Ward computes.
const entryDomain = "ward-audit-entry v1\n"

// chainLockKey is the PostgreSQL advisory lock that serialises appenders on
// every node ("wardaudt" in ASCII).
const chainLockKey int64 = 0x7761726461756474

// RequestInfo names the request an entry belongs to.
type RequestInfo struct {
	ID     string // the request id, as in the API's X-Request-Id
	Source string // the client's address, host:port
}

type requestKey struct{}

// WithRequest returns ctx carrying the request an action belongs to; Append
// fills an entry's RequestID and Source from it when they are empty.
func WithRequest(ctx context.Context, ri RequestInfo) context.Context {
	return context.WithValue(ctx, requestKey{}, ri)
}

// RequestFrom returns the request info WithRequest put in ctx.
func RequestFrom(ctx context.Context) (RequestInfo, bool) {
	ri, ok := ctx.Value(requestKey{}).(RequestInfo)
	return ri, ok
}

// record is an entry as stored: Entry with its detail as the exact
// canonical JSON text that was hashed.
type record struct {
	Entry
	detail string
}

// hash computes the entry's hash from its fields and PrevHash. See the
// package documentation for the encoding.
func (r *record) hash() string {
	h := sha256.New()
	h.Write([]byte(entryDomain))
	var n [8]byte
	for _, f := range [...]string{
		strconv.FormatInt(r.Seq, 10),
		r.At.UTC().Format(time.RFC3339Nano),
		r.Actor, r.Action, r.Target, r.Outcome, r.Reason, r.Source, r.RequestID,
		r.detail,
		r.PrevHash,
	} {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// canonicalJSON encodes detail as canonical JSON (RFC 8785, JCS, except that
// integers that fit 64 bits are written in full): object keys sorted by
// their UTF-16 code units, no insignificant white space, strings escaping
// only '"', '\' and control characters, numbers in their shortest form. An
// empty or nil detail is "{}".
func canonicalJSON(detail map[string]any) (string, error) {
	if len(detail) == 0 {
		return "{}", nil
	}
	raw, err := json.Marshal(detail)
	if err != nil {
		return "", err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := writeCanonical(&b, v); err != nil {
		return "", err
	}
	return b.String(), nil
}

func writeCanonical(b *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case json.Number:
		s, err := canonicalNumber(x)
		if err != nil {
			return err
		}
		b.WriteString(s)
	case string:
		writeCanonicalString(b, x)
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writeCanonical(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int {
			return slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b)))
		})
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeCanonicalString(b, k)
			b.WriteByte(':')
			if err := writeCanonical(b, x[k]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("unexpected JSON value %T", v)
	}
	return nil
}

func canonicalNumber(n json.Number) (string, error) {
	s := string(n)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return strconv.FormatInt(i, 10), nil
	}
	if u, err := strconv.ParseUint(s, 10, 64); err == nil {
		return strconv.FormatUint(u, 10), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return "", fmt.Errorf("number %s: %w", s, err)
	}
	// encoding/json writes float64 as ECMAScript's Number.prototype.toString
	// does, which is what JCS asks for.
	out, err := json.Marshal(f)
	return string(out), err
}

func writeCanonicalString(b *bytes.Buffer, s string) {
	const hexDigits = "0123456789abcdef"
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 {
				b.WriteString(`\u00`)
				b.WriteByte(hexDigits[r>>4])
				b.WriteByte(hexDigits[r&0xf])
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// clean makes s storable in both dialects and bounded: valid UTF-8 without
// NUL bytes, at most n bytes (cut on a character boundary) when n > 0.
func clean(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	}
	if n > 0 && len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// errEmptyEntry is returned for an entry without actor, action or outcome.
var errEmptyEntry = errors.New("audit: entry needs actor, action and outcome")
