package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestSecurityAlertsAsPolicyInputs (issue 13): a token_guessing alert
// raised by the node (op 140) reaches the tenant's CEL policy as risk 1
// and alerts ["token_guessing"] for the requests it names (the client,
// from the source address), so a policy denying on risk denies that
// client's token requests from there; the same client from another
// network and another client from the same address are not affected, and
// once the alert window has passed the client is allowed again.
func TestSecurityAlertsAsPolicyInputs(t *testing.T) {
	var skew atomic.Int64
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		c.AlertRiskWindow = 5 * time.Minute
		c.RateLimits = issuance.RateLimits{
			TrustedProxies:        []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			AlertIntrospectMisses: 5,
			Tenants:               map[string]issuance.RateLimits{"default": {AlertIntrospectMisses: 5}},
		}
	}))
	ctx := context.Background()
	rs, rsSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "resource-server"})
	other, otherSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "other"})
	src := `risk >= 1.0 && "token_guessing" in alerts ? dyn({"allow": false, "reason": "client under alert: " + alerts[0]}) : dyn({"allow": true})`
	if _, err := n.Admin.SetPolicy(ctx, connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: src}})); err != nil {
		t.Fatal(err)
	}
	tokenURL := n.TokenURL("default")
	introspectURL := strings.TrimSuffix(tokenURL, "/token") + "/introspect"
	cc := url.Values{"grant_type": {"client_credentials"}}
	const attacker = "203.0.113.9"
	token := func(id, secret, ip string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(cc.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
		req.Header.Set("X-Forwarded-For", ip)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res.StatusCode, string(b)
	}
	if code, body := token(rs, rsSecret, attacker); code != http.StatusOK {
		t.Fatalf("before any alert: %d %s", code, body)
	}
	// The gateway check sees the same signal (its peer is a trusted proxy
	// naming the client's address).
	if _, err := n.Admin.SetGatewayRoute(ctx, connect.NewRequest(&adminv1.SetGatewayRouteRequest{Tenant: "default",
		Route: &adminv1.GatewayRoute{PathPrefix: "/api", Method: "GET"}})); err != nil {
		t.Fatal(err)
	}
	rsToken := ccToken(t, n, rs, rsSecret)
	gwCheck := func() int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, n.Issuer("default")+"/gateway/check", nil)
		req.Header.Set("X-Forwarded-Method", "GET")
		req.Header.Set("X-Forwarded-Uri", "/api/x")
		req.Header.Set("X-Forwarded-For", attacker)
		req.Header.Set("Authorization", "Bearer "+rsToken)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if code := gwCheck(); code != http.StatusOK {
		t.Fatalf("gateway check before any alert: %d", code)
	}
	// Token guessing: 8 made-up tokens from the attacker's address.
	for i := range 8 {
		if code := alertPost(t, introspectURL, url.Values{"token": {fmt.Sprintf("guessed-token-%d", i)}}, rs, rsSecret, attacker); code != http.StatusOK {
			t.Fatalf("introspection %d: %d", i, code)
		}
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		code, body := token(rs, rsSecret, attacker)
		if code != http.StatusBadRequest || !strings.Contains(body, "client under alert: token_guessing") {
			return fmt.Errorf("client under alert: %d %s", code, body)
		}
		return nil
	})
	if code := gwCheck(); code != http.StatusForbidden {
		t.Errorf("gateway check of the client under alert: %d", code)
	}
	if code, body := token(rs, rsSecret, "198.51.100.1"); code != http.StatusOK {
		t.Errorf("the same client from another network: %d %s", code, body)
	}
	if code, body := token(other, otherSecret, attacker); code != http.StatusOK {
		t.Errorf("another client from the attacker's address: %d %s", code, body)
	}
	// After the window, the alert no longer counts.
	skew.Store(int64(6 * time.Minute))
	if code, body := token(rs, rsSecret, attacker); code != http.StatusOK {
		t.Errorf("after the alert window: %d %s", code, body)
	}
	if code := gwCheck(); code != http.StatusOK {
		t.Errorf("gateway check after the alert window: %d", code)
	}
}

// forwardedFor sets X-Forwarded-For on every request (the node trusts
// 127.0.0.0/8 as a proxy in these tests).
type forwardedFor string

func (f forwardedFor) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Forwarded-For", string(f))
	return http.DefaultTransport.RoundTrip(r)
}

// refreshFrom redeems a refresh token at tokenURL from the address ip.
func refreshFrom(conf *oauth2.Config, tokenURL, rt, ip string) (*oauth2.Token, error) {
	c := *conf
	c.Endpoint.TokenURL = tokenURL
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: forwardedFor(ip), Timeout: 30 * time.Second})
	return c.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
}

// TestRefreshFromNewNetworkAlert (issue 13): each rotation records the
// refresh family's network (IPv4 /24); a rotation from another network
// raises a refresh_new_network alert (SIEM feed) naming the client, the
// user and the new network, which the tenant's policy sees in alerts: a
// policy refusing a family that moved refuses that refresh, while
// rotations within the family's network go on.
func TestRefreshFromNewNetworkAlert(t *testing.T) {
	path := filepath.Join(t.TempDir(), "siem.jsonl")
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.SIEMFile = path
		c.RateLimits = issuance.RateLimits{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	}))
	e := newFlowEnv(t, n)
	src := `grant_type == "refresh_token" && "refresh_new_network" in alerts ? dyn({"allow": false, "reason": "the grant moved to another network"}) : dyn({"allow": true})`
	if _, err := n.Admin.SetPolicy(context.Background(), connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: src}})); err != nil {
		t.Fatal(err)
	}
	tok := e.codeTokens(t)
	refresh := func(rt, ip string) (*oauth2.Token, error) { return refreshFrom(e.conf, n.TokenURL("default"), rt, ip) }
	rt := tok.RefreshToken
	for _, ip := range []string{"198.51.100.7", "198.51.100.9", "198.51.100.200"} {
		next, err := refresh(rt, ip)
		if err != nil {
			t.Fatalf("refresh from %s (the family's network): %v", ip, err)
		}
		rt = next.RefreshToken
	}
	if alerts := siemAlerts(t, path); len(alerts) != 0 {
		t.Fatalf("alerts before the family moved: %+v", alerts)
	}
	if _, err := refresh(rt, "203.0.113.5"); err == nil || !strings.Contains(err.Error(), "the grant moved to another network") {
		t.Fatalf("refresh from another network: %v", err)
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, a := range siemAlerts(t, path, rt, tok.RefreshToken) {
			if a.Unmapped["alert"] == "refresh_new_network" && a.SrcEndpoint != nil && a.SrcEndpoint.Subnet == "203.0.113.0/24" &&
				a.Unmapped["client_id"] == e.conf.ClientID && a.Unmapped["signal"] == "refresh_family_network" {
				return nil
			}
		}
		return fmt.Errorf("no refresh_new_network alert in the SIEM feed: %+v", siemAlerts(t, path))
	})
}

// TestSecurityAlertsEveryNode (issue 13): on a three-node cluster, an alert
// raised through one node is a policy input on the others (every replica
// indexes the applied alerts), and a refresh family rotated through two
// nodes from two networks raises refresh_new_network on every replica (the
// network travels in the command: each replica's SIEM feed has it).
func TestSecurityAlertsEveryNode(t *testing.T) {
	dir := t.TempDir()
	opts := []nodetest.ClusterOption{nodetest.WithNodeOptions(nodetest.WithConfig(func(c *node.Config) {
		c.RateLimits = issuance.RateLimits{
			TrustedProxies:        []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			AlertIntrospectMisses: 5,
			Tenants:               map[string]issuance.RateLimits{"default": {AlertIntrospectMisses: 5}},
		}
	}))}
	for i := range 3 {
		opts = append(opts, nodetest.WithNode(i, nodetest.WithConfig(func(c *node.Config) { c.SIEMFile = filepath.Join(dir, fmt.Sprintf("siem%d.jsonl", i)) })))
	}
	// One region: the family moves network, not region (two regions would
	// raise refresh_impossible_travel too; threat3_test.go).
	opts = append(opts, nodetest.WithRegions("eu"))
	c := nodetest.StartCluster(t, 3, opts...)
	n0 := c.Node(0)
	rs, rsSecret := n0.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "resource-server"})
	e := newFlowEnv(t, n0)
	src := `"token_guessing" in alerts || "refresh_new_network" in alerts ? dyn({"allow": false, "reason": "under alert: " + alerts[0]}) : dyn({"allow": true})`
	if _, err := c.Node(1).Admin.SetPolicy(context.Background(), connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: src}})); err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()
	tok := e.codeTokens(t)
	next, err := refreshFrom(e.conf, c.Node(1).TokenURL("default"), tok.RefreshToken, "198.51.100.7")
	if err != nil {
		t.Fatalf("refresh through node 1: %v", err)
	}
	if _, err := refreshFrom(e.conf, c.Node(2).TokenURL("default"), next.RefreshToken, "203.0.113.5"); err == nil || !strings.Contains(err.Error(), "under alert: refresh_new_network") {
		t.Fatalf("refresh through node 2 from another network: %v", err)
	}
	// Token guessing through node 0.
	const attacker = "203.0.113.9"
	introspectURL := strings.TrimSuffix(n0.TokenURL("default"), "/token") + "/introspect"
	for i := range 8 {
		if code := alertPost(t, introspectURL, url.Values{"token": {fmt.Sprintf("guessed-token-%d", i)}}, rs, rsSecret, attacker); code != http.StatusOK {
			t.Fatalf("introspection %d: %d", i, code)
		}
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i := range 3 {
			if code := alertPost(t, c.Node(i).TokenURL("default"), url.Values{"grant_type": {"client_credentials"}}, rs, rsSecret, attacker); code != http.StatusBadRequest {
				return fmt.Errorf("node %d: the client under alert got %d", i, code)
			}
			moved := false
			for _, a := range siemAlerts(t, filepath.Join(dir, fmt.Sprintf("siem%d.jsonl", i)), tok.RefreshToken, next.RefreshToken) {
				moved = moved || (a.Unmapped["alert"] == "refresh_new_network" && a.SrcEndpoint != nil && a.SrcEndpoint.Subnet == "203.0.113.0/24")
			}
			if !moved {
				return fmt.Errorf("node %d: no refresh_new_network alert in its SIEM feed", i)
			}
		}
		return nil
	})
	if code := alertPost(t, c.Node(1).TokenURL("default"), url.Values{"grant_type": {"client_credentials"}}, rs, rsSecret, "198.51.100.1"); code != http.StatusOK {
		t.Errorf("the client from another network: %d", code)
	}
}
