package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tallyauth/tally/node"
)

// TestServeNATSClusterSettings: make cluster's node files wire the embedded
// NATS cluster, and the flags and environment read the same settings.
func TestServeNATSClusterSettings(t *testing.T) {
	for i, want := range []struct{ listen, cluster string }{
		{"127.0.0.1:4231", "127.0.0.1:6231"},
		{"127.0.0.1:4232", "127.0.0.1:6232"},
		{"127.0.0.1:4233", "127.0.0.1:6233"},
	} {
		cfg := node.DefaultConfig()
		level := "info"
		path := filepath.Join("..", "..", "deploy", "local", "node"+string(rune('1'+i))+".json")
		if err := loadServeFile(path, &cfg, &level); err != nil {
			t.Fatal(err)
		}
		if cfg.NATSListen != want.listen || cfg.NATSClusterListen != want.cluster || cfg.Events.NATSURL != "" {
			t.Errorf("%s: nats listen %q, cluster %q, url %q", path, cfg.NATSListen, cfg.NATSClusterListen, cfg.Events.NATSURL)
		}
		if len(cfg.NATSRoutes) != 2 || slices.Contains(cfg.NATSRoutes, want.cluster) {
			t.Errorf("%s: routes %q, want the two other nodes'", path, cfg.NATSRoutes)
		}
	}
	// Routes without a route listener: refused, from the environment too.
	code, _, errs := runCLI(t, map[string]string{"TALLY_NATS_ROUTES": "127.0.0.1:6232, 127.0.0.1:6233"}, "serve", "--dev", "--data-dir", t.TempDir())
	if code != 2 || !strings.Contains(errs, "nats routes need a nats cluster listen address") {
		t.Fatalf("routes without a cluster listener: %d %s", code, errs)
	}
	code, _, errs = runCLI(t, nil, "serve", "--dev", "--data-dir", t.TempDir(), "--nats-cluster-listen", "127.0.0.1:x", "--nats-routes", "127.0.0.1:6232")
	if code != 2 || !strings.Contains(errs, "nats cluster listen address") {
		t.Fatalf("bad cluster listen address: %d %s", code, errs)
	}
}
