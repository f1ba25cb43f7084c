package node_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/node/proctest"
	"github.com/tallyauth/tally/raft"
)

// TestKilledClusterKeepsAcknowledgedWrites kills every node of a cluster
// of real processes with SIGKILL right after a run of acknowledged writes.
// The state database is written without fsync (raft/statemark.go): each
// node's file, as the killed process left it and before any Raft replay,
// holds every write that node acknowledged (read-your-writes: it applied
// them) and the leader's holds them all; its mark says "dirty" of this boot,
// so it is kept, not rebuilt. The nodes then start again and take writes.
func TestKilledClusterKeepsAcknowledgedWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := proctest.Start(t, proctest.Options{})
	leader := c.Leader(30 * time.Second)
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		return revokeVia(c, leader, "warm")
	})
	acked := map[string][]string{} // node id → jtis it acknowledged
	for i := range 90 {
		p := c.Nodes()[i%3]
		jti := fmt.Sprintf("killed-%d", i)
		if err := revokeVia(c, p, jti); err != nil {
			t.Fatalf("revoke %s via %s: %v", jti, p.ID, err)
		}
		acked[p.ID] = append(acked[p.ID], jti)
	}
	// The leader applied every write (a forward waits for its Propose)
	// unless leadership moved during the run.
	if now := c.Leader(30 * time.Second); now != leader {
		t.Logf("leadership moved from %s to %s: checking each node's own writes only", leader.ID, now.ID)
		leader = nil
	}
	for _, p := range c.Nodes() {
		p.Kill()
	}
	for _, p := range c.Nodes() {
		path := filepath.Join(p.DataDir, "raft", "state.db")
		mark, err := os.ReadFile(path + ".mark")
		if err != nil || !strings.Contains(string(mark), "state dirty") {
			t.Fatalf("%s: mark after SIGKILL %q, %v; want dirty", p.ID, mark, err)
		}
		f, err := raft.OpenFSM(path, nil)
		if err != nil {
			t.Fatalf("%s: %v", p.ID, err)
		}
		want := acked[p.ID]
		if p == leader {
			want = nil
			for _, js := range acked {
				want = append(want, js...)
			}
		}
		var missing []string
		for _, jti := range want {
			if !f.State().Revoked("default", jti) {
				missing = append(missing, jti)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if torn, _ := filepath.Glob(path + ".torn-*"); len(torn) != 0 {
			t.Fatalf("%s: a killed process's state database was set aside: %v", p.ID, torn)
		}
		if len(missing) != 0 {
			t.Fatalf("%s (leader %v) lost %d of %d acknowledged writes: %v", p.ID, p == leader, len(missing), len(want), missing)
		}
	}
	for _, p := range c.Nodes() {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitReady(90 * time.Second)
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		return revokeVia(c, c.Leader(30*time.Second), "after-restart")
	})
}
