package replication

import (
	"errors"
	"net"
	"syscall"
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

// TestEmbeddedPortTaken: a client or route port that another process holds
// fails the start with an error wrapping syscall.EADDRINUSE, long before the
// start timeout, so a caller can choose other ports; a slow server is not
// mistaken for a busy port.
func TestEmbeddedPortTaken(t *testing.T) {
	for _, route := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cfg := DefaultEmbeddedConfig()
		cfg.StoreDir = t.TempDir()
		cfg.AllowAnonymous = true
		cfg.StartTimeout = time.Minute
		cfg.Listen = ln.Addr().String()
		if route {
			cfg.Listen = "127.0.0.1:0"
			cfg.ClusterListen = ln.Addr().String()
			cfg.RoutePassword = "route-password-for-tests"
			cfg.Routes = []string{ln.Addr().String()}
		}
		start := time.Now()
		e, err := StartEmbedded(cfg)
		if err == nil {
			e.Shutdown()
			t.Fatalf("route %v: started on a taken port", route)
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("route %v: %v, want EADDRINUSE", route, err)
		}
		if d := time.Since(start); d >= cfg.StartTimeout {
			t.Fatalf("route %v: failed only after the start timeout (%s)", route, d)
		}
	}
}
