package node

import "github.com/tallyauth/tally/raft"

// RaftForTest is the node's Raft node (the write-path figures propose
// through it directly to measure the raw commit rate of the same cluster).
func RaftForTest(n *Node) *raft.Node { return n.raft }
