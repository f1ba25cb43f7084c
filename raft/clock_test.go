package raft

import (
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

func tick(now int64) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now, Op: &raftpb.Command_Tick{Tick: &raftpb.Tick{}}}
}

func fsmNow(t *testing.T, f *FSM) int64 {
	t.Helper()
	c, ok := f.Clock()
	if !ok {
		t.Fatal("clock bound not on")
	}
	return c.UnixNano()
}

// A proposer whose clock jumps an hour ahead cannot expire a live
// revocation: the entry's time is held to the last tick plus MaxClockStep,
// and only ticks move that bound.
func TestFSMClockBoundsAJumpForward(t *testing.T) {
	f := openTestFSM(t)
	step := int64(MaxClockStep)
	mustApply(t, f, createTenant(t0, "acme"), revoke(t0, "acme", "live", t0+10*60*sec), revoke(t0, "acme", "short", t0+2*sec))
	if _, ok := f.Clock(); ok {
		t.Fatal("clock bound on before the first tick")
	}
	mustApply(t, f, tick(t0))
	if got := fsmNow(t, f); got != t0 {
		t.Fatalf("clock after the first tick = %d, want %d", got, t0)
	}

	// The jumped proposer sweeps at t0+1h: applied at t0+step.
	mustApply(t, f, sweep(t0+hour))
	if got := fsmNow(t, f); got != t0+step {
		t.Fatalf("clock after a jumped sweep = t0%+d, want t0%+d", got-t0, step)
	}
	if !f.State().Revoked("acme", "live") {
		t.Fatal("a jumped clock expired a live revocation")
	}
	if f.State().Revoked("acme", "short") {
		t.Fatal("a revocation expired within the bound was kept")
	}
	// Many entries without a tick do not ratchet the clock further.
	for range 50 {
		mustApply(t, f, sweep(t0+hour))
	}
	if got := fsmNow(t, f); got != t0+step {
		t.Fatalf("entries without ticks moved the clock to t0%+d", got-t0)
	}
	// Ticks proposed by the jumped clock advance it one step each.
	mustApply(t, f, tick(t0+hour), tick(t0+hour))
	if got := fsmNow(t, f); got != t0+2*step {
		t.Fatalf("clock after two jumped ticks = t0%+d, want t0%+d", got-t0, 2*step)
	}
	// Time never goes backwards: a proposer behind the clock gets its time.
	mustApply(t, f, revoke(t0-hour, "acme", "late", t0+20*60*sec))
	if got := fsmNow(t, f); got != t0+2*step {
		t.Fatalf("clock went backwards to t0%+d", got-t0)
	}
	if r, ok := f.State().Revocation("acme", "late"); !ok || r.RevokedUnixNano != t0+2*step {
		t.Fatalf("late revocation = %v", r)
	}
	// Honest ticks at the real time: the clock follows them exactly.
	mustApply(t, f, tick(t0+2*step+sec), sweep(t0+2*step+sec))
	if got := fsmNow(t, f); got != t0+2*step+sec {
		t.Fatalf("honest clock = t0%+d", got-t0)
	}
	if !f.State().Revoked("acme", "live") {
		t.Fatal("live revocation gone")
	}
	checkViewMatchesDB(t, f)
}

// A log without ticks (written before they existed) applies as it always
// did.
func TestFSMClockOffWithoutTicks(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"), revoke(t0, "acme", "j", t0+10*60*sec), sweep(t0+hour))
	if f.State().Revoked("acme", "j") {
		t.Fatal("legacy sweep did not expire")
	}
	if _, ok := f.Clock(); ok {
		t.Fatal("clock bound on without a tick")
	}
}

// A sweep cutoff computed from a jumped clock is moved back by the jump.
func TestFSMClockBoundsEventCutoff(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"), tick(t0))
	a := &applier{}
	if got := a.boundCutoff(t0+hour-10*60*sec, t0+hour, t0+5*sec); got != t0-10*60*sec+5*sec {
		t.Fatalf("cutoff = t0%+d", got-t0)
	}
	if got := a.boundCutoff(t0+hour, t0+hour, t0+5*sec); got != t0+5*sec {
		t.Fatalf("cutoff past now = t0%+d", got-t0)
	}
	if got := a.boundCutoff(0, t0+hour, t0); got != 0 {
		t.Fatalf("no cutoff became %d", got)
	}
	if got := a.boundCutoff(t0-60*sec, t0, t0); got != t0-60*sec {
		t.Fatalf("unbounded cutoff changed to t0%+d", got-t0)
	}
}
