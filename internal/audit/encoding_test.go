package audit

import (
	"bufio"
	"math"
	"strings"
	"testing"
	"time"
)

// TestHashKnownAnswer pins the entry hash to a value computed outside Go
// (Python's hashlib and struct, following the package documentation).
func TestHashKnownAnswer(t *testing.T) {
	r := record{
		Entry: Entry{
			Seq: 42, At: time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC),
			Actor: "token:abc", Action: "device.revoke", Target: "device:x", Outcome: Success,
			Reason: "stolen é", Source: "192.0.2.7:5000", RequestID: "req-1", PrevHash: GenesisHash,
		},
		detail: `{"a":"<b>","n":7}`,
	}
	const want = "9944d98376d3068e572f55431e7d764670f6df762173f41297c9267005aaa35b"
	if got := r.hash(); got != want {
		t.Fatalf("hash = %s, want %s", got, want)
	}
	// The time's zone does not matter, only the instant.
	r.At = r.At.In(time.FixedZone("CET", 3600))
	if got := r.hash(); got != want {
		t.Fatalf("hash in another zone = %s, want %s", got, want)
	}
}

func TestCanonicalJSON(t *testing.T) {
	for _, tc := range []struct {
		in   map[string]any
		want string
	}{
		{nil, `{}`},
		{map[string]any{}, `{}`},
		{map[string]any{"b": 1, "a": "<x>&"}, `{"a":"<x>&","b":1}`},
		{map[string]any{"n": []any{1.5, 1e21, 1e-7, 0.1, math.Copysign(0, -1), math.MaxInt64, uint64(math.MaxUint64)}}, `{"n":[1.5,1e+21,1e-7,0.1,0,9223372036854775807,18446744073709551615]}`},
		{map[string]any{"s": "tab\tnl\nq\"bs\\ctl\x01\x1f del\x7f ls\u2028 é"}, `{"s":"tab\tnl\nq\"bs\\ctl\u0001\u001f del` + "\x7f ls\u2028 é" + `"}`},
		{map[string]any{"bad": "\xff"}, `{"bad":"` + "\uFFFD" + `"}`},
		// JCS sorts keys by UTF-16 code units: U+1F600 (D83D DE00) comes
		// before U+FFFF, although its UTF-8 bytes sort after.
		{map[string]any{"\uFFFF": 1, "\U0001F600": 2, "": 0, "A": 3}, `{"":0,"A":3,"` + "\U0001F600" + `":2,"` + "\uFFFF" + `":1}`},
		{map[string]any{"o": map[string]any{"z": nil, "y": true, "x": false}}, `{"o":{"x":false,"y":true,"z":null}}`},
		{map[string]any{"st": struct {
			B int    `json:"b"`
			A string `json:"a"`
		}{2, "one"}}, `{"st":{"a":"one","b":2}}`},
	} {
		got, err := canonicalJSON(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("canonicalJSON(%#v) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	if _, err := canonicalJSON(map[string]any{"f": math.Inf(1)}); err == nil {
		t.Error("infinity accepted")
	}
}

func TestClean(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"plain", 0, "plain"},
		{"a\x00b", 0, "a\uFFFDb"},
		{"a\xffb", 0, "a\uFFFDb"},
		{"ééé", 3, "é"}, // never cut inside a character
		{"abc", 2, "ab"},
	} {
		if got := clean(tc.in, tc.n); got != tc.want {
			t.Errorf("clean(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestCEFEscaping(t *testing.T) {
	for _, tc := range []struct{ in, header, value string }{
		{`plain`, `plain`, `plain`},
		{`a|b`, `a\|b`, `a|b`},
		{`a\b`, `a\\b`, `a\\b`},
		{`a=b`, `a=b`, `a\=b`},
		{"a\nb", `a b`, `a\nb`},
		{"a\r\nb", `a  b`, `a\nb`},
		{"a\rb", `a b`, `a\rb`},
		{`\|=`, `\\\|=`, `\\|\=`},
		{"x=\\n", `x=\\n`, `x\=\\n`}, // a literal backslash-n stays distinguishable from a newline
		{"é ü", "é ü", "é ü"},
	} {
		if got := cefHeader(tc.in); got != tc.header {
			t.Errorf("cefHeader(%q) = %q, want %q", tc.in, got, tc.header)
		}
		if got := cefValue(tc.in); got != tc.value {
			t.Errorf("cefValue(%q) = %q, want %q", tc.in, got, tc.value)
		}
	}
}

func TestCEFLine(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)
	for _, tc := range []struct {
		name string
		r    record
		want string
	}{
		{"full", record{Entry: Entry{
			Seq: 7, At: at, Actor: "user:ann", Action: "device.revoke", Target: "device:x", Outcome: Denied,
			Reason: "a=b\\c|d\nnext", Source: "192.0.2.7:5000", RequestID: "r-1", Hash: "ab12",
		}}, `CEF:0|Ward|Ward|1.2\|3|device.revoke|device.revoke|7|rt=1772366400123 suser=user:ann act=device.revoke outcome=denied duser=device:x src=192.0.2.7 msg=a\=b\\c|d\nnext cs1Label=requestId cs1=r-1 cs2Label=hash cs2=ab12 externalId=7` + "\n"},
		{"sparse", record{Entry: Entry{
			Seq: 8, At: at, Actor: "system", Action: "ca|rotate", Outcome: Success, Source: "[2001:db8::1]:443", Hash: "cd34",
		}}, `CEF:0|Ward|Ward|1.2\|3|ca\|rotate|ca\|rotate|3|rt=1772366400123 suser=system act=ca|rotate outcome=success src=2001:db8::1 cs2Label=hash cs2=cd34 externalId=8` + "\n"},
		{"source not an address", record{Entry: Entry{
			Seq: 9, At: at, Actor: "system", Action: "x", Outcome: Failed, Source: "mqtt bridge", Hash: "ef",
		}}, `CEF:0|Ward|Ward|1.2\|3|x|x|6|rt=1772366400123 suser=system act=x outcome=failed cs2Label=hash cs2=ef externalId=9` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			w := bufio.NewWriter(&b)
			if err := writeCEF(w, "1.2|3", &tc.r); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if b.String() != tc.want {
				t.Errorf("got  %s\nwant %s", b.String(), tc.want)
			}
		})
	}
}
