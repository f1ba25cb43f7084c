package raft_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft/rafttest"
)

// TestLastLeaderContactAcrossTransfers: while leadership moves around, a
// node that has just stepped down never reports an old contact with a
// leader. hashicorp/raft refreshes LastContact only after the old leader's
// loop has unwound, some time after it left the Leader state; in that gap
// the old leader looked stale (or as never having heard from a leader) and
// refused issuance during a graceful transfer — found by "tally drill
// failover --graceful".
func TestLastLeaderContactAcrossTransfers(t *testing.T) {
	c := rafttest.NewCluster(t, 3)
	c.LeaderIndex()
	rafttest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		for i := range 3 {
			if c.Node(i).LastLeaderContact().IsZero() {
				return fmt.Errorf("node %d has not heard from the leader", i)
			}
		}
		return nil
	})
	var worst atomic.Int64 // the oldest contact seen, in nanoseconds of age
	var bad atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.Node(i)
			tick := time.NewTicker(50 * time.Microsecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				last := n.LastLeaderContact()
				if last.IsZero() {
					bad.Store(fmt.Sprintf("node %d: no contact with a leader ever", i))
					continue
				}
				if age := int64(time.Since(last)); age > worst.Load() {
					worst.Store(age)
				}
			}
		}()
	}
	for range 6 {
		li := c.LeaderIndex()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.Node(li).TransferLeadership(ctx, "")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		rafttest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if c.LeaderNow() == nil {
				return fmt.Errorf("no leader yet")
			}
			return nil
		})
	}
	close(stop)
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatal(b)
	}
	// Heartbeats every 300 ms at most; an election takes about as long.
	if w := time.Duration(worst.Load()); w > 2*time.Second {
		t.Fatalf("a node reported a last leader contact %v old during transfers", w)
	}
}
