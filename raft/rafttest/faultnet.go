package rafttest

import "github.com/tallyauth/tally/raft/faultnet"

// The fault-injecting network lives in package faultnet (the tally binary
// uses it too); these names keep the cluster tests' vocabulary.
type (
	// Network is faultnet.Network.
	Network = faultnet.Network
	// Layer is faultnet.Layer.
	Layer = faultnet.Layer
)

// ErrLinkDown is faultnet.ErrLinkDown.
var ErrLinkDown = faultnet.ErrLinkDown

// NewNetwork returns a network with every link up and no delay.
func NewNetwork() *Network { return faultnet.NewNetwork() }
