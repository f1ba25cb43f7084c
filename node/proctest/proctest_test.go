package proctest_test

import (
	"context"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/proctest"
)

// TestClusterSurvivesLeaderKill starts three real processes, kills the
// leader with SIGKILL, checks that another node takes over, and restarts
// the killed node into the cluster.
func TestClusterSurvivesLeaderKill(t *testing.T) {
	c := proctest.Start(t, proctest.Options{})
	leader := c.Leader(30 * time.Second)
	leader.Kill()
	next := c.Leader(30 * time.Second)
	if next == leader {
		t.Fatalf("%s still leads after SIGKILL", leader.ID)
	}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	leader.WaitReady(60 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, members, err := c.Status(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 3 {
		t.Fatalf("status lists %d members, want 3: %+v", len(members), members)
	}
}
