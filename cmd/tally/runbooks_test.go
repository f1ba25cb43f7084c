package main

// The runbooks of deploy/runbooks, performed on real three-node clusters
// (in-process nodes with real Raft, bbolt, NATS and HTTP) with the CLI
// commands the runbooks give. TestClusterRecoverLostQuorum
// (admin_recover_test.go) is the lost-quorum runbook.

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
)

func adminVars(c *nodetest.Cluster, i int) map[string]string {
	return map[string]string{"TALLY_SERVER": c.Node(i).BaseURL(), "TALLY_ADMIN_TOKEN": c.AdminToken()}
}

func mustCLI(t *testing.T, vars map[string]string, args ...string) string {
	t.Helper()
	code, out, errb := runCLI(t, vars, args...)
	if code != 0 {
		t.Fatalf("tally %s: exit %d: %s%s", strings.Join(args, " "), code, out, errb)
	}
	return out
}

// clientToken asks node n for a client-credentials token.
func clientToken(n *nodetest.Node, id, secret string) error {
	resp, err := http.PostForm(n.TokenURL(node.DefaultTenant), url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}})
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("token from %s: %s", n.NodeID(), resp.Status)
	}
	return nil
}

// TestRunbookRestoreFromSnapshot: deploy/runbooks/restore-snapshot.md. A
// backup of one cluster, restored into a fresh cluster with the same KEK,
// carries the clients and keys: a client of the old cluster gets tokens
// from every node of the new one.
func TestRunbookRestoreFromSnapshot(t *testing.T) {
	old := nodetest.StartCluster(t, 3)
	id, secret := old.Leader().CreateClient(t, &adminv1.CreateClientRequest{Tenant: node.DefaultTenant, Name: "survives-the-restore", AccessTokenTtlSeconds: 300})
	old.WaitConverged()
	backup := filepath.Join(t.TempDir(), "backup.db")
	mustCLI(t, adminVars(old, 0), "admin", "snapshot", "save", backup)
	old.Close()

	fresh := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(func(cfg *node.Config) { cfg.KEK = old.KEK() }))
	mustCLI(t, adminVars(fresh, 1), "admin", "snapshot", "restore", backup)
	fresh.WaitConverged()
	for i := range 3 {
		n := fresh.Node(i)
		if _, ok := n.Raft().State().Client(node.DefaultTenant, id); !ok {
			t.Fatalf("node%d: the restored client is missing", i)
		}
		if err := clientToken(n, id, secret); err != nil {
			t.Fatalf("node%d: %v", i, err)
		}
	}
	out := mustCLI(t, adminVars(fresh, 2), "admin", "client", "list", "--tenant", node.DefaultTenant)
	if !strings.Contains(out, id) {
		t.Fatalf("client list after restore lacks %s:\n%s", id, out)
	}
}

// TestRunbookRegionEvacuation: deploy/runbooks/region-evacuation.md. The
// region of node1 is evacuated (leadership moved away, the voter removed,
// the node stopped) while writes continue, and returns (a new node id, as
// removal is final for the old one, joining a member) with everything
// written meanwhile.
func TestRunbookRegionEvacuation(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithRegions("eu", "us", "ap"))
	const gone = 1 // region "us"
	vars := adminVars(c, 0)
	if c.LeaderIndex() == gone {
		mustCLI(t, vars, "admin", "cluster", "transfer-leadership", "--to", "node0")
	}
	mustCLI(t, vars, "admin", "cluster", "remove", "node1")
	c.Stop(gone)

	id, _ := c.Node(0).CreateClient(t, &adminv1.CreateClientRequest{Tenant: node.DefaultTenant, Name: "written-during-evacuation"})
	out := mustCLI(t, vars, "admin", "cluster", "status")
	if strings.Contains(out, "node1") {
		t.Fatalf("node1 is still a member:\n%s", out)
	}

	// Return: removal is final for the id node1 (it is on the cluster's
	// deny list), so the region comes back as a new node with a new id and
	// certificate and an empty data directory, joining a member.
	back := c.Add(func(cfg *node.Config) { cfg.Region = "us" })
	c.WaitConverged()
	if _, ok := c.Node(back).Raft().State().Client(node.DefaultTenant, id); !ok {
		t.Fatal("the returned node lacks the client written during the evacuation")
	}
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ms, err := c.Node(0).Raft().Members(context.Background())
		if err != nil {
			return err
		}
		voters := 0
		for _, m := range ms {
			if m.Voter {
				voters++
			}
		}
		if voters != 3 {
			return fmt.Errorf("%d voters after the return", voters)
		}
		return nil
	})
}

// TestRunbookRollingUpgrade: deploy/runbooks/rolling-upgrade.md. Every
// node is restarted in turn (the leader last, after handing leadership
// over) while a writer keeps creating clients; every acknowledged write is
// on every node afterwards.
func TestRunbookRollingUpgrade(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	stop := make(chan struct{})
	var (
		mu     sync.Mutex
		acked  []string
		failed int
		wg     sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var n *nodetest.Node
			for _, j := range c.Running() {
				if n = c.Node((i + j) % c.Len()); n != nil {
					break
				}
			}
			if n == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: node.DefaultTenant, Name: fmt.Sprintf("w%d", i)}))
			cancel()
			mu.Lock()
			if err == nil {
				acked = append(acked, resp.Msg.Client.ClientId)
			} else {
				failed++
			}
			mu.Unlock()
		}
	}()

	leader := c.LeaderIndex()
	order := []int{}
	for i := range 3 {
		if i != leader {
			order = append(order, i)
		}
	}
	order = append(order, leader)
	for _, i := range order {
		if c.LeaderIndex() == i {
			mustCLI(t, adminVars(c, i), "admin", "cluster", "transfer-leadership")
		}
		c.Restart(i) // waits for /readyz
		c.WaitConverged()
		// Writes go on after each step.
		mu.Lock()
		base := len(acked)
		mu.Unlock()
		nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(acked) < base+5 {
				return fmt.Errorf("%d writes acknowledged since node%d restarted", len(acked)-base, i)
			}
			return nil
		})
	}
	close(stop)
	wg.Wait()
	c.WaitConverged()
	mu.Lock()
	defer mu.Unlock()
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged during the upgrade")
	}
	for i := range 3 {
		for _, id := range acked {
			if _, ok := c.Node(i).Raft().State().Client(node.DefaultTenant, id); !ok {
				t.Fatalf("node%d lacks acknowledged write %s", i, id)
			}
		}
	}
	t.Logf("rolling restart: %d writes acknowledged, %d failed (retryable)", len(acked), failed)
}

// TestRunbookReplaceNodeCertificate: deploy/runbooks/replace-node-certificate.md.
// node2 gets a new certificate of the same CA and restarts; the cluster
// talks to it over mutual TLS (writes forwarded from it commit).
func TestRunbookReplaceNodeCertificate(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	const n = 2
	tlsDir := filepath.Join(c.Node(n).DataDir, "tls")
	before, err := os.ReadFile(filepath.Join(tlsDir, raft.NodeCertFile))
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(t.TempDir(), "node2-new")
	mustCLI(t, nil, "admin", "cluster", "node-cert", "--ca", c.CADir(), "--node-id", "node2", "--ip", "127.0.0.1", "--out", staging)
	for _, f := range []string{raft.NodeCertFile, raft.NodeKeyFile, raft.CACertFile} {
		b, err := os.ReadFile(filepath.Join(staging, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if code, out, errb := runCLI(t, map[string]string{"TALLY_ADMIN_TOKEN": c.AdminToken()}, "serve", "--check-config", "--node-id", "node2", "--issuer", "http://127.0.0.1:8080", "--tls-dir", tlsDir, "--data-dir", c.Node(n).DataDir, "--kek-file", writeKEK(t, c.KEK())); code != 0 {
		t.Fatalf("check-config with the new certificate: %d %s%s", code, out, errb)
	}
	c.Restart(n)
	after, _ := os.ReadFile(filepath.Join(tlsDir, raft.NodeCertFile))
	if string(after) == string(before) {
		t.Fatal("the certificate did not change")
	}
	if c.LeaderIndex() == n {
		mustCLI(t, adminVars(c, n), "admin", "cluster", "transfer-leadership")
	}
	id, _ := c.Node(n).CreateClient(t, &adminv1.CreateClientRequest{Tenant: node.DefaultTenant, Name: "forwarded-over-the-new-certificate"})
	c.WaitConverged()
	for i := range 3 {
		if _, ok := c.Node(i).Raft().State().Client(node.DefaultTenant, id); !ok {
			t.Fatalf("node%d lacks the write forwarded by node2", i)
		}
	}
}

func writeKEK(t *testing.T, kek []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(p, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRunbookRotateAdminCredential: deploy/runbooks/rotate-admin-credential.md.
// The new credential is written to every node's admin-token file and the
// nodes restart one at a time: each accepts the new credential and refuses
// the old from its restart on, and the cluster keeps serving.
func TestRunbookRotateAdminCredential(t *testing.T) {
	oldTok, newTok := "old-admin-credential-0123456789", "new-admin-credential-9876543210"
	tokenFile := func(dir string) string { return filepath.Join(dir, "admin-token") }
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(func(cfg *node.Config) {
		// The credential from a file, as in production.
		if _, err := os.Stat(tokenFile(cfg.DataDir)); err != nil {
			os.MkdirAll(cfg.DataDir, 0o700)
			os.WriteFile(tokenFile(cfg.DataDir), []byte(oldTok+"\n"), 0o600)
		}
		cfg.AdminToken = ""
		cfg.AdminTokenFile = tokenFile(cfg.DataDir)
	}))
	status := func(i int, tok string) int {
		code, _, _ := runCLI(t, map[string]string{"TALLY_SERVER": c.Node(i).BaseURL(), "TALLY_ADMIN_TOKEN": tok}, "admin", "cluster", "status")
		return code
	}
	for i := range 3 {
		if status(i, oldTok) != 0 {
			t.Fatalf("node%d refuses the old credential before the rotation", i)
		}
	}
	for i := range 3 {
		if err := os.WriteFile(tokenFile(c.Node(i).DataDir), []byte(newTok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		c.Restart(i)
		c.WaitConverged()
		if status(i, newTok) != 0 || status(i, oldTok) == 0 {
			t.Fatalf("node%d after its restart: new credential %d, old %d", i, status(i, newTok), status(i, oldTok))
		}
		for j := i + 1; j < 3; j++ {
			if status(j, oldTok) != 0 {
				t.Fatalf("node%d (not restarted yet) refuses the old credential", j)
			}
		}
	}
}
