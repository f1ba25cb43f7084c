package raft_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
)

// TestLastLeaderContactAcrossTransfers: while leadership moves around, a
// node that has just stepped down never reports an old contact with a
// leader. hashicorp/raft refreshes LastContact only after the old leader's
// loop has unwound, some time after it left the Leader state; in that gap
// the old leader looked stale (or as never having heard from a leader) and
// refused issuance during a graceful transfer — found by "tally drill
// failover --graceful". The test holds every node to the moment it was
// last seen leading (less the lease), not to a wall-clock age: on a loaded
// machine a follower may legitimately not hear a heartbeat for seconds.
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
	// The property, whatever the machine's speed: once a node was seen
	// leading at t (its contact was "now"), it never again reports a
	// contact older than t less the leader lease. How old a follower's
	// contact gets between heartbeats depends on scheduling and is only
	// logged.
	lease := c.Node(0).LeaseTimeout()
	var worst atomic.Int64 // the oldest contact seen, in nanoseconds of age
	var bad atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.Node(i)
			var ledAt time.Time // when n was last seen leading
			tick := time.NewTicker(50 * time.Microsecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				before := time.Now()
				last := n.LastLeaderContact()
				if last.IsZero() {
					bad.Store(fmt.Sprintf("node %d: no contact with a leader ever", i))
					continue
				}
				if !last.Before(before) { // "now": n leads
					ledAt = before
					continue
				}
				if !ledAt.IsZero() && last.Before(ledAt.Add(-lease)) {
					bad.Store(fmt.Sprintf("node %d: led at %s, later reported a contact %v before that",
						i, ledAt.Format(time.StampMicro), ledAt.Sub(last)))
				}
				if age := int64(before.Sub(last)); age > worst.Load() {
					worst.Store(age)
				}
			}
		}()
	}
	for range 6 {
		// TransferLeadership tries again when one attempt times out (an
		// election timeout, 300 ms here); only a leader that lost its
		// leadership since LeaderIndex is asked again here.
		from := c.LeaderIndex()
		rafttest.CheckFor(t, rafttest.Timeout, 5*time.Millisecond, func() error {
			li := c.LeaderIndex()
			if li != from {
				return nil // moved
			}
			ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
			defer cancel()
			err := c.Node(li).TransferLeadership(ctx, "")
			if err != nil && !errors.Is(err, raft.ErrNotLeader) {
				t.Fatal(err)
			}
			return err
		})
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
	t.Logf("the oldest leader contact reported during the transfers was %v old", time.Duration(worst.Load()))
}
