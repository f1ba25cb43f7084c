package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
)

// TestAdminCredentialAndAuditCLI is the issue-13 contract for scripts:
// credential create prints the token in JSON, the token works as
// TALLY_ADMIN_TOKEN within its role, audit list prints the records with
// actor, action, target, outcome, time and hash, and audit verify exits 0
// on an intact chain and 1 naming the first broken record of a tampered
// copy of the state.
func TestAdminCredentialAndAuditCLI(t *testing.T) {
	n := nodetest.Start(t)
	root := map[string]string{"TALLY_SERVER": n.URL(), "TALLY_ADMIN_TOKEN": n.AdminToken}
	code, out, errs := runCLI(t, root, "admin", "credential", "create", "--name", "siem", "--role", "auditor", "--output", "json")
	if code != 0 {
		t.Fatalf("credential create: %d %s", code, errs)
	}
	var created struct {
		Token      string         `json:"token"`
		Credential map[string]any `json:"credential"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || !strings.HasPrefix(created.Token, "tadm_") || created.Credential["role"] != "auditor" {
		t.Fatalf("credential create output %q: %v", out, err)
	}
	if code, _, errs := runCLI(t, root, "admin", "credential", "create", "--name", "x", "--role", "tenant-admin"); code != 2 {
		t.Fatalf("tenant-admin without --tenant: %d %s", code, errs)
	}
	auditor := map[string]string{"TALLY_SERVER": n.URL(), "TALLY_ADMIN_TOKEN": created.Token}
	if code, _, errs := runCLI(t, auditor, "admin", "tenant", "list"); code != 0 {
		t.Fatalf("auditor tenant list: %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, auditor, "admin", "tenant", "create", "--name", "acme"); code != 1 || !strings.Contains(errs, "permission_denied") {
		t.Fatalf("auditor tenant create: %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, root, "admin", "tenant", "create", "--name", "acme"); code != 0 {
		t.Fatalf("tenant create: %d %s", code, errs)
	}
	code, out, errs = runCLI(t, auditor, "admin", "audit", "list", "--output", "json")
	if code != 0 {
		t.Fatalf("audit list: %d %s", code, errs)
	}
	var recs []map[string]any
	if err := json.Unmarshal([]byte(out), &recs); err != nil || len(recs) != 3 {
		t.Fatalf("audit list output %q: %v", out, err)
	}
	for _, r := range recs {
		for _, k := range []string{"actor", "action", "target", "outcome", "time", "hash"} {
			if s, _ := r[k].(string); s == "" {
				t.Fatalf("record without %s: %v", k, r)
			}
		}
	}
	if recs[1]["actor"] != "siem ("+created.Credential["id"].(string)+")" || recs[1]["outcome"] != "denied: permission_denied" || recs[2]["target"] != "acme" {
		t.Fatalf("records %v", recs)
	}
	code, out, _ = runCLI(t, auditor, "admin", "audit", "list", "--tenant", "acme", "--output", "json")
	if err := json.Unmarshal([]byte(out), &recs); code != 0 || err != nil || len(recs) != 2 {
		t.Fatalf("audit list --tenant acme: %d %q", code, out)
	}
	if code, out, errs := runCLI(t, auditor, "admin", "audit", "verify"); code != 0 || !strings.Contains(out, "intact:") {
		t.Fatalf("audit verify: %d %s %s", code, out, errs)
	}

	// A tampered copy of the state.
	cp, err := n.Raft().CopyState()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cp.WriteTo(f)
	cp.Close()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runCLI(t, nil, "admin", "audit", "verify", "--state", path); code != 0 {
		t.Fatalf("verify intact copy: %d %s", code, errs)
	}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("threat_audit"))
		k := []byte{0, 0, 0, 0, 0, 0, 0, 2}
		v := append([]byte(nil), b.Get(k)...)
		i := strings.Index(string(v), "siem")
		copy(v[i:], "mies") // the actor, edited in place
		return b.Put(k, v)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	code, _, errs = runCLI(t, nil, "admin", "audit", "verify", "--state", path)
	if code != 1 || !strings.Contains(errs, "record 2") {
		t.Fatalf("verify tampered copy: exit %d, %s", code, errs)
	}
}

// TestAdminUserConsentsSessionsCLI: tally admin user consents list|revoke
// and user sessions revoke against a real node, in text and JSON; an
// auditor may list but not revoke.
func TestAdminUserConsentsSessionsCLI(t *testing.T) {
	n := nodetest.Start(t)
	root := map[string]string{"TALLY_SERVER": n.URL(), "TALLY_ADMIN_TOKEN": n.AdminToken}
	if code, _, errs := runCLI(t, root, "admin", "user", "create", "--username", "carol"); code != 0 {
		t.Fatalf("user create: %d %s", code, errs)
	}
	code, out, errs := runCLI(t, root, "admin", "user", "consents", "list", "carol", "--output", "json")
	var listed struct {
		UserID   string `json:"user_id"`
		Consents []any  `json:"consents"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || !strings.HasPrefix(listed.UserID, "u_") || len(listed.Consents) != 0 {
		t.Fatalf("consents list: %d %q %s", code, out, errs)
	}
	if code, out, errs := runCLI(t, root, "admin", "user", "consents", "list", "carol"); code != 0 || !strings.Contains(out, "CLIENT") {
		t.Fatalf("consents list (text): %d %q %s", code, out, errs)
	}
	code, out, errs = runCLI(t, root, "admin", "user", "sessions", "revoke", "carol", "--output", "json")
	var revoked map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &revoked) != nil || revoked["user_id"] != listed.UserID || revoked["sessions_revoked_at"] == nil {
		t.Fatalf("sessions revoke: %d %q %s", code, out, errs)
	}
	code, out, errs = runCLI(t, root, "admin", "user", "consents", "revoke", "carol", "--output", "json")
	if code != 0 || json.Unmarshal([]byte(out), &revoked) != nil || revoked["user_id"] != listed.UserID {
		t.Fatalf("consents revoke: %d %q %s", code, out, errs)
	}
	if code, _, errs := runCLI(t, root, "admin", "user", "consents", "revoke", "carol", "--client", "c_none"); code != 1 || !strings.Contains(errs, "not_found") {
		t.Fatalf("revoking a consent never given: %d %s", code, errs)
	}
	code, out, errs = runCLI(t, root, "admin", "credential", "create", "--name", "auditor", "--role", "auditor", "--output", "json")
	var created struct {
		Token string `json:"token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil {
		t.Fatalf("credential create: %d %s", code, errs)
	}
	auditor := map[string]string{"TALLY_SERVER": n.URL(), "TALLY_ADMIN_TOKEN": created.Token}
	if code, _, errs := runCLI(t, auditor, "admin", "user", "consents", "list", "carol"); code != 0 {
		t.Fatalf("auditor consents list: %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, auditor, "admin", "user", "sessions", "revoke", "carol"); code != 1 || !strings.Contains(errs, "permission_denied") {
		t.Fatalf("auditor sessions revoke: %d %s", code, errs)
	}
}

// TestAdminListenMutualTLS: with --admin-listen and mutual TLS the admin
// API is gone from the public listener and served on the admin listener
// only to clients with a certificate of the admin CA (and an admin token):
// tally admin with --admin-ca/--admin-cert/--admin-key (or the TALLY_ADMIN_*
// variables) works; without a client certificate, or with one of another
// CA, the handshake fails.
func TestAdminListenMutualTLS(t *testing.T) {
	dir := t.TempDir()
	caDir, other := filepath.Join(dir, "ca"), filepath.Join(dir, "other-ca")
	for _, d := range []string{caDir, other} {
		if err := raft.InitCADir(d, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(ca, name string) string {
		out := filepath.Join(dir, name)
		if err := raft.IssueNodeCertDir(ca, out, raft.CertOptions{NodeID: name, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	server, operator, stranger := issue(caDir, "admin-listener"), issue(caDir, "operator"), issue(other, "stranger")
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.AdminListen = "127.0.0.1:0"
		c.AdminTLSCertFile, c.AdminTLSKeyFile = filepath.Join(server, raft.NodeCertFile), filepath.Join(server, raft.NodeKeyFile)
		c.AdminClientCAFile = filepath.Join(caDir, raft.CACertFile)
	}))
	if n.AdminAddr() == "" {
		t.Fatal("no admin listener")
	}
	public := map[string]string{"TALLY_SERVER": n.URL(), "TALLY_ADMIN_TOKEN": n.AdminToken}
	if code, _, errs := runCLI(t, public, "admin", "tenant", "list"); code == 0 {
		t.Fatalf("the public listener still serves the admin API: %s", errs)
	}
	env := map[string]string{"TALLY_SERVER": "https://" + n.AdminAddr(), "TALLY_ADMIN_TOKEN": n.AdminToken,
		"TALLY_ADMIN_CA": filepath.Join(caDir, raft.CACertFile)}
	if code, _, errs := runCLI(t, env, "admin", "tenant", "list"); code != 1 {
		t.Fatalf("without a client certificate: %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, env, "admin", "tenant", "list",
		"--admin-cert", filepath.Join(stranger, raft.NodeCertFile), "--admin-key", filepath.Join(stranger, raft.NodeKeyFile)); code != 1 {
		t.Fatalf("with another CA's certificate: %d %s", code, errs)
	}
	env["TALLY_ADMIN_CERT"], env["TALLY_ADMIN_KEY"] = filepath.Join(operator, raft.NodeCertFile), filepath.Join(operator, raft.NodeKeyFile)
	if code, out, errs := runCLI(t, env, "admin", "tenant", "list", "--output", "json"); code != 0 || !strings.Contains(out, "default") {
		t.Fatalf("with the operator's certificate: %d %q %s", code, out, errs)
	}
	if code, out, errs := runCLI(t, env, "admin", "cluster", "status"); code != 0 {
		t.Fatalf("cluster status over the admin listener: %d %q %s", code, out, errs)
	}
	delete(env, "TALLY_ADMIN_TOKEN")
	env["TALLY_ADMIN_TOKEN"] = "not-the-token-0123456789"
	if code, _, errs := runCLI(t, env, "admin", "tenant", "list"); code != 1 || !strings.Contains(errs, "unauthenticated") {
		t.Fatalf("a client certificate without the token: %d %s", code, errs)
	}
}
