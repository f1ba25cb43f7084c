// Package replication carries committed state-machine events to the outside
// world over NATS JetStream, and runs the embedded NATS server that a single
// machine uses so that nothing else needs installing.
//
// # The event log
//
// The Raft FSM writes an outbox record (raftpb.Event) in the same
// transaction as every change a resource server must learn about (see
// raft/events.go). Every node runs a Publisher over its own replica's
// outbox: it signs each event as a Security Event Token (RFC 8417) with the
// tenant's signing key and publishes it to the stream (default
// "TALLY_EVENTS", subjects tally.*.revocation.* and tally.*.security.*) with
// Nats-Msg-Id "<cluster>:<raft index>.<ordinal>". The stream's duplicates
// window makes each event appear once however many nodes publish it, and no
// single node's crash loses one. Each publisher keeps its own position in a
// local file and resumes from it after a restart or a NATS outage; on start
// it also skips what the stream already holds.
//
// The stream is created idempotently (file storage, max age = the
// configured retention, duplicates window = the retention), so a resource
// server that reconnects within the retention replays what it missed.
//
// Embedded mode runs one NATS server per node; nodes of a multi-node
// cluster share one NATS cluster through an external URL instead (see
// node.EventsConfig), so that de-duplication spans all publishers.
package replication
