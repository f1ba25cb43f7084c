package node_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"connectrpc.com/connect"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

func gatewayCheck(t *testing.T, n *nodetest.Node, method, uri, token string, nginx bool) (int, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, n.Issuer("default")+"/gateway/check", nil)
	if nginx {
		req.Header.Set("X-Original-Method", method)
		req.Header.Set("X-Original-URI", uri)
	} else {
		req.Header.Set("X-Forwarded-Method", method)
		req.Header.Set("X-Forwarded-Uri", uri)
	}
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

func ccToken(t *testing.T, n *nodetest.Node, id, secret string) string {
	t.Helper()
	status, body, _ := postForm(t, n.Issuer("default")+"/oauth2/token", id, secret, url.Values{"grant_type": {"client_credentials"}})
	if status != http.StatusOK {
		t.Fatalf("token: %d %v", status, body)
	}
	return body["access_token"].(string)
}

// TestGatewayCheckAndPolicy (issue 12): forward-auth decisions (no route,
// no token, wrong scope, allowed with identity headers and the phantom
// JWT, revoked, rate limited), a policy refused at write time, a deny
// policy at the token endpoint and at the gateway, and Envoy's ext_authz
// over gRPC with the go-control-plane client.
func TestGatewayCheckAndPolicy(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	appID, appSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "app", Scopes: []string{"read:orders"}, TokenFormat: "opaque"})
	for _, r := range []*adminv1.GatewayRoute{
		{PathPrefix: "/orders", Method: "GET", Scopes: []string{"read:orders"}, PhantomAudience: ordersAPI},
		{PathPrefix: "/orders", Method: "POST", Scopes: []string{"write:orders"}},
	} {
		if _, err := n.Admin.SetGatewayRoute(ctx, connect.NewRequest(&adminv1.SetGatewayRouteRequest{Tenant: "default", Route: r})); err != nil {
			t.Fatal(err)
		}
	}
	tok := ccToken(t, n, appID, appSecret)
	if st, _ := gatewayCheck(t, n, "GET", "/admin", tok, true); st != http.StatusForbidden {
		t.Errorf("no route: %d", st)
	}
	if st, h := gatewayCheck(t, n, "GET", "/orders/1", "", true); st != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("no token: %d %v", st, h)
	}
	if st, h := gatewayCheck(t, n, "POST", "/orders", tok, false); st != http.StatusForbidden || !strings.Contains(h.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Errorf("wrong scope: %d %v", st, h)
	}
	st, h := gatewayCheck(t, n, "GET", "/orders/1?x=1", tok, false)
	if st != http.StatusOK || h.Get("X-Tally-Subject") != appID || h.Get("X-Tally-Scope") != "read:orders" || h.Get("X-Tally-Phantom-Token") == "" {
		t.Fatalf("allowed: %d %v", st, h)
	}

	// Envoy ext_authz over gRPC.
	conn, err := grpc.NewClient(strings.TrimPrefix(n.BaseURL(), "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ea := authv3.NewAuthorizationClient(conn)
	check := func(method, path, token string) *authv3.CheckResponse {
		hdr := map[string]string{}
		if token != "" {
			hdr["authorization"] = "Bearer " + token
		}
		res, err := ea.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Headers: hdr}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if r := check("GET", "/orders/1", tok); r.Status.Code != int32(code.Code_OK) || r.GetOkResponse() == nil {
		t.Errorf("ext_authz allowed: %v", r)
	}
	if r := check("GET", "/orders/1", ""); r.Status.Code != int32(code.Code_UNAUTHENTICATED) || r.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Errorf("ext_authz no token: %v", r)
	}
	if r := check("POST", "/orders", tok); r.Status.Code != int32(code.Code_PERMISSION_DENIED) {
		t.Errorf("ext_authz wrong scope: %v", r)
	}

	// Policies: a compile error is refused at write time; a deny applies
	// at the token endpoint and at the gateway.
	if _, err := n.Admin.SetPolicy(ctx, connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: "client =="}})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad policy: %v", err)
	}
	deny := `grant_type == "gateway" && path.startsWith("/orders/secret") ? {"allow": false, "reason": "secret orders"} : {"allow": client != "` + appID + `" || grant_type != "client_credentials" || size(requested_scopes) == 0}`
	if _, err := n.Admin.SetPolicy(ctx, connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: deny}})); err != nil {
		t.Fatal(err)
	}
	if st, _ := gatewayCheck(t, n, "GET", "/orders/secret/1", tok, true); st != http.StatusForbidden {
		t.Errorf("policy deny at gateway: %d", st)
	}
	status, body, _ := postForm(t, n.Issuer("default")+"/oauth2/token", appID, appSecret, url.Values{"grant_type": {"client_credentials"}, "scope": {"read:orders"}})
	if status != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Errorf("policy deny at the token endpoint: %d %v", status, body)
	}

	// Rate limit, then revocation.
	if _, err := n.Admin.SetGatewayRateLimit(ctx, connect.NewRequest(&adminv1.SetGatewayRateLimitRequest{Tenant: "default", Limit: &adminv1.GatewayRateLimit{ClientId: appID, PerSecond: 0.001, Burst: 1}})); err != nil {
		t.Fatal(err)
	}
	if st, _ := gatewayCheck(t, n, "GET", "/orders/1", tok, true); st != http.StatusOK {
		t.Errorf("first request under the limit: %d", st)
	}
	if st, h := gatewayCheck(t, n, "GET", "/orders/1", tok, true); st != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Errorf("rate limited: %d", st)
	}
	if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Token: tok})); err != nil {
		t.Fatal(err)
	}
	if st, _ := gatewayCheck(t, n, "GET", "/orders/1", tok, true); st != http.StatusUnauthorized {
		t.Errorf("revoked: %d", st)
	}
}
