package raft_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
)

func TestNodeProposeGateAndTicker(t *testing.T) {
	cfg := rafttest.Config(t, "solo")
	cfg.Bootstrap = true
	n := rafttest.Open(t, cfg)
	waitLeader(t, n)
	mustPropose(t, n, newTenant("acme"))

	skew := errors.New("clock 1h ahead")
	n.SetProposeGate(func() error { return skew })
	if _, err := n.Propose(context.Background(), newRevocation("acme", "j", t0+int64(time.Hour))); !errors.Is(err, skew) {
		t.Fatalf("gated propose: %v", err)
	}
	if n.State().Revoked("acme", "j") {
		t.Fatal("a refused command was applied")
	}

	// The ticker proposes nothing while the gate refuses, and ticks once
	// it opens: the clock bound turns on.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.StartTicker(ctx, 10*time.Millisecond, func() time.Time { return time.Unix(0, t0) })
	if _, on := n.FSM().Clock(); on {
		t.Fatal("a tick passed the gate")
	}
	n.SetProposeGate(nil)
	rafttest.CheckFor(t, rafttest.Timeout, 10*time.Millisecond, func() error {
		if _, on := n.FSM().Clock(); !on {
			return errors.New("no tick applied")
		}
		return nil
	})
	_ = raft.ClockTickInterval
}
