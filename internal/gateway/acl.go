package gateway

import (
	"strings"

	"github.com/wardhq/ward/protocol"
)

// decision is the outcome of a topic authorisation.
type decision uint8

const (
	allow           decision = iota
	denyForeign              // not this device's namespace, a wildcard, $SYS, …
	denyKind                 // its own namespace, but not a kind it may use this way
	denyQuarantined          // allowed when active, not while quarantined
)

func (d decision) String() string {
	switch d {
	case allow:
		return "allowed"
	case denyForeign:
		return "topic outside the device's namespace"
	case denyKind:
		return "topic kind not allowed for this operation"
	case denyQuarantined:
		return "not allowed while quarantined"
	}
	return "denied"
}

// authorize decides whether device id may publish (write) to, or subscribe
// to and receive from (!write), topic. It is the whole of the topic policy
// (DESIGN.md §3): publish only to ward/v1/d/<id>/{telemetry,events,state,
// ack}, subscribe only to ward/v1/d/<id>/cmd, exactly — no wildcard, no
// shared subscription, no $SYS, no other device. A quarantined device may
// publish only state and events, and still receive cmd (security updates).
func authorize(id string, quarantined bool, topic string, write bool) (decision, protocol.Kind) {
	kind, ok := ownTopic(id, topic)
	if !ok {
		return denyForeign, ""
	}
	if !write {
		if kind != protocol.Cmd {
			return denyKind, kind
		}
		return allow, kind
	}
	if !kind.Publishable() {
		return denyKind, kind
	}
	if quarantined && kind != protocol.State && kind != protocol.Events {
		return denyQuarantined, kind
	}
	return allow, kind
}

// ownTopic returns the kind of topic if it is exactly one of device id's
// topics, ward/v1/d/<id>/<kind>. It is protocol.ParseTopic for a known
// device, without checking the id in the topic a second time: it runs for
// every message.
func ownTopic(id, topic string) (protocol.Kind, bool) {
	if !protocol.ValidDeviceID(id) {
		return "", false
	}
	rest, ok := strings.CutPrefix(topic, protocol.TopicPrefix)
	if !ok {
		return "", false
	}
	if rest, ok = strings.CutPrefix(rest, id); !ok {
		return "", false
	}
	if rest, ok = strings.CutPrefix(rest, "/"); !ok {
		return "", false
	}
	// The constants, not rest: a PUBLISH's topic lives in a read buffer
	// that is reused once the packet is handled.
	for _, k := range [...]protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack, protocol.Cmd} {
		if rest == string(k) {
			return k, true
		}
	}
	return "", false
}
