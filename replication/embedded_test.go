package replication

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestEmbeddedJetStreamPersistsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultEmbeddedConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StoreDir = dir
	cfg.AllowAnonymous = true

	publish := func() {
		e, err := StartEmbedded(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Shutdown()
		if !e.Ready() {
			t.Fatal("embedded server not ready")
		}
		nc, err := nats.Connect(e.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"tally.>"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, "tally.default.revocation.token", []byte("x"), jetstream.WithMsgID("1")); err != nil {
			t.Fatal(err)
		}
	}
	publish()
	publish() // same Nats-Msg-Id: de-duplicated

	e, err := StartEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	nc, err := nats.Connect(e.ClientURL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(t.Context(), "T")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages after restart, want 1", info.State.Msgs)
	}
}

func TestEmbeddedConfigValidate(t *testing.T) {
	for _, c := range []EmbeddedConfig{
		{Listen: "nope", StoreDir: "x", StartTimeout: time.Second},
		{Listen: "127.0.0.1:99999", StoreDir: "x", StartTimeout: time.Second},
		{Listen: "127.0.0.1:0", StartTimeout: time.Second},
		{Listen: "127.0.0.1:0", StoreDir: "x"},
		{Listen: "127.0.0.1:0", StoreDir: "x", StartTimeout: time.Second}, // no node password
		{Listen: "127.0.0.1:0", StoreDir: "x", StartTimeout: time.Second, NodePassword: "p", Routes: []string{"127.0.0.1:1"}},
		{Listen: "127.0.0.1:0", StoreDir: "x", StartTimeout: time.Second, NodePassword: "p", ClusterListen: "127.0.0.1:0"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
}
