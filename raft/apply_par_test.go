package raft

import (
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

func parCmd(now int64, op any) *raftpb.Command {
	c := &raftpb.Command{Version: CommandVersion, TimeUnixNano: now}
	switch o := op.(type) {
	case *raftpb.PushAuthorizationRequest:
		c.Op = &raftpb.Command_PushAuthorizationRequest{PushAuthorizationRequest: o}
	case *raftpb.RedeemRequestURI:
		c.Op = &raftpb.Command_RedeemRequestUri{RedeemRequestUri: o}
	case *raftpb.SetKeyPolicy:
		c.Op = &raftpb.Command_SetKeyPolicy{SetKeyPolicy: o}
	case *raftpb.SetTenantPAR:
		c.Op = &raftpb.Command_SetTenantPar{SetTenantPar: o}
	default:
		panic("parCmd: not an issue 11 operation")
	}
	return c
}

func push(now int64, uri, client string, expires int64) *raftpb.Command {
	return parCmd(now, &raftpb.PushAuthorizationRequest{Request: &raftpb.PushedRequest{Tenant: "acme", UriHash: h(uri), ClientId: client,
		Params: "client_id=" + client + "&response_type=code", ExpiresUnixNano: expires}})
}

func redeem(now int64, uri, client string) *raftpb.Command {
	return parCmd(now, &raftpb.RedeemRequestURI{Tenant: "acme", UriHash: h(uri), ClientId: client})
}

// TestRedeemRequestURIOnce: a pushed request is redeemed once, only by its
// client, only before it expires; a wrong client does not burn it.
func TestRedeemRequestURIOnce(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"), push(t0, "a", "c1", t0+60*sec), push(t0, "b", "c1", t0+60*sec))
	for _, tc := range []struct {
		name    string
		cmd     *raftpb.Command
		outcome string
	}{
		{"other client", redeem(t0+sec, "a", "c2"), OutcomeInvalid},
		{"first use", redeem(t0+sec, "a", "c1"), OutcomeDone},
		{"second use", redeem(t0+2*sec, "a", "c1"), OutcomeNotFound},
		{"never pushed", redeem(t0+2*sec, "zz", "c1"), OutcomeNotFound},
		{"expired", redeem(t0+61*sec, "b", "c1"), OutcomeExpiredToken},
		{"expired, again", redeem(t0+62*sec, "b", "c1"), OutcomeNotFound},
	} {
		res := applyAll(t, f, tc.cmd)[0]
		if res.Err != nil || res.Grant == nil || res.Grant.Outcome != tc.outcome {
			t.Fatalf("%s: %v %v, want outcome %q", tc.name, res.Err, res.Grant, tc.outcome)
		}
		if tc.outcome == OutcomeDone && res.Grant.GetPushedRequest().GetParams() != "client_id=c1&response_type=code" {
			t.Fatalf("%s: params %q", tc.name, res.Grant.GetPushedRequest().GetParams())
		}
	}
	// The same request_uri cannot be pushed twice.
	mustApply(t, f, push(t0+3*sec, "c", "c1", t0+10*sec))
	if res := applyAll(t, f, push(t0+3*sec, "c", "c1", t0+10*sec))[0]; res.Err == nil {
		t.Fatal("pushed twice")
	}
	// Expiry is capped at MaxPushedRequestTTL; the sweep drops what expired.
	mustApply(t, f, push(t0+4*sec, "d", "c1", t0+hour))
	mustApply(t, f, command(t0+4*sec+MaxPushedRequestTTL+sec, &raftpb.Sweep{}))
	if res := applyAll(t, f, redeem(t0+5*sec, "d", "c1"))[0]; res.Grant.GetOutcome() != OutcomeNotFound {
		t.Fatalf("swept request still redeemable: %v", res.Grant)
	}
}

func TestPARCommandValidation(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"))
	for name, cmd := range map[string]*raftpb.Command{
		"short hash":     parCmd(t0, &raftpb.PushAuthorizationRequest{Request: &raftpb.PushedRequest{Tenant: "acme", UriHash: []byte("x"), ClientId: "c1", Params: "a=b", ExpiresUnixNano: t0 + sec}}),
		"no params":      parCmd(t0, &raftpb.PushAuthorizationRequest{Request: &raftpb.PushedRequest{Tenant: "acme", UriHash: h("a"), ClientId: "c1", ExpiresUnixNano: t0 + sec}}),
		"no request":     parCmd(t0, &raftpb.PushAuthorizationRequest{}),
		"redeem no hash": parCmd(t0, &raftpb.RedeemRequestURI{Tenant: "acme", ClientId: "c1"}),
		"negative":       parCmd(t0, &raftpb.SetKeyPolicy{Tenant: "acme", RotateEveryNanos: -1}),
		"bad tenant":     parCmd(t0, &raftpb.SetTenantPAR{Tenant: "A/B"}),
	} {
		if res := applyAll(t, f, cmd)[0]; res.Err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSetKeyPolicyAndTenantPAR(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"),
		parCmd(t0+sec, &raftpb.SetKeyPolicy{Tenant: "acme", RotateEveryNanos: 30 * 24 * hour, SealRotateEveryNanos: 24 * hour}),
		parCmd(t0+2*sec, &raftpb.SetTenantPAR{Tenant: "acme", Require: true}))
	tn, _ := f.State().Tenant("acme")
	if tn.KeyRotateEveryNanos != 30*24*hour || tn.SealRotateEveryNanos != 24*hour || tn.KeyPolicyUpdatedUnixNano != t0+sec || !tn.RequirePushedAuthorizationRequests {
		t.Fatalf("tenant after policy: %v", tn)
	}
	if res := applyAll(t, f, parCmd(t0, &raftpb.SetKeyPolicy{Tenant: "nope", RotateEveryNanos: hour}))[0]; res.Err == nil {
		t.Fatal("policy of an unknown tenant")
	}
}

// goldenPARV1 is one issue 11 command of each type; the committed encodings
// (testdata/command_v1_par_*.bin) are a contract like goldenV1's.
func goldenPARV1() []struct {
	name string
	cmd  *raftpb.Command
} {
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"par_push", push(t0+20, "golden", "c1", t0+60*sec)},
		{"par_redeem", redeem(t0+21, "golden", "c1")},
		{"par_set_key_policy", parCmd(t0+22, &raftpb.SetKeyPolicy{Tenant: "acme", RotateEveryNanos: 30 * 24 * hour})},
		{"par_set_tenant_par", parCmd(t0+23, &raftpb.SetTenantPAR{Tenant: "acme", Require: true})},
	}
}

func TestPARCommandV1Decoding(t *testing.T) {
	golden := goldenPARV1()
	writeGolden(t, golden)
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"))
	applyGolden(t, f, "TestPARCommandV1Decoding", golden)
}
