package bus

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestEmbeddedBusPersistsJetStream(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	b, err := Open(Config{Dir: dir, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Embedded() {
		t.Fatal("no URL given, yet not embedded")
	}
	if err := b.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	// Core NATS round trip.
	sub, err := b.Conn.SubscribeSync(SubjectRevoked)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Conn.Publish(SubjectRevoked, []byte(`["ab"]`)); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != `["ab"]` {
		t.Fatalf("core message: %v %v", m, err)
	}
	// A JetStream message written before a restart is there after it.
	if _, err := b.JetStream.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.JetStream.Publish(ctx, "t.x", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b, err = Open(Config{Dir: dir, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	st, err := b.JetStream.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(ctx, 1)
	if err != nil || string(msg.Data) != "kept" {
		t.Fatalf("after restart: %v %v", msg, err)
	}
}
