package nodetest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
)

// Timeout bounds every wait of the cluster helpers.
const Timeout = 30 * time.Second

// CheckFor calls fn every `every` until it returns nil; after timeout, but
// never before Timeout, it fails tb with fn's last error (rafttest.CheckFor,
// for node-level tests: a budget bounds a hung test, it is no speed target).
func CheckFor(tb testing.TB, timeout, every time.Duration, fn func() error) {
	tb.Helper()
	rafttest.CheckFor(tb, max(timeout, Timeout), every, fn)
}

// ClusterOption adjusts how StartCluster starts its nodes.
type ClusterOption func(*clusterSpec)

type clusterSpec struct {
	all      []Option
	perNode  map[int][]Option
	regions  []string
	nonvoter map[int]bool
	nats     bool
}

// WithNodeOptions applies opts to every node's configuration (after the
// cluster's own settings).
func WithNodeOptions(opts ...Option) ClusterOption {
	return func(s *clusterSpec) { s.all = append(s.all, opts...) }
}

// WithNode applies opts to node i only (after WithNodeOptions).
func WithNode(i int, opts ...Option) ClusterOption {
	return func(s *clusterSpec) { s.perNode[i] = append(s.perNode[i], opts...) }
}

// WithRegions labels node i with regions[i % len(regions)]. The default is
// two regions, "east" and "west", alternating.
func WithRegions(regions ...string) ClusterOption {
	return func(s *clusterSpec) { s.regions = regions }
}

// WithNATSCluster makes the nodes' embedded NATS servers one NATS cluster,
// as make cluster runs them: each server listens on an ephemeral loopback
// port for clients and on a route port chosen when its node is added, and
// routes to every other node's route port. Another process may take a
// route port before the node binds it: the node then starts on a newly
// chosen one (the other servers learn it by gossip). A restarted node
// rebinds its old ports.
func WithNATSCluster() ClusterOption {
	return func(s *clusterSpec) { s.nats = true }
}

// WithNonvoter makes node i join as a non-voter (i > 0).
func WithNonvoter(i int) ClusterOption {
	return func(s *clusterSpec) { s.nonvoter[i] = true }
}

// Cluster is a group of real tally nodes in one process: each with its own
// data directory, HTTP server, embedded NATS and cluster port (Raft and the
// internal service over mutual TLS with a generated CA), all on loopback
// with ephemeral ports. Node 0 bootstraps; the others join it. The nodes
// share one key-encryption key and one admin credential. Methods are safe
// for use from the test goroutine and from goroutines it starts.
type Cluster struct {
	tb         testing.TB
	caDir      string
	kek        []byte
	adminToken string
	joinAddr   string

	mu    sync.Mutex
	nodes []*Node // nil while stopped
	opts  [][]Option
	dirs  []string
	addrs []restartAddrs
	nats  bool
	// natsRoutes are the route ports chosen for the first nodes of a NATS
	// cluster, so that the first server starts knowing the others' routes
	// (JetStream clustering refuses to start without).
	natsRoutes []string
}

// restartAddrs are the addresses a node rebinds when restarted; natsClient
// and natsRoute are "" unless the cluster runs a NATS cluster. A node's
// NATS route port is chosen when it is added, since JetStream clustering
// wants every server's routes configured at start.
type restartAddrs struct {
	http, cluster, natsClient, natsRoute string
	started                              bool // the node has run once
}

// StartCluster starts n nodes, waits until each is ready (a member that
// has heard from the leader and has the default tenant), and stops them when
// the test ends.
func StartCluster(tb testing.TB, n int, opts ...ClusterOption) *Cluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("nodetest: StartCluster(%d)", n)
	}
	spec := &clusterSpec{perNode: map[int][]Option{}, regions: []string{"east", "west"}, nonvoter: map[int]bool{}}
	for _, o := range opts {
		o(spec)
	}
	base := tb.TempDir()
	c := &Cluster{tb: tb, caDir: filepath.Join(base, "ca"), kek: randomBytes(tb, 32), adminToken: hex.EncodeToString(randomBytes(tb, 24)), nats: spec.nats}
	if err := raft.InitCADir(c.caDir, time.Time{}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	if c.nats {
		for range n {
			c.natsRoutes = append(c.natsRoutes, freeLoopbackAddr(tb))
		}
	}
	for i := range n {
		nodeOpts := []Option{FastRaft}
		nodeOpts = append(nodeOpts, spec.all...)
		region := spec.regions[i%len(spec.regions)]
		nonvoter := spec.nonvoter[i] && i > 0
		nodeOpts = append(nodeOpts, func(cfg *node.Config) {
			cfg.Region = region
			cfg.Nonvoter = nonvoter
		})
		nodeOpts = append(nodeOpts, spec.perNode[i]...)
		c.add(filepath.Join(base, fmt.Sprintf("node%d", i)), nodeOpts)
	}
	c.WaitConverged()
	return c
}

func randomBytes(tb testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// Add starts one more node that joins the cluster (a non-voter if the
// options set Nonvoter) and returns its index.
func (c *Cluster) Add(opts ...Option) int {
	c.tb.Helper()
	c.mu.Lock()
	i := len(c.nodes)
	c.mu.Unlock()
	all := append([]Option{FastRaft}, opts...)
	return c.add(filepath.Join(c.tb.TempDir(), fmt.Sprintf("node%d", i)), all)
}

func (c *Cluster) add(dir string, opts []Option) int {
	c.tb.Helper()
	c.mu.Lock()
	i := len(c.nodes)
	id := fmt.Sprintf("node%d", i)
	c.nodes = append(c.nodes, nil)
	c.opts = append(c.opts, opts)
	c.dirs = append(c.dirs, dir)
	addrs := restartAddrs{http: "127.0.0.1:0", cluster: "127.0.0.1:0"}
	if c.nats && i < len(c.natsRoutes) {
		addrs.natsRoute = c.natsRoutes[i]
	} else if c.nats {
		addrs.natsRoute = freeLoopbackAddr(c.tb)
	}
	c.addrs = append(c.addrs, addrs)
	c.mu.Unlock()
	if err := raft.IssueNodeCertDir(c.caDir, filepath.Join(dir, "tls"), raft.CertOptions{NodeID: id, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		c.tb.Fatal(err)
	}
	c.startNode(i)
	return i
}

// startNode starts node i with its options on its data directory and
// remembered addresses.
func (c *Cluster) startNode(i int) *Node {
	c.tb.Helper()
	id := fmt.Sprintf("node%d", i)
	var n *Node
	var err error
	deadline := time.Now().Add(Timeout)
	for {
		n, err = StartDir(context.Background(), c.dirs[i], c.startOptions(i)...)
		if err == nil || time.Now().After(deadline) || !isAddrInUse(err) {
			break
		}
		c.mu.Lock()
		fresh := c.nats && !c.addrs[i].started
		c.mu.Unlock()
		if fresh {
			// The NATS route port was chosen before binding it, and
			// another process took it in between: choose again.
			port := freeLoopbackAddr(c.tb)
			c.mu.Lock()
			c.addrs[i].natsRoute = port
			c.mu.Unlock()
			continue
		}
		// A restarted node rebinds its old ports; the kernel may hold them
		// briefly.
		<-time.After(50 * time.Millisecond)
	}
	if err != nil {
		c.tb.Fatalf("nodetest: starting %s: %v", id, err)
	}
	c.mu.Lock()
	c.nodes[i] = n
	c.addrs[i] = restartAddrs{http: n.Addr(), cluster: n.ClusterAddr(), started: true}
	if c.nats {
		c.addrs[i].natsClient, c.addrs[i].natsRoute = n.NATSClientAddr(), n.NATSClusterAddr()
	}
	if i == 0 {
		c.joinAddr = n.ClusterAddr()
	}
	c.mu.Unlock()
	return n
}

// startOptions are node i's options for its next start: the cluster's
// settings and remembered addresses, then the node's own options.
func (c *Cluster) startOptions(i int) []Option {
	c.mu.Lock()
	dir, addrs, opts, join := c.dirs[i], c.addrs[i], c.opts[i], c.joinAddr
	var routes []string
	for j := range max(len(c.addrs), len(c.natsRoutes)) {
		route := ""
		if j < len(c.addrs) {
			route = c.addrs[j].natsRoute
		} else {
			route = c.natsRoutes[j] // a node StartCluster has yet to add
		}
		if j != i && route != "" {
			routes = append(routes, route)
		}
	}
	c.mu.Unlock()
	return append([]Option{func(cfg *node.Config) {
		cfg.NodeID = fmt.Sprintf("node%d", i)
		cfg.KEK = c.kek
		cfg.AdminToken = c.adminToken
		cfg.TLSDir = filepath.Join(dir, "tls")
		cfg.Listen = addrs.http
		cfg.RaftBind = addrs.cluster
		if i > 0 {
			cfg.Join = join
		}
		if c.nats {
			cfg.NATSListen = cmp.Or(addrs.natsClient, "127.0.0.1:0")
			cfg.NATSClusterListen = addrs.natsRoute
			cfg.NATSRoutes = routes
		}
	}}, opts...)
}

// freeLoopbackAddr chooses a free loopback port (listen, then close). Another
// process may take it before the caller binds it: callers retry.
func freeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func isAddrInUse(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "listen" || errors.Is(err, syscall.EADDRINUSE)
}

// Len is the number of nodes, running or stopped.
func (c *Cluster) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.nodes)
}

// Node returns node i, or nil while it is stopped.
func (c *Cluster) Node(i int) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Running returns the indexes of the running nodes.
func (c *Cluster) Running() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i, n := range c.nodes {
		if n != nil {
			out = append(out, i)
		}
	}
	return out
}

// AdminToken is the admin credential every node accepts.
func (c *Cluster) AdminToken() string { return c.adminToken }

// CADir is the directory of the cluster CA (ca.pem, ca-key.pem), for
// issuing more node certificates.
func (c *Cluster) CADir() string { return c.caDir }

// KEK is the key-encryption key the nodes share.
func (c *Cluster) KEK() []byte { return c.kek }

// LeaderIndex waits until exactly one running node is the leader and
// returns its index.
func (c *Cluster) LeaderIndex() int {
	c.tb.Helper()
	leader := -1
	CheckFor(c.tb, Timeout, 10*time.Millisecond, func() error {
		leader = -1
		for _, i := range c.Running() {
			n := c.Node(i)
			if n != nil && n.Raft().IsLeader() {
				if leader >= 0 {
					return fmt.Errorf("two leaders: node%d and node%d", leader, i)
				}
				leader = i
			}
		}
		if leader < 0 {
			return errors.New("no leader")
		}
		return nil
	})
	return leader
}

// Leader waits until exactly one running node is the leader and returns it.
func (c *Cluster) Leader() *Node {
	c.tb.Helper()
	return c.Node(c.LeaderIndex())
}

// Follower returns a running node that is not the leader (after waiting
// for a leader).
func (c *Cluster) Follower() *Node {
	c.tb.Helper()
	l := c.LeaderIndex()
	for _, i := range c.Running() {
		if i != l {
			return c.Node(i)
		}
	}
	c.tb.Fatal("nodetest: no running follower")
	return nil
}

// Stop stops node i (a clean shutdown, like SIGTERM); its data directory
// and addresses are kept for Restart.
func (c *Cluster) Stop(i int) {
	c.tb.Helper()
	c.mu.Lock()
	n := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	if n == nil {
		return
	}
	if err := n.Close(); err != nil {
		c.tb.Errorf("nodetest: stopping node%d: %v", i, err)
	}
}

// Restart stops node i if it runs and starts it again on the same data
// directory and addresses, waiting until it is ready.
func (c *Cluster) Restart(i int) *Node {
	c.tb.Helper()
	c.Stop(i)
	return c.startNode(i)
}

// WaitApplied waits until every running node has applied index.
func (c *Cluster) WaitApplied(index uint64) {
	c.tb.Helper()
	CheckFor(c.tb, Timeout, 5*time.Millisecond, func() error {
		for _, i := range c.Running() {
			if n := c.Node(i); n != nil {
				if got := n.Raft().State().AppliedIndex(); got < index {
					return fmt.Errorf("node%d applied %d, want %d", i, got, index)
				}
			}
		}
		return nil
	})
}

// WaitConverged waits until every running node is a member that has heard
// from the leader recently, has applied every command the leader has
// applied, and holds the default tenant.
func (c *Cluster) WaitConverged() {
	c.tb.Helper()
	CheckFor(c.tb, Timeout, 10*time.Millisecond, func() error {
		var want uint64
		found := false
		for _, i := range c.Running() {
			if n := c.Node(i); n != nil && n.Raft().IsLeader() {
				st := n.Raft().Status()
				if st.AppliedIndex < st.CommitIndex {
					return fmt.Errorf("leader node%d applied %d of %d", i, st.AppliedIndex, st.CommitIndex)
				}
				want, found = st.StateIndex, true
			}
		}
		if !found {
			return errors.New("no leader")
		}
		for _, i := range c.Running() {
			n := c.Node(i)
			if n == nil {
				continue
			}
			if got := n.Raft().State().AppliedIndex(); got < want {
				return fmt.Errorf("node%d applied command %d, the leader %d", i, got, want)
			}
			if _, ok := n.Raft().State().Tenant(node.DefaultTenant); !ok {
				return fmt.Errorf("node%d has no default tenant", i)
			}
			if err := n.Stale(); err != nil {
				return fmt.Errorf("node%d: %w", i, err)
			}
		}
		return nil
	})
}

// Close stops every node; it is idempotent.
func (c *Cluster) Close() {
	for i := range c.Len() {
		c.mu.Lock()
		n := c.nodes[i]
		c.nodes[i] = nil
		c.mu.Unlock()
		if n != nil {
			_ = n.Close()
		}
	}
}
