package node

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// TestRiskIndexMatching: an alert applies to a request when everything it
// names (client, user, source address or network) is the request's;
// alerts naming only the tenant are tenant_alerts; alerts count for the
// window after the command's time only.
func TestRiskIndexMatching(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	x := newRiskIndex(5*time.Minute, func() time.Time { return now })
	raise := func(at time.Time, a *raftpb.SecurityAlert) {
		a.Tenant = "acme"
		x.observe(1, &raftpb.Command{TimeUnixNano: at.UnixNano(), Op: &raftpb.Command_RaiseSecurityAlert{RaiseSecurityAlert: &raftpb.RaiseSecurityAlert{Alert: a}}}, raft.Result{})
	}
	raise(now, &raftpb.SecurityAlert{Kind: raft.AlertCredentialStuffing, Subject: "alice", Source: "198.51.100.0/24"})
	raise(now, &raftpb.SecurityAlert{Kind: raft.AlertTokenGuessing, ClientId: "rs", Source: "2001:db8:1:2::/64"})
	raise(now.Add(-6*time.Minute), &raftpb.SecurityAlert{Kind: raft.AlertRateLimitExceeded, ClientId: "old"})
	raise(now, &raftpb.SecurityAlert{Kind: raft.AlertRateLimitExceeded, Source: "192.0.2.7"})
	for _, c := range []struct {
		in     issuance.PolicyInput
		alerts []string
		score  float64
	}{
		{issuance.PolicyInput{Subject: "alice", ClientIP: "198.51.100.20"}, []string{raft.AlertCredentialStuffing}, 1},
		{issuance.PolicyInput{Subject: "alice", ClientIP: "::ffff:198.51.100.20"}, []string{raft.AlertCredentialStuffing}, 1},
		{issuance.PolicyInput{Subject: "alice", ClientIP: "203.0.113.1"}, nil, 0},
		{issuance.PolicyInput{Subject: "bob", ClientIP: "198.51.100.20"}, nil, 0},
		{issuance.PolicyInput{ClientID: "rs", ClientIP: "2001:db8:1:2::99"}, []string{raft.AlertTokenGuessing}, 1},
		{issuance.PolicyInput{ClientID: "rs", ClientIP: "2001:db8:1:3::99"}, nil, 0},
		{issuance.PolicyInput{ClientID: "old"}, nil, 0},
		{issuance.PolicyInput{ClientID: "any", ClientIP: "192.0.2.7"}, []string{raft.AlertRateLimitExceeded}, 1},
		{issuance.PolicyInput{ClientID: "any", ClientIP: "192.0.2.8"}, nil, 0},
	} {
		c.in.Tenant = "acme"
		r := x.signal(context.Background(), c.in)
		if !slices.Equal(r.Alerts, c.alerts) || r.Score != c.score || r.TenantAlerts != nil {
			t.Errorf("%+v: %+v, want alerts %v risk %v", c.in, r, c.alerts, c.score)
		}
	}
	raise(now, &raftpb.SecurityAlert{Kind: raft.AlertCredentialStuffing, Signal: "failures_per_tenant"})
	if r := x.signal(context.Background(), issuance.PolicyInput{Tenant: "acme", ClientID: "any"}); r.Score != 0.5 || !slices.Equal(r.TenantAlerts, []string{raft.AlertCredentialStuffing}) || r.Alerts != nil {
		t.Errorf("tenant-wide alert: %+v", r)
	}
	if r := x.signal(context.Background(), issuance.PolicyInput{Tenant: "other", ClientID: "rs"}); r.Score != 0 || r.Alerts != nil || r.TenantAlerts != nil {
		t.Errorf("another tenant: %+v", r)
	}
	now = now.Add(5 * time.Minute)
	if r := x.signal(context.Background(), issuance.PolicyInput{Tenant: "acme", Subject: "alice", ClientIP: "198.51.100.20"}); r.Score != 0 || r.TenantAlerts != nil {
		t.Errorf("after the window: %+v", r)
	}
	raise(now, &raftpb.SecurityAlert{Kind: raft.AlertRateLimitExceeded, ClientId: "new"})
	if k := x.n.Load(); k != 1 {
		t.Errorf("%d alerts indexed after the sweep, want 1", k)
	}
}

// TestRiskIndexThreatV3: the alerts the FSM returns in GrantResult.alerts
// (scope_first_use from RecordScopeUse, refresh_impossible_travel from
// RotateRefresh) are indexed like op 140's, from the command's time.
func TestRiskIndexThreatV3(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	x := newRiskIndex(5*time.Minute, func() time.Time { return now })
	scope := &raftpb.SecurityAlert{Kind: raft.AlertScopeFirstUse, Tenant: "acme", ClientId: "rs", Source: "203.0.113.0/24", Scope: "admin"}
	x.observe(1, &raftpb.Command{TimeUnixNano: now.UnixNano(), Op: &raftpb.Command_RecordScopeUse{RecordScopeUse: &raftpb.RecordScopeUse{Tenant: "acme", ClientId: "rs", Scopes: []string{"admin"}}}},
		raft.Result{Grant: &raftpb.GrantResult{Alerts: []*raftpb.SecurityAlert{scope}}})
	travel := &raftpb.SecurityAlert{Kind: raft.AlertRefreshImpossibleTravel, Tenant: "acme", ClientId: "web", Subject: "alice", Region: "us", PreviousRegion: "eu"}
	x.observe(2, &raftpb.Command{TimeUnixNano: now.UnixNano(), Op: &raftpb.Command_RotateRefresh{RotateRefresh: &raftpb.RotateRefresh{Tenant: "acme"}}},
		raft.Result{Grant: &raftpb.GrantResult{Alerts: []*raftpb.SecurityAlert{travel}}})
	for _, c := range []struct {
		in     issuance.PolicyInput
		alerts []string
	}{
		{issuance.PolicyInput{ClientID: "rs", ClientIP: "203.0.113.9"}, []string{raft.AlertScopeFirstUse}},
		{issuance.PolicyInput{ClientID: "rs", ClientIP: "198.51.100.9"}, nil},
		{issuance.PolicyInput{ClientID: "web", Subject: "alice", ClientIP: "198.51.100.9"}, []string{raft.AlertRefreshImpossibleTravel}},
		{issuance.PolicyInput{ClientID: "web", Subject: "bob"}, nil},
	} {
		c.in.Tenant = "acme"
		if r := x.signal(context.Background(), c.in); !slices.Equal(r.Alerts, c.alerts) {
			t.Errorf("%+v: %+v, want %v", c.in, r, c.alerts)
		}
	}
	// Deleting the tenant forgets its alerts.
	x.observe(3, &raftpb.Command{TimeUnixNano: now.UnixNano(), Op: &raftpb.Command_DeleteTenant{DeleteTenant: &raftpb.DeleteTenant{Tenant: "acme"}}}, raft.Result{})
	if r := x.signal(context.Background(), issuance.PolicyInput{Tenant: "acme", ClientID: "rs", ClientIP: "203.0.113.9"}); len(r.Alerts) != 0 || x.n.Load() != 0 {
		t.Errorf("after deleting the tenant: %+v, %d indexed", r, x.n.Load())
	}
}

// TestSIEMThreatV3: scope_first_use and refresh_impossible_travel are
// Detection Findings with the scope, or both regions and the gap.
func TestSIEMThreatV3(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	e, ok := SIEMFromEvent("c", &raftpb.Event{Tenant: "acme", Index: 7, Kind: raftpb.EventKind_EVENT_KIND_SECURITY_ALERT, TimeUnixNano: now.UnixNano(), ClientId: "rs",
		Alert: &raftpb.SecurityAlert{Kind: raft.AlertScopeFirstUse, Tenant: "acme", ClientId: "rs", Source: "203.0.113.0/24", Scope: "admin", Signal: "client_credentials"}}, now)
	if !ok || e.ClassUID != 2004 || e.Unmapped["scope"] != "admin" || e.SrcEndpoint == nil || e.SrcEndpoint.Subnet != "203.0.113.0/24" || e.FindingInfo.Types[0] != raft.AlertScopeFirstUse {
		t.Errorf("scope_first_use: %+v", e)
	}
	e, ok = SIEMFromEvent("c", &raftpb.Event{Tenant: "acme", Index: 8, Kind: raftpb.EventKind_EVENT_KIND_SECURITY_ALERT, TimeUnixNano: now.UnixNano(),
		Alert: &raftpb.SecurityAlert{Kind: raft.AlertRefreshImpossibleTravel, Tenant: "acme", ClientId: "web", Subject: "alice", Region: "us", PreviousRegion: "eu",
			GapNanos: int64(90 * time.Second), WindowSeconds: 600}}, now)
	if !ok || e.ClassUID != 2004 || e.Unmapped["previous_region"] != "eu" || e.Unmapped["region"] != "us" || e.Unmapped["gap_seconds"] != int64(90) {
		t.Errorf("refresh_impossible_travel: %+v", e)
	}
}
