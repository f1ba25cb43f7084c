package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
)

// waitClusterVersion waits until every running node has replicated a
// cluster version for which ok holds.
func waitClusterVersion(t *testing.T, c *nodetest.Cluster, what string, ok func(version uint32, features []string, hold bool) bool) {
	t.Helper()
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		for _, i := range c.Running() {
			v := c.Node(i).Raft().State().ClusterVersion()
			if v == nil || !ok(v.Version, v.Features, v.Hold) {
				return fmt.Errorf("node%d: cluster version %v, want %s", i, v, what)
			}
		}
		return nil
	})
}

// TestClusterVersionRecordedAndDowngraded: a cluster whose members all run
// this release records its version and features (every node replicates
// it, status shows it); a downgrade lowers and holds it, the leader does
// not raise it while held, and cancelling the hold lets it raise it again.
func TestClusterVersionRecordedAndDowngraded(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(withIssuer(sharedIssuer)))
	current := func(v uint32, f []string, hold bool) bool {
		return v == raft.ClusterVersion && slices.Equal(f, raft.KnownFeatures()) && !hold
	}
	waitClusterVersion(t, c, "this release's", current)
	ctx := context.Background()
	st, err := c.Node(1).ClusterAdmin.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if v := st.Msg.ClusterVersion; v.GetVersion() != raft.ClusterVersion || !slices.Contains(v.GetFeatures(), raft.FeatureClusterVersion) {
		t.Fatalf("status cluster version %v", v)
	}
	for _, m := range st.Msg.Members {
		if m.ClusterVersion != raft.ClusterVersion {
			t.Fatalf("member %s reports cluster version %d", m.Id, m.ClusterVersion)
		}
	}

	res, err := c.Node(2).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Version: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Index == 0 || !res.Msg.ClusterVersion.GetHold() {
		t.Fatalf("downgrade answered %v", res.Msg)
	}
	held := func(v uint32, f []string, hold bool) bool {
		return v == 1 && hold && !slices.Contains(f, raft.FeatureClusterVersion)
	}
	waitClusterVersion(t, c, "version 1, held", held)
	// The leader compares versions once a second; several rounds later
	// the hold still stands.
	time.Sleep(3 * time.Second)
	waitClusterVersion(t, c, "version 1, still held", held)
	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Version: 7})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("downgrade to an unknown version: %v", err)
	}

	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Cancel: true})); err != nil {
		t.Fatal(err)
	}
	waitClusterVersion(t, c, "this release's again", current)
	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Cancel: true})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("cancel without a hold: %v", err)
	}
}
