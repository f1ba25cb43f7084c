package node

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
)

// catchUp keeps a node that has been out of touch from serving its replica
// as fresh before the replica holds what the leader had committed.
//
// hashicorp/raft refreshes a follower's last leader contact with the first
// heartbeat after a partition heals, but the entries it missed arrive only
// when the leader's replication backoff ends (up to ~10 s after a long
// partition). Trusting the contact alone, a node would issue and introspect
// for seconds from a replica that lacks every revocation made meanwhile while
// claiming to be within its staleness bound. So a node starts out, and after
// every stale period becomes, "catching up": it asks the leader for its
// commit index (ClusterService.LocalStatus, a ReadIndex-style check) and
// counts as stale until its own replica has applied that index.
type catchUp struct {
	pending  atomic.Bool // set until the replica reached target
	mu       sync.Mutex
	target   uint64 // the leader's commit index to reach; 0 while unknown
	fetching bool
}

// mark starts a catch-up: called when the node is beyond its bound (and at
// start).
func (u *catchUp) mark() {
	if u.pending.Load() {
		return
	}
	u.mu.Lock()
	u.target = 0
	u.mu.Unlock()
	u.pending.Store(true)
}

// catchingUp returns nil once the replica has applied what the leader had
// committed when contact resumed, and ErrStale before.
func (c *cluster) catchingUp() error {
	u := &c.catch
	if !u.pending.Load() {
		return nil
	}
	applied := c.rn.State().AppliedIndex()
	u.mu.Lock()
	defer u.mu.Unlock()
	if id, _ := c.rn.Leader(); id == c.cfg.NodeID && c.rn.IsLeader() {
		// A leader has everything committed; its replica applies it.
		u.pending.Store(false)
		return nil
	}
	if u.target != 0 && applied >= u.target {
		u.pending.Store(false)
		return nil
	}
	if u.target == 0 && !u.fetching {
		u.fetching = true
		go c.fetchLeaderCommit()
	}
	if u.target == 0 {
		return fmt.Errorf("%w: catching up: asking the leader how far to catch up", ErrStale)
	}
	return fmt.Errorf("%w: catching up: applied index %d of the leader's %d", ErrStale, applied, u.target)
}

// fetchLeaderCommit asks the current leader for its commit index.
func (c *cluster) fetchLeaderCommit() {
	u := &c.catch
	var target uint64
	defer func() {
		u.mu.Lock()
		u.fetching = false
		if target > u.target {
			u.target = target
		}
		u.mu.Unlock()
	}()
	_, addr := c.rn.Leader()
	if addr == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := c.peer(addr).LocalStatus(ctx, connect.NewRequest(&clusterv1.LocalStatusRequest{}))
	if err != nil {
		return
	}
	if st := resp.Msg.GetStatus(); st != nil && st.GetState() == "Leader" {
		target = max(st.GetCommitIndex(), 1)
	}
}
