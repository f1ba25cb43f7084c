package raft

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// goldenThreatV1 are the issue-13 commands, encoded in
// testdata/command_v1_*.bin like the others.
func goldenThreatV1() []struct {
	name string
	cmd  *raftpb.Command
} {
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"put_admin_credential", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0,
			Op: &raftpb.Command_PutAdminCredential{PutAdminCredential: &raftpb.PutAdminCredential{Credential: &raftpb.AdminCredential{
				Id: "0011223344556677", Name: "ci", Role: RoleOperator, TokenHash: []byte("hash-of-token-32-bytes-long-----"),
				CreatedUnixNano: t0, ExpiresUnixNano: t0 + 3600e9, CreatedBy: "bootstrap-token"}}}}},
		{"append_audit", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + 1,
			Op: &raftpb.Command_AppendAudit{AppendAudit: &raftpb.AppendAudit{Record: &raftpb.AuditRecord{
				Actor: "ci (0011223344556677)", Role: RoleOperator, Action: "cluster.AddVoter", Target: "node4", Outcome: "success", Node: "node1"}}}}},
		{"revoke_admin_credential", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + 2,
			Op: &raftpb.Command_RevokeAdminCredential{RevokeAdminCredential: &raftpb.RevokeAdminCredential{Id: "0011223344556677"}}}},
	}
}

// TestThreatCommandV1Decoding is TestCommandV1Decoding for the issue-13
// commands (run with -update to write new files).
func TestThreatCommandV1Decoding(t *testing.T) {
	golden := goldenThreatV1()
	writeGolden(t, golden)
	f := openTestFSM(t)
	applyGolden(t, f, "TestThreatCommandV1Decoding", golden)
	c, ok := f.AdminCredential("0011223344556677")
	if !ok || c.RevokedUnixNano != t0+2 {
		t.Fatalf("credential after the golden log: %v", c)
	}
	recs, err := f.AuditRecords(0, 0, "")
	if err != nil || len(recs) != 1 || recs[0].Seq != 1 || VerifyAuditChain(recs) != nil {
		t.Fatalf("audit after the golden log: %v %v", recs, err)
	}
}

// TestAuditChain: the FSM chains records; any edit, removal or reordering
// is reported at the first record that no longer verifies.
func TestAuditChain(t *testing.T) {
	f := openTestFSM(t)
	for i := range 5 {
		res := applyAll(t, f, &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + int64(i),
			Op: &raftpb.Command_AppendAudit{AppendAudit: &raftpb.AppendAudit{Record: &raftpb.AuditRecord{
				Actor: "a", Action: "CreateClient", Target: "acme/c", Tenant: "acme", Outcome: "success", Seq: 99, Hash: []byte("forged")}}}})
		if res[0].Err != nil {
			t.Fatal(res[0].Err)
		}
	}
	recs, err := f.AuditRecords(0, 0, "")
	if err != nil || len(recs) != 5 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	if b := VerifyAuditChain(recs); b != nil {
		t.Fatalf("fresh chain: %+v", b)
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) || r.TimeUnixNano != t0+int64(i) || r.RaftIndex == 0 {
			t.Fatalf("record %d: %v", i, r)
		}
	}
	clone := func() []*raftpb.AuditRecord {
		out := make([]*raftpb.AuditRecord, len(recs))
		for i, r := range recs {
			out[i] = proto.Clone(r).(*raftpb.AuditRecord)
		}
		return out
	}
	edited := clone()
	edited[2].Outcome = "failure"
	if b := VerifyAuditChain(edited); b == nil || b.Seq != 3 {
		t.Fatalf("edited record 3: %+v", b)
	}
	rehashed := clone()
	rehashed[1].Actor = "b"
	rehashed[1].Hash = AuditHash(rehashed[1].PrevHash, rehashed[1])
	if b := VerifyAuditChain(rehashed); b == nil || b.Seq != 3 {
		t.Fatalf("re-hashed record 2: %+v (want the break at 3)", b)
	}
	removed := append(clone()[:1], clone()[2:]...)
	if b := VerifyAuditChain(removed); b == nil || b.Seq != 2 {
		t.Fatalf("removed record 2: %+v", b)
	}
	if got, _ := f.AuditRecords(2, 2, "acme"); len(got) != 2 || got[0].Seq != 3 {
		t.Fatalf("page after 2: %v", got)
	}
	// Invalid commands.
	for _, cmd := range []*raftpb.Command{
		{Version: CommandVersion, TimeUnixNano: t0, Op: &raftpb.Command_AppendAudit{AppendAudit: &raftpb.AppendAudit{Record: &raftpb.AuditRecord{Actor: "a"}}}},
		{Version: CommandVersion, TimeUnixNano: t0, Op: &raftpb.Command_PutAdminCredential{PutAdminCredential: &raftpb.PutAdminCredential{Credential: &raftpb.AdminCredential{Id: "x", Name: "n", Role: "root", TokenHash: []byte{1}}}}},
		{Version: CommandVersion, TimeUnixNano: t0, Op: &raftpb.Command_PutAdminCredential{PutAdminCredential: &raftpb.PutAdminCredential{Credential: &raftpb.AdminCredential{Id: "x", Name: "n", Role: RoleTenantAdmin, TokenHash: []byte{1}}}}},
	} {
		if res := applyAll(t, f, cmd)[0]; !errors.Is(res.Err, ErrInvalid) {
			t.Fatalf("%v: %v", cmd, res.Err)
		}
	}
	if res := applyAll(t, f, &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0,
		Op: &raftpb.Command_RevokeAdminCredential{RevokeAdminCredential: &raftpb.RevokeAdminCredential{Id: "nope"}}})[0]; !errors.Is(res.Err, ErrNotFound) {
		t.Fatalf("revoke unknown: %v", res.Err)
	}
}
