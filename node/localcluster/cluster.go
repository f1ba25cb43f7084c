package localcluster

// The cluster `tally drill` starts for itself: real tally nodes in this
// process (mutual TLS between them, a CA generated per run), whose Raft
// traffic runs through faultnet so that a node can be killed (every link
// cut, then the node stopped) or the cluster partitioned.

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

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/faultnet"
)

// Config describes the cluster to start.
type Config struct {
	// Dir holds the CA and one data directory per node.
	Dir string
	// Nodes is the number of voters; node i is named "node<i>" and node0
	// bootstraps, the others join it.
	Nodes int
	// Regions are the region labels, assigned to the nodes in turn.
	Regions []string
	// Profile is "fast" (FastRaft) or a node Raft profile ("lan", "wan").
	Profile string
	// MaxStale is the nodes' staleness bound.
	MaxStale time.Duration
	// NodeOptions are applied to every node's configuration after the
	// cluster's own settings (rate limits, trusted proxies, SIEM file…).
	NodeOptions []Option
	// RateLimitsOff turns the nodes' rate limits off (node.Config.RateLimits):
	// a drill's or a load test's requests come from one client on one
	// address, and a fast machine sends more than a client's budget.
	RateLimitsOff bool
}

// Cluster is a running in-process cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	// Net carries every node's Raft traffic: partition or heal it.
	Net *faultnet.Network

	cfg        Config
	caDir      string
	kek        []byte
	adminToken string

	mu      sync.Mutex
	nodes   []*Node // nil while stopped
	dirs    []string
	http    []string // remembered addresses, for a restart in place
	cluster []string
	closing []chan error // a stop in progress, per node
}

// Start starts cfg.Nodes nodes and waits until they have converged (one
// leader, every node caught up, none stale). Close stops them.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	c := &Cluster{cfg: cfg, Net: faultnet.NewNetwork(), caDir: filepath.Join(cfg.Dir, "ca"), kek: make([]byte, 32)}
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
	for i := range cfg.Nodes {
		dir := filepath.Join(cfg.Dir, c.ID(i))
		if err := raft.IssueNodeCertDir(c.caDir, filepath.Join(dir, "tls"), raft.CertOptions{NodeID: c.ID(i), IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
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
	if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ID is node i's Raft id.
func (c *Cluster) ID(i int) string { return fmt.Sprintf("node%d", i) }

// IDs are every node's id.
func (c *Cluster) IDs() []string {
	out := make([]string, c.cfg.Nodes)
	for i := range out {
		out[i] = c.ID(i)
	}
	return out
}

// Region is node i's region label.
func (c *Cluster) Region(i int) string { return c.cfg.Regions[i%len(c.cfg.Regions)] }

// start starts node i on its directory and remembered addresses.
func (c *Cluster) start(ctx context.Context, i int) error {
	c.mu.Lock()
	dir, httpAddr, clusterAddr := c.dirs[i], c.http[i], c.cluster[i]
	join, issuer := "", ""
	if i > 0 {
		join, issuer = c.cluster[0], "http://"+c.http[0]
	}
	c.mu.Unlock()
	id := c.ID(i)
	opts := []Option{FastRaft, func(cfg *node.Config) {
		cfg.NodeID = id
		cfg.Region = c.Region(i)
		cfg.KEK = c.kek
		cfg.AdminToken = c.adminToken
		cfg.TLSDir = filepath.Join(dir, "tls")
		cfg.Listen = httpAddr
		cfg.RaftBind = clusterAddr
		cfg.MaxStale = c.cfg.MaxStale
		cfg.RateLimits.Off = c.cfg.RateLimitsOff
		if i > 0 {
			// One issuer for the cluster, as behind a load balancer: a
			// token any node issued is valid on every node.
			cfg.Join, cfg.Issuer = join, issuer
		}
		prev := cfg.RaftTuning
		if c.cfg.Profile != "fast" {
			cfg.RaftProfile = c.cfg.Profile
			prev = nil
			cfg.WriteTimeout = node.DefaultConfig().WriteTimeout
		}
		cfg.RaftTuning = func(rc *raft.Config) {
			if prev != nil {
				prev(rc)
			}
			rc.StreamLayer = c.Net.Wrap(rc.ID, rc.StreamLayer)
		}
	}}
	opts = append(opts, c.cfg.NodeOptions...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := StartDir(ctx, dir, opts...)
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
		if err := Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// Sleep waits for d or until ctx ends, whichever comes first, and returns
// ctx's error in the second case.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Node returns node i, or nil while it is stopped.
func (c *Cluster) Node(i int) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Leader returns the index of the one running leader, waiting for it.
func (c *Cluster) Leader(ctx context.Context, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		leader, two := -1, false
		for i := range c.cfg.Nodes {
			if n := c.Node(i); n != nil && n.Raft().IsLeader() {
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
		if err := Sleep(ctx, 10*time.Millisecond); err != nil {
			return -1, err
		}
	}
}

// WaitConverged waits until every running node has applied what the
// leader applied, holds the default tenant and is not stale.
func (c *Cluster) WaitConverged(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := c.converged()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not converged after %v: %w", timeout, err)
		}
		if err := Sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

func (c *Cluster) converged() error {
	var want uint64
	found := false
	for i := range c.cfg.Nodes {
		if n := c.Node(i); n != nil && n.Raft().IsLeader() {
			st := n.Raft().Status()
			if st.AppliedIndex < st.CommitIndex {
				return fmt.Errorf("leader %s applied %d of %d", c.ID(i), st.AppliedIndex, st.CommitIndex)
			}
			want, found = st.StateIndex, true
		}
	}
	if !found {
		return errors.New("no leader")
	}
	for i := range c.cfg.Nodes {
		n := c.Node(i)
		if n == nil {
			continue
		}
		if got := n.Raft().State().AppliedIndex(); got < want {
			return fmt.Errorf("%s applied %d, the leader %d", c.ID(i), got, want)
		}
		if _, ok := n.Raft().State().Tenant(node.DefaultTenant); !ok {
			return fmt.Errorf("%s has no default tenant", c.ID(i))
		}
		if err := n.Stale(); err != nil {
			return fmt.Errorf("%s: %w", c.ID(i), err)
		}
	}
	return nil
}

// Kill crashes node i as far as the cluster can tell: every Raft link is
// cut at once (no leadership hand-off, no goodbye), then the node's
// servers stop in the background. Restart waits for that stop.
func (c *Cluster) Kill(i int) {
	c.Net.SetDown(c.ID(i), true)
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

// Restart starts killed node i again on its data directory and addresses.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	c.mu.Lock()
	done := c.closing[i]
	c.closing[i] = nil
	c.mu.Unlock()
	if done != nil {
		<-done // a crash has no clean exit to report
	}
	c.Net.SetDown(c.ID(i), false)
	return c.start(ctx, i)
}

// Config is the configuration the cluster was started with.
func (c *Cluster) Config() Config { return c.cfg }

// AdminToken is the admin credential every node accepts.
func (c *Cluster) AdminToken() string { return c.adminToken }

// Len is the number of nodes.
func (c *Cluster) Len() int { return c.cfg.Nodes }

// Close stops every node (waiting for kills in progress).
func (c *Cluster) Close() {
	c.mu.Lock()
	nodes := append([]*Node(nil), c.nodes...)
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
