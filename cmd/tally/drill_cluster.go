package main

// The cluster a drill starts for itself is a localcluster.Cluster: real
// tally nodes in this process whose Raft traffic runs through a
// fault-injecting network.

import (
	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/localcluster"
)

// localDrillNodes lists the nodes' default-tenant issuers.
func localDrillNodes(c *localcluster.Cluster) []loadtest.DrillNode {
	out := make([]loadtest.DrillNode, c.Len())
	for i := range out {
		n := c.Node(i)
		// The node's own address: the issuer URL is node0's.
		out[i] = loadtest.DrillNode{ID: c.ID(i), Issuer: "http://" + n.Addr() + "/t/" + node.DefaultTenant}
	}
	return out
}
