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
// local file and resumes from it after a restart or a NATS outage. The
// position comes only from the node's own outbox and JetStream's
// acknowledgements, never from what the stream holds: a message's headers
// are whatever its publisher wrote.
//
// Every publisher also sends each event at once, without JetStream, on
// its live subject (eventwire.LiveSubject, tally.<tenant>.live.<rest>): a
// clustered stream has no leader for 4-9 s after the server holding it
// died, core NATS needs none.
// Subscribers keep one copy per SET jti; the stream stays the ordered log.
//
// The stream is created idempotently (file storage, max age = the
// configured retention, duplicates window = the retention, deny delete and
// purge), so a resource server that reconnects within the retention
// replays what it missed.
//
// # The embedded server
//
// Every node runs an embedded NATS server (StartEmbedded). In a
// multi-node cluster the embedded servers form one NATS cluster (routes,
// clustered JetStream, the stream replicated on up to three servers), so
// de-duplication spans all publishers and no single node holds the log.
// The server refuses anonymous clients: nodes connect as NodeUser with a
// password derived from the cluster's key-encryption key, resource servers
// with a confidential client's id and secret (ResourceServerAuth), limited
// to their tenant's events (ResourceServerPermissions). Routes authenticate
// as RouteUser, and use TLS with the node certificates when they leave
// loopback, as client connections do.
package replication
