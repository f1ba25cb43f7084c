package rafttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Timeout bounds every wait of this package.
const Timeout = 20 * time.Second

// CheckFor calls fn every `every` until it returns nil; after timeout,
// but never before Timeout, it fails t with fn's last error. A budget only
// bounds a hung test: on a loaded machine (the race detector, two cores,
// another CPU-heavy process) a condition may take many times longer than on
// a quiet one, and speed targets belong in benchmarks, not in tests.
func CheckFor(t testing.TB, timeout, every time.Duration, fn func() error) {
	t.Helper()
	timeout = max(timeout, Timeout)
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		<-time.After(every)
	}
}

// Logger returns a logger that writes warnings and errors to t's log, and
// drops anything logged after t has finished (hashicorp/raft's network
// goroutines may log late).
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// Config returns a node configuration for tests: id, a fresh data directory,
// an ephemeral loopback port, timeouts short enough for fast elections and
// no automatic snapshots.
func Config(t testing.TB, id string) raft.Config {
	c := raft.DefaultConfig()
	c.ID = id
	c.DataDir = filepath.Join(t.TempDir(), id)
	c.BindAddr = "127.0.0.1:0"
	c.Logger = Logger(t)
	c.ApplyTimeout = 5 * time.Second
	c.HeartbeatTimeout = 300 * time.Millisecond
	c.ElectionTimeout = 300 * time.Millisecond
	c.LeaderLeaseTimeout = 150 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotInterval = time.Hour
	return c
}

// Open opens a node with cfg and closes it when the test ends.
func Open(t testing.TB, cfg raft.Config) *raft.Node {
	t.Helper()
	n, err := raft.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// Cluster is a group of real nodes — real hashicorp/raft, the bbolt FSM,
// state files under t.TempDir() — whose transports run over a Network that
// can cut and delay every link. Node i has the Raft id "node<i>"; methods
// name nodes by i. Node 0 bootstraps and the others join it with AddVoter.
//
// Its methods are safe for concurrent use (writers may propose while the
// test kills and restarts nodes), except that only the test goroutine may
// call the ones that fail the test (Leader, Propose, WaitApplied,
// CheckConverged, CheckInvariants, Join, Restart, Kill, Stop).
type Cluster struct {
	t    testing.TB
	opts []func(*raft.Config)
	// Net carries the cluster's Raft traffic.
	Net *Network

	mu    sync.Mutex
	cfgs  []raft.Config
	nodes []*raft.Node // nil while stopped
	trans []*hraft.NetworkTransport

	reqID   atomic.Uint64
	effects *effectLog
}

// NewCluster starts n voters, waits until all of them are members, and
// closes them when the test ends. opts adjust every node's Config.
func NewCluster(t testing.TB, n int, opts ...func(*raft.Config)) *Cluster {
	t.Helper()
	c := &Cluster{t: t, opts: opts, Net: NewNetwork(), effects: newEffectLog()}
	t.Cleanup(c.Close)
	cfg := c.config(0)
	cfg.Bootstrap = true
	c.start(cfg)
	c.Leader()
	for i := 1; i < n; i++ {
		c.Join()
	}
	return c
}

func (c *Cluster) config(i int) raft.Config {
	cfg := Config(c.t, fmt.Sprintf("node%d", i))
	for _, o := range c.opts {
		o(&cfg)
	}
	return cfg
}

// start opens a node with cfg on a fresh transport of c.Net at
// cfg.BindAddr, registers the effect observer and records it; it returns
// the node's index.
func (c *Cluster) start(cfg raft.Config) int {
	c.t.Helper()
	tr, err := c.Net.Transport(cfg.ID, cfg.BindAddr)
	if err != nil {
		c.t.Fatalf("transport %s: %v", cfg.ID, err)
	}
	cfg.BindAddr = string(tr.LocalAddr()) // restart where peers expect it
	cfg.Transport = tr
	n, err := raft.Open(cfg)
	if err != nil {
		_ = tr.Close()
		c.t.Fatalf("open %s: %v", cfg.ID, err)
	}
	c.effects.observe(cfg.ID, n.FSM())
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.cfgs {
		if c.cfgs[i].ID == cfg.ID {
			c.cfgs[i], c.nodes[i], c.trans[i] = cfg, n, tr
			return i
		}
	}
	c.cfgs = append(c.cfgs, cfg)
	c.nodes = append(c.nodes, n)
	c.trans = append(c.trans, tr)
	return len(c.nodes) - 1
}

// Join starts a new node, adds it as a voter through the leader and returns
// its index.
func (c *Cluster) Join() int {
	c.t.Helper()
	return c.join(true)
}

// JoinNonvoter starts a new node, adds it as a non-voter (it receives the
// log but does not vote) through the leader and returns its index.
func (c *Cluster) JoinNonvoter() int {
	c.t.Helper()
	return c.join(false)
}

func (c *Cluster) join(voter bool) int {
	c.t.Helper()
	i := c.start(c.config(c.Size()))
	n := c.Node(i)
	CheckFor(c.t, Timeout, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if voter {
			return c.Leader().AddVoter(ctx, n.ID(), n.Addr())
		}
		return c.Leader().AddNonvoter(ctx, n.ID(), n.Addr())
	})
	return i
}

// Remove removes node i from the Raft configuration through whichever node
// leads (node i itself, if it leads: it steps down), then stops it.
func (c *Cluster) Remove(i int) {
	c.t.Helper()
	id := c.ID(i)
	CheckFor(c.t, Timeout, 10*time.Millisecond, func() error {
		l := c.LeaderNow()
		if l == nil {
			return errNoLeader
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := l.RemoveServer(ctx, id)
		if errors.Is(err, raft.ErrUnknownMember) {
			return nil // an earlier attempt went through
		}
		return err
	})
	c.Stop(i)
}

// Size is the number of nodes ever started, running or not.
func (c *Cluster) Size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cfgs)
}

// ID is node i's Raft id.
func (c *Cluster) ID(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfgs[i].ID
}

// Addr is node i's Raft address (kept across restarts).
func (c *Cluster) Addr(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfgs[i].BindAddr
}

// Index returns the index of the node with Raft id id, or -1.
func (c *Cluster) Index(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, cfg := range c.cfgs {
		if cfg.ID == id {
			return i
		}
	}
	return -1
}

func (c *Cluster) ids(idx []int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = c.cfgs[i].ID
	}
	return out
}

func (c *Cluster) allIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.cfgs))
	for i, cfg := range c.cfgs {
		out[i] = cfg.ID
	}
	return out
}

// Node returns node i (nil while it is stopped).
func (c *Cluster) Node(i int) *raft.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Running returns the nodes that are not stopped.
func (c *Cluster) Running() []*raft.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*raft.Node
	for _, n := range c.nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// Leader waits until exactly one running node is the leader and returns it.
func (c *Cluster) Leader() *raft.Node {
	c.t.Helper()
	var leader *raft.Node
	CheckFor(c.t, Timeout, 10*time.Millisecond, func() error {
		leader = nil
		for _, n := range c.Running() {
			if n.IsLeader() {
				if leader != nil {
					return fmt.Errorf("two leaders: %s and %s", leader.ID(), n.ID())
				}
				leader = n
			}
		}
		if leader == nil {
			return errors.New("no leader")
		}
		return nil
	})
	return leader
}

// LeaderNow returns the running node that believes it leads in the highest
// term, or nil when none does. It does not wait; during a partition a
// deposed leader may still believe it leads for up to its lease timeout.
func (c *Cluster) LeaderNow() *raft.Node {
	var best *raft.Node
	var bestTerm uint64
	for _, n := range c.Running() {
		if !n.IsLeader() {
			continue
		}
		term, _ := strconv.ParseUint(n.Stats()["term"], 10, 64)
		if best == nil || term > bestTerm {
			best, bestTerm = n, term
		}
	}
	return best
}

// LeaderIndex waits for a single leader like Leader and returns its index.
func (c *Cluster) LeaderIndex() int {
	c.t.Helper()
	return c.Index(c.Leader().ID())
}

// errNoLeader is TryPropose's attempt error while no node leads.
var errNoLeader = errors.New("rafttest: no leader")

// TryPropose proposes cmd through whichever node leads, retrying every
// failed attempt — not leader, leadership lost, timeout, node closed, no
// leader — with the same request id until ctx ends. A command without a
// request id gets a unique one first, so a retried attempt whose first try
// did commit is answered with the first result instead of being applied
// again. It returns the Result of the attempt that got one, or ctx's error
// joined with the last attempt's.
//
// It never fails the test and may be called from any goroutine.
func (c *Cluster) TryPropose(ctx context.Context, cmd *raftpb.Command) (raft.Result, error) {
	if cmd.GetRequestId() == "" {
		cmd = proto.Clone(cmd).(*raftpb.Command)
		cmd.RequestId = c.NewRequestID()
	}
	for {
		var err error
		if n := c.LeaderNow(); n == nil {
			err = errNoLeader
		} else {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			var res raft.Result
			res, err = n.Propose(actx, cmd)
			cancel()
			if err == nil {
				return res, nil
			}
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return raft.Result{}, fmt.Errorf("rafttest: propose: %w (last attempt: %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// NewRequestID returns a request id unique in this process.
func (c *Cluster) NewRequestID() string {
	return fmt.Sprintf("rafttest-%d-%d", time.Now().UnixNano(), c.reqID.Add(1))
}

// Propose proposes cmd like TryPropose and returns its Result, failing the
// test if no attempt succeeds within Timeout.
func (c *Cluster) Propose(cmd *raftpb.Command) raft.Result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	res, err := c.TryPropose(ctx, cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

// WaitApplied waits until every running node has applied index.
func (c *Cluster) WaitApplied(index uint64) {
	c.t.Helper()
	CheckFor(c.t, Timeout, 10*time.Millisecond, func() error {
		for _, n := range c.Running() {
			if got := n.State().AppliedIndex(); got < index {
				return fmt.Errorf("%s applied %d, want %d", n.ID(), got, index)
			}
		}
		return nil
	})
}

// CheckConverged waits until every running node has applied the same index
// and holds the same records.
func (c *Cluster) CheckConverged() {
	c.t.Helper()
	CheckFor(c.t, Timeout, 10*time.Millisecond, c.converged)
}

func (c *Cluster) converged() error {
	nodes := c.Running()
	if len(nodes) == 0 {
		return errors.New("no node is running")
	}
	want, wantIdx := ViewDump(nodes[0].State()), nodes[0].State().AppliedIndex()
	for _, n := range nodes[1:] {
		if idx := n.State().AppliedIndex(); idx != wantIdx {
			return fmt.Errorf("%s applied %d, %s applied %d", n.ID(), idx, nodes[0].ID(), wantIdx)
		}
		if got := ViewDump(n.State()); got != want {
			return fmt.Errorf("%s and %s hold different records at index %d", n.ID(), nodes[0].ID(), wantIdx)
		}
	}
	return nil
}

// CheckInvariants is the end-of-test check, to call once the network is
// healed: it waits until every running node has applied the same index
// and holds the same records, then fails the test if any request id took
// effect twice on a node (at two log indices), or if two nodes applied
// different commands at one index or one request id at different indices.
func (c *Cluster) CheckInvariants() {
	c.t.Helper()
	c.CheckConverged()
	if err := c.effects.check(); err != nil {
		c.t.Fatal(err)
	}
}

// Effective reports the log index at which the command with request id rid
// took effect on node i, if that node has applied it.
func (c *Cluster) Effective(i int, rid string) (uint64, bool) {
	return c.effects.effective(c.ID(i), rid)
}

// Partition isolates the nodes idx from the rest: every link between a node
// in idx and one outside it is cut in both directions and its connections
// closed. It replaces any previous partition.
func (c *Cluster) Partition(idx ...int) {
	c.Net.Partition(c.allIDs(), c.ids(idx)...)
}

// Heal removes the partition; delays stay.
func (c *Cluster) Heal() { c.Net.Heal() }

// Delay delays every byte sent from node from to node to by d (one way).
func (c *Cluster) Delay(from, to int, d time.Duration) {
	c.Net.Delay(c.ID(from), c.ID(to), d)
}

// Kill stops node i hard: its links are cut first, so that nothing more
// leaves it, then Raft is shut down without leaving the cluster or handing
// over leadership. Restart brings it back on the same data directory.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	c.Net.SetDown(c.ID(i), true)
	c.stop(i)
}

// Stop closes node i (a clean shutdown; it stays a member).
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	c.stop(i)
}

func (c *Cluster) stop(i int) {
	c.t.Helper()
	c.mu.Lock()
	n, tr, id := c.nodes[i], c.trans[i], c.cfgs[i].ID
	c.nodes[i], c.trans[i] = nil, nil
	c.mu.Unlock()
	if n == nil {
		return
	}
	if err := n.Close(); err != nil {
		c.t.Fatalf("close %s: %v", id, err)
	}
	if err := tr.Close(); err != nil {
		c.t.Fatalf("close %s transport: %v", id, err)
	}
}

// Restart stops node i if it runs and opens it again on the same data
// directory and address, with its links up.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Stop(i)
	c.Net.SetDown(c.ID(i), false)
	c.mu.Lock()
	cfg := c.cfgs[i]
	c.mu.Unlock()
	c.start(cfg)
}

// Close stops every node.
func (c *Cluster) Close() {
	c.mu.Lock()
	nodes, trans := c.nodes, c.trans
	c.nodes, c.trans = make([]*raft.Node, len(nodes)), make([]*hraft.NetworkTransport, len(trans))
	c.mu.Unlock()
	for i, n := range nodes {
		if n != nil {
			_ = n.Close()
			_ = trans[i].Close()
		}
	}
}

// ViewDump renders every record of a State (deterministic protobuf, in the
// view's order) to compare replicas.
func ViewDump(s *raft.State) string {
	var b strings.Builder
	enc := func(m proto.Message) string {
		v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return "!" + err.Error()
		}
		return fmt.Sprintf("%x", v)
	}
	for _, tn := range s.Tenants() {
		fmt.Fprintf(&b, "tenant %s\n", enc(tn))
		for _, c := range s.Clients(tn.Id) {
			fmt.Fprintf(&b, " client %s\n", enc(c))
		}
		for _, k := range s.Keys(tn.Id) {
			fmt.Fprintf(&b, " key %s\n", enc(k))
		}
		for _, r := range s.Revocations(tn.Id) {
			fmt.Fprintf(&b, " rev %s\n", enc(r))
		}
	}
	return b.String()
}
