// Package localcluster starts real tally nodes in this process — Raft on
// bbolt, embedded NATS and the HTTP server, on loopback — for tools and
// tests: StartDir starts one node, Start a cluster of voters with mutual
// TLS between them whose Raft traffic runs through a fault-injecting
// network (package faultnet), so that `tally drill` can kill a node or
// partition the cluster without Docker or root. The test packages
// (nodetest) build on it; the tally binary must not import them.
package localcluster
