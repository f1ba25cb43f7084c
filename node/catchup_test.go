package node_test

import (
	"fmt"
	"testing"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestReadyMeansCaughtUp: a follower that was down while the cluster took
// writes counts as stale (not ready, no issuance) until its replica holds
// what the leader had committed when contact resumed — not merely until the
// first heartbeat arrives. So the moment it reports ready, every write
// acknowledged before is in its replica.
func TestReadyMeansCaughtUp(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	f := c.LeaderIndex()
	f = (f + 1) % 3
	c.Stop(f)
	var ids []string
	for i := range 200 {
		id, _ := c.Leader().CreateClient(t, &adminv1.CreateClientRequest{Tenant: node.DefaultTenant, Name: fmt.Sprintf("while-down-%d", i)})
		ids = append(ids, id)
	}
	n := c.Restart(f) // returns once /readyz is 200
	if err := n.Stale(); err != nil {
		t.Fatalf("ready but stale: %v", err)
	}
	st := n.Raft().State()
	for _, id := range ids {
		if _, ok := st.Client(node.DefaultTenant, id); !ok {
			t.Fatalf("node%d reports ready but lacks client %s, acknowledged before it came back", f, id)
		}
	}
}
