package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestClusterRecoverLostQuorum follows deploy/runbooks/lost-quorum.md on a
// real three-node cluster: two voters are lost for good, the survivor is
// stopped, `tally admin cluster recover --peers-json` rewrites its
// configuration, and started again it leads alone with every acknowledged
// write and takes new writes.
func TestClusterRecoverLostQuorum(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	l := c.Leader()
	id, _ := l.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "before-the-loss", AccessTokenTtlSeconds: 300})
	c.WaitApplied(l.Raft().State().AppliedIndex())

	survivor := c.Node(0)
	dir, addr := survivor.DataDir, survivor.ClusterAddr()
	peers := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(peers, fmt.Appendf(nil, `[{"id": "node0", "address": %q, "non_voter": false}]`, addr), 0o600); err != nil {
		t.Fatal(err)
	}
	recoverArgs := []string{"cluster", "recover", "--data-dir", dir, "--node-id", "node0", "--peers-json", peers}

	// A running node's stores are locked: recovery refuses.
	if code, out, errb := runCLI(t, nil, append([]string{"admin"}, recoverArgs...)...); code == 0 || !strings.Contains(errb, "stop the node") {
		t.Fatalf("recover on a running node: exit %d: %s%s", code, out, errb)
	}

	// Two voters lost for good, then the survivor stopped.
	c.Stop(1)
	c.Stop(2)
	c.Stop(0)
	if code, out, errb := runCLI(t, nil, append([]string{"admin"}, recoverArgs...)...); code != 0 || !strings.Contains(out, "node0") {
		t.Fatalf("recover: exit %d: %s%s", code, out, errb)
	}

	n := c.Restart(0) // waits until ready: a leader (itself) and fresh
	if !n.Raft().IsLeader() {
		t.Fatal("the recovered survivor does not lead")
	}
	if _, ok := n.Raft().State().Client("default", id); !ok {
		t.Fatal("the client written before the loss is gone")
	}
	if _, err := n.Admin.CreateClient(context.Background(), connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "after-recovery"})); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	ms, err := n.Raft().Members(context.Background())
	if err != nil || len(ms) != 1 || ms[0].ID != "node0" {
		t.Fatalf("members after recovery: %v, %v", ms, err)
	}
}
