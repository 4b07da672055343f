package gateway

import (
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
func authorize(id string, quarantined bool, topic string, write bool) decision {
	if !protocol.ValidDeviceID(id) {
		return denyForeign
	}
	tid, kind, err := protocol.ParseTopic(topic)
	if err != nil || tid != id || topic != protocol.Topic(id, kind) {
		return denyForeign
	}
	if !write {
		if kind != protocol.Cmd {
			return denyKind
		}
		return allow
	}
	if !kind.Publishable() {
		return denyKind
	}
	if quarantined && kind != protocol.State && kind != protocol.Events {
		return denyQuarantined
	}
	return allow
}
