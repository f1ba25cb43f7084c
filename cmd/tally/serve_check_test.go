package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
)

// checkConfig runs tally serve --check-config with args and vars.
func checkConfig(t *testing.T, vars map[string]string, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"serve", "--check-config"}, args...), env{
		stdout: &out, stderr: &errb, getenv: func(k string) string { return vars[k] },
	})
	return code, out.String() + errb.String()
}

// TestServeCheckConfig: --check-config accepts a complete cluster node's
// configuration and rejects each broken part with its reason, without
// starting anything or creating the data directory.
func TestServeCheckConfig(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if err := raft.InitCADir(ca, time.Time{}); err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := raft.IssueNodeCertDir(ca, tlsDir, raft.CertOptions{NodeID: "node1", DNSNames: []string{"tally1.example.internal"}}); err != nil {
		t.Fatal(err)
	}
	kek := filepath.Join(dir, "kek")
	os.WriteFile(kek, []byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), 0o600)
	admin := filepath.Join(dir, "admin-token")
	os.WriteFile(admin, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	os.WriteFile(kek+"-short", []byte("short\n"), 0o600)
	data := filepath.Join(dir, "data")
	vars := map[string]string{
		"TALLY_NODE_ID":          "node1",
		"TALLY_DATA_DIR":         data,
		"TALLY_ISSUER":           "https://auth.example.com",
		"TALLY_LISTEN":           "0.0.0.0:8080",
		"TALLY_METRICS_LISTEN":   "0.0.0.0:9090",
		"TALLY_RAFT_BIND":        "0.0.0.0:7946",
		"TALLY_RAFT_ADVERTISE":   "tally1.example.internal:7946",
		"TALLY_PEERS":            "node1=tally1.example.internal:7946,node2=tally2.example.internal:7946,node3=tally3.example.internal:7946",
		"TALLY_TLS_DIR":          tlsDir,
		"TALLY_KEK_FILE":         kek,
		"TALLY_ADMIN_TOKEN_FILE": admin,
	}
	if code, out := checkConfig(t, vars); code != 0 || !strings.Contains(out, "is valid") {
		t.Fatalf("valid configuration: exit %d: %s", code, out)
	}
	siem := []string{"--siem-syslog=siem.example:6514", "--siem-syslog-protocol=relp", "--siem-syslog-ca=" + filepath.Join(ca, raft.CACertFile),
		"--siem-syslog-cert=" + filepath.Join(tlsDir, raft.NodeCertFile), "--siem-syslog-key=" + filepath.Join(tlsDir, raft.NodeKeyFile)}
	if code, out := checkConfig(t, vars, siem...); code != 0 || !strings.Contains(out, "is valid") {
		t.Fatalf("valid RELP export with a client certificate: exit %d: %s", code, out)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("--check-config created the data directory (%v)", err)
	}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range vars {
			m[a] = b
		}
		m[k] = v
		return m
	}
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
		want string
	}{
		{"missing KEK file", with("TALLY_KEK_FILE", filepath.Join(dir, "nope")), nil, "key-encryption key"},
		{"short admin credential", with("TALLY_ADMIN_TOKEN_FILE", kek+"-short"), nil, "admin credential"},
		{"certificate of another node", with("TALLY_NODE_ID", "node2"), nil, `names node "node1"`},
		{"missing TLS dir", with("TALLY_TLS_DIR", filepath.Join(dir, "none")), nil, "tls dir"},
		{"bad metrics address", with("TALLY_METRICS_LISTEN", "9090"), nil, "metrics listen"},
		{"plain http issuer", with("TALLY_ISSUER", "http://auth.example.com"), nil, "plain http"},
		{"data dir is a file", with("TALLY_DATA_DIR", kek+"/data"), nil, "not a directory"},
		{"unknown flag", vars, []string{"--raft-profil=wan"}, "flag provided but not defined"},
		{"unknown syslog protocol", vars, []string{"--siem-syslog=siem.example:6514", "--siem-syslog-protocol=udp"}, "want tls or relp"},
		{"syslog cert without key", vars, []string{"--siem-syslog=siem.example:6514", "--siem-syslog-cert=" + filepath.Join(tlsDir, raft.NodeCertFile)}, "go together"},
		{"syslog client key missing", vars, []string{"--siem-syslog=siem.example:6514", "--siem-syslog-protocol=relp", "--siem-syslog-cert=" + filepath.Join(tlsDir, raft.NodeCertFile), "--siem-syslog-key=" + filepath.Join(dir, "nope")}, "--siem-syslog-key"},
		{"syslog address without port", vars, []string{"--siem-syslog=siem.example"}, "--siem-syslog"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := checkConfig(t, tc.vars, tc.args...)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, want non-zero with %q: %s", code, tc.want, out)
			}
		})
	}
}
