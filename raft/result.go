package raft

import (
	"errors"

	"github.com/tallyauth/tally/raft/raftpb"
)

// CommandVersion is the encoding version of the commands this package writes
// (raftpb.Command.version), and the newest it applies: the FSM applies
// every version from 1 to CommandVersion and stops at a newer one (doc.go,
// "Operations and versions"). A new operation does not change it.
const CommandVersion = 1

// Domain outcomes of a command. They come back in Result.Err, possibly
// wrapped with detail; test them with errors.Is. Every replica reaches the
// same outcome for the same log entry.
var (
	// ErrNotFound: the tenant or client the command names does not exist.
	ErrNotFound = errors.New("raft: not found")
	// ErrExists: the tenant, client or key id is already taken.
	ErrExists = errors.New("raft: already exists")
	// ErrConflict: UpdateClient's expected_revision differs from the stored
	// revision.
	ErrConflict = errors.New("raft: conflict")
	// ErrInvalid: the command is malformed (missing or out-of-range fields).
	ErrInvalid = errors.New("raft: invalid command")
)

// Errors of Node; they mean the command was not applied, or that its outcome
// is unknown to this node.
var (
	// ErrNotLeader: this node is not the leader; the proposal was not
	// appended. It also matches hashicorp/raft's ErrNotLeader.
	ErrNotLeader = errors.New("raft: not leader")
	// ErrLeadershipLost: leadership was lost while the entry was being
	// committed; it may or may not be applied later. Retry with the same
	// request_id.
	ErrLeadershipLost = errors.New("raft: leadership lost, outcome unknown")
	// ErrTimeout: the proposal could not be enqueued in time.
	ErrTimeout = errors.New("raft: timed out")
	// ErrClosed: the node is shut down.
	ErrClosed = errors.New("raft: node closed")
)

// Result is the outcome of one applied command: the log index it was
// committed at and its domain error (nil, or one of ErrNotFound, ErrExists,
// ErrConflict, ErrInvalid, possibly wrapped). A repeated request_id is
// answered with the first application's Result (its Index and bare sentinel).
type Result struct {
	Index uint64
	Err   error
	// Grant is the value outcome of an end-user command (RedeemCode,
	// RotateRefresh, RevokeFamily, DecideDeviceCode, PollDeviceCode): nil
	// for other commands. A repeated request_id gets the first one back.
	// Forwarders must carry it (it is a protobuf message).
	Grant *raftpb.GrantResult
}

// resultCode is the stored form of Result.Err in the requests bucket.
type resultCode byte

const (
	codeOK resultCode = iota
	codeNotFound
	codeExists
	codeConflict
	codeInvalid
)

func codeOf(err error) resultCode {
	switch {
	case err == nil:
		return codeOK
	case errors.Is(err, ErrNotFound):
		return codeNotFound
	case errors.Is(err, ErrExists):
		return codeExists
	case errors.Is(err, ErrConflict):
		return codeConflict
	default:
		return codeInvalid
	}
}

func (c resultCode) err() error {
	switch c {
	case codeOK:
		return nil
	case codeNotFound:
		return ErrNotFound
	case codeExists:
		return ErrExists
	case codeConflict:
		return ErrConflict
	default:
		return ErrInvalid
	}
}
