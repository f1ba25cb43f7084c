// Package nodetest starts real tally nodes — a one-voter Raft cluster on
// bbolt, embedded NATS and the HTTP server, all on loopback with ephemeral
// ports — for tests, benchmarks and tools.
//
// StartCluster starts several such nodes in one process as one Raft group:
// real TCP with mutual TLS between them (a CA generated per cluster), node 0
// bootstrapping and the others joining it, fast Raft timeouts (FastRaft).
//
//	c := nodetest.StartCluster(t, 3)
//	f := c.Follower()
//	id, secret := f.CreateClient(t, req) // forwarded to the leader
//	c.Stop(c.LeaderIndex())              // a new leader is elected
//	c.Restart(i)                         // same data directory and ports
//	c.WaitConverged()
package nodetest

import (
	"context"
	"testing"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/localcluster"
)

// The node starter lives in package localcluster (the tally binary's drill
// uses it too); these names keep the tests' vocabulary.
type (
	// Option changes the node's configuration before it starts.
	Option = localcluster.Option
	// Node is a running node and an admin client for it.
	Node = localcluster.Node
)

// WithConfig applies f to the configuration.
func WithConfig(f func(*node.Config)) Option { return localcluster.WithConfig(f) }

// StartDir starts a node on dir (created if missing) and waits until it is
// ready. Close stops it.
func StartDir(ctx context.Context, dir string, opts ...Option) (*Node, error) {
	return localcluster.StartDir(ctx, dir, opts...)
}

// FastRaft sets Raft timeouts short enough for quick elections in tests
// (localcluster.FastRaft).
func FastRaft(c *node.Config) { localcluster.FastRaft(c) }

// Start starts a node in a temporary directory; it is stopped when the test
// ends.
func Start(tb testing.TB, opts ...Option) *Node {
	tb.Helper()
	n, err := StartDir(context.Background(), tb.TempDir(), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Errorf("closing node: %v", err)
		}
	})
	return n
}
