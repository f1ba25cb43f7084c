// Package faultnet is a fault-injecting network for hashicorp/raft stream
// layers: per directed link it cuts connections (a partition, a node
// marked down) or delays bytes, while the nodes themselves run unmodified.
// The Raft cluster tests (package rafttest) and the in-process clusters
// that `tally drill` starts (package localcluster) run their Raft traffic
// through it.
package faultnet
