package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
)

// runCLI runs the tally command with an environment and returns the exit
// code, stdout and stderr.
func runCLI(t *testing.T, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, env{stdout: &out, stderr: &errb, getenv: func(k string) string { return vars[k] }})
	return code, out.String(), errb.String()
}

func TestAdminClusterCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if code, _, errs := runCLI(t, nil, "admin", "cluster", "ca", "init", "--out", ca); code != 0 {
		t.Fatalf("ca init: %d %s", code, errs)
	}
	if code, _, _ := runCLI(t, nil, "admin", "cluster", "ca", "init", "--out", ca); code != 1 {
		t.Fatalf("ca init over an existing CA: exit %d, want 1", code)
	}
	if code, _, _ := runCLI(t, nil, "admin", "cluster", "ca", "create", "--out", ca); code != 2 {
		t.Fatalf("ca create: exit %d, want 2", code)
	}
	out := filepath.Join(dir, "n1")
	code, stdout, errs := runCLI(t, nil, "admin", "cluster", "node-cert", "--ca", ca, "--node-id", "n1", "--ip", "127.0.0.1", "--dns", "n1.example", "--out", out, "--output", "json")
	if code != 0 {
		t.Fatalf("node-cert: %d %s", code, errs)
	}
	var res map[string]string
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || res["node_id"] != "n1" {
		t.Fatalf("node-cert output %q: %v", stdout, err)
	}
	nt, err := raft.LoadNodeTLSDir(out)
	if err != nil || nt.NodeID() != "n1" {
		t.Fatalf("issued certificate: %v, %v", nt, err)
	}
	for _, bad := range [][]string{
		{"--ca", ca, "--node-id", "n2", "--out", out},                                              // no address
		{"--ca", ca, "--node-id", "n2", "--ip", "nope", "--out", out},                              // bad IP
		{"--ca", ca, "--ip", "127.0.0.1", "--out", out},                                            // no id
		{"--ca", ca, "--node-id", "bad id", "--ip", "127.0.0.1", "--out", filepath.Join(dir, "x")}, // bad id
	} {
		if code, _, _ := runCLI(t, nil, append([]string{"admin", "cluster", "node-cert"}, bad...)...); code == 0 {
			t.Errorf("node-cert %v succeeded", bad)
		}
	}
}

func TestAdminClusterAgainstNodes(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	f := c.Follower()
	vars := map[string]string{"TALLY_SERVER": f.BaseURL(), "TALLY_ADMIN_TOKEN": c.AdminToken()}

	// A member that answers the status call late (2 s) on a loaded
	// machine shows as unreachable for that call: ask again.
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		code, stdout, errs := runCLI(t, vars, "admin", "cluster", "status", "--output", "json")
		if code != 0 {
			t.Fatalf("status: %d %s", code, errs)
		}
		var st struct {
			LeaderID string `json:"leader_id"`
			Members  []struct {
				ID     string `json:"id"`
				Region string `json:"region"`
				Voter  bool   `json:"voter"`
				Leader bool   `json:"leader"`
				Term   uint64 `json:"term"`
				Health string `json:"health"`
			} `json:"members"`
		}
		if err := json.Unmarshal([]byte(stdout), &st); err != nil {
			t.Fatalf("status JSON %q: %v", stdout, err)
		}
		if len(st.Members) != 3 || st.LeaderID == "" {
			t.Fatalf("status = %+v", st)
		}
		for _, m := range st.Members {
			if !m.Voter || m.Region == "" {
				t.Fatalf("member %+v", m)
			}
			if m.Health != "healthy" || m.Term == 0 {
				return fmt.Errorf("member %+v", m)
			}
		}
		return nil
	})
	if code, stdout, _ := runCLI(t, vars, "admin", "cluster", "status"); code != 0 || !strings.Contains(stdout, "HEALTH") {
		t.Fatalf("text status: %d %q", code, stdout)
	}

	to := f.NodeID()
	if code, _, errs := runCLI(t, vars, "admin", "cluster", "transfer-leadership", "--to", to); code != 0 {
		t.Fatalf("transfer-leadership: %d %s", code, errs)
	}
	if got := c.Leader().NodeID(); got != to {
		t.Fatalf("leader = %s, want %s", got, to)
	}
	if code, _, errs := runCLI(t, vars, "admin", "cluster", "remove", "nobody"); code != 1 || !strings.Contains(errs, "not_found") {
		t.Fatalf("remove unknown: %d %s", code, errs)
	}

	path := filepath.Join(t.TempDir(), "backup.db")
	if code, _, errs := runCLI(t, vars, "admin", "snapshot", "save", path); code != 0 {
		t.Fatalf("snapshot save: %d %s", code, errs)
	}
	fsm, err := raft.OpenFSM(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := fsm.State().Tenant(node.DefaultTenant); !ok {
		t.Fatal("snapshot lacks the default tenant")
	}
	fsm.Close()
	// Restore it (through a follower's address: the CLI finds the leader).
	if code, stdout, errs := runCLI(t, vars, "admin", "snapshot", "restore", path, "--output", "json"); code != 0 || !strings.Contains(stdout, "state_index") {
		t.Fatalf("snapshot restore: %d %s %s", code, stdout, errs)
	}
	c.WaitConverged()
	if code, _, _ := runCLI(t, map[string]string{"TALLY_SERVER": f.BaseURL(), "TALLY_ADMIN_TOKEN": "wrong-token-wrong"}, "admin", "cluster", "status"); code != 1 {
		t.Fatalf("status with a wrong token: exit %d", code)
	}
}

func TestServeConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.json", `{
  "node_id": "n2", "region": "west", "listen": "127.0.0.1:9", "raft_bind": "127.0.0.1:7", "raft_profile": "wan",
  "max_stale": "7s", "peers": [{"id": "n1", "raft_addr": "127.0.0.1:1"}, {"id": "n2", "raft_addr": "127.0.0.1:7"}],
  "tls_dir": "/tls", "log_level": "debug", "dev": true
}`)
	cfg := node.DefaultConfig()
	level := "info"
	if err := loadServeFile(good, &cfg, &level); err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != "n2" || cfg.Region != "west" || cfg.RaftProfile != "wan" || cfg.MaxStale != 7*time.Second ||
		len(cfg.Peers) != 2 || cfg.Peers[1] != (node.Peer{ID: "n2", RaftAddr: "127.0.0.1:7"}) || cfg.TLSDir != "/tls" || level != "debug" {
		t.Fatalf("config = %+v, level %s", cfg, level)
	}
	if cfg.DataDir != node.DefaultConfig().DataDir {
		t.Errorf("a key absent from the file changed: data dir %q", cfg.DataDir)
	}
	for name, body := range map[string]string{
		"unknown.json":  `{"node_id": "n1", "raft_bnid": "x"}`,
		"type.json":     `{"node_id": 7}`,
		"duration.json": `{"max_stale": "soon"}`,
		"trailing.json": `{"node_id": "n1"} {}`,
		"notjson.toml":  `node_id = "n1"`,
	} {
		if err := loadServeFile(write(name, body), &cfg, &level); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Through the command: an unknown key is a usage error naming it.
	code, _, errs := runCLI(t, nil, "serve", "--config", filepath.Join(dir, "unknown.json"))
	if code != 2 || !strings.Contains(errs, "raft_bnid") {
		t.Fatalf("serve with an unknown key: %d %s", code, errs)
	}
	// Flags win over the file: the file's valid peers, a flag's bad profile.
	code, _, errs = runCLI(t, nil, "serve", "--config="+good, "--raft-profile", "moon")
	if code != 2 || !strings.Contains(errs, "moon") {
		t.Fatalf("serve with a flag over the file: %d %s", code, errs)
	}
	// The environment wins over the file too.
	code, _, errs = runCLI(t, map[string]string{"TALLY_MAX_STALE": "-1s"}, "serve", "--config", good)
	if code != 2 || !strings.Contains(errs, "max stale") {
		t.Fatalf("serve with env over the file: %d %s", code, errs)
	}

	// TALLY_CONFIG names the file when --config does not.
	code, _, errs = runCLI(t, map[string]string{"TALLY_CONFIG": filepath.Join(dir, "unknown.json")}, "serve")
	if code != 2 || !strings.Contains(errs, "raft_bnid") {
		t.Fatalf("serve with TALLY_CONFIG: %d %s", code, errs)
	}
}

// FuzzServeConfig: any configuration file either loads or is rejected with
// an error; it never panics, and a loaded one round-trips its peers.
func FuzzServeConfig(f *testing.F) {
	for _, seed := range []string{
		`{"node_id": "n1", "peers": [{"id": "n1", "raft_addr": "127.0.0.1:1"}], "max_stale": "5s"}`,
		`{"raft_bnid": "x"}`,
		`{"max_stale": "soon"}`,
		`{"peers": null, "dev": true}`,
		`{} {}`,
		`[]`,
		`{"node_id": 7}`,
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "c.json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := node.DefaultConfig()
		level := "info"
		if err := loadServeFile(p, &cfg, &level); err != nil {
			return
		}
		for _, peer := range cfg.Peers {
			if strings.ContainsRune(peer.ID, 0) && cfg.Validate() == nil {
				t.Fatalf("a NUL in a peer id validated: %q", peer.ID)
			}
		}
		_ = cfg.Validate()
	})
}
