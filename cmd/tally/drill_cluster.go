package main

// The cluster a drill starts for itself: real tally nodes in this process
// (mutual TLS between them, a CA generated per run), whose Raft traffic
// runs through rafttest's fault-injecting network so that the drill can
// kill a node (cut every link, then stop it) or partition the cluster.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
)

// localClusterConfig describes the cluster to start.
type localClusterConfig struct {
	dir      string
	nodes    int
	regions  []string
	profile  string // "fast", or a node Raft profile ("lan", "wan")
	maxStale time.Duration
}

// localCluster is a running in-process cluster. Its methods are safe for
// concurrent use.
type localCluster struct {
	cfg        localClusterConfig
	nw         *rafttest.Network
	caDir      string
	kek        []byte
	adminToken string

	mu      sync.Mutex
	nodes   []*nodetest.Node // nil while stopped
	dirs    []string
	http    []string // remembered addresses, for a restart in place
	cluster []string
	closing []chan error // a stop in progress, per node
}

func startLocalCluster(ctx context.Context, cfg localClusterConfig) (*localCluster, error) {
	c := &localCluster{cfg: cfg, nw: rafttest.NewNetwork(), caDir: filepath.Join(cfg.dir, "ca"), kek: make([]byte, 32)}
	tok := make([]byte, 24)
	if _, err := rand.Read(c.kek); err != nil {
		return nil, err
	}
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	c.adminToken = hex.EncodeToString(tok)
	if err := raft.InitCADir(c.caDir, time.Time{}); err != nil {
		return nil, err
	}
	for i := range cfg.nodes {
		dir := filepath.Join(cfg.dir, c.id(i))
		if err := raft.IssueNodeCertDir(c.caDir, filepath.Join(dir, "tls"), raft.CertOptions{NodeID: c.id(i), IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
			c.Close()
			return nil, err
		}
		c.mu.Lock()
		c.nodes = append(c.nodes, nil)
		c.dirs = append(c.dirs, dir)
		c.http = append(c.http, "127.0.0.1:0")
		c.cluster = append(c.cluster, "127.0.0.1:0")
		c.closing = append(c.closing, nil)
		c.mu.Unlock()
		if err := c.start(ctx, i); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.waitConverged(ctx, 30*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *localCluster) id(i int) string { return fmt.Sprintf("node%d", i) }

func (c *localCluster) ids() []string {
	out := make([]string, c.cfg.nodes)
	for i := range out {
		out[i] = c.id(i)
	}
	return out
}

func (c *localCluster) region(i int) string { return c.cfg.regions[i%len(c.cfg.regions)] }

// start starts node i on its directory and remembered addresses.
func (c *localCluster) start(ctx context.Context, i int) error {
	c.mu.Lock()
	dir, httpAddr, clusterAddr := c.dirs[i], c.http[i], c.cluster[i]
	join, issuer := "", ""
	if i > 0 {
		join, issuer = c.cluster[0], "http://"+c.http[0]
	}
	c.mu.Unlock()
	id := c.id(i)
	opts := []nodetest.Option{nodetest.FastRaft, func(cfg *node.Config) {
		cfg.NodeID = id
		cfg.Region = c.region(i)
		cfg.KEK = c.kek
		cfg.AdminToken = c.adminToken
		cfg.TLSDir = filepath.Join(dir, "tls")
		cfg.Listen = httpAddr
		cfg.RaftBind = clusterAddr
		cfg.MaxStale = c.cfg.maxStale
		if i > 0 {
			// One issuer for the cluster, as behind a load balancer: a
			// token any node issued is valid on every node.
			cfg.Join, cfg.Issuer = join, issuer
		}
		prev := cfg.RaftTuning
		if c.cfg.profile != "fast" {
			cfg.RaftProfile = c.cfg.profile
			prev = nil
			cfg.WriteTimeout = node.DefaultConfig().WriteTimeout
		}
		cfg.RaftTuning = func(rc *raft.Config) {
			if prev != nil {
				prev(rc)
			}
			rc.StreamLayer = c.nw.Wrap(rc.ID, rc.StreamLayer)
		}
	}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := nodetest.StartDir(ctx, dir, opts...)
		if err == nil {
			c.mu.Lock()
			c.nodes[i] = n
			c.http[i], c.cluster[i] = n.Addr(), n.ClusterAddr()
			c.mu.Unlock()
			return nil
		}
		// A restarted node rebinds its old ports; the kernel may hold
		// them briefly.
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "listen" || time.Now().After(deadline) {
			return fmt.Errorf("starting %s: %w", id, err)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// node returns node i, or nil while it is stopped.
func (c *localCluster) node(i int) *nodetest.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// leader returns the index of the one running leader, waiting for it.
func (c *localCluster) leader(ctx context.Context, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		leader, two := -1, false
		for i := range c.cfg.nodes {
			if n := c.node(i); n != nil && n.Raft().IsLeader() {
				two = two || leader >= 0
				leader = i
			}
		}
		if leader >= 0 && !two {
			return leader, nil
		}
		if time.Now().After(deadline) {
			return -1, errors.New("no single leader")
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return -1, err
		}
	}
}

// waitConverged waits until every running node has applied what the
// leader applied, holds the default tenant and is not stale.
func (c *localCluster) waitConverged(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := c.converged()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not converged after %v: %w", timeout, err)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

func (c *localCluster) converged() error {
	var want uint64
	found := false
	for i := range c.cfg.nodes {
		if n := c.node(i); n != nil && n.Raft().IsLeader() {
			st := n.Raft().Status()
			if st.AppliedIndex < st.CommitIndex {
				return fmt.Errorf("leader %s applied %d of %d", c.id(i), st.AppliedIndex, st.CommitIndex)
			}
			want, found = st.StateIndex, true
		}
	}
	if !found {
		return errors.New("no leader")
	}
	for i := range c.cfg.nodes {
		n := c.node(i)
		if n == nil {
			continue
		}
		if got := n.Raft().State().AppliedIndex(); got < want {
			return fmt.Errorf("%s applied %d, the leader %d", c.id(i), got, want)
		}
		if _, ok := n.Raft().State().Tenant(node.DefaultTenant); !ok {
			return fmt.Errorf("%s has no default tenant", c.id(i))
		}
		if err := n.Stale(); err != nil {
			return fmt.Errorf("%s: %w", c.id(i), err)
		}
	}
	return nil
}

// kill crashes node i as far as the cluster can tell: every Raft link is
// cut at once (no leadership hand-off, no goodbye), then the node's
// servers stop in the background. restart waits for that stop.
func (c *localCluster) kill(i int) {
	c.nw.SetDown(c.id(i), true)
	c.mu.Lock()
	n := c.nodes[i]
	c.nodes[i] = nil
	done := make(chan error, 1)
	c.closing[i] = done
	c.mu.Unlock()
	go func() {
		if n == nil {
			done <- nil
			return
		}
		done <- n.Close()
	}()
}

// restart starts killed node i again on its data directory and addresses.
func (c *localCluster) restart(ctx context.Context, i int) error {
	c.mu.Lock()
	done := c.closing[i]
	c.closing[i] = nil
	c.mu.Unlock()
	if done != nil {
		<-done // a crash has no clean exit to report
	}
	c.nw.SetDown(c.id(i), false)
	return c.start(ctx, i)
}

// drillNodes lists the nodes' default-tenant issuers.
func (c *localCluster) drillNodes() []loadtest.DrillNode {
	out := make([]loadtest.DrillNode, c.cfg.nodes)
	for i := range out {
		n := c.node(i)
		// The node's own address: the issuer URL is node0's.
		out[i] = loadtest.DrillNode{ID: c.id(i), Issuer: "http://" + n.Addr() + "/t/" + node.DefaultTenant}
	}
	return out
}

// Close stops every node (waiting for kills in progress).
func (c *localCluster) Close() {
	c.mu.Lock()
	nodes := append([]*nodetest.Node(nil), c.nodes...)
	closing := append([]chan error(nil), c.closing...)
	for i := range c.nodes {
		c.nodes[i] = nil
		c.closing[i] = nil
	}
	c.mu.Unlock()
	for _, done := range closing {
		if done != nil {
			<-done
		}
	}
	for _, n := range nodes {
		if n != nil {
			_ = n.Close()
		}
	}
}
