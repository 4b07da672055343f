// Package protocol is Ward's public wire contract with devices, version 1:
// the MQTT topic names a device may use, and the JSON payloads it sends and
// receives. Device makers import it (with package agent); it imports nothing
// of the server. docs/device-protocol.md describes the same contract in
// prose; a change here is a change of protocol version.
//
// # Topics
//
// Every device topic lives under ward/v1/d/<id>/, where <id> is the Ward
// device id from the device's operational certificate (its URI SAN
// ward://device/<id>), which is also its MQTT client id. A device may
// publish only to its own telemetry, events, state and ack topics, and
// subscribe only to its own cmd topic: no wildcards, no other device, no
// $SYS. Only state may be retained.
//
// # Payloads
//
// Payloads are JSON objects with a "v" field (the payload version, 1). A
// payload must be valid UTF-8 JSON, at most MaxPayload bytes.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Version is the protocol version in topic names.
const Version = "v1"

// TopicPrefix starts every device topic.
const TopicPrefix = "ward/" + Version + "/d/"

// MaxPayload bounds a device message.
const MaxPayload = 64 << 10

// Kind is the last segment of a device topic.
type Kind string

// Kinds of device topics.
const (
	Telemetry Kind = "telemetry" // device → Ward: periodic measurements
	Events    Kind = "events"    // device → Ward: alarms, therapy events, security events
	State     Kind = "state"     // device → Ward: current state (retained)
	Ack       Kind = "ack"       // device → Ward: acknowledgement of a command
	Cmd       Kind = "cmd"       // Ward → device: signed commands
)

// Publishable reports whether a device may publish to topics of kind k.
func (k Kind) Publishable() bool {
	switch k {
	case Telemetry, Events, State, Ack:
		return true
	}
	return false
}

// ValidDeviceID reports whether id has the shape of a Ward device id: 26
// characters of the lowercase base32 alphabet (a–z, 2–7).
func ValidDeviceID(id string) bool {
	if len(id) != 26 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// Topic returns the topic of kind k for device id.
func Topic(id string, k Kind) string { return TopicPrefix + id + "/" + string(k) }

// ErrBadTopic is returned for a topic outside the device namespace.
var ErrBadTopic = errors.New("protocol: not a device topic")

// ParseTopic splits a device topic into its device id and kind. It accepts
// exactly ward/v1/d/<id>/<kind> with a known kind and no wildcard.
func ParseTopic(topic string) (id string, k Kind, err error) {
	rest, ok := strings.CutPrefix(topic, TopicPrefix)
	if !ok {
		return "", "", ErrBadTopic
	}
	id, kind, ok := strings.Cut(rest, "/")
	if !ok || !ValidDeviceID(id) {
		return "", "", ErrBadTopic
	}
	switch k = Kind(kind); k {
	case Telemetry, Events, State, Ack, Cmd:
		return id, k, nil
	}
	return "", "", ErrBadTopic
}

// Envelope is what every payload has: its version.
type Envelope struct {
	V int `json:"v"`
}

// ErrBadPayload is returned for a payload that is not a v1 JSON object.
var ErrBadPayload = errors.New("protocol: bad payload")

// CheckPayload checks that b is a JSON object of at most MaxPayload bytes
// with "v": 1, and nothing after it.
func CheckPayload(b []byte) error {
	if len(b) > MaxPayload {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadPayload, len(b), MaxPayload)
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("%w: not valid UTF-8", ErrBadPayload)
	}
	// json.Valid accepts exactly one JSON value with only white space
	// around it, and allocates nothing; then the value must be an object.
	if !json.Valid(b) {
		return fmt.Errorf("%w: not a JSON object, or data after it", ErrBadPayload)
	}
	t := bytes.TrimLeft(b, " \t\r\n")
	if len(t) == 0 || t[0] != '{' {
		return fmt.Errorf("%w: not a JSON object", ErrBadPayload)
	}
	// The object's keys are matched exactly: encoding/json matches struct
	// fields case-insensitively, which would take "V" for "v".
	if v, ok := topLevelMember(t, "v"); !ok || string(v) != "1" {
		return fmt.Errorf("%w: \"v\" must be 1", ErrBadPayload)
	}
	return nil
}

// topLevelMember returns the raw value of the last member named key of
// the JSON object b, which must be valid JSON (json.Valid), as decoding
// it into a map would keep it. It allocates nothing: it runs for every
// message a device publishes. A key written with escapes is unescaped
// with encoding/json before it is compared.
func topLevelMember(b []byte, key string) (raw []byte, found bool) {
	i := skipSpace(b, 1) // after '{'
	for i < len(b) && b[i] != '}' {
		// Key.
		end := skipString(b, i)
		k := b[i+1 : end-1]
		match := string(k) == key
		if !match && bytes.IndexByte(k, '\\') >= 0 {
			var u string
			match = json.Unmarshal(b[i:end], &u) == nil && u == key
		}
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // ':'
		// Value.
		end = skipValue(b, i)
		if match {
			raw, found = b[i:end], true
		}
		i = skipSpace(b, end)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return raw, found
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at b[i].
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the value that starts at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	}
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\r' && b[i] != '\n' {
		i++
	}
	return i
}

// StatePayload is what a device reports on its state topic.
type StatePayload struct {
	V               int    `json:"v"`
	Mode            string `json:"mode"`                       // e.g. idle, infusing, paused, alarm
	SoftwareVersion string `json:"software_version,omitempty"` // as the device reports it
	DrugLibVersion  string `json:"druglib_version,omitempty"`
	Idle            bool   `json:"idle"` // updates install only when true (DESIGN §4.1)
}
