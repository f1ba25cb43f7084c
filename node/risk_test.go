package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

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
}
