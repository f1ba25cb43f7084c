package node_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/dpop/dpoptest"
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
	// A DPoP-bound token: refused as a Bearer token, accepted with the
	// DPoP scheme and a proof for the forwarded URL.
	k := dpoptest.NewKey("ES256")
	tokenURL := n.Issuer("default") + "/oauth2/token"
	status, _, tb := postToken(t, tokenURL, appID, appSecret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL}))
	if status != http.StatusOK || tb["token_type"] != "DPoP" {
		t.Fatalf("DPoP token: %d %v", status, tb)
	}
	bound := tb["access_token"].(string)
	if st, h := check("/orders/7", bound); st != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "DPoP ") {
		t.Errorf("DPoP-bound token as a Bearer token at the sidecar: %d %v", st, h)
	}
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/gateway/check", nil)
	req.Header.Set("X-Forwarded-Method", "GET")
	req.Header.Set("X-Original-URL", "https://api.example/orders/7")
	req.Header.Set("X-Forwarded-Uri", "/orders/7")
	req.Header.Set("Authorization", "DPoP "+bound)
	req.Header.Set("DPoP", k.Proof(dpoptest.Claims{HTM: "GET", HTU: "https://api.example/orders/7", AccessToken: bound}))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Tally-Phantom-Token") == "" {
		t.Errorf("DPoP-bound token with its proof at the sidecar: %d %v", resp.StatusCode, resp.Header)
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
