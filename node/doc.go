// Package node wires and runs one tally node: its Raft replica, embedded
// NATS, the OAuth HTTP endpoints and Connect services on one port, health,
// metrics and graceful shutdown.
//
// Start order: secrets (key-encryption key, admin credential) → Raft replica
// → bootstrap of the default tenant → NATS → HTTP. Stop order is the reverse,
// so that no request is served by a node whose replica is closed.
package node
