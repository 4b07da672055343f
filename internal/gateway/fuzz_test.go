package gateway

import (
	"strings"
	"testing"

	"github.com/wardhq/ward/protocol"
)

// FuzzAuthorize: whatever the topic, client id and direction, authorize
// never allows a topic outside the device's own namespace, never a
// wildcard or $ topic, never a subscription other than cmd, and while
// quarantined never a publish other than state and events.
func FuzzAuthorize(f *testing.F) {
	id := "abcdefghijklmnopqrstuvwxyz"
	for _, k := range []protocol.Kind{protocol.Telemetry, protocol.Events, protocol.State, protocol.Ack, protocol.Cmd} {
		f.Add(id, protocol.Topic(id, k), true, false)
		f.Add(id, protocol.Topic(id, k), false, true)
	}
	for _, s := range []string{"#", "+", "ward/v1/d/+/cmd", "ward/v1/d/" + id + "/#", "$SYS/broker", "$share/g/ward/v1/d/" + id + "/cmd",
		"ward/v1/d/" + id + "/cmd/", "/ward/v1/d/" + id + "/cmd", "ward/v1/d/" + id + "/cmd\x00", "ward/v1/d/" + strings.ToUpper(id) + "/cmd", ""} {
		f.Add(id, s, false, false)
		f.Add(id, s, true, false)
	}
	f.Fuzz(func(t *testing.T, id, topic string, write, quarantined bool) {
		d := authorize(id, quarantined, topic, write)
		if d != allow {
			return
		}
		if !protocol.ValidDeviceID(id) {
			t.Fatalf("allowed for invalid id %q", id)
		}
		if !strings.HasPrefix(topic, protocol.TopicPrefix+id+"/") || strings.ContainsAny(topic, "+#$\x00") {
			t.Fatalf("allowed %q for %q", topic, id)
		}
		tid, k, err := protocol.ParseTopic(topic)
		if err != nil || tid != id || topic != protocol.Topic(id, k) {
			t.Fatalf("allowed unparsable %q", topic)
		}
		switch {
		case !write && k != protocol.Cmd:
			t.Fatalf("subscription to %q allowed", topic)
		case write && !k.Publishable():
			t.Fatalf("publish to %q allowed", topic)
		case write && quarantined && k != protocol.State && k != protocol.Events:
			t.Fatalf("quarantined publish to %q allowed", topic)
		}
	})
}
