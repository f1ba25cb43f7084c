package node_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/gateway"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestGatewaySidecar (issue 12): the standalone checker (tally
// gateway-auth) verifies with the SDK, fetches the rules, obtains the
// phantom JWT by token exchange, and refuses a token once its revocation
// reaches it through the event stream.
func TestGatewaySidecar(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	const gwAud = "https://api.example"
	appID, appSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "app", Scopes: []string{"read:orders"}, Audiences: []string{gwAud}})
	gwID, gwSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "gateway", GrantTypes: []string{issuance.GrantTokenExchange}, Audiences: []string{ordersAPI}})
	if _, err := n.Admin.SetGatewayRoute(ctx, connect.NewRequest(&adminv1.SetGatewayRouteRequest{Tenant: "default",
		Route: &adminv1.GatewayRoute{PathPrefix: "/orders", Scopes: []string{"read:orders"}, PhantomAudience: ordersAPI}})); err != nil {
		t.Fatal(err)
	}
	sc, err := gateway.NewSidecar(gateway.SidecarConfig{Issuer: n.Issuer("default"), Tenant: "default", ServerURL: n.BaseURL(),
		Audience: gwAud, ClientID: gwID, ClientSecret: gwSecret, RulesInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := sc.Start(sctx); err != nil {
		t.Fatal(err)
	}
	defer sc.Stop()
	ts := httptest.NewServer(sc.Handler(gateway.DefaultTrusted))
	defer ts.Close()
	check := func(uri, token string) (int, http.Header) {
		req, _ := http.NewRequest(http.MethodGet, ts.URL+"/gateway/check", nil)
		req.Header.Set("X-Forwarded-Method", "GET")
		req.Header.Set("X-Forwarded-Uri", uri)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	tok := ccToken(t, n, appID, appSecret)
	if st, _ := check("/orders", ""); st != http.StatusUnauthorized {
		t.Errorf("no token: %d", st)
	}
	if st, _ := check("/other", tok); st != http.StatusForbidden {
		t.Errorf("no route: %d", st)
	}
	st, h := check("/orders/7", tok)
	if st != http.StatusOK || h.Get("X-Tally-Client-Id") != appID || h.Get("X-Tally-Phantom-Token") == "" {
		t.Fatalf("allowed: %d %v", st, h)
	}
	if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Token: tok})); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if st, _ := check("/orders/7", tok); st != http.StatusUnauthorized {
			return fmt.Errorf("revoked token: %d", st)
		}
		return nil
	})
}
