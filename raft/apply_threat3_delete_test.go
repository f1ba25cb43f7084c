package raft

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft/raftpb"
)

func scopeUseIn(now int64, tenant, client string, scopes ...string) *raftpb.Command {
	c := scopeUseCmd(now, client, scopes...)
	c.GetRecordScopeUse().Tenant = tenant
	return c
}

func hasScopes(t *testing.T, f *FSM, tenant, client string) bool {
	t.Helper()
	h, err := f.ClientScopes(tenant, client)
	if err != nil {
		t.Fatal(err)
	}
	return h != nil
}

// TestDeleteDropsThreatState: DeleteClient removes the client's scope
// history; DeleteTenant removes the histories of all its clients and its
// alert-log entries; another tenant's are kept.
func TestDeleteDropsThreatState(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme", sigKey("k0", t0, hour)), createTenant(t0, "beta", sigKey("k1", t0, hour)),
		createClient(t0, testClient("acme", "c1")), createClient(t0, testClient("acme", "c2")),
		createClient(t0, testClient("beta", "c1")), setVersion(t0, FeatureThreatV3))
	var cmds []*raftpb.Command
	for i, tc := range [][2]string{{"acme", "c1"}, {"acme", "c2"}, {"beta", "c1"}} {
		now := t0 + int64(i+1)*sec
		cmds = append(cmds, scopeUseIn(now, tc[0], tc[1], "read"), scopeUseIn(now+1, tc[0], tc[1], "write")) // baseline, then an alert
	}
	mustApply(t, f, cmds...)
	for _, tc := range [][2]string{{"acme", "c1"}, {"acme", "c2"}, {"beta", "c1"}} {
		if !hasScopes(t, f, tc[0], tc[1]) {
			t.Fatalf("%s/%s: no history recorded", tc[0], tc[1])
		}
	}
	if got, _ := f.SecurityAlertsSince(time.Unix(0, 0)); len(got) != 3 {
		t.Fatalf("alert log: %d entries, want 3", len(got))
	}

	mustApply(t, f, delCmd(t0+10*sec, &raftpb.DeleteClient{Tenant: "acme", ClientId: "c1"}))
	if hasScopes(t, f, "acme", "c1") || !hasScopes(t, f, "acme", "c2") || !hasScopes(t, f, "beta", "c1") {
		t.Fatal("delete client: wrong histories dropped")
	}
	if got, _ := f.SecurityAlertsSince(time.Unix(0, 0)); len(got) != 3 {
		t.Fatalf("delete client dropped alerts: %d left", len(got))
	}

	mustApply(t, f, delCmd(t0+11*sec, &raftpb.DeleteTenant{Tenant: "acme"}))
	if hasScopes(t, f, "acme", "c2") || !hasScopes(t, f, "beta", "c1") {
		t.Fatal("delete tenant: wrong histories dropped")
	}
	got, _ := f.SecurityAlertsSince(time.Unix(0, 0))
	if len(got) != 1 || got[0].Tenant != "beta" {
		t.Fatalf("alert log after deleting acme: %v", got)
	}
	// The count follows: one more alert of beta, and the log holds two.
	mustApply(t, f, scopeUseIn(t0+12*sec, "beta", "c1", "admin"))
	if got, _ := f.SecurityAlertsSince(time.Unix(0, 0)); len(got) != 2 {
		t.Fatalf("alert log: %d entries, want 2", len(got))
	}
	checkViewMatchesDB(t, f)
}

// TestDeleteThreatStateDeterminism: scope uses, alerts and deletions of
// clients and tenants give the same state database whatever the batch
// split.
func TestDeleteThreatStateDeterminism(t *testing.T) {
	cmds := []*raftpb.Command{setVersion(t0, FeatureThreatV3)}
	r := rand.New(rand.NewPCG(13, 13))
	tenants := []string{"acme", "beta", "gamma"}
	clients := []string{"c1", "c2", "c3"}
	scopes := []string{"read", "write", "admin", "billing"}
	now := t0
	for _, tn := range tenants {
		cmds = append(cmds, createTenant(now, tn, sigKey("k-"+tn, now, hour)))
		for _, c := range clients {
			cmds = append(cmds, createClient(now, testClient(tn, c)))
		}
	}
	for i := range 300 {
		now = t0 + int64(i+1)*sec
		tn, c := tenants[r.IntN(len(tenants))], clients[r.IntN(len(clients))]
		switch r.IntN(20) {
		case 0:
			cmds = append(cmds, delCmd(now, &raftpb.DeleteClient{Tenant: tn, ClientId: c}))
		case 1:
			cmds = append(cmds, createClient(now, testClient(tn, c)))
		case 2:
			cmds = append(cmds, delCmd(now, &raftpb.DeleteTenant{Tenant: tn}))
		case 3:
			cmds = append(cmds, createTenant(now, tn, sigKey("k-"+tn, now, hour)))
		case 4, 5:
			cmds = append(cmds, alertCmd(now, &raftpb.SecurityAlert{Kind: AlertTokenGuessing, Tenant: tn, ClientId: c, Signal: "client", Count: uint32(i)}))
		default:
			cmds = append(cmds, scopeUseIn(now, tn, c, scopes[r.IntN(len(scopes))], scopes[r.IntN(len(scopes))]))
		}
	}
	want := sameStateAcrossSplits(t, logOf(t, 1, cmds...), 8, 64, len(cmds))
	if !strings.Contains(want, bucketThreatClientScopes) || !strings.Contains(want, bucketThreatAlertLog) {
		t.Fatal("the workload wrote no scope history or alert log")
	}
}
