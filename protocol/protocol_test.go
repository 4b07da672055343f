package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

const dev = "abcdefghijklmnopqrstuvwxyz"

func TestParseTopic(t *testing.T) {
	for _, tc := range []struct {
		topic string
		ok    bool
		kind  Kind
	}{
		{Topic(dev, Telemetry), true, Telemetry},
		{Topic(dev, Cmd), true, Cmd},
		{"ward/v1/d/" + dev + "/+", false, ""},
		{"ward/v1/d/+/telemetry", false, ""},
		{"ward/v1/d/#", false, ""},
		{"ward/v1/d/" + dev + "/telemetry/x", false, ""},
		{"ward/v2/d/" + dev + "/telemetry", false, ""},
		{"$SYS/broker/load", false, ""},
		{"ward/v1/d/ABCDEFGHIJKLMNOPQRSTUVWXYZ/state", false, ""},
		{"", false, ""},
	} {
		id, k, err := ParseTopic(tc.topic)
		if tc.ok != (err == nil) || (tc.ok && (id != dev || k != tc.kind)) {
			t.Errorf("ParseTopic(%q) = %q %q %v", tc.topic, id, k, err)
		}
	}
}

func TestCheckPayload(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"v":1,"hr":72}`, true},
		{`{"v":2}`, false},
		{`{"hr":72}`, false},
		{`[1]`, false},
		{`null`, false},
		{`{"v":1} {"v":1}`, false},
		{`{"v":1}x`, false},
		{`{"v":1}}`, false},
		{` { "v" : 1 , "a" : [1, {"v": 2}] } `, true},
		{`{"v":1.0}`, false},
		{`{"v":2,"v":1}`, true},
		{`{"V":1}`, false},
		{`{"v":1}]`, false},
		{"{\"v\":1}  \n", true},
		{`{"v":"1"}`, false},
		{`{"v":1`, false},
		{"{\"v\":1,\"s\":\"\xff\"}", false},
		{`{"v":1,"s":"` + strings.Repeat("a", MaxPayload) + `"}`, false},
	} {
		err := CheckPayload([]byte(tc.in))
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadPayload)) {
			t.Errorf("CheckPayload(%.40q) = %v", tc.in, err)
		}
	}
}

func FuzzParseTopic(f *testing.F) {
	f.Add(Topic(dev, State))
	f.Add("ward/v1/d/+/#")
	f.Fuzz(func(t *testing.T, topic string) {
		id, k, err := ParseTopic(topic)
		if err != nil {
			return
		}
		if Topic(id, k) != topic || strings.ContainsAny(topic, "+#") {
			t.Fatalf("ParseTopic(%q) accepted %q %q", topic, id, k)
		}
	})
}

func FuzzCheckPayload(f *testing.F) {
	f.Add([]byte(`{"v":1,"mode":"idle"}`))
	f.Add([]byte(`{"v":1}{}`))
	f.Add([]byte(`{"v":1}}`))
	f.Add([]byte(`{"V":1}`))
	f.Add([]byte(`{"v":2,"x":{"v":1},"v":1}`))
	f.Add([]byte(`{"v":1,"v":2}`))
	f.Add([]byte(`{"\u0076":1}`))
	f.Add([]byte(` { "a" : [1,"}",{"v":1}] , "v" : 1 } `))
	f.Add([]byte(`{"v":1.0}`))
	f.Add([]byte(`[{"v":1}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := CheckPayload(b)
		// The oracle: what decoding into a map keeps.
		var obj map[string]json.RawMessage
		want := len(b) <= MaxPayload && utf8.Valid(b) && json.Valid(b) &&
			json.Unmarshal(b, &obj) == nil && obj != nil && string(obj["v"]) == "1"
		if (err == nil) != want {
			t.Fatalf("CheckPayload(%q) = %v, the map decoding says %v", b, err, want)
		}
	})
}
