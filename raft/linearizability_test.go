package raft_test

// Linearizability of the replicated state, checked with porcupine over
// histories recorded from concurrent clients while leaders are killed and
// partitioned.
//
// The workload is a set of independent keys, each a register:
//
//   - "client/<id>": write = UpdateClient setting the client's name to a
//     unique value; read = the client's name.
//   - "jti/<id>": write = RevokeToken of that jti (the register goes from ""
//     to "revoked" and stays there); read = whether it is revoked.
//
// Which reads are linearizable: a read that goes through the log. The
// client proposes a command with no effect (a Sweep at time 1, which
// removes nothing) to the node that leads; once that node has applied it,
// the client reads the node's State. Every write acknowledged before the
// read started was committed at a lower index, so it is in that State; a
// deposed leader cannot commit the no-op, so it cannot answer. A plain
// State read on a follower is NOT linearizable (it may be stale; see
// TestLinearizabilityCatchesStaleFollowerRead) — it is the bounded-staleness
// read that local issuance uses.
//
// Writes are acknowledged (their effect happened between call and return)
// or failed (their outcome is unknown: they may take effect at any later
// time, so they are recorded as still pending at the end of the history).
// Failed reads observed nothing and are left out.

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

type linInput struct {
	write bool
	key   string
	value string // written value (writes)
}

// registerModel is a map of independent registers, partitioned by key so
// that porcupine checks each key on its own.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := make(map[string][]porcupine.Operation)
		var keys []string
		for _, op := range history {
			k := op.Input.(linInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(linInput)
		if in.write {
			return true, in.value
		}
		return output.(string) == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(linInput)
		if in.write {
			return fmt.Sprintf("write(%s, %q)", in.key, in.value)
		}
		return fmt.Sprintf("read(%s) → %q", in.key, output)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state) },
}

// history collects operations from concurrent clients.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(client int, in linInput, call int64, out string, ret int64) {
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

// checkLinearizable checks h with porcupine and fails t if it is not
// linearizable, leaving porcupine's visualization in a directory that
// outlives the test.
func checkLinearizable(t *testing.T, ops []porcupine.Operation) porcupine.CheckResult {
	t.Helper()
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, time.Minute)
	if res == porcupine.Ok {
		return res
	}
	dir, err := os.MkdirTemp("", "tally-linearizability-")
	if err != nil {
		t.Errorf("keep visualization: %v", err)
		return res
	}
	path := filepath.Join(dir, t.Name()+".html")
	if err := porcupine.VisualizePath(registerModel, info, path); err != nil {
		t.Errorf("write visualization: %v", err)
	} else {
		t.Logf("porcupine visualization: %s", path)
	}
	return res
}

func updateName(tenant, client, name string) *raftpb.Command {
	return &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: t0 + 3, Op: &raftpb.Command_UpdateClient{
		UpdateClient: &raftpb.UpdateClient{Client: &raftpb.Client{
			Tenant: tenant, Id: client, Name: name,
			GrantTypes: []string{"client_credentials"}, TokenFormat: "jwt",
		}},
	}}
}

// noop changes nothing: a Sweep at time 1 finds nothing expired.
func noop() *raftpb.Command {
	return &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: 1, Op: &raftpb.Command_Sweep{Sweep: &raftpb.Sweep{}}}
}

// linearizableRead reads key on the node that leads, after a no-op
// committed through it (see the file comment). ok is false when no node
// could answer within ctx.
func linearizableRead(ctx context.Context, c *rafttest.Cluster, key string) (string, bool) {
	for ctx.Err() == nil {
		n := c.LeaderNow()
		if n == nil {
			<-time.After(5 * time.Millisecond) // pacing while there is no leader
			continue
		}
		actx, cancel := context.WithTimeout(ctx, time.Second)
		res, err := n.Propose(actx, noop())
		cancel()
		if err != nil || res.Err != nil {
			continue
		}
		return readKey(n.State(), key), true
	}
	return "", false
}

func readKey(st *raft.State, key string) string {
	if jti, ok := strings.CutPrefix(key, "jti/"); ok {
		if st.Revoked("acme", jti) {
			return "revoked"
		}
		return ""
	}
	id, _ := strings.CutPrefix(key, "client/")
	c, ok := st.Client("acme", id)
	if !ok {
		return "?"
	}
	return c.Name
}

func writeCommand(key, value string) *raftpb.Command {
	if jti, ok := strings.CutPrefix(key, "jti/"); ok {
		return newRevocation("acme", jti, t0+int64(time.Hour))
	}
	id, _ := strings.CutPrefix(key, "client/")
	return updateName("acme", id, value)
}

// TestLinearizability records concurrent register reads and writes while a
// nemesis partitions, kills and slows down leaders and followers, then
// checks the history with porcupine.
func TestLinearizability(t *testing.T) {
	t.Parallel()
	c := rafttest.NewCluster(t, 3)
	seed(t, c)
	var keys []string
	for i := range 3 {
		id := fmt.Sprintf("c%d", i)
		if res := c.Propose(newClient("acme", id)); res.Err != nil {
			t.Fatal(res.Err)
		}
		keys = append(keys, "client/"+id)
	}
	for i := range 6 {
		keys = append(keys, fmt.Sprintf("jti/j%d", i))
	}

	h := &history{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const clients = 6
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(cl), 42))
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				key := keys[rng.IntN(len(keys))]
				// Odd clients give up quickly, so that some writes end with
				// an unknown outcome while leaders change.
				patience := 3 * time.Second
				if cl%2 == 1 {
					patience = 400 * time.Millisecond
				}
				ctx, cancel := context.WithTimeout(context.Background(), patience)
				if rng.IntN(2) == 0 {
					in := linInput{write: true, key: key, value: fmt.Sprintf("v%d-%d", cl, seq)}
					if strings.HasPrefix(key, "jti/") {
						in.value = "revoked"
					}
					call := h.now()
					_, err := c.TryPropose(ctx, writeCommand(key, in.value))
					ret := h.now()
					if err != nil {
						ret = math.MaxInt64 // outcome unknown: may take effect later
					}
					h.add(cl, in, call, "", ret)
				} else {
					call := h.now()
					v, ok := linearizableRead(ctx, c, key)
					if ok {
						h.add(cl, linInput{key: key}, call, v, h.now())
					}
				}
				cancel()
			}
		}()
	}

	pause := func(d time.Duration) { <-time.After(d) } // nemesis pacing, not a wait for a condition
	for round := range rounds(1, 6) {
		pause(300 * time.Millisecond)
		l := c.LeaderIndex()
		c.Partition(l) // the leader into a minority
		pause(900 * time.Millisecond)
		c.Heal()
		pause(300 * time.Millisecond)
		l = c.LeaderIndex()
		c.Kill(l)
		pause(900 * time.Millisecond)
		c.Restart(l)
		pause(300 * time.Millisecond)
		f := (c.LeaderIndex() + 1 + round%2) % 3
		c.Partition(f) // a follower
		pause(600 * time.Millisecond)
		c.Heal()
		pause(300 * time.Millisecond)
		l = c.LeaderIndex()
		for _, o := range []int{(l + 1) % 3, (l + 2) % 3} { // a slow leader
			c.Delay(l, o, 40*time.Millisecond)
			c.Delay(o, l, 40*time.Millisecond)
		}
		pause(600 * time.Millisecond)
		for _, o := range []int{(l + 1) % 3, (l + 2) % 3} {
			c.Delay(l, o, 0)
			c.Delay(o, l, 0)
		}
	}
	pause(300 * time.Millisecond)
	// A loaded machine gets through fewer operations during the schedule:
	// the clients go on against the healed cluster until the history is
	// large enough to mean something.
	rafttest.CheckFor(t, time.Minute, 20*time.Millisecond, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		var reads, writes int
		for _, op := range h.ops {
			switch {
			case !op.Input.(linInput).write:
				reads++
			case op.Return != math.MaxInt64:
				writes++
			}
		}
		if reads < 50 || writes < 50 {
			return fmt.Errorf("%d reads, %d acknowledged writes so far", reads, writes)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	c.CheckInvariants()

	h.mu.Lock()
	ops := h.ops
	h.mu.Unlock()
	var reads, writes, unknown int
	for _, op := range ops {
		switch {
		case !op.Input.(linInput).write:
			reads++
		case op.Return == math.MaxInt64:
			unknown++
		default:
			writes++
		}
	}
	if reads < 50 || writes < 50 {
		t.Fatalf("history too small to mean anything: %d reads, %d writes", reads, writes)
	}
	if res := checkLinearizable(t, ops); res != porcupine.Ok {
		t.Fatalf("history of %d reads, %d writes, %d unknown writes: %s", reads, writes, unknown, res)
	}
	t.Logf("linearizable: %d reads, %d acknowledged writes, %d writes with unknown outcome", reads, writes, unknown)
}

// TestLinearizabilityCatchesStaleFollowerRead shows that the checker fails
// a history that is not linearizable: a read served from a partitioned
// follower's replica misses a write acknowledged before the read began.
func TestLinearizabilityCatchesStaleFollowerRead(t *testing.T) {
	t.Parallel()
	c := rafttest.NewCluster(t, 3)
	seed(t, c)
	f := (c.LeaderIndex() + 1) % 3
	c.Partition(f)
	h := &history{start: time.Now()}

	call := h.now()
	res := c.Propose(writeCommand("jti/stale", "revoked"))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	h.add(0, linInput{write: true, key: "jti/stale", value: "revoked"}, call, "", h.now())

	call = h.now()
	h.add(1, linInput{key: "jti/stale"}, call, readKey(c.Node(f).State(), "jti/stale"), h.now())

	if res, _ := porcupine.CheckOperationsVerbose(registerModel, h.ops, time.Minute); res != porcupine.Illegal {
		t.Fatalf("a stale follower read checked as %s, want %s", res, porcupine.Illegal)
	}

	// The same read through the log, once healed, is linearizable.
	c.Heal()
	ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
	defer cancel()
	call = h.now()
	v, ok := linearizableRead(ctx, c, "jti/stale")
	if !ok {
		t.Fatal("no linearizable read")
	}
	ops := []porcupine.Operation{h.ops[0], {ClientId: 1, Input: linInput{key: "jti/stale"}, Call: call, Output: v, Return: h.now()}}
	if res := checkLinearizable(t, ops); res != porcupine.Ok {
		t.Fatalf("a read through the log checked as %s", res)
	}
}
