package raft_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

func tokHash(family string, gen uint64) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("%s/%d|", family, gen)), 8)[:32]
}

func flowCommand(op any) *raftpb.Command {
	c := &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: time.Now().UnixNano()}
	switch o := op.(type) {
	case *raftpb.CreateUser:
		c.Op = &raftpb.Command_CreateUser{CreateUser: o}
	case *raftpb.RedeemCode:
		c.Op = &raftpb.Command_RedeemCode{RedeemCode: o}
	case *raftpb.RotateRefresh:
		c.Op = &raftpb.Command_RotateRefresh{RotateRefresh: o}
	default:
		panic(fmt.Sprintf("flowCommand %T", op))
	}
	return c
}

// setupFamilies creates tenant t, client c1, user u1 and one refresh family
// per id, each at generation 1 with token hash tokHash(id, 1).
func setupFamilies(t *testing.T, c *rafttest.Cluster, ids ...string) {
	t.Helper()
	for _, cmd := range []*raftpb.Command{newTenant("t"), newClient("t", "c1"),
		flowCommand(&raftpb.CreateUser{User: &raftpb.User{Tenant: "t", Id: "u1", Username: "alice"}})} {
		if r := c.Propose(cmd); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	for _, id := range ids {
		now := time.Now().UnixNano()
		r := c.Propose(flowCommand(&raftpb.RedeemCode{Tenant: "t", CodeHash: tokHash("code-"+id, 0), CodeExpiresUnixNano: now + int64(time.Minute),
			ClientId: "c1", UserId: "u1", Family: &raftpb.Family{Tenant: "t", Id: id, ClientId: "c1", UserId: "u1",
				Generation: 1, CurrentHash: tokHash(id, 1), ExpiresUnixNano: now + int64(time.Hour)}}))
		if r.Err != nil || r.Grant == nil || r.Grant.Outcome != raft.OutcomeDone {
			t.Fatalf("create family %s: %v %v", id, r.Err, r.Grant)
		}
	}
}

func rotateCmd(family string, gen uint64) *raftpb.Command {
	return flowCommand(&raftpb.RotateRefresh{Tenant: "t", FamilyId: family, Generation: gen, TokenHash: tokHash(family, gen),
		ClientId: "c1", NewHash: tokHash(family, gen+1), AccessToken: &raftpb.AccessToken{Jti: fmt.Sprintf("%s-%d-%d", family, gen, time.Now().UnixNano()), ExpiresUnixNano: time.Now().Add(time.Hour).UnixNano()}})
}

// TestConcurrentRotationOneWinner: 50 concurrent rotations of the same
// refresh token through the 3-node Raft group: exactly one succeeds, the
// rest see reuse (and revoke the family) or the revoked family, and every
// replica ends with the same state.
func TestConcurrentRotationOneWinner(t *testing.T) {
	c := rafttest.NewCluster(t, 3)
	setupFamilies(t, c, "f1")
	const n = 50
	outcomes := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
			defer cancel()
			r, err := c.TryPropose(ctx, rotateCmd("f1", 1))
			switch {
			case err != nil:
				outcomes[i] = "error: " + err.Error()
			case r.Grant == nil:
				outcomes[i] = "no grant"
			default:
				outcomes[i] = r.Grant.Outcome
			}
		}()
	}
	wg.Wait()
	counts := map[string]int{}
	for _, o := range outcomes {
		counts[o]++
	}
	if counts[raft.OutcomeDone] != 1 || counts[raft.OutcomeReuseDetected] != 1 ||
		counts[raft.OutcomeFamilyRevoked] != n-2 {
		t.Fatalf("outcomes %v: want 1 done, 1 reuse_detected, %d family_revoked", counts, n-2)
	}
	// The family is revoked everywhere: the successor fails too.
	if r := c.Propose(rotateCmd("f1", 2)); r.Grant.GetOutcome() != raft.OutcomeFamilyRevoked {
		t.Fatalf("successor after reuse: %v", r.Grant)
	}
	c.CheckConverged()
}

// rotIn and rotOut are one rotation in a porcupine history.
type rotIn struct {
	family string
	gen    uint64
}

type rotOut struct {
	outcome string
	unknown bool // no answer: it may or may not have been applied
}

type famState struct {
	gen     uint64
	revoked bool
}

// familyModel is the sequential specification of a refresh family under
// RotateRefresh (reuse interval off).
var familyModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			f := op.Input.(rotIn).family
			if _, ok := by[f]; !ok {
				keys = append(keys, f)
			}
			by[f] = append(by[f], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() []any { return []any{famState{gen: 1}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(famState), input.(rotIn), output.(rotOut)
		next, want := s, ""
		switch {
		case s.revoked:
			want = raft.OutcomeFamilyRevoked
		case in.gen == s.gen:
			next.gen++
			want = raft.OutcomeDone
		case in.gen < s.gen:
			next.revoked = true
			want = raft.OutcomeReuseDetected
		default:
			want = raft.OutcomeInvalid
		}
		if out.unknown {
			if next == s {
				return []any{s}
			}
			return []any{s, next}
		}
		if out.outcome == want {
			return []any{next}
		}
		return nil
	},
	DescribeOperation: func(in, out any) string {
		return fmt.Sprintf("rotate(%s, gen %d) -> %v", in.(rotIn).family, in.(rotIn).gen, out)
	},
}

// TestRotationLinearizableUnderLeaderKill records rotate/reuse histories of
// several families from concurrent clients, kills the leader in the middle
// and restarts it, and checks the history with porcupine against the
// sequential model: every family behaves like one compare-and-swap
// register that revokes itself on reuse.
func TestRotationLinearizableUnderLeaderKill(t *testing.T) {
	c := rafttest.NewCluster(t, 3)
	families := []string{"fa", "fb", "fc", "fd"}
	setupFamilies(t, c, families...)

	var known sync.Map // family → *atomic.Uint64: the newest generation a client has seen
	for _, f := range families {
		var g atomic.Uint64
		g.Store(1)
		known.Store(f, &g)
	}
	var (
		mu      sync.Mutex
		history []porcupine.Operation
	)
	base := time.Now()
	stamp := func() int64 { return int64(time.Since(base)) }
	var wg sync.WaitGroup
	const clients, opsPerClient = 8, 12
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range opsPerClient {
				f := families[(cl+i)%len(families)]
				g, _ := known.Load(f)
				gen := g.(*atomic.Uint64).Load()
				if i%5 == 4 && gen > 1 {
					gen-- // now and then, present a superseded token
				}
				call := stamp()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := c.TryPropose(ctx, rotateCmd(f, gen))
				cancel()
				ret := stamp()
				out := rotOut{}
				if err != nil || r.Grant == nil {
					out.unknown, ret = true, math.MaxInt64
				} else {
					out.outcome = r.Grant.Outcome
					if out.outcome == raft.OutcomeDone {
						p := g.(*atomic.Uint64)
						for {
							cur := p.Load()
							if cur >= gen+1 || p.CompareAndSwap(cur, gen+1) {
								break
							}
						}
					}
				}
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: cl, Input: rotIn{family: f, gen: gen}, Call: call, Output: out, Return: ret})
				mu.Unlock()
			}
		}()
	}
	// Kill the leader while the clients run, then bring it back. (A
	// loaded machine, where short leases make leaders come and go, may
	// take a while to get a quarter of the operations through.)
	rafttest.CheckFor(t, time.Minute, 5*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(history) < clients*opsPerClient/4 {
			return fmt.Errorf("%d operations so far", len(history))
		}
		return nil
	})
	leader := c.LeaderIndex()
	c.Kill(leader)
	wg.Wait()
	c.Restart(leader)

	if res := porcupine.CheckOperationsTimeout(familyModel.ToModel(), history, 30*time.Second); res != porcupine.Ok {
		t.Fatalf("history of %d rotations is %s", len(history), res)
	}
	done := 0
	for _, op := range history {
		if op.Output.(rotOut).outcome == raft.OutcomeDone {
			done++
		}
	}
	if done == 0 {
		t.Fatal("no rotation succeeded: the history checks nothing")
	}
	c.CheckConverged()
}
