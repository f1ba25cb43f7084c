package raft

import (
	"errors"
	"strings"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

func ztKey(b byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b
	}
	return k
}

func consume(now int64, tenant string, key []byte, exp int64) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now,
		Op: &raftpb.Command_ConsumeAssertion{ConsumeAssertion: &raftpb.ConsumeAssertion{Tenant: tenant, ClientId: "svc", Key: key, ExpiresUnixNano: exp}}}
}

func setTrust(now int64, tenant string, tr *raftpb.TenantTrust) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now,
		Op: &raftpb.Command_SetTenantTrust{SetTenantTrust: &raftpb.SetTenantTrust{Tenant: tenant, Trust: tr}}}
}

// goldenZTV1 are the issue-11 commands (ops 90, 91), encoded in
// testdata/command_v1_*.bin like the others.
func goldenZTV1() []struct {
	name string
	cmd  *raftpb.Command
} {
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"consume_assertion", consume(t0+2, "acme", ztKey(7), t0+60e9)},
		{"set_tenant_trust", setTrust(t0+3, "acme", &raftpb.TenantTrust{Federations: []*raftpb.FederationTrust{{
			Name: "k8s", Issuer: "https://k8s.example", Subjects: []*raftpb.SubjectMapping{{Subject: "system:serviceaccount:payments:billing", ClientId: "svc"}}}}})},
	}
}

// TestZTCommandV1Decoding is TestCommandV1Decoding for the issue-11
// commands (run with -update to write new files).
func TestZTCommandV1Decoding(t *testing.T) {
	golden := goldenZTV1()
	writeGolden(t, golden)
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"))
	applyGolden(t, f, "TestZTCommandV1Decoding", golden)
	if tn, _ := f.State().Tenant("acme"); len(tn.GetTrust().GetFederations()) != 1 {
		t.Fatalf("trust after the golden log: %v", tn.GetTrust())
	}
}

// TestConsumeAssertion: the first use of an assertion key succeeds, a
// second before its expiry is ErrExists (also after a snapshot restore),
// an expired one is invalid, and a sweep after the expiry forgets it.
func TestConsumeAssertion(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"))
	exp := t0 + 60e9
	res := applyAll(t, f,
		consume(t0+1, "acme", ztKey(1), exp),
		consume(t0+2, "acme", ztKey(1), exp),
		consume(t0+3, "acme", ztKey(2), t0+2),
		consume(t0+4, "ghost", ztKey(3), exp),
	)
	if res[0].Err != nil || !errors.Is(res[1].Err, ErrExists) || !errors.Is(res[2].Err, ErrInvalid) || !errors.Is(res[3].Err, ErrNotFound) {
		t.Fatalf("results %v %v %v %v", res[0].Err, res[1].Err, res[2].Err, res[3].Err)
	}
	mustApply(t, f, sweep(exp+1))
	if res := applyAll(t, f, consume(exp+2, "acme", ztKey(1), exp+60e9)); res[0].Err != nil {
		t.Fatalf("after the sweep: %v", res[0].Err)
	}
	checkViewMatchesDB(t, f)
}

func TestCheckZTCommands(t *testing.T) {
	for name, cmd := range map[string]*raftpb.Command{
		"short key":       consume(t0, "acme", []byte("x"), t0+1),
		"no expiry":       consume(t0, "acme", ztKey(1), 0),
		"bad tenant":      consume(t0, "ACME", ztKey(1), t0+1),
		"relative issuer": setTrust(t0, "acme", &raftpb.TenantTrust{Federations: []*raftpb.FederationTrust{{Name: "x", Issuer: "k8s"}}}),
		"unnamed":         setTrust(t0, "acme", &raftpb.TenantTrust{Federations: []*raftpb.FederationTrust{{Issuer: "https://x"}}}),
		"huge CA":         setTrust(t0, "acme", &raftpb.TenantTrust{ClientCaPem: make([]byte, maxTrustCABytes+1)}),
		"bad mapping": setTrust(t0, "acme", &raftpb.TenantTrust{Federations: []*raftpb.FederationTrust{{Name: "x", Issuer: "https://x",
			Subjects: []*raftpb.SubjectMapping{{Subject: "", ClientId: "c"}}}}}),
	} {
		if err := checkCommand(cmd); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, ca := range map[string]*raftpb.ClientAuth{
		"unknown method":     {Methods: []string{"client_secret_jwt"}},
		"repeated method":    {Methods: []string{"private_key_jwt", "private_key_jwt"}, JwksUri: "https://x"},
		"pkjwt without keys": {Methods: []string{"private_key_jwt"}},
		"tls without dn":     {Methods: []string{"tls_client_auth"}},
		"self-signed no key": {Methods: []string{"self_signed_tls_client_auth"}},
		"relative jwks_uri":  {Methods: []string{"private_key_jwt"}, JwksUri: "/jwks"},
	} {
		if err := checkClientAuth(ca); err == nil || !strings.Contains(err.Error(), "client auth") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
