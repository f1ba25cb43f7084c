package raft

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/tallyauth/tally/raft/raftpb"
)

func alertCmd(now int64, a *raftpb.SecurityAlert) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now,
		Op: &raftpb.Command_RaiseSecurityAlert{RaiseSecurityAlert: &raftpb.RaiseSecurityAlert{Alert: a}}}
}

// TestSecurityAlertV1Decoding is TestCommandV1Decoding for op 140 (run
// with -update to write the file).
func TestSecurityAlertV1Decoding(t *testing.T) {
	golden := []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"raise_security_alert", alertCmd(t0, &raftpb.SecurityAlert{Kind: AlertCredentialStuffing, Tenant: "acme",
			Source: "198.18.0.0/24", Count: 21, WindowSeconds: 60, Signal: "failures_per_source", Node: "node1", Region: "eu"})},
	}
	writeGolden(t, golden)
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme", sigKey("k0", t0, hour)))
	applyGolden(t, f, "TestSecurityAlertV1Decoding", golden)
	evs, err := f.EventsSince(0, 0)
	if err != nil || len(evs) != 1 || evs[0].Kind != raftpb.EventKind_EVENT_KIND_SECURITY_ALERT || evs[0].GetAlert().GetTimeUnixNano() != t0 {
		t.Fatalf("events after the golden log: %v %v", evs, err)
	}
}

// TestSecurityAlertOncePerMinute: the same alert from several nodes within
// a minute is announced once; another source, another kind, or the next
// minute is announced again; bad alerts are refused.
func TestSecurityAlertOncePerMinute(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme", sigKey("k0", t0, hour)))
	minute := int64(60e9)
	start := (t0/minute + 1) * minute // the start of a minute
	a := func(src, kind string) *raftpb.SecurityAlert {
		return &raftpb.SecurityAlert{Kind: kind, Tenant: "acme", Source: src, Count: 120, WindowSeconds: 60, Signal: "failures_per_source"}
	}
	mustApply(t, f,
		alertCmd(start, a("198.18.0.10", AlertCredentialStuffing)),            // announced
		alertCmd(start+sec, a("198.18.0.10", AlertCredentialStuffing)),        // same minute: not again
		alertCmd(start+2*sec, a("198.18.0.11", AlertCredentialStuffing)),      // another source
		alertCmd(start+3*sec, a("198.18.0.10", AlertTokenGuessing)),           // another kind
		alertCmd(start+minute, a("198.18.0.10", AlertCredentialStuffing)),     // next minute
		alertCmd(start+minute+sec, a("198.18.0.10", AlertCredentialStuffing)), // not again
	)
	evs, err := f.EventsSince(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 4 {
		t.Fatalf("%d alert events, want 4: %v", len(evs), evs)
	}
	for _, e := range evs {
		if e.Kind != raftpb.EventKind_EVENT_KIND_SECURITY_ALERT || e.Tenant != "acme" || e.GetAlert().GetCount() != 120 {
			t.Fatalf("event %v", e)
		}
	}
	// The bucket keeps only the current minute's keys.
	n := 0
	if err := f.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucketThreatAlerts)).ForEach(func(k, v []byte) error { n++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d keys kept, want 1 (this minute's)", n)
	}
	for _, bad := range []*raftpb.SecurityAlert{
		nil,
		{Kind: "nonsense", Tenant: "acme"},
		{Kind: AlertTokenGuessing, Tenant: ""},
		{Kind: AlertTokenGuessing, Tenant: "acme", Source: string(make([]byte, 300))},
	} {
		if res := applyAll(t, f, alertCmd(start+2*minute, bad)); res[0].Err == nil {
			t.Fatalf("alert %v accepted", bad)
		}
	}
	// An alert about a tenant that does not exist is kept quiet.
	mustApply(t, f, alertCmd(start+2*minute, &raftpb.SecurityAlert{Kind: AlertTokenGuessing, Tenant: "gone"}))
	if evs2, _ := f.EventsSince(0, 0); len(evs2) != 4 {
		t.Fatalf("an alert about a missing tenant was announced: %v", evs2[len(evs2)-1])
	}
}

func revokeAccessCmd(now int64, r *raftpb.RevokeUserAccess) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now,
		Op: &raftpb.Command_RevokeUserAccess{RevokeUserAccess: r}}
}

// TestRevokeUserAccess: revoking one client's consent leaves the others;
// revoking all consents and the sessions drops every consent of the user
// (not another user's) and sets the sessions cut-off; bad commands and an
// unknown user are refused. The command's encoding is golden.
func TestRevokeUserAccess(t *testing.T) {
	golden := []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"revoke_user_access", revokeAccessCmd(t0+10, &raftpb.RevokeUserAccess{Tenant: "t", UserId: "u1", Consents: true, Sessions: true})},
	}
	writeGolden(t, golden)
	f := flowFSM(t)
	consent := func(now int64, user, client string) *raftpb.Command {
		return flowCmd(now, &raftpb.RememberConsent{Consent: &raftpb.Consent{Tenant: "t", UserId: user, ClientId: client, Scopes: []string{"openid"}}})
	}
	mustApply(t, f, flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u2", "Bob")}),
		consent(t0+1, "u1", "c1"), consent(t0+2, "u1", "c2"), consent(t0+3, "u2", "c1"))
	clients := func(user string) (out []string) {
		for _, c := range f.State().UserConsents("t", user) {
			out = append(out, c.ClientId)
		}
		return out
	}
	if got := fmt.Sprint(clients("u1"), clients("u2")); got != "[c1 c2] [c1]" {
		t.Fatalf("consents %s", got)
	}
	mustApply(t, f, revokeAccessCmd(t0+5, &raftpb.RevokeUserAccess{Tenant: "t", UserId: "u1", Consents: true, ClientId: "c1"}))
	if got := fmt.Sprint(clients("u1"), clients("u2")); got != "[c2] [c1]" {
		t.Fatalf("after revoking u1's consent to c1: %s", got)
	}
	if u, _ := f.State().User("t", "u1"); u.SessionsRevokedUnixNano != 0 {
		t.Fatal("sessions revoked by a consents-only command")
	}
	applyGolden(t, f, "TestRevokeUserAccess", golden)
	if got := fmt.Sprint(clients("u1"), clients("u2")); got != "[] [c1]" {
		t.Fatalf("after revoking all of u1's: %s", got)
	}
	if u, _ := f.State().User("t", "u1"); u.SessionsRevokedUnixNano != t0+10 {
		t.Fatalf("sessions cut-off %d", u.SessionsRevokedUnixNano)
	}
	checkViewMatchesDB(t, f)
	for _, bad := range []*raftpb.RevokeUserAccess{
		{Tenant: "t", UserId: "u1"},
		{Tenant: "t", UserId: "u1", Sessions: true, ClientId: "c1"},
		{Tenant: "", UserId: "u1", Sessions: true},
		{Tenant: "t", UserId: "", Sessions: true},
	} {
		if res := applyAll(t, f, revokeAccessCmd(t0+20, bad)); res[0].Err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
	if res := applyAll(t, f, revokeAccessCmd(t0+20, &raftpb.RevokeUserAccess{Tenant: "t", UserId: "nobody", Sessions: true})); !errors.Is(res[0].Err, ErrNotFound) {
		t.Fatalf("unknown user: %v", res[0].Err)
	}
}

// TestRefreshFamilyNewNetwork: a rotation carrying the client's network
// records it in the family; a later rotation from another network
// announces a refresh_new_network alert (event and GrantResult) naming
// the client, the user and the new network; a rotation without a network
// changes nothing. The field is gated (fieldGates). The golden file keeps
// the encoding (run with -update to write it).
func TestRefreshFamilyNewNetwork(t *testing.T) {
	netRotate := func(now int64, gen uint64, presented, next, network string) *raftpb.Command {
		c := rotate(now, gen, presented, next, "j"+next, 0)
		c.GetRotateRefresh().Network = network
		return c
	}
	golden := []struct {
		name string
		cmd  *raftpb.Command
	}{{"rotate_refresh_network", netRotate(t0+sec, 1, "1", "2", "198.51.100.0/24")}}
	writeGolden(t, golden)
	f := flowFSM(t)
	grantOf(t, apply1(t, f, flowCmd(t0, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("a"), CodeExpiresUnixNano: t0 + 60*sec,
		ClientId: "c1", UserId: "u1", Family: family("f1", h("1")), AccessToken: at("j1", t0+hour)})))
	before, err := f.EventsSince(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	applyGolden(t, f, "TestRefreshFamilyNewNetwork", golden) // first network: recorded only
	steps := []struct {
		cmd     *raftpb.Command
		network string
		alert   bool
	}{
		{netRotate(t0+2*sec, 2, "2", "3", "198.51.100.0/24"), "198.51.100.0/24", false},
		{netRotate(t0+3*sec, 3, "3", "4", "2001:db8:1:2::/64"), "2001:db8:1:2::/64", true},
		{netRotate(t0+4*sec, 4, "4", "5", ""), "2001:db8:1:2::/64", false},
		{netRotate(t0+5*sec, 5, "5", "6", "198.51.100.0/24"), "198.51.100.0/24", true},
	}
	for i, s := range steps {
		g := grantOf(t, apply1(t, f, s.cmd))
		if g.Outcome != OutcomeDone || g.Family.GetLastNetwork() != s.network || (g.Alert != nil) != s.alert {
			t.Fatalf("step %d: %v", i, g)
		}
		if a := g.Alert; a != nil && (a.Kind != AlertRefreshNewNetwork || a.ClientId != "c1" || a.Subject != "u1" || a.Source != s.network || a.TimeUnixNano != s.cmd.TimeUnixNano) {
			t.Errorf("step %d: alert %v", i, a)
		}
	}
	evs, err := f.EventsSince(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, e := range evs[len(before):] {
		if e.Kind == raftpb.EventKind_EVENT_KIND_SECURITY_ALERT {
			alerts = append(alerts, e.GetAlert().GetKind()+" "+e.GetAlert().GetSource())
		}
	}
	if fmt.Sprint(alerts) != "[refresh_new_network 2001:db8:1:2::/64 refresh_new_network 198.51.100.0/24]" {
		t.Errorf("alert events %v", alerts)
	}
	if g := OpProposerGated(netRotate(t0, 1, "x", "y", "198.51.100.0/24")); g != FeatureRefreshNetwork {
		t.Errorf("rotation with a network gated on %q", g)
	}
	if g := OpProposerGated(netRotate(t0, 1, "x", "y", "")); g != "" {
		t.Errorf("rotation without a network gated on %q", g)
	}
	if err := checkCommand(netRotate(t0, 1, "x", "y", strings.Repeat("1", 65))); err == nil {
		t.Error("a 65-byte network accepted")
	}
}
