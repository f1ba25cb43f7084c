package raft

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	hraft "github.com/hashicorp/raft"

	"github.com/tallyauth/tally/raft/raftpb"
)

// workload returns a reproducible mix of n commands of every type over a
// few tenants, including failing ones, repeated request ids and sweeps.
func workload(seed uint64, n int) []*raftpb.Command {
	r := rand.New(rand.NewPCG(seed, 1))
	tenants := []string{"acme", "beta", "gamma"}
	now := t0
	cmds := []*raftpb.Command{
		createTenant(now, "acme", sigKey("acme-k0", now, 30*sec), sealKey("acme-s0", now, hour)),
		createTenant(now, "beta", sigKey("beta-k0", now, 30*sec)),
	}
	for i := 0; len(cmds) < n; i++ {
		now += int64(r.IntN(20)+1) * sec
		tenant := tenants[r.IntN(len(tenants))]
		cid := fmt.Sprintf("c%d", r.IntN(8))
		var c *raftpb.Command
		switch r.IntN(10) {
		case 0:
			c = createTenant(now, tenant, sealKey(fmt.Sprintf("%s-s%d", tenant, i), now, hour))
		case 1:
			c = createClient(now, testClient(tenant, cid))
		case 2:
			cl := testClient(tenant, cid)
			cl.Name = fmt.Sprintf("name %d", i)
			cl.Scopes = []string{fmt.Sprintf("scope-%d", r.IntN(5))}
			c = command(now, &raftpb.UpdateClient{Client: cl, ExpectedRevision: uint64(r.IntN(3))})
		case 3:
			c = command(now, &raftpb.RotateClientSecret{Tenant: tenant, ClientId: cid,
				NewSecret:               &raftpb.SecretHash{Hash: fmt.Appendf(nil, "h%d", i)},
				PreviousExpiresUnixNano: now + int64(r.IntN(3))*30*sec})
		case 4:
			c = command(now, &raftpb.SetClientDisabled{Tenant: tenant, ClientId: cid, Disabled: r.IntN(2) == 0})
		case 5:
			keys := []*raftpb.Key{sigKey(fmt.Sprintf("%s-k%d", tenant, i), now+int64(r.IntN(30))*sec, int64(r.IntN(60))*sec)}
			if r.IntN(3) == 0 {
				keys = append(keys, sealKey(fmt.Sprintf("%s-s%d", tenant, i), now, hour))
			}
			c = command(now, &raftpb.AddKeys{Tenant: tenant, Keys: keys})
		case 6, 7:
			c = revoke(now, tenant, fmt.Sprintf("jti-%d", r.IntN(40)), now+int64(r.IntN(120)-10)*sec)
		case 8:
			c = sweep(now)
			if i%2 == 0 { // a bounded sweep (issue 14): its cursor is state too
				c = command(now, &raftpb.Sweep{MaxScan: uint32(i%5 + 1)})
			}
		case 9:
			c = createClient(now, testClient("Bad Tenant", cid)) // ErrInvalid
		}
		if r.IntN(4) == 0 {
			c.RequestId = fmt.Sprintf("req-%d", r.IntN(30))
		}
		cmds = append(cmds, c)
	}
	return cmds
}

// applyInBatches applies logs with batch sizes drawn from r (1 to max).
// sameStateAcrossSplits applies logs one entry at a time, then again in
// random batches of up to each of maxes, and fails t if a split leaves
// other key/value contents or a view that disagrees with the database. It
// returns the reference dump.
func sameStateAcrossSplits(t *testing.T, logs []*hraft.Log, maxes ...int) string {
	t.Helper()
	ref := openTestFSM(t)
	applyInBatches(ref, logs, rand.New(rand.NewPCG(0, 0)), 1)
	want := dump(t, ref)
	for i, max := range maxes {
		f := openTestFSM(t)
		applyInBatches(f, logs, rand.New(rand.NewPCG(uint64(i+1), uint64(max))), max)
		if dump(t, f) != want {
			t.Fatalf("batches of up to %d: state differs", max)
		}
		checkViewMatchesDB(t, f)
	}
	return want
}

func applyInBatches(f *FSM, logs []*hraft.Log, r *rand.Rand, max int) []Result {
	var out []Result
	for len(logs) > 0 {
		n := min(r.IntN(max)+1, len(logs))
		for _, v := range f.ApplyBatch(logs[:n]) {
			out = append(out, v.(Result))
		}
		logs = logs[n:]
	}
	return out
}

func TestFSMDeterminism(t *testing.T) {
	cmds := workload(42, 400)
	logs := logOf(t, 1, cmds...)

	ref := openTestFSM(t)
	refResults := applyInBatches(ref, logs, rand.New(rand.NewPCG(0, 0)), 1)
	want := dump(t, ref)
	checkViewMatchesDB(t, ref)

	// The workload must exercise both outcomes.
	var failed int
	for _, r := range refResults {
		if r.Err != nil {
			failed++
		}
	}
	if failed == 0 || failed == len(refResults) {
		t.Fatalf("workload: %d of %d commands failed", failed, len(refResults))
	}

	for _, split := range []struct {
		name string
		seed uint64
		max  int
	}{
		{"batches of up to 8", 1, 8},
		{"batches of up to 64", 2, 64},
		{"one batch per 400", 3, 400},
	} {
		t.Run(split.name, func(t *testing.T) {
			f := openTestFSM(t)
			results := applyInBatches(f, logs, rand.New(rand.NewPCG(split.seed, 0)), split.max)
			if got := dump(t, f); got != want {
				t.Fatalf("state differs from one-at-a-time apply")
			}
			for i := range results {
				if results[i].Index != refResults[i].Index || codeOf(results[i].Err) != codeOf(refResults[i].Err) {
					t.Fatalf("entry %d: %+v, want %+v", i+1, results[i], refResults[i])
				}
			}
			if viewDump(f.State()) != viewDump(ref.State()) {
				t.Fatal("view differs")
			}
			checkViewMatchesDB(t, f)
		})
	}

	t.Run("same log twice into the same fresh path", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.db")
		var dumps [2]string
		for i := range dumps {
			f, err := OpenFSM(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			applyInBatches(f, logs, rand.New(rand.NewPCG(uint64(i), 9)), 16)
			dumps[i] = dump(t, f)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				// Replaying into the existing file changes nothing.
				g := openTestFSMAt(t, path)
				applyInBatches(g, logs, rand.New(rand.NewPCG(5, 5)), 32)
				if dump(t, g) != dumps[0] {
					t.Fatal("replay into an up-to-date database changed it")
				}
				if err := g.Close(); err != nil {
					t.Fatal(err)
				}
				if err := removeFile(path); err != nil {
					t.Fatal(err)
				}
			}
		}
		if dumps[0] != dumps[1] || dumps[0] != want {
			t.Fatal("fresh replays differ")
		}
	})
}
