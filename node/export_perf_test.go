package node

import (
	"context"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// RaftForTest is the node's Raft node (the write-path figures propose
// through it directly to measure the raw commit rate of the same cluster).
func RaftForTest(n *Node) *raft.Node { return n.raft }

// ProposeForTest proposes cmd the way the node's own writes do (stamped,
// forwarded to the leader from a follower).
func ProposeForTest(ctx context.Context, n *Node, cmd *raftpb.Command) (raft.Result, error) {
	return n.rep.propose(ctx, cmd)
}
