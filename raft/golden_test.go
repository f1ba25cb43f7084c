package raft

import (
	"flag"
	"path/filepath"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

var update = flag.Bool("update", false, "rewrite testdata/command_v1_*.bin")

// goldenV1 is one command of every type, in an order that applies cleanly.
// Its encodings are committed; a later CommandVersion must keep decoding and
// applying them.
func goldenV1() []struct {
	name string
	cmd  *raftpb.Command
} {
	cl := testClient("acme", "c1")
	cl.RedirectUris = []string{"https://app.example/cb"}
	up := testClient("acme", "c1")
	up.Name = "renamed"
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"create_tenant", withRequestID(createTenant(t0, "acme", sigKey("k1", t0, hour), sealKey("s1", t0, hour)), "golden-1")},
		{"create_client", createClient(t0+1, cl)},
		{"update_client", command(t0+2, &raftpb.UpdateClient{Client: up, ExpectedRevision: 1})},
		{"rotate_client_secret", command(t0+3, &raftpb.RotateClientSecret{Tenant: "acme", ClientId: "c1",
			NewSecret: &raftpb.SecretHash{Hash: []byte("hash-2")}, PreviousExpiresUnixNano: t0 + hour})},
		{"set_client_disabled", command(t0+4, &raftpb.SetClientDisabled{Tenant: "acme", ClientId: "c1", Disabled: true})},
		{"add_keys", command(t0+5, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{sigKey("k2", t0+60*sec, hour)}})},
		{"revoke_token", command(t0+6, &raftpb.RevokeToken{Revocation: &raftpb.Revocation{Tenant: "acme", Jti: "jti-1",
			ClientId: "c1", ExpiresUnixNano: t0 + 3*hour, Reason: "golden", Subject: "alice"}})},
		{"sweep", sweep(t0 + 2*hour)},
		{"sweep_events", command(t0+2*hour+1, &raftpb.Sweep{EventsBeforeUnixNano: t0 + hour})},
		{"tick", tick(t0 + 2*hour + 2)},
		// Issue 14: a bounded sweep (Sweep.max_scan, feature bounded_sweep_v1).
		{"sweep_bounded", command(t0+2*hour+3, &raftpb.Sweep{EventsBeforeUnixNano: t0 + hour, MaxScan: 100})},
	}
}

func goldenPath(name string) string {
	return filepath.Join("testdata", "command_v1_"+name+".bin")
}

// TestCommandV1Decoding checks that the committed version-1 encodings still
// decode to the same commands and apply. Run with -update to rewrite them
// (only when adding a command type: existing files are the contract).
func TestCommandV1Decoding(t *testing.T) {
	golden := goldenV1()
	writeGolden(t, golden)
	f := openTestFSM(t)
	applyGolden(t, f, "TestCommandV1Decoding", golden)
	c, _ := f.State().Client("acme", "c1")
	if c == nil || c.Name != "renamed" || !c.Disabled || len(c.Secrets) != 2 || !f.State().Revoked("acme", "jti-1") {
		t.Fatalf("client after golden log = %v", c)
	}
	if got := kids(f.State().Keys("acme")); len(got) != 2 { // k1 retired and swept; s1, k2 remain
		t.Fatalf("keys = %v", got)
	}
}
