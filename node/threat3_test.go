package node_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// threatCluster is a three-node cluster trusting 127.0.0.0/8 as a proxy,
// each node writing its SIEM feed to dir/siem<i>.jsonl, with threat_v3
// recorded. opts apply after these settings (they may change them).
func threatCluster(t *testing.T, dir string, opts ...nodetest.ClusterOption) *nodetest.Cluster {
	t.Helper()
	opts = append([]nodetest.ClusterOption{nodetest.WithNodeOptions(nodetest.WithConfig(func(c *node.Config) {
		c.RateLimits = issuance.RateLimits{
			TrustedProxies:        []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			AlertIntrospectMisses: 5,
			Tenants:               map[string]issuance.RateLimits{"default": {AlertIntrospectMisses: 5}},
		}
	}))}, opts...)
	for i := range 3 {
		opts = append(opts, nodetest.WithNode(i, nodetest.WithConfig(func(c *node.Config) { c.SIEMFile = filepath.Join(dir, fmt.Sprintf("siem%d.jsonl", i)) })))
	}
	c := nodetest.StartCluster(t, 3, opts...)
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i := range 3 {
			if !c.Node(i).Raft().State().FeatureEnabled(raft.FeatureThreatV3) {
				return fmt.Errorf("node %d: threat_v3 not recorded", i)
			}
		}
		return nil
	})
	return c
}

func setPolicy(t *testing.T, n *nodetest.Node, src string) {
	t.Helper()
	if _, err := n.Admin.SetPolicy(context.Background(), connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: src}})); err != nil {
		t.Fatal(err)
	}
}

// TestScopeFirstUseCluster (issue 13): a client's first grant is its
// baseline (no alert); the same new scope granted concurrently through the
// three nodes raises one scope_first_use alert for the cluster (the FSM
// decides), on every node's SIEM feed, naming the client, the scope and
// the source network; the tenant's policy sees it in alerts for the client
// from that network only. Token requests never wait for the record.
func TestScopeFirstUseCluster(t *testing.T) {
	dir := t.TempDir()
	c := threatCluster(t, dir)
	n0 := c.Node(0)
	id, secret := n0.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "reporting", Scopes: []string{"read", "write", "admin"}})
	c.WaitConverged()
	cc := func(i int, scope, ip string) int {
		return alertPost(t, c.Node(i).TokenURL("default"), url.Values{"grant_type": {"client_credentials"}, "scope": {scope}}, id, secret, ip)
	}
	if code := cc(0, "read", "198.51.100.7"); code != http.StatusOK {
		t.Fatalf("baseline grant: %d", code)
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i := range 3 {
			h, err := c.Node(i).Raft().FSM().ClientScopes("default", id)
			if err != nil || fmt.Sprint(h.GetScopes()) != "[read]" {
				return fmt.Errorf("node %d: history %v %v", i, h, err)
			}
		}
		return nil
	})
	// The escalation, through every node at once.
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			if code := cc(i, "read write", "203.0.113.5"); code != http.StatusOK {
				t.Errorf("node %d: escalated grant %d", i, code)
			}
		})
	}
	wg.Wait()
	firstUses := func(i int) []node.SIEMEvent {
		var out []node.SIEMEvent
		for _, a := range siemAlerts(t, filepath.Join(dir, fmt.Sprintf("siem%d.jsonl", i)), secret) {
			if a.Unmapped["alert"] == raft.AlertScopeFirstUse {
				out = append(out, a)
			}
		}
		return out
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i := range 3 {
			got := firstUses(i)
			if len(got) != 1 {
				return fmt.Errorf("node %d: %d scope_first_use alerts: %+v", i, len(got), got)
			}
			a := got[0]
			if a.Unmapped["scope"] != "write" || a.Unmapped["client_id"] != id || a.SrcEndpoint == nil || a.SrcEndpoint.Subnet != "203.0.113.0/24" ||
				a.ClassName != "Detection Finding" || a.Unmapped["signal"] != "client_credentials" {
				return fmt.Errorf("node %d: alert %+v", i, a)
			}
		}
		return nil
	})
	// The policy input.
	setPolicy(t, c.Node(1), `"scope_first_use" in alerts ? dyn({"allow": false, "reason": "new scope"}) : dyn({"allow": true})`)
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i := range 3 {
			if code := cc(i, "read", "203.0.113.77"); code != http.StatusBadRequest {
				return fmt.Errorf("node %d: the client from the alert's network got %d", i, code)
			}
		}
		return nil
	})
	if code := cc(2, "read write", "198.51.100.7"); code != http.StatusOK {
		t.Errorf("the client from its usual network: %d", code)
	}
	// Later uses of known scopes raise nothing more.
	time.Sleep(500 * time.Millisecond)
	for i := range 3 {
		if got := firstUses(i); len(got) != 1 {
			t.Errorf("node %d: %d scope_first_use alerts in the end", i, len(got))
		}
	}
}

// TestRefreshImpossibleTravelRegions (issue 13): on a cluster whose nodes
// are in three regions, a refresh family rotated through the eu and ap
// nodes and at once through the us node from another network raises
// refresh_impossible_travel (both regions, the gap) on every replica's
// SIEM feed and as a policy input (a policy refusing on it refuses that
// refresh); rotations within one region raise nothing, and neither does
// a rotation through another region from the same network (routing, not
// travel: the front door of make cluster spans two regions).
func TestRefreshImpossibleTravelRegions(t *testing.T) {
	dir := t.TempDir()
	c := threatCluster(t, dir, nodetest.WithRegions("eu", "us", "ap"))
	e := newFlowEnv(t, c.Node(0))
	c.WaitConverged()
	tok := e.codeTokens(t)
	rt := tok.RefreshToken
	for _, i := range []int{0, 0, 2} { // eu, eu, then ap from the same network
		next, err := refreshFrom(e.conf, c.Node(i).TokenURL("default"), rt, "198.51.100.7")
		if err != nil {
			t.Fatalf("refresh through node %d: %v", i, err)
		}
		rt = next.RefreshToken
	}
	travels := func(i int) []node.SIEMEvent {
		var out []node.SIEMEvent
		for _, a := range siemAlerts(t, filepath.Join(dir, fmt.Sprintf("siem%d.jsonl", i)), tok.RefreshToken, rt) {
			if a.Unmapped["alert"] == raft.AlertRefreshImpossibleTravel {
				out = append(out, a)
			}
		}
		return out
	}
	for i := range 3 {
		if got := travels(i); len(got) != 0 {
			t.Fatalf("node %d: travel alerts within one region or network: %+v", i, got)
		}
	}
	setPolicy(t, c.Node(0), `grant_type == "refresh_token" && "refresh_impossible_travel" in alerts ? dyn({"allow": false, "reason": "impossible travel"}) : dyn({"allow": true})`)
	c.WaitConverged()
	// The rotation in us raises the alert, and the policy, deciding just
	// before the tokens are minted, already sees it (the FSM raises a
	// signal; refusing is the tenant policy's choice).
	if _, err := refreshFrom(e.conf, c.Node(1).TokenURL("default"), rt, "203.0.113.7"); err == nil || !strings.Contains(err.Error(), "impossible travel") {
		t.Fatalf("refresh in us: %v", err)
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i := range 3 {
			got := travels(i)
			if len(got) != 1 {
				return fmt.Errorf("node %d: %d travel alerts", i, len(got))
			}
			a := got[0]
			if a.Unmapped["previous_region"] != "ap" || a.Unmapped["region"] != "us" || a.Unmapped["client_id"] != e.conf.ClientID {
				return fmt.Errorf("node %d: alert %+v", i, a)
			}
		}
		return nil
	})
	if a := travels(0)[0]; a.Unmapped["gap_seconds"] != float64(0) || a.Unmapped["window_seconds"] != float64(600) {
		t.Errorf("gap %v, window %v", a.Unmapped["gap_seconds"], a.Unmapped["window_seconds"])
	}
}

// TestTenantTravelWindow (issue 13): a tenant's own impossible-travel
// window (RateLimits.Tenants[t].AlertTravelWindow) overrides the node's
// --alert-travel-window: with the nodes' detection off and the tenant's
// window set, a family rotated in eu and at once in us raises
// refresh_impossible_travel; with the nodes' default window and the
// tenant's turned off, the same rotations raise nothing.
func TestTenantTravelWindow(t *testing.T) {
	for _, tc := range []struct {
		name         string
		node, tenant time.Duration
		want         int
	}{
		{"tenant window, node off", -1, 10 * time.Minute, 1},
		{"tenant off, node default", 0, -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := threatCluster(t, t.TempDir(), nodetest.WithRegions("eu", "us", "ap"), nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) {
				cfg.AlertTravelWindow = tc.node
				d := cfg.RateLimits.Tenants["default"]
				d.AlertTravelWindow = tc.tenant
				cfg.RateLimits.Tenants["default"] = d
			})))
			e := newFlowEnv(t, c.Node(0))
			c.WaitConverged()
			rt := e.codeTokens(t).RefreshToken
			for k, i := range []int{0, 0, 1} { // eu, eu, then us at once from another network
				ip := "198.51.100.7"
				if k == 2 {
					ip = "203.0.113.7"
				}
				next, err := refreshFrom(e.conf, c.Node(i).TokenURL("default"), rt, ip)
				if err != nil {
					t.Fatalf("refresh through node %d: %v", i, err)
				}
				rt = next.RefreshToken
			}
			c.WaitConverged()
			for i := range 3 {
				all, err := c.Node(i).Raft().FSM().SecurityAlertsSince(time.Unix(0, 0))
				if err != nil {
					t.Fatal(err)
				}
				var got []*raftpb.SecurityAlert
				for _, a := range all {
					if a.Kind == raft.AlertRefreshImpossibleTravel {
						got = append(got, a)
					}
				}
				if len(got) != tc.want {
					t.Fatalf("node %d: %d travel alerts, want %d: %v", i, len(got), tc.want, got)
				}
				if tc.want == 1 && (got[0].PreviousRegion != "eu" || got[0].Region != "us" || got[0].WindowSeconds != 600) {
					t.Fatalf("node %d: alert %v", i, got[0])
				}
			}
		})
	}
}

// TestAlertIndexSurvivesRestartAndSnapshot (issue 13): an alert raised
// while a node runs is still a policy input after that node restarts (the
// log entries it had applied are not replayed), and a node that was down
// when it was raised and catches up from a snapshot sees it too: both
// rebuild their index from the replicated alert log.
func TestAlertIndexSurvivesRestartAndSnapshot(t *testing.T) {
	dir := t.TempDir()
	c := threatCluster(t, dir, nodetest.WithNodeOptions(func(cfg *node.Config) {
		prev := cfg.RaftTuning
		cfg.RaftTuning = func(rc *raft.Config) {
			if prev != nil {
				prev(rc)
			}
			rc.SnapshotThreshold = 16
			rc.SnapshotInterval = 50 * time.Millisecond
			rc.TrailingLogs = 4
		}
	}))
	l := c.Leader()
	li := c.LeaderIndex()
	rs, rsSecret := l.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "resource-server"})
	setPolicy(t, l, `"token_guessing" in alerts ? dyn({"allow": false, "reason": "under alert"}) : dyn({"allow": true})`)
	c.WaitConverged()
	restarted, down := (li+1)%3, (li+2)%3
	downAt := c.Node(down).Raft().Status().AppliedIndex
	c.Stop(down)
	const attacker = "203.0.113.9"
	introspectURL := strings.TrimSuffix(l.TokenURL("default"), "/token") + "/introspect"
	for i := range 8 {
		if code := alertPost(t, introspectURL, url.Values{"token": {fmt.Sprintf("guessed-token-%d", i)}}, rs, rsSecret, attacker); code != http.StatusOK {
			t.Fatalf("introspection %d: %d", i, code)
		}
	}
	denied := func(i int) error {
		if code := alertPost(t, c.Node(i).TokenURL("default"), url.Values{"grant_type": {"client_credentials"}}, rs, rsSecret, attacker); code != http.StatusBadRequest {
			return fmt.Errorf("node %d: the client under alert got %d", i, code)
		}
		return nil
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error { return denied(restarted) })
	// Compact the log past the stopped node's position.
	for i := range 40 {
		l.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: fmt.Sprintf("c%d", i)})
	}
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		if first := l.Raft().FirstLogIndex(); first <= downAt+1 {
			return fmt.Errorf("leader's first log index %d, stopped node needs %d", first, downAt+1)
		}
		return nil
	})
	c.Restart(restarted)
	if err := denied(restarted); err != nil {
		t.Errorf("after a restart: %v", err)
	}
	n := c.Restart(down)
	c.WaitConverged()
	if got := n.Raft().Stats()["last_snapshot_index"]; got == "0" || got == "" {
		t.Fatalf("the stopped node caught up without a snapshot (last_snapshot_index %q)", got)
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error { return denied(down) })
	if code := alertPost(t, n.TokenURL("default"), url.Values{"grant_type": {"client_credentials"}}, rs, rsSecret, "198.51.100.1"); code != http.StatusOK {
		t.Errorf("the client from another network: %d", code)
	}
}

// TestThreatV3GatedByClusterVersion (issue 13): while the recorded cluster
// version lacks threat_v3 (a downgrade to version 1 is held), no node
// proposes RecordScopeUse and refresh rotations carry no travel region;
// token requests are answered as usual. When the hold is cancelled both
// come back.
func TestThreatV3GatedByClusterVersion(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithRegions("eu", "us", "ap"), nodetest.WithNodeOptions(
		nodetest.WithConfig(func(c *node.Config) {
			c.RateLimits = issuance.RateLimits{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
		})))
	waitClusterVersion(t, c, "this release's", func(v uint32, f []string, hold bool) bool { return slices.Contains(f, raft.FeatureThreatV3) })
	var mu sync.Mutex
	var scopeUses, travels int
	c.Node(0).Raft().FSM().OnApplied(func(_ uint64, cmd *raftpb.Command, _ raft.Result) {
		mu.Lock()
		defer mu.Unlock()
		if cmd.GetRecordScopeUse() != nil {
			scopeUses++
		}
		if cmd.GetRotateRefresh().GetTravelRegion() != "" {
			travels++
		}
	})
	counts := func() (int, int) { mu.Lock(); defer mu.Unlock(); return scopeUses, travels }
	ctx := context.Background()
	if _, err := c.Node(2).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Version: 1})); err != nil {
		t.Fatal(err)
	}
	waitClusterVersion(t, c, "version 1, held", func(v uint32, f []string, hold bool) bool { return v == 1 && hold })
	id, secret := c.Node(0).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "reporting", Scopes: []string{"read", "write"}})
	e := newFlowEnv(t, c.Node(0))
	c.WaitConverged()
	cc := func(i int, scope string) {
		t.Helper()
		if code := alertPost(t, c.Node(i).TokenURL("default"), url.Values{"grant_type": {"client_credentials"}, "scope": {scope}}, id, secret, "198.51.100.7"); code != http.StatusOK {
			t.Fatalf("node %d: grant %d", i, code)
		}
	}
	cc(0, "read")
	cc(1, "read write")
	tok := e.codeTokens(t)
	next, err := refreshFrom(e.conf, c.Node(0).TokenURL("default"), tok.RefreshToken, "198.51.100.7")
	if err != nil {
		t.Fatal(err)
	}
	if next, err = refreshFrom(e.conf, c.Node(1).TokenURL("default"), next.RefreshToken, "198.51.100.7"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	c.WaitConverged()
	if s, tr := counts(); s != 0 || tr != 0 {
		t.Fatalf("with threat_v3 not recorded: %d RecordScopeUse, %d rotations with a travel region", s, tr)
	}
	if h, _ := c.Node(0).Raft().FSM().ClientScopes("default", id); h != nil {
		t.Fatalf("scope history recorded: %v", h)
	}
	// Cancelled: both come back.
	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Cancel: true})); err != nil {
		t.Fatal(err)
	}
	waitClusterVersion(t, c, "this release's again", func(v uint32, f []string, hold bool) bool { return slices.Contains(f, raft.FeatureThreatV3) })
	cc(2, "read")
	if _, err := refreshFrom(e.conf, c.Node(2).TokenURL("default"), next.RefreshToken, "198.51.100.7"); err != nil {
		t.Fatal(err)
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if s, tr := counts(); s == 0 || tr == 0 {
			return fmt.Errorf("after the hold: %d RecordScopeUse, %d rotations with a travel region", s, tr)
		}
		return nil
	})
}

// TestDeleteClientDropsScopeHistory (issue 13): deleting a client removes
// its replicated scope history on every node.
func TestDeleteClientDropsScopeHistory(t *testing.T) {
	c := threatCluster(t, t.TempDir())
	n0 := c.Node(0)
	id, secret := n0.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "reporting", Scopes: []string{"read"}})
	c.WaitConverged()
	if code := alertPost(t, c.Node(1).TokenURL("default"), url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}, id, secret, "198.51.100.7"); code != http.StatusOK {
		t.Fatalf("grant: %d", code)
	}
	history := func(want bool) func() error {
		return func() error {
			for i := range 3 {
				h, err := c.Node(i).Raft().FSM().ClientScopes("default", id)
				if err != nil || (h != nil) != want {
					return fmt.Errorf("node %d: history %v %v, want one: %v", i, h, err, want)
				}
			}
			return nil
		}
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, history(true))
	if _, err := n0.Admin.DeleteClient(context.Background(), connect.NewRequest(&adminv1.DeleteClientRequest{Tenant: "default", ClientId: id})); err != nil {
		t.Fatal(err)
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, history(false))
}
