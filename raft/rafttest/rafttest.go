package rafttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Timeout bounds every wait of this package.
const Timeout = 20 * time.Second

// CheckFor calls fn every `every` until it returns nil; after timeout it
// fails t with fn's last error.
func CheckFor(t testing.TB, timeout, every time.Duration, fn func() error) {
	t.Helper()
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

// Cluster is a group of real nodes on loopback TCP. Node 0 bootstraps and
// the others join it with AddVoter.
type Cluster struct {
	t     testing.TB
	opts  []func(*raft.Config)
	cfgs  []raft.Config
	nodes []*raft.Node // nil while stopped
	reqID atomic.Uint64
}

// NewCluster starts n voters, waits until all of them are members, and
// closes them when the test ends. opts adjust every node's Config.
func NewCluster(t testing.TB, n int, opts ...func(*raft.Config)) *Cluster {
	t.Helper()
	c := &Cluster{t: t, opts: opts}
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

func (c *Cluster) start(cfg raft.Config) int {
	c.t.Helper()
	n, err := raft.Open(cfg)
	if err != nil {
		c.t.Fatalf("open %s: %v", cfg.ID, err)
	}
	for i := range c.cfgs {
		if c.cfgs[i].ID == cfg.ID {
			c.cfgs[i], c.nodes[i] = cfg, n
			return i
		}
	}
	c.cfgs = append(c.cfgs, cfg)
	c.nodes = append(c.nodes, n)
	return len(c.nodes) - 1
}

// Join starts a new node, adds it as a voter through the leader and returns
// its index.
func (c *Cluster) Join() int {
	c.t.Helper()
	i := c.start(c.config(len(c.cfgs)))
	n := c.nodes[i]
	CheckFor(c.t, Timeout, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.Leader().AddVoter(ctx, n.ID(), n.Addr())
	})
	return i
}

// Node returns node i (nil while it is stopped).
func (c *Cluster) Node(i int) *raft.Node { return c.nodes[i] }

// Running returns the nodes that are not stopped.
func (c *Cluster) Running() []*raft.Node {
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

// Propose proposes cmd through the current leader, retrying while
// leadership moves, and returns its Result. A command without a request id
// gets a unique one so that retries are safe.
func (c *Cluster) Propose(cmd *raftpb.Command) raft.Result {
	c.t.Helper()
	if cmd.GetRequestId() == "" {
		cmd = proto.Clone(cmd).(*raftpb.Command)
		cmd.RequestId = fmt.Sprintf("rafttest-%d-%d", time.Now().UnixNano(), c.reqID.Add(1))
	}
	var res raft.Result
	CheckFor(c.t, Timeout, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		res, err = c.Leader().Propose(ctx, cmd)
		return err
	})
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
	CheckFor(c.t, Timeout, 10*time.Millisecond, func() error {
		nodes := c.Running()
		want, wantIdx := ViewDump(nodes[0].State()), nodes[0].State().AppliedIndex()
		for _, n := range nodes[1:] {
			if idx := n.State().AppliedIndex(); idx != wantIdx {
				return fmt.Errorf("%s applied %d, %s applied %d", n.ID(), idx, nodes[0].ID(), wantIdx)
			}
			if got := ViewDump(n.State()); got != want {
				return fmt.Errorf("%s and %s hold different records", n.ID(), nodes[0].ID())
			}
		}
		return nil
	})
}

// Stop closes node i.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if c.nodes[i] == nil {
		return
	}
	if err := c.nodes[i].Close(); err != nil {
		c.t.Fatalf("close %s: %v", c.cfgs[i].ID, err)
	}
	c.cfgs[i].BindAddr = c.nodes[i].Addr() // restart on the same address
	c.nodes[i] = nil
}

// Restart stops node i if it runs and opens it again on the same data
// directory and address.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Stop(i)
	c.start(c.cfgs[i])
}

// Close stops every node.
func (c *Cluster) Close() {
	for i, n := range c.nodes {
		if n != nil {
			_ = n.Close()
			c.nodes[i] = nil
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
