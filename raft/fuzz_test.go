package raft

import (
	"errors"
	"testing"

	hraft "github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// FuzzApplyCommand feeds arbitrary version-1 commands to the FSM: whatever
// a (buggy or hostile) proposer puts in a decodable command, the FSM must
// answer with a domain outcome, never panic, and keep its view equal to its
// database. Each input is applied to a fresh state (a tenant with a
// client), so a failure reproduces from its corpus file alone. Seeds: the
// golden commands and testdata/fuzz/FuzzApplyCommand.
func FuzzApplyCommand(f *testing.F) {
	for _, g := range append(append(goldenV1(), goldenDeleteV1()...), goldenVersion()...) {
		data, err := marshalOpts.Marshal(g.cmd)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd := new(raftpb.Command)
		if proto.Unmarshal(data, cmd) != nil || cmd.GetVersion() != CommandVersion {
			t.Skip("the FSM stops at these by design (TestFSMStopsAtEntriesItDoesNotUnderstand)")
		}
		if understood(cmd) != "" {
			t.Skip("unknown operation or field: the FSM stops by design")
		}
		if s := cmd.GetSetClusterVersion(); s != nil && checkSetClusterVersion(s) == nil && tooNew(s.GetClusterVersion()) != "" {
			t.Skip("a cluster version this binary does not implement: the FSM stops by design")
		}
		fsm := openTestFSM(t)
		mustApply(t, fsm, tenantWithClient(t0)...)
		idx := fsm.AppliedIndex() + 1
		res, ok := fsm.Apply(&hraft.Log{Index: idx, Term: 1, Type: hraft.LogCommand, Data: data}).(Result)
		if !ok {
			t.Fatal("response is not a Result")
		}
		if res.Err != nil && !errors.Is(res.Err, ErrNotFound) && !errors.Is(res.Err, ErrExists) &&
			!errors.Is(res.Err, ErrConflict) && !errors.Is(res.Err, ErrInvalid) {
			t.Fatalf("outcome %v is not a domain error", res.Err)
		}
		// Propose's stateless check agrees with the FSM about invalid commands.
		if err := checkCommand(cmd); err != nil && cmd.GetRequestId() == "" && !errors.Is(res.Err, ErrInvalid) {
			t.Fatalf("checkCommand: %v but FSM: %v", err, res.Err)
		}
		checkViewMatchesDB(t, fsm)
	})
}
