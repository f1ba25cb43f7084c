package main

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tallyauth/tally/node"
)

// TestServeConfigKeysAreFlags: every serve flag (except --config and
// --check-config) is a configuration file key, and setting it in the file
// gives the same configuration as setting the flag.
func TestServeConfigKeysAreFlags(t *testing.T) {
	var names []string
	{
		cfg, level, check := node.DefaultConfig(), "info", false
		serveFlagSet(&cfg, &level, &check).VisitAll(func(f *flag.Flag) {
			if !notFileKeys[f.Name] {
				names = append(names, f.Name)
			}
		})
	}
	if len(names) < 30 {
		t.Fatalf("only %d flags: %v", len(names), names)
	}
	dir := t.TempDir()
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			flagCfg, flagLevel, check := node.DefaultConfig(), "info", false
			fs := serveFlagSet(&flagCfg, &flagLevel, &check)
			f := fs.Lookup(name)
			value, file := sampleSetting(t, f)
			if err := fs.Set(name, value); err != nil {
				t.Fatalf("--%s=%s: %v", name, value, err)
			}
			p := filepath.Join(dir, name+".json")
			b, err := json.Marshal(map[string]json.RawMessage{fileKey(name): file})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			fileCfg, fileLevel := node.DefaultConfig(), "info"
			if err := loadServeFile(p, &fileCfg, &fileLevel); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			if !reflect.DeepEqual(flagCfg, fileCfg) || flagLevel != fileLevel {
				t.Errorf("%s gives\n%+v (log level %s), --%s=%s gives\n%+v (log level %s)", b, fileCfg, fileLevel, name, value, flagCfg, flagLevel)
			}
		})
	}
}

// sampleSetting is a value the flag accepts, as a flag argument and as the
// configuration file's JSON.
func sampleSetting(t *testing.T, f *flag.Flag) (string, json.RawMessage) {
	t.Helper()
	if g, ok := f.Value.(flag.Getter); ok {
		switch v := g.Get().(type) {
		case bool:
			return map[bool]string{true: "true", false: "false"}[!v], json.RawMessage(map[bool]string{true: "true", false: "false"}[!v])
		case int, int64, uint, uint64:
			return "3", json.RawMessage("3")
		case time.Duration:
			return "7s", json.RawMessage(`"7s"`)
		case string:
			return "sample-" + f.Name, json.RawMessage(`"sample-` + f.Name + `"`)
		}
	}
	switch f.Name {
	case "peers":
		return "n1=127.0.0.1:1,n2=127.0.0.1:2", json.RawMessage(`[{"id": "n1", "raft_addr": "127.0.0.1:1"}, {"id": "n2", "raft_addr": "127.0.0.1:2"}]`)
	case "trusted-proxies":
		return "10.0.0.0/8,192.168.1.0/24", json.RawMessage(`["10.0.0.0/8", "192.168.1.0/24"]`)
	case "rate-limits":
		return "off", json.RawMessage(`"off"`)
	case "tenant-rate-limits":
		return "acme.client=100,acme.username=10", json.RawMessage(`["acme.client=100", "acme.username=10"]`)
	}
	// A flag of its own type: the first sample it accepts, given in the
	// file as a string (a list as an array of strings).
	for _, v := range []string{"a.example:1,b.example:2", "1MiB", "1", "1s", "true"} {
		probe, level, check := node.DefaultConfig(), "info", false
		if serveFlagSet(&probe, &level, &check).Set(f.Name, v) == nil {
			if v == "a.example:1,b.example:2" {
				return v, json.RawMessage(`["a.example:1", "b.example:2"]`)
			}
			return v, json.RawMessage(`"` + v + `"`)
		}
	}
	t.Fatalf("no sample value for --%s (%T): add one to sampleSetting", f.Name, f.Value)
	return "", nil
}

// TestServeConfigEventSettings: the event-log settings, which the file
// used to refuse, are keys of it.
func TestServeConfigEventSettings(t *testing.T) {
	p := filepath.Join(t.TempDir(), "events.json")
	body := `{"nats_url": "nats://127.0.0.1:4222", "nats_creds": "/creds", "nats_ca": "/ca.pem",
	  "event_retention": "3h", "event_stream_replicas": 3, "event_cluster_id": "east",
	  "event_audience": ["rs1", "rs2"], "nats_routes": "127.0.0.1:6232,127.0.0.1:6233"}`
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, level := node.DefaultConfig(), "info"
	if err := loadServeFile(p, &cfg, &level); err != nil {
		t.Fatal(err)
	}
	ev := cfg.Events
	if ev.NATSURL != "nats://127.0.0.1:4222" || ev.NATSCredsFile != "/creds" || ev.NATSCAFile != "/ca.pem" ||
		ev.Retention != 3*time.Hour || ev.StreamReplicas != 3 || ev.ClusterID != "east" ||
		!slices.Equal(ev.Audience, []string{"rs1", "rs2"}) || len(cfg.NATSRoutes) != 2 {
		t.Fatalf("events %+v, routes %v", ev, cfg.NATSRoutes)
	}
	for name, body := range map[string]string{
		"config.json":     `{"config": "other.json"}`,
		"check.json":      `{"check_config": true}`,
		"replicas.json":   `{"event_stream_replicas": "3"}`,
		"bool.json":       `{"dev": "yes"}`,
		"audience.json":   `{"event_audience": {"a": 1}}`,
		"peerfields.json": `{"peers": [{"id": "n1", "addr": "x"}]}`,
	} {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := loadServeFile(p, &cfg, &level); err == nil {
			t.Errorf("%s: accepted", body)
		}
	}
}
