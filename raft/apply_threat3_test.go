package raft

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft/raftpb"
)

func scopeUseCmd(now int64, client string, scopes ...string) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now, Op: &raftpb.Command_RecordScopeUse{RecordScopeUse: &raftpb.RecordScopeUse{
		Tenant: "acme", ClientId: client, Scopes: scopes, Source: "198.51.100.0/24", GrantType: "client_credentials", Node: "node1", Region: "eu"}}}
}

func alertEvents(t *testing.T, f *FSM) []string {
	t.Helper()
	evs, err := f.EventsSince(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.Kind == raftpb.EventKind_EVENT_KIND_SECURITY_ALERT {
			a := e.GetAlert()
			out = append(out, a.Kind+" "+a.ClientId+" "+a.Scope+a.PreviousRegion+">"+a.Region)
		}
	}
	return out
}

// TestRecordScopeUse: a client's first recorded grant is its baseline (no
// alert); a scope it never used raises scope_first_use once, however many
// nodes propose it; the history is bounded; an unknown client records
// nothing; the op is gated on threat_v3; the golden file keeps the
// encoding (-update writes it).
func TestRecordScopeUse(t *testing.T) {
	golden := []struct {
		name string
		cmd  *raftpb.Command
	}{{"record_scope_use", scopeUseCmd(t0+sec, "c1", "read")}}
	writeGolden(t, golden)
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme", sigKey("k0", t0, hour)), createClient(t0, testClient("acme", "c1")))
	applyGolden(t, f, "TestRecordScopeUse", golden) // baseline
	steps := []struct {
		cmd    *raftpb.Command
		alerts []string
	}{
		{scopeUseCmd(t0+2*sec, "c1", "read"), nil},
		{scopeUseCmd(t0+3*sec, "c1", "read", "write", "admin"), []string{"admin", "write"}},
		{scopeUseCmd(t0+4*sec, "c1", "write"), nil}, // a second node's proposal of the same first use
		{scopeUseCmd(t0+5*sec, "c1", "admin", "write"), nil},
	}
	for i, s := range steps {
		g := grantOf(t, apply1(t, f, s.cmd))
		var got []string
		for _, a := range g.Alerts {
			if a.Kind != AlertScopeFirstUse || a.ClientId != "c1" || a.Tenant != "acme" || a.Source != "198.51.100.0/24" || a.TimeUnixNano != s.cmd.TimeUnixNano || a.Signal != "client_credentials" {
				t.Errorf("step %d: alert %v", i, a)
			}
			got = append(got, a.Scope)
		}
		if !slices.Equal(got, s.alerts) {
			t.Fatalf("step %d: alerts for %v, want %v", i, got, s.alerts)
		}
	}
	if got := fmt.Sprint(alertEvents(t, f)); got != "[scope_first_use c1 admin>eu scope_first_use c1 write>eu]" {
		t.Errorf("alert events %s", got)
	}
	h, err := f.ClientScopes("acme", "c1")
	if err != nil || fmt.Sprint(h.GetScopes()) != "[admin read write]" || h.GetFirstUnixNano() != t0+sec {
		t.Fatalf("history %v %v", h, err)
	}
	// An unknown client: not found, nothing recorded.
	if g := grantOf(t, apply1(t, f, scopeUseCmd(t0+6*sec, "nobody", "read"))); g.Outcome != OutcomeNotFound {
		t.Errorf("unknown client: %v", g)
	}
	if h, _ := f.ClientScopes("acme", "nobody"); h != nil {
		t.Errorf("history of an unknown client: %v", h)
	}
	// Bounded: beyond MaxClientScopes nothing more is recorded or alerted.
	now := t0 + 10*sec
	for i := 0; i < MaxClientScopes/MaxScopeUse+1; i++ {
		var sc []string
		for j := range MaxScopeUse {
			sc = append(sc, fmt.Sprintf("s%03d", i*MaxScopeUse+j))
		}
		now += sec
		apply1(t, f, scopeUseCmd(now, "c1", sc...))
	}
	if h, _ := f.ClientScopes("acme", "c1"); len(h.GetScopes()) != MaxClientScopes || !h.GetFull() {
		t.Errorf("history of %d scopes, full %v", len(h.GetScopes()), h.GetFull())
	}
	if g := grantOf(t, apply1(t, f, scopeUseCmd(now+sec, "c1", "zzz"))); len(g.Alerts) != 0 {
		t.Errorf("a full history raised %v", g.Alerts)
	}
	// Gated and checked.
	if g := OpProposerGated(scopeUseCmd(t0, "c1", "read")); g != FeatureThreatV3 {
		t.Errorf("gated on %q", g)
	}
	for _, bad := range []*raftpb.Command{
		scopeUseCmd(t0, "c1"),
		scopeUseCmd(t0, "", "read"),
		scopeUseCmd(t0, "c1", ""),
		scopeUseCmd(t0, "c1", strings.Repeat("x", maxTextLen+1)),
		scopeUseCmd(t0, "c1", slices.Repeat([]string{"a"}, MaxScopeUse+1)...),
	} {
		if err := checkCommand(bad); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}

// TestScopeHistoryNewClient: a client deleted and created again under the
// same id starts a new baseline.
func TestScopeHistoryNewClient(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme", sigKey("k0", t0, hour)), createClient(t0, testClient("acme", "c1")),
		scopeUseCmd(t0+sec, "c1", "read"))
	mustApply(t, f, &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + 2*sec, Op: &raftpb.Command_DeleteClient{DeleteClient: &raftpb.DeleteClient{Tenant: "acme", ClientId: "c1"}}},
		sweep(t0+3*hour), createClient(t0+3*hour, testClient("acme", "c1")))
	if g := grantOf(t, apply1(t, f, scopeUseCmd(t0+4*sec, "c1", "write"))); len(g.Alerts) != 0 {
		t.Errorf("the new client's first grant raised %v", g.Alerts)
	}
	if h, _ := f.ClientScopes("acme", "c1"); fmt.Sprint(h.GetScopes()) != "[write]" {
		t.Errorf("history %v", h)
	}
}

func travelRotate(now int64, gen uint64, presented, next, region string, window time.Duration) *raftpb.Command {
	c := rotate(now, gen, presented, next, "j"+next, 0)
	c.GetRotateRefresh().TravelRegion = region
	c.GetRotateRefresh().TravelWindowNanos = int64(window)
	return c
}

// TestRefreshImpossibleTravel: a family rotated in one region and then in
// another less than the window apart (command time) raises
// refresh_impossible_travel naming both regions and the gap; the same
// region, a gap beyond the window, or a rotation without a region raise
// nothing. The fields are gated (fieldGates); the golden file keeps the
// encoding.
func TestRefreshImpossibleTravel(t *testing.T) {
	w := 10 * time.Minute
	golden := []struct {
		name string
		cmd  *raftpb.Command
	}{{"rotate_refresh_travel", travelRotate(t0+sec, 1, "1", "2", "eu", w)}}
	writeGolden(t, golden)
	f := flowFSM(t)
	grantOf(t, apply1(t, f, flowCmd(t0, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("a"), CodeExpiresUnixNano: t0 + 60*sec,
		ClientId: "c1", UserId: "u1", Family: family("f1", h("1")), AccessToken: at("j1", t0+hour)})))
	applyGolden(t, f, "TestRefreshImpossibleTravel", golden) // first region: recorded only
	min := int64(time.Minute)
	steps := []struct {
		cmd    *raftpb.Command
		region string
		gap    int64 // of the alert; 0: none
	}{
		{travelRotate(t0+2*sec, 2, "2", "3", "eu", w), "eu", 0},
		{travelRotate(t0+2*sec+3*min, 3, "3", "4", "us", w), "us", 3 * min},
		{travelRotate(t0+2*sec+4*min, 4, "4", "5", "", 0), "us", 0},
		{travelRotate(t0+2*sec+20*min, 5, "5", "6", "eu", w), "eu", 0},       // 17 minutes later: travel
		{travelRotate(t0+2*sec+21*min, 6, "6", "7", "ap", 0), "ap", 0},       // no window: recorded only
		{travelRotate(t0+2*sec+21*min+sec, 7, "7", "8", "eu", w), "eu", sec}, // a second later
	}
	for i, s := range steps {
		g := grantOf(t, apply1(t, f, s.cmd))
		if g.Outcome != OutcomeDone || g.Family.GetLastRegion() != s.region || (len(g.Alerts) == 1) != (s.gap != 0) {
			t.Fatalf("step %d: %v", i, g)
		}
		if s.cmd.GetRotateRefresh().TravelRegion != "" && g.Family.GetLastRegionUnixNano() != s.cmd.TimeUnixNano {
			t.Errorf("step %d: region time %d", i, g.Family.GetLastRegionUnixNano())
		}
		if s.gap != 0 {
			a := g.Alerts[0]
			if a.Kind != AlertRefreshImpossibleTravel || a.ClientId != "c1" || a.Subject != "u1" || a.Region != s.region || a.GapNanos != s.gap || a.WindowSeconds != 600 {
				t.Errorf("step %d: alert %v", i, a)
			}
		}
	}
	if got := fmt.Sprint(alertEvents(t, f)); got != "[refresh_impossible_travel c1 eu>us refresh_impossible_travel c1 ap>eu]" {
		t.Errorf("alert events %s", got)
	}
	if g := OpProposerGated(travelRotate(t0, 1, "x", "y", "eu", w)); g != FeatureThreatV3 {
		t.Errorf("rotation with a region gated on %q", g)
	}
	if g := OpProposerGated(travelRotate(t0, 1, "x", "y", "", 0)); g != "" {
		t.Errorf("rotation without a region gated on %q", g)
	}
	for _, bad := range []*raftpb.Command{travelRotate(t0, 1, "x", "y", strings.Repeat("r", 65), w), travelRotate(t0, 1, "x", "y", "eu", -1)} {
		if err := checkCommand(bad); err == nil {
			t.Errorf("accepted %v", bad.GetRotateRefresh())
		}
	}
}

// TestRefreshTravelSameNetwork: a family rotated through another region
// from the network of its last rotation has not travelled (a load
// balancer spanning regions, a failover): no refresh_impossible_travel;
// from another network within the window it has.
func TestRefreshTravelSameNetwork(t *testing.T) {
	w := 10 * time.Minute
	f := flowFSM(t)
	grantOf(t, apply1(t, f, flowCmd(t0, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("a"), CodeExpiresUnixNano: t0 + 60*sec,
		ClientId: "c1", UserId: "u1", Family: family("f1", h("1")), AccessToken: at("j1", t0+hour)})))
	rot := func(now int64, gen uint64, presented, next, region, network string) *raftpb.Command {
		c := travelRotate(now, gen, presented, next, region, w)
		c.GetRotateRefresh().Network = network
		return c
	}
	const home, away = "198.51.100.0/24", "203.0.113.0/24"
	steps := []struct {
		cmd    *raftpb.Command
		travel bool
	}{
		{rot(t0+sec, 1, "1", "2", "eu", home), false},   // first: recorded
		{rot(t0+2*sec, 2, "2", "3", "us", home), false}, // same network through us
		{rot(t0+3*sec, 3, "3", "4", "eu", home), false}, // and back
		{rot(t0+4*sec, 4, "4", "5", "us", away), true},  // another network in another region
		{rot(t0+5*sec, 5, "5", "6", "us", home), false}, // the same region
		{rot(t0+6*sec, 6, "6", "7", "eu", ""), true},    // no network: the region decides
	}
	for i, s := range steps {
		g := grantOf(t, apply1(t, f, s.cmd))
		if g.Outcome != OutcomeDone || g.Family.GetLastRegion() != s.cmd.GetRotateRefresh().TravelRegion || (len(g.Alerts) == 1) != s.travel {
			t.Fatalf("step %d: travel %v: %v", i, s.travel, g)
		}
	}
}

// TestAlertLog: announced alerts are kept in the alert log only once the
// recorded cluster version enables threat_v3, for AlertLogRetention of
// command time, and read back by SecurityAlertsSince.
func TestAlertLog(t *testing.T) {
	f := openTestFSM(t)
	a := func(src string) *raftpb.SecurityAlert {
		return &raftpb.SecurityAlert{Kind: AlertCredentialStuffing, Tenant: "acme", Source: src, Count: 30, WindowSeconds: 60, Signal: "failures_per_source"}
	}
	mustApply(t, f, createTenant(t0, "acme", sigKey("k0", t0, hour)), alertCmd(t0+sec, a("198.18.0.1")))
	if got, err := f.SecurityAlertsSince(time.Unix(0, 0)); err != nil || len(got) != 0 {
		t.Fatalf("logged before threat_v3 is recorded: %v %v", got, err)
	}
	mustApply(t, f, setVersion(t0+2*sec, FeatureThreatV3),
		alertCmd(t0+3*sec, a("198.18.0.2")), alertCmd(t0+4*sec, a("198.18.0.3")))
	got, err := f.SecurityAlertsSince(time.Unix(0, t0+4*sec))
	if err != nil || len(got) != 1 || got[0].Source != "198.18.0.3" || got[0].TimeUnixNano != t0+4*sec {
		t.Fatalf("since the last: %v %v", got, err)
	}
	if got, _ := f.SecurityAlertsSince(time.Unix(0, 0)); len(got) != 2 {
		t.Fatalf("all: %v", got)
	}
	// A day later the old entries are gone.
	later := t0 + int64(AlertLogRetention) + 5*sec
	mustApply(t, f, alertCmd(later, a("198.18.0.4")))
	if got, _ := f.SecurityAlertsSince(time.Unix(0, 0)); len(got) != 1 || got[0].Source != "198.18.0.4" {
		t.Fatalf("after the retention: %v", got)
	}
}

// TestThreatV3Determinism: a log of scope uses, travelling rotations and
// alerts gives the same state database whatever its batch split.
func TestThreatV3Determinism(t *testing.T) {
	cmds := []*raftpb.Command{createTenant(t0, "acme", sigKey("k0", t0, hour)), createClient(t0, testClient("acme", "c1")),
		createClient(t0, testClient("acme", "c2")), setVersion(t0, FeatureThreatV3)}
	r := rand.New(rand.NewPCG(7, 7))
	scopes := []string{"read", "write", "admin", "billing", "audit"}
	for i := range 300 {
		now := t0 + int64(i+1)*sec
		switch r.IntN(3) {
		case 0, 1:
			c := scopeUseCmd(now, []string{"c1", "c2", "c3"}[r.IntN(3)], scopes[r.IntN(len(scopes))], scopes[r.IntN(len(scopes))])
			cmds = append(cmds, c)
		default:
			cmds = append(cmds, alertCmd(now, &raftpb.SecurityAlert{Kind: AlertTokenGuessing, Tenant: "acme", ClientId: "c1", Signal: "client", Count: uint32(i)}))
		}
	}
	want := sameStateAcrossSplits(t, logOf(t, 1, cmds...), 8, 64, len(cmds))
	if !strings.Contains(want, bucketThreatClientScopes) || !strings.Contains(want, bucketThreatAlertLog) {
		t.Fatal("the workload wrote no scope history or alert log")
	}
}
