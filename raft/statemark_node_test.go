package raft_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
)

// dataDirs starts a 3-node cluster and returns it with each node's data
// directory by id.
func markCluster(t *testing.T, opts ...func(*raft.Config)) (*rafttest.Cluster, map[string]string) {
	var mu sync.Mutex
	dirs := map[string]string{}
	opts = append(opts, func(cfg *raft.Config) {
		mu.Lock()
		dirs[cfg.ID] = cfg.DataDir
		mu.Unlock()
	})
	c := rafttest.NewCluster(t, 3, opts...)
	return c, dirs
}

// checkSameContents waits until node i holds the same keys and values as
// every other running node, at the same applied index (the determinism
// tests' comparison, on real replicas).
func checkSameContents(t *testing.T, c *rafttest.Cluster, i int) {
	t.Helper()
	rafttest.CheckFor(t, rafttest.Timeout, 20*time.Millisecond, func() error {
		got, gotIdx, err := raft.StateDumpForTest(c.Node(i))
		if err != nil {
			return err
		}
		for _, n := range c.Running() {
			if n == c.Node(i) {
				continue
			}
			want, wantIdx, err := raft.StateDumpForTest(n)
			if err != nil {
				return err
			}
			if gotIdx != wantIdx {
				return fmt.Errorf("%s applied %d, %s applied %d", c.ID(i), gotIdx, n.ID(), wantIdx)
			}
			if got != want {
				return fmt.Errorf("%s and %s hold different keys or values at index %d", c.ID(i), n.ID(), gotIdx)
			}
		}
		return nil
	})
}

// A node killed hard (no final fsync of its state database, its mark left
// "dirty" by this boot, as SIGKILL leaves it) keeps its state database on
// restart: every write acknowledged before is there as soon as it opens,
// before any replay. Killing the leader and then a follower.
func TestStateDBKilledNodeKeepsAcknowledgedWrites(t *testing.T) {
	c, dirs := markCluster(t)
	c.Propose(newTenant("acme"))
	var last raft.Result
	for i := range 30 {
		last = c.Propose(newRevocation("acme", fmt.Sprintf("j%d", i), t0+int64(time.Hour)))
	}
	c.WaitApplied(last.Index)
	for _, victim := range []int{c.LeaderIndex(), (c.LeaderIndex() + 1) % 3} {
		n := c.Node(victim)
		applied := n.State().AppliedIndex()
		raft.SkipCleanCloseForTest(n)
		c.Kill(victim)
		boot, clean, err := raft.StateMarkForTest(dirs[c.ID(victim)])
		if err != nil || clean || boot == "" {
			t.Fatalf("mark after a kill: boot %q clean %v, %v; want dirty with this boot", boot, clean, err)
		}
		c.Restart(victim)
		n = c.Node(victim)
		if got := n.State().AppliedIndex(); got < applied {
			t.Fatalf("%s: applied %d after the kill, %d before", c.ID(victim), got, applied)
		}
		for i := range 30 {
			if !n.State().Revoked("acme", fmt.Sprintf("j%d", i)) {
				t.Fatalf("%s lost revocation j%d", c.ID(victim), i)
			}
		}
		if m, _ := filepath.Glob(filepath.Join(dirs[c.ID(victim)], "state.db.torn-*")); len(m) != 0 {
			t.Fatalf("a killed process's state database was set aside: %v", m)
		}
		last = c.Propose(newRevocation("acme", fmt.Sprintf("after-%d", victim), t0+int64(time.Hour)))
		c.WaitApplied(last.Index)
	}
	c.CheckConverged()
	checkSameContents(t, c, 0)

	// A clean close fsyncs and marks the database clean.
	c.Stop(1)
	if boot, clean, err := raft.StateMarkForTest(dirs[c.ID(1)]); err != nil || !clean || boot == "" {
		t.Fatalf("mark after Close: boot %q clean %v, %v", boot, clean, err)
	}
}

// A node whose state database was left open without fsync by another boot
// (the machine went down) sets it aside and rebuilds the same keys and
// values from the latest snapshot and the log: without any snapshot yet
// (the whole log), and after snapshots that compacted the log.
func TestStateDBFromAnotherBootIsRebuilt(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snapshot bool
	}{{"no snapshot", false}, {"snapshot, log compacted", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c, dirs := markCluster(t, func(cfg *raft.Config) { cfg.TrailingLogs = 2 })
			c.Propose(newTenant("acme"))
			c.Propose(newClient("acme", "c1"))
			var last raft.Result
			for i := range 20 {
				last = c.Propose(newRevocation("acme", fmt.Sprintf("j%d", i), t0+int64(time.Hour)))
			}
			c.WaitApplied(last.Index)
			victim := (c.LeaderIndex() + 1) % 3
			if tc.snapshot {
				for _, n := range c.Running() {
					if err := n.Snapshot(); err != nil {
						t.Fatal(err)
					}
				}
				if first := c.Node(victim).FirstLogIndex(); first <= 2 {
					t.Fatalf("the snapshot did not compact the log (first index %d)", first)
				}
				for i := range 5 {
					last = c.Propose(newClient("acme", fmt.Sprintf("after-snapshot-%d", i)))
				}
				c.WaitApplied(last.Index)
			}
			checkSameContents(t, c, victim)

			dir := dirs[c.ID(victim)]
			raft.SkipCleanCloseForTest(c.Node(victim))
			c.Kill(victim)
			if err := raft.MarkStateFromOtherBootForTest(dir); err != nil {
				t.Fatal(err)
			}
			// The cluster moves on while the node is down.
			last = c.Propose(newRevocation("acme", "while-down", t0+int64(time.Hour)))
			c.Restart(victim)
			if m, _ := filepath.Glob(filepath.Join(dir, "state.db.torn-*")); len(m) != 1 {
				t.Fatalf("the possibly torn state database was not set aside: %v", m)
			}
			if boot, clean, err := raft.StateMarkForTest(dir); err != nil || clean || boot == "another-boot" {
				t.Fatalf("mark after the rebuild's open: boot %q clean %v, %v", boot, clean, err)
			}
			c.WaitApplied(last.Index)
			checkSameContents(t, c, victim)
			n := c.Node(victim)
			if first := n.FirstLogIndex(); tc.snapshot && first <= 2 {
				t.Fatalf("first log index %d: the rebuild did not have to start from the snapshot", first)
			}
			for i := range 20 {
				if !n.State().Revoked("acme", fmt.Sprintf("j%d", i)) {
					t.Fatalf("revocation j%d not rebuilt", i)
				}
			}
			if !n.State().Revoked("acme", "while-down") {
				t.Fatal("the entry appended while the node was down is missing")
			}
			if _, err := c.TryPropose(t.Context(), newClient("acme", "c-final")); err != nil && !errors.Is(err, raft.ErrLeadershipLost) {
				t.Fatal(err)
			}
		})
	}
}
