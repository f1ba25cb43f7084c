// Package replication carries committed state-machine events to the outside
// world over NATS JetStream, and runs the embedded NATS server that a single
// machine uses so that nothing else needs installing.
//
// This first version holds the embedded server; the event log (exactly-once
// publication keyed by Raft index) builds on it.
package replication
