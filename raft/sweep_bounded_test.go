package raft

import (
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/tallyauth/tally/raft/raftpb"
)

func boundedSweep(now int64, max uint32) *raftpb.Command {
	return command(now, &raftpb.Sweep{MaxScan: max})
}

// sweepWorkload is flowWorkload without its sweeps, plus revocations and a
// second tenant, and the time of its last command.
func sweepWorkload(seed uint64) ([]*raftpb.Command, int64) {
	var out []*raftpb.Command
	last := t0
	for _, c := range flowWorkload(seed, 600) {
		if c.GetSweep() != nil {
			continue
		}
		out = append(out, c)
		last = max(last, c.TimeUnixNano)
	}
	out = append(out, createTenant(t0, "u"))
	for i := range 40 {
		out = append(out, revoke(last, "t", fmt.Sprintf("r%d", i), last+int64(i)*sec))
		out = append(out, revoke(last, "u", fmt.Sprintf("r%d", i), last+int64(40-i)*sec))
	}
	return out, last
}

// countKeys is the number of keys of the tenant's bucket of kind.
func countKeys(t *testing.T, f *FSM, tenant, kind string) int {
	t.Helper()
	n := 0
	_ = f.view(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(tenantBucket(tenant, kind)); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n
}

// TestBoundedSweepsEqualOneFullSweep: bounded Sweeps (issue 14), repeated
// while they report more work, leave exactly the contents one unbounded
// Sweep leaves, whatever the bound; each removes no more than its bound.
func TestBoundedSweepsEqualOneFullSweep(t *testing.T) {
	for _, seed := range []uint64{1, 2} {
		cmds, last := sweepWorkload(seed)
		for _, at := range []int64{last + 20*sec, last + 2*hour} {
			full := openTestFSM(t)
			applyAll(t, full, cmds...)
			unswept := domainDump(t, full)
			mustApply(t, full, sweep(at))
			want := domainDump(t, full)
			if want == unswept {
				t.Fatalf("seed %d: the full sweep removed nothing", seed)
			}
			if full.SweepMore() {
				t.Fatal("an unbounded sweep left work")
			}
			for _, bound := range []uint32{1, 3, 50, 100000} {
				f := openTestFSM(t)
				applyAll(t, f, cmds...)
				before := countKeys(t, f, "t", kindFamilies)
				mustApply(t, f, boundedSweep(at, bound))
				if removed := before - countKeys(t, f, "t", kindFamilies); removed > int(bound) {
					t.Fatalf("seed %d bound %d: one bounded sweep removed %d families", seed, bound, removed)
				}
				n := 1
				for ; f.SweepMore(); n++ {
					if n > 100000 {
						t.Fatal("bounded sweeps never finish")
					}
					mustApply(t, f, boundedSweep(at, bound))
				}
				if got := domainDump(t, f); got != want {
					t.Fatalf("seed %d at +%ds bound %d (%d sweeps): contents differ from one full sweep:\n%s", seed, (at-last)/sec, bound, n, diffLines(want, got))
				}
				if bound == 1 && n < 10 {
					t.Fatalf("bound 1 took only %d sweeps", n)
				}
				checkViewMatchesDB(t, f)
			}
		}
	}
}

// TestBoundedSweepCursorSurvivesRemovedTenant: a pass resumes after a
// cursor whose tenant or record is gone.
func TestBoundedSweepCursorSurvivesRemovedTenant(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "a", sigKey("k1", t0, hour), sigKey("k2", t0, hour), sigKey("k3", t0, hour)),
		createTenant(t0, "b", sigKey("k1", t0, hour), sigKey("k2", t0, hour)))
	for i := range 5 {
		mustApply(t, f, revoke(t0, "a", fmt.Sprintf("x%d", i), t0+hour), revoke(t0, "b", fmt.Sprintf("x%d", i), t0+hour))
	}
	mustApply(t, f, boundedSweep(t0+sec, 1))
	if !f.SweepMore() {
		t.Fatal("no pass under way after a sweep of bound 1")
	}
	for _, v := range []string{"zz\x00\x00k", "a\x00\x09", "\x00", "a"} {
		_ = f.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte(bucketMeta)).Put([]byte(metaSweepCursor), []byte(v)) })
		for n := 0; f.SweepMore(); n++ {
			if n > 1000 {
				t.Fatalf("cursor %q: the pass never ends", v)
			}
			mustApply(t, f, boundedSweep(t0+sec, 1))
		}
		mustApply(t, f, boundedSweep(t0+sec, 1)) // a new pass
	}
}

func diffLines(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	in := map[string]bool{}
	for _, l := range bl {
		in[l] = true
	}
	for _, l := range al {
		if !in[l] {
			out = append(out, "- "+l)
		}
	}
	in = map[string]bool{}
	for _, l := range al {
		in[l] = true
	}
	for _, l := range bl {
		if !in[l] {
			out = append(out, "+ "+l)
		}
	}
	if len(out) > 40 {
		out = append(out[:40], "…")
	}
	return strings.Join(out, "\n")
}
