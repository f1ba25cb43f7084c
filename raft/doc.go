// Package raft replicates tally's agreed state with hashicorp/raft and
// applies it to a bbolt database on every node, serving reads from an
// in-memory view.
//
// # The FSM contract
//
// FSM applies committed raftpb.Command entries. It is deterministic: the
// same log gives byte-identical state databases on every replica. Apply never
// reads the clock, randomness, the network or node configuration; "now" is
// Command.time_unix_nano, chosen by the proposer, and expired rows leave the
// state only through Sweep commands that the leader proposes (see
// Node.StartSweeper). Records are stored as deterministic protobuf.
//
// A batch of entries is applied in one bbolt write transaction, which also
// stores the last applied index and term in the meta bucket, so after a
// crash the database and its applied index agree and replayed entries are
// skipped. The bucket layout is declared in schema.go.
//
// Outcomes are of two kinds:
//
//   - Domain outcomes (not found, already exists, revision conflict, invalid
//     command) are values: Result.Err holds ErrNotFound, ErrExists,
//     ErrConflict or ErrInvalid, returned through the apply future. Every
//     replica reaches the same one, and a command that fails writes nothing
//     except its idempotency record.
//   - Faults panic, because a replica that skipped an entry it could not
//     store or understand would silently diverge: a bbolt error, an
//     undecodable stored record, a log entry that is not a valid protobuf
//     Command, a Command whose version is not CommandVersion (a newer leader
//     wrote it: upgrade this node), and a version-1 Command whose operation
//     this node does not know. As in Vault, stopping loudly is the safe
//     choice; the node recovers after an upgrade or repair by replaying the
//     log.
//
// A non-empty Command.request_id makes a command idempotent: the first
// result is remembered (for 24 hours of command time) and a repeated id is
// answered with it without applying the command again.
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
package raft
