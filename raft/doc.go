// Package raft replicates tally's agreed state with hashicorp/raft and
// applies it to a bbolt database on every node, serving reads from an
// in-memory view.
//
// # The FSM contract
//
// FSM applies committed raftpb.Command entries. It is deterministic: the
// same log gives every replica the same keys and values in every bucket
// (the tests compare contents, not the bbolt files, whose page layout may
// differ). Apply never
// reads the clock, randomness, the network or node configuration; "now" is
// Command.time_unix_nano, chosen by the proposer, and expired rows leave the
// state only through Sweep commands that the leader proposes (see
// Node.StartSweeper; bounded ones, Sweep.max_scan, in sweep_bounded.go). The FSM bounds that time (clock.go): it never goes
// backwards, and no entry may move it past the last Tick (proposed by the
// leader every ClockTickInterval, see Node.StartTicker) plus MaxClockStep,
// so a proposer whose wall clock jumps cannot expire live records early.
// Records are stored as deterministic protobuf.
//
// A batch of entries is applied in one bbolt write transaction, which also
// stores the last applied index and term in the meta bucket, so after a
// crash the database and its applied index agree and replayed entries are
// skipped. The bucket layout is declared in schema.go.
//
// The state database is not where acknowledged writes are durable: the Raft
// log (fsynced on a quorum before an entry commits) and the snapshots are.
// The FSM commits without fsync where it can tell one kernel boot from
// another (statemark.go): a killed process loses nothing (the page cache
// outlives it), and after an OS crash or power loss a database that was
// open is set aside as possibly torn and rebuilt from the latest snapshot
// and the log (Node.Open restores the snapshot because the empty database's
// applied index is behind it). Close and every Snapshot fsync the database.
//
// Outcomes are of two kinds:
//
//   - Domain outcomes (not found, already exists, revision conflict, invalid
//     command) are values: Result.Err holds ErrNotFound, ErrExists,
//     ErrConflict or ErrInvalid, returned through the apply future. Every
//     replica reaches the same one, and a command that fails writes nothing
//     except its idempotency record.
//   - Faults panic, because a replica that skipped an entry it could not
//     store would silently diverge: a bbolt error or an undecodable stored
//     record. As in Vault, stopping loudly is the safe choice.
//   - An entry this binary does not understand stops the FSM without a
//     panic (a panic would repeat at every restart): a log entry that is
//     not a valid protobuf Command, a Command.version newer than
//     CommandVersion (or 0), an operation or a field it does not know
//     anywhere in the command (a newer proposer's), or a SetClusterVersion
//     naming a version or feature it does not implement. ApplyBatch commits
//     the entries before it, reports it (FSM.NotUnderstood; the node's
//     status says "stopped"), applies nothing more and waits until halted.
//     The entry is applied after the node restarts with a binary that
//     understands it. It is never skipped, so replicas cannot diverge.
//   - One storage fault does not panic: a full file system (ENOSPC,
//     EDQUOT). ApplyBatch then waits and applies the same batch again in a
//     new transaction until it commits, reporting a StorageFault meanwhile;
//     nothing of the batch is applied before that, so determinism holds and
//     the node keeps serving reads while an operator frees space. Writes to
//     the Raft log that fail for lack of space are recorded the same way,
//     and a Node can refuse proposals before the disk fills
//     (Node.SetWriteGate).
//
// A non-empty Command.request_id makes a command idempotent: the first
// result is remembered (for 24 hours of command time) and a repeated id is
// answered with it without applying the command again.
//
// # Operations and versions
//
// Every operation (a member of the Command.op oneof) is one entry of the
// registry in ops.go: its stateless check (run by Propose and by the FSM),
// its apply function (inside the batch's transaction) and the cluster
// feature it needs. There is no other dispatch. Adding an operation:
//
//  1. Add the oneof member to raftpb/command.proto in your field range and
//     run make generate.
//  2. Write checkMyOp(*raftpb.MyOp) error and
//     (*applier).myOp(*raftpb.MyOp, now int64) error (or one returning a
//     *raftpb.GrantResult, registered with grantOpOf) as standalone
//     functions that write nothing before all preconditions hold.
//  3. Add one line to opRegistry:
//     "my_op": opOf((*raftpb.Command).GetMyOp, checkMyOp, (*applier).myOp).since("my_feature"),
//  4. Add its golden encoding (testdata/command_v1_my_op.bin, written by
//     the golden test with -update) and tests of its outcomes.
//
// TestOpRegistryCoversTheOneof fails while step 3 is missing. since names
// the feature that gates the operation: Node.Propose refuses it with
// ErrFeatureDisabled until the cluster's recorded ClusterVersion enables
// that feature, which the node package's leader records only once every
// member of the configuration reports it (so an older follower never sees
// the operation). Operations of v0.1.0 have no feature. A new field on an
// existing operation needs a feature too (RegisterFeatures, checked by its
// proposer): an older follower that meets an unknown field stops instead
// of ignoring it. A string enum of a stored record becomes a protobuf enum
// the same way, without a new field in any command: see enums.go
// (FeatureTypedEnums), enums_v2.go (FeatureTypedEnumsV2, the second set,
// a feature of its own so that its recording entry migrates again) and
// enums_v3.go (FeatureTypedEnumsV3, admin credential roles, likewise).
//
// Command.version is the encoding version of a command: it changes only
// when an existing operation's encoding or meaning changes, never for a new
// operation. The FSM keeps applying every older version it ever wrote
// (golden tests pin each one) and stops at a newer one. CommandVersion is
// still 1. ClusterVersion (2 in this release; v0.1.0 is 1) and the feature
// names are what a mixed cluster agrees on; see apply_version.go and
// node/version.go.
//
// # Reads
//
// State is the read view: maps rebuilt when the state database is opened or
// restored and updated after every committed batch. Reads never open a bbolt
// transaction; returned records are shared and must not be modified.
//
// # Snapshots
//
// A snapshot is the bbolt file itself, streamed with Tx.WriteTo from a read
// transaction while applies continue. Restore writes it to a temporary file
// beside the database, syncs it, checks it, and renames it over the live
// file.
//
// A consistent copy of the state can also be taken without Raft
// (Node.CopyState, for backups) and installed on a leader as a user
// snapshot (Node.RestoreFile) when a cluster is rebuilt from a backup.
//
// # Cluster transport and node identity
//
// Nodes talk to each other on one cluster port (ClusterListener): TCP with
// mutual TLS 1.3, split by ALPN into Raft traffic (ALPNRaft, carried by
// hashicorp/raft's NetworkTransport over ClusterListener.StreamLayer) and
// internal HTTP (ALPNHTTP, ClusterListener.RPCListener, where the node
// package serves its internal Connect service). Both sides present a node
// certificate (NodeTLS) and both verify the peer's: it must chain to the
// cluster CA and carry exactly one DNS name "<node id>.node.tally"
// (NodeNameSuffix); a client also checks the dialled IP or host name against
// the certificate. A connection that fails this is closed after the
// handshake and never reaches Raft, so a node without a valid certificate can
// neither join nor send or receive Raft traffic. NewCA, NewNodeCert,
// InitCADir and IssueNodeCertDir create ECDSA P-256 certificates with
// crypto/x509 only.
//
// Config.StreamLayer selects this transport; without it (and without
// Config.Transport) Open uses plain TCP, which tests and single-process
// tools use.
//
// # Membership
//
// A new cluster starts either from one node (Bootstrap without
// BootstrapServers) that others join with AddVoter / AddNonvoter, or from
// the same BootstrapServers list on every initial voter. Members,
// AddNonvoter, RemoveServer and TransferLeadership change or read the
// configuration; they need the leader (the node package forwards them).
// Status reports term, indexes and the time of last leader contact;
// LastLeaderContact is the basis of the node's staleness bound. WaitApplied
// lets a follower wait for an index committed through the leader
// (read-your-writes for forwarded writes).
//
// # Timing
//
// Config.ApplyProfile sets heartbeat, election, leader-lease and commit
// timeouts and MaxAppendEntries for a LAN ("lan", the default) or for voters
// spread across regions ("wan"); see its documentation for the figures and
// why.
package raft
