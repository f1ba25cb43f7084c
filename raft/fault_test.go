package raft_test

// Fault-injection tests: real nodes on rafttest's fault-injecting network.
// Each is bounded in time; TALLY_SOAK=1 (make soak) runs longer and more
// rounds of the same scenarios.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

// soak reports whether the long fault runs are wanted (make soak).
func soak() bool { return os.Getenv("TALLY_SOAK") == "1" }

// rounds is n, or soakN under TALLY_SOAK=1.
func rounds(n, soakN int) int {
	if soak() {
		return soakN
	}
	return n
}

// electionBound is how long a cluster may go without a leader after a
// fault before a test fails: many election timeouts of rafttest.Config.
const electionBound = 10 * time.Second

// writeLoad runs concurrent writers that revoke unique jtis, each with its
// own request id, and records every outcome.
//
// Retrying writers use Cluster.TryPropose (retry with the same request id
// until the write is acknowledged); one-shot writers propose once to the
// node they believe leads and keep whatever error comes back, so that
// writes in flight at a fault are left with an unknown outcome.
type writeLoad struct {
	c      *rafttest.Cluster
	tenant string
	stop   chan struct{}
	wg     sync.WaitGroup
	nacked atomic.Int64

	mu     sync.Mutex
	acked  map[string]uint64 // jti → index of its Result
	failed map[string]error  // jti → the error (outcome unknown)
	refuse map[string]bool   // jti → ErrNotLeader: never appended
}

func ridOf(jti string) string { return "rid-" + jti }

func startLoad(t *testing.T, c *rafttest.Cluster, tenant, prefix string, retrying, oneShot int) *writeLoad {
	l := &writeLoad{
		c: c, tenant: tenant, stop: make(chan struct{}),
		acked: make(map[string]uint64), failed: make(map[string]error), refuse: make(map[string]bool),
	}
	for w := range retrying + oneShot {
		l.wg.Add(1)
		go l.writer(fmt.Sprintf("%s-w%d", prefix, w), w < retrying)
	}
	t.Cleanup(l.Stop)
	return l
}

func (l *writeLoad) writer(name string, retry bool) {
	defer l.wg.Done()
	for seq := 0; ; seq++ {
		select {
		case <-l.stop:
			return
		default:
		}
		jti := fmt.Sprintf("%s-%d", name, seq)
		cmd := newRevocation(l.tenant, jti, t0+int64(time.Hour))
		cmd.RequestId = ridOf(jti)
		ctx, cancel := context.WithTimeout(context.Background(), 2*electionBound)
		var res raft.Result
		var err error
		if retry {
			res, err = l.c.TryPropose(ctx, cmd)
		} else if n := l.c.LeaderNow(); n != nil {
			res, err = n.Propose(ctx, cmd)
		} else {
			cancel()
			<-time.After(5 * time.Millisecond) // pacing while there is no leader
			continue
		}
		cancel()
		l.mu.Lock()
		switch {
		case err == nil && res.Err == nil:
			l.acked[jti] = res.Index
			l.nacked.Add(1)
		case err == nil:
			l.failed[jti] = res.Err
		case errors.Is(err, raft.ErrNotLeader):
			l.refuse[jti] = true
		default:
			l.failed[jti] = err
		}
		l.mu.Unlock()
	}
}

// Stop stops the writers and waits for them.
func (l *writeLoad) Stop() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// waitAcked waits until n more writes than now are acknowledged. It fails
// when no write is acknowledged for 3*electionBound: on a loaded machine
// short leases make leaders come and go and writes trickle in, which is
// progress all the same.
func (l *writeLoad) waitAcked(t *testing.T, n int64) {
	t.Helper()
	last := l.nacked.Load()
	want, lastAt := last+n, time.Now()
	for {
		got := l.nacked.Load()
		if got >= want {
			return
		}
		if got > last {
			last, lastAt = got, time.Now()
		}
		if time.Since(lastAt) > 3*electionBound {
			t.Fatalf("no write acknowledged for %v: %d acknowledged, want %d", 3*electionBound, got, want)
		}
		<-time.After(5 * time.Millisecond) // polling
	}
}

// check stops the load and verifies, on every running node of a converged
// cluster: every acknowledged write is present; no write refused with
// ErrNotLeader is; and every failed write failed with an error that says
// the outcome is unknown and may be retried (it may be present — at most
// once, which Cluster.CheckInvariants verifies by request id).
func (l *writeLoad) check(t *testing.T) {
	t.Helper()
	l.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	for _, n := range l.c.Running() {
		st := n.State()
		for jti := range l.acked {
			if !st.Revoked(l.tenant, jti) {
				t.Fatalf("%s lost acknowledged write %s", n.ID(), jti)
			}
		}
		for jti := range l.refuse {
			if st.Revoked(l.tenant, jti) {
				t.Fatalf("%s applied %s, which was refused with ErrNotLeader", n.ID(), jti)
			}
		}
	}
	present := 0
	st := l.c.Running()[0].State()
	for jti, err := range l.failed {
		if !retriable(err) {
			t.Fatalf("write %s failed with %v, not a retriable error", jti, err)
		}
		if st.Revoked(l.tenant, jti) {
			present++
		}
	}
	t.Logf("writes: %d acknowledged, %d refused (not leader), %d failed in flight (%d of them applied, once)",
		len(l.acked), len(l.refuse), len(l.failed), present)
}

// retriable reports whether err leaves a write's outcome unknown but safe to
// retry with its request id.
func retriable(err error) bool {
	for _, e := range []error{raft.ErrLeadershipLost, raft.ErrTimeout, raft.ErrClosed, raft.ErrNotLeader, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// newLeaderWithin waits until a node other than old leads and returns its
// index and how long it took from since.
func newLeaderWithin(t *testing.T, c *rafttest.Cluster, old int, since time.Time) (int, time.Duration) {
	t.Helper()
	idx := -1
	rafttest.CheckFor(t, electionBound, 5*time.Millisecond, func() error {
		n := c.LeaderNow()
		if n == nil || c.Index(n.ID()) == old {
			return errors.New("no new leader yet")
		}
		idx = c.Index(n.ID())
		return nil
	})
	return idx, time.Since(since)
}

func seed(t *testing.T, c *rafttest.Cluster) {
	t.Helper()
	if res := c.Propose(newTenant("acme")); res.Err != nil {
		t.Fatal(res.Err)
	}
}

// Fault 1: kill the leader under a steady write load.
func TestFaultKillLeaderUnderLoad(t *testing.T) {
	t.Parallel()
	c := rafttest.NewCluster(t, 3)
	seed(t, c)
	load := startLoad(t, c, "acme", "kill", 4, 4)
	for round := range rounds(1, 5) {
		load.waitAcked(t, 50)
		old := c.LeaderIndex()
		killed := time.Now()
		c.Kill(old)
		_, elected := newLeaderWithin(t, c, old, killed)
		load.waitAcked(t, 1)
		t.Logf("round %d: killed leader %s; new leader after %v, first acknowledged write after %v",
			round, c.ID(old), elected, time.Since(killed))
		load.waitAcked(t, 50)
		c.Restart(old)
	}
	load.Stop()
	c.CheckInvariants()
	load.check(t)
}

// Fault 2: a partitioned follower keeps serving reads from its replica,
// refuses writes at once, and catches up when the partition heals.
func TestFaultPartitionFollower(t *testing.T) {
	t.Parallel()
	c := rafttest.NewCluster(t, 3)
	seed(t, c)
	before := c.Propose(withRID(newRevocation("acme", "before", t0+int64(time.Hour)), "rid-before"))
	c.WaitApplied(before.Index)

	leader := c.LeaderIndex()
	f := (leader + 1) % 3
	c.Partition(f)
	fn := c.Node(f)
	stale := fn.State().AppliedIndex()

	load := startLoad(t, c, "acme", "part", 2, 2)
	load.waitAcked(t, int64(rounds(40, 400)))

	// Reads on the follower keep working from its (stale) replica.
	if !fn.State().Revoked("acme", "before") {
		t.Fatal("partitioned follower lost a replicated revocation")
	}
	if _, ok := fn.State().Tenant("acme"); !ok {
		t.Fatal("partitioned follower lost the tenant")
	}
	if got := fn.State().AppliedIndex(); got != stale {
		t.Fatalf("partitioned follower applied %d → %d while cut off", stale, got)
	}

	// A write sent to it fails with ErrNotLeader rather than waiting.
	ctx, cancel := context.WithTimeout(context.Background(), electionBound)
	defer cancel()
	_, err := fn.Propose(ctx, withRID(newRevocation("acme", "to-follower", t0+int64(time.Hour)), "rid-to-follower"))
	if !errors.Is(err, raft.ErrNotLeader) {
		t.Fatalf("write to a partitioned follower: %v, want ErrNotLeader", err)
	}

	c.Heal()
	load.waitAcked(t, 20)
	load.Stop()
	c.CheckInvariants()
	load.check(t)
	if fn.State().Revoked("acme", "to-follower") {
		t.Fatal("a write refused by the follower was applied")
	}
}

// Fault 3: the leader partitioned into a minority steps down and stops
// acknowledging writes; the majority elects a new leader; a write that
// only the old leader saw is gone after healing.
func TestFaultPartitionLeaderMinority(t *testing.T) {
	t.Parallel()
	c := rafttest.NewCluster(t, 3)
	seed(t, c)
	for round := range rounds(1, 5) {
		oldIdx := c.LeaderIndex()
		old := c.Node(oldIdx)
		load := startLoad(t, c, "acme", fmt.Sprintf("min%d", round), 2, 2)
		load.waitAcked(t, 20)

		cut := time.Now()
		c.Partition(oldIdx)
		jti := fmt.Sprintf("minority-%d", round)
		type outcome struct {
			res raft.Result
			err error
		}
		done := make(chan outcome, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), electionBound)
			defer cancel()
			res, err := old.Propose(ctx, withRID(newRevocation("acme", jti, t0+int64(time.Hour)), ridOf(jti)))
			done <- outcome{res, err}
		}()

		_, elected := newLeaderWithin(t, c, oldIdx, cut)
		rafttest.CheckFor(t, electionBound, 5*time.Millisecond, func() error {
			if old.IsLeader() {
				return errors.New("the old leader still leads")
			}
			return nil
		})
		stepped := time.Since(cut)
		o := <-done
		if o.err == nil {
			t.Fatalf("the partitioned old leader acknowledged a write (index %d)", o.res.Index)
		}
		if !retriable(o.err) {
			t.Fatalf("write to the partitioned old leader: %v, not a retriable error", o.err)
		}
		load.waitAcked(t, 20)
		t.Logf("round %d: new leader after %v, old leader stepped down after %v; its write failed: %v",
			round, elected, stepped, o.err)

		c.Heal()
		load.waitAcked(t, 10)
		load.Stop()
		c.CheckInvariants()
		load.check(t)
		for _, n := range c.Running() {
			if n.State().Revoked("acme", jti) {
				t.Fatalf("%s holds %s, which only the deposed leader accepted", n.ID(), jti)
			}
		}
	}
}

// Fault 4: every node stops hard at once; after a restart of all of them
// the state survives and the cluster takes writes again.
func TestFaultRestartAll(t *testing.T) {
	t.Parallel()
	c := rafttest.NewCluster(t, 3)
	seed(t, c)
	load := startLoad(t, c, "acme", "restart", 3, 0)
	for round := range rounds(1, 3) {
		load.waitAcked(t, 60)
		if round == 0 {
			// One node compacts its log: its restart replays from a snapshot
			// plus the remaining log.
			if err := c.Node(1).Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 3 {
			c.Kill(i)
		}
		for i := range 3 {
			c.Restart(i)
		}
		c.Leader()
		load.waitAcked(t, 20)
	}
	load.Stop()
	c.CheckInvariants()
	load.check(t)
	for _, n := range c.Running() {
		if _, ok := n.State().Tenant("acme"); !ok {
			t.Fatalf("%s lost the tenant", n.ID())
		}
	}
}

func withRID(cmd *raftpb.Command, rid string) *raftpb.Command {
	cmd.RequestId = rid
	return cmd
}

// Fault 5: members join (as voter and non-voter) and leave — a follower,
// then the leader itself — while writers keep writing.
func TestFaultMembershipUnderLoad(t *testing.T) {
	t.Parallel()
	c := rafttest.NewCluster(t, 3)
	seed(t, c)
	load := startLoad(t, c, "acme", "member", 3, 2)
	for range rounds(1, 3) {
		load.waitAcked(t, 30)
		v := c.Join()
		load.waitAcked(t, 30)
		nv := c.JoinNonvoter()
		load.waitAcked(t, 30)

		leader := c.LeaderIndex()
		follower := -1
		for i := range c.Size() {
			if n := c.Node(i); n != nil && i != leader && i != v && i != nv {
				follower = i
				break
			}
		}
		c.Remove(follower)
		load.waitAcked(t, 30)
		c.Remove(leader) // the leader removes itself and steps down
		load.waitAcked(t, 30)

		ctx, cancel := context.WithTimeout(context.Background(), electionBound)
		members, err := c.Leader().Members(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		voters := 0
		for _, m := range members {
			if m.ID == c.ID(leader) || m.ID == c.ID(follower) {
				t.Fatalf("removed member %s is still in %+v", m.ID, members)
			}
			if m.Voter {
				voters++
			}
			if m.ID == c.ID(nv) && m.Voter {
				t.Fatalf("non-voter %s votes", m.ID)
			}
		}
		if voters != 2 || len(members) != 3 {
			t.Fatalf("members %+v: want 2 voters and a non-voter", members)
		}
		// Back to three voters for the next round.
		c.Remove(nv)
		c.Join()
	}
	load.Stop()
	c.CheckInvariants()
	load.check(t)
}
