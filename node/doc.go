// Package node wires and runs one tally node: its Raft replica, embedded
// NATS, the OAuth HTTP endpoints and Connect services on one port, health,
// metrics and graceful shutdown.
//
// Start order: secrets (key-encryption key, admin credential) → Raft replica
// → bootstrap of the default tenant → NATS → HTTP. Stop order is the reverse,
// so that no request is served by a node whose replica is closed.
//
// # Clusters
//
// Each node has two ports. The HTTP port (Config.Listen) serves the OAuth
// endpoints, the admin API and the cluster admin API
// (node/api/cluster/v1 ClusterAdminService: status, add-voter,
// add-nonvoter, remove, transfer-leadership, snapshot save and restore),
// all with the admin credential. The cluster port (Config.RaftBind) carries
// Raft and the internal ClusterService over mutual TLS with node
// certificates of the cluster CA (raft.ClusterListener); the caller's node
// id comes from its certificate.
//
// A new cluster starts from Config.Peers (the same initial voters on each)
// or from one node that others Join; a joining node calls ClusterService.Join
// on any member, which forwards to the leader. The leader creates the
// default tenant once elected.
//
// Writes from any node: every write (admin calls, OAuth revocation, the
// issuance Revoker) goes through cluster.propose. The leader proposes it
// itself; a follower forwards the encoded command to the leader's
// ClusterService.Apply, gets back the index and the FSM's result, and waits
// until its own replica has applied that index before answering, so the
// caller reads its own write on the node it asked. While there is no leader
// or leadership moves it retries with the same command (its request_id
// makes a repeated commit return the first result) until
// Config.WriteTimeout, then fails with ErrUnavailable: Connect Unavailable,
// OAuth 503 temporarily_unavailable with Retry-After. Never a hang, never a
// 500.
//
// Bounded staleness: reads are served from the local replica without a Raft
// round trip, as long as the node has heard from a leader within
// Config.MaxStale (raft.Node.LastLeaderContact; the leader itself is always
// fresh). Beyond it the OAuth endpoints (token, introspection, revocation,
// JWKS, discovery) answer 503 temporarily_unavailable and /readyz reports
// not ready, so a partitioned node stops honouring clients and tokens that
// may have been disabled or revoked meanwhile. A node that starts, or that
// was stale, stays stale until its replica has applied the leader's commit
// index as of the moment contact resumed (catchup.go), since hashicorp/raft
// reports contact with the first heartbeat, before the missed entries.
//
// A forwarded write is abandoned as soon as the follower stops hearing
// from that leader for longer than the leader lease, and retried at the
// next leader, so a leader that stops answering costs about one election.
//
// Disk: below Config.MinFreeDisk free bytes on the data file system, or
// while a write to its storage fails (disk full), a node refuses writes
// (ErrDiskLow, Connect Unavailable, OAuth 503), reports not ready and hands
// leadership to a healthy voter, and keeps issuing and introspecting from
// its replica; a replica whose storage has failed for longer than MaxStale
// fails closed like a partitioned one. It recovers by itself once space is
// freed (disk.go).
//
// nodetest.StartCluster runs a whole cluster in one test process.
package node
