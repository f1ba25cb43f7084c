package raft

import (
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// goldenFlowsV1 is one end-user command of every type, in an order that
// applies cleanly after goldenV1's tenant and client. Its encodings are
// committed beside goldenV1's (testdata/command_v1_*.bin) and are the same
// contract: a later CommandVersion must keep decoding and applying them.
func goldenFlowsV1() []struct {
	name string
	cmd  *raftpb.Command
} {
	fam := &raftpb.Family{Tenant: "acme", Id: "fam-1", ClientId: "c1", UserId: "user-1", Scopes: []string{"openid", "offline_access"},
		AuthTimeUnixNano: t0, ExpiresUnixNano: t0 + 30*24*hour, IdleTimeoutNanos: 7 * 24 * hour, Generation: 1, CurrentHash: h("r1")}
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"create_user", flowCmd(t0+10, &raftpb.CreateUser{User: testUser("acme", "user-1", "alice")})},
		{"set_user_password", flowCmd(t0+11, &raftpb.SetUserPassword{Tenant: "acme", UserId: "user-1",
			Password: &raftpb.PasswordHash{Alg: "argon2id", Salt: h("s2")[:16], Hash: h("p2"), Time: 2, MemoryKib: 19456, Threads: 1}})},
		{"set_user_status", flowCmd(t0+12, &raftpb.SetUserStatus{Tenant: "acme", UserId: "user-1", Locked: false})},
		{"remember_consent", flowCmd(t0+13, &raftpb.RememberConsent{Consent: &raftpb.Consent{Tenant: "acme", UserId: "user-1",
			ClientId: "c1", Scopes: []string{"openid", "offline_access"}}})},
		{"redeem_code", withRequestID(flowCmd(t0+14, &raftpb.RedeemCode{Tenant: "acme", CodeHash: h("code"), CodeExpiresUnixNano: t0 + 60*sec,
			ClientId: "c1", UserId: "user-1", Family: fam, AccessToken: at("at-1", t0+hour)}), "golden-flow-1")},
		{"rotate_refresh", flowCmd(t0+15, &raftpb.RotateRefresh{Tenant: "acme", FamilyId: "fam-1", Generation: 1, TokenHash: h("r1"),
			ClientId: "c1", NewHash: h("r2"), SealedSuccessor: []byte("sealed"), ReuseIntervalNanos: 5 * sec,
			AccessToken: at("at-2", t0+hour), Node: "node1", Region: "eu"})},
		{"revoke_family", flowCmd(t0+16, &raftpb.RevokeFamily{Tenant: "acme", FamilyId: "fam-1", Reason: "golden"})},
		{"create_device_code", flowCmd(t0+17, &raftpb.CreateDeviceCode{DeviceCode: &raftpb.DeviceCode{Tenant: "acme", DeviceCodeHash: h("dev"),
			UserCode: "BCDFGHJK", ClientId: "c1", Scopes: []string{"openid"}, ExpiresUnixNano: t0 + 600*sec, IntervalNanos: 5 * sec}})},
		{"decide_device_code", flowCmd(t0+18, &raftpb.DecideDeviceCode{Tenant: "acme", UserCode: "BCDFGHJK", Approve: true,
			UserId: "user-1", AuthTimeUnixNano: t0})},
		{"poll_device_code", flowCmd(t0+6*sec, &raftpb.PollDeviceCode{Tenant: "acme", DeviceCodeHash: h("dev"), ClientId: "c1",
			AccessToken: at("at-3", t0+hour)})},
	}
}

// TestFlowCommandV1Decoding is TestCommandV1Decoding for the end-user
// commands (run with -update to write new files; existing ones are the
// contract).
func TestFlowCommandV1Decoding(t *testing.T) {
	golden := goldenFlowsV1()
	writeGolden(t, golden)
	f := openTestFSM(t)
	c := testClient("acme", "c1")
	mustApply(t, f, createTenant(t0, "acme"), createClient(t0, c))
	applyGolden(t, f, "TestFlowCommandV1Decoding", golden)
	if !f.State().Revoked("acme", "at-2") {
		t.Fatal("revoke_family did not revoke the family's access tokens")
	}
	if d, ok := f.State().DeviceCodeByUserCode("acme", "BCDFGHJK"); !ok || d.Status != DeviceRedeemed {
		t.Fatalf("device code after the golden log: %v", d)
	}
}
