package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// The gateway RPCs of the fake admin service (admin_test.go).

func (f *fakeAdmin) GetGatewayConfig(ctx context.Context, r *connect.Request[adminv1.GetGatewayConfigRequest]) (*connect.Response[adminv1.GetGatewayConfigResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetGatewayConfigResponse{Config: &adminv1.GatewayConfig{Tenant: r.Msg.Tenant, Revision: 1,
		Routes: []*adminv1.GatewayRoute{{PathPrefix: "/orders", Method: "GET", Scopes: []string{"read:orders"}}}}}), nil
}

func (f *fakeAdmin) SetGatewayRoute(ctx context.Context, r *connect.Request[adminv1.SetGatewayRouteRequest]) (*connect.Response[adminv1.SetGatewayRouteResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetGatewayRouteResponse{Config: &adminv1.GatewayConfig{Tenant: r.Msg.Tenant, Revision: 1, Routes: []*adminv1.GatewayRoute{r.Msg.Route}}}), nil
}

func (f *fakeAdmin) DeleteGatewayRoute(ctx context.Context, r *connect.Request[adminv1.DeleteGatewayRouteRequest]) (*connect.Response[adminv1.DeleteGatewayRouteResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteGatewayRouteResponse{Config: &adminv1.GatewayConfig{Tenant: r.Msg.Tenant}}), nil
}

func (f *fakeAdmin) SetGatewayRateLimit(ctx context.Context, r *connect.Request[adminv1.SetGatewayRateLimitRequest]) (*connect.Response[adminv1.SetGatewayRateLimitResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetGatewayRateLimitResponse{Config: &adminv1.GatewayConfig{Tenant: r.Msg.Tenant}}), nil
}

func (f *fakeAdmin) SetPolicy(ctx context.Context, r *connect.Request[adminv1.SetPolicyRequest]) (*connect.Response[adminv1.SetPolicyResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetPolicyResponse{Config: &adminv1.GatewayConfig{Tenant: r.Msg.Tenant}}), nil
}

func TestAdminPolicyTestOffline(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.cel")
	os.WriteFile(pol, []byte(`client == "app" ? {"scopes": ["read"]} : {"allow": false, "reason": "only app"}`), 0o644)
	code, out, errs := runCLI(t, nil, "admin", "policy", "test", "--tenant", "acme", "--file", pol, "--input", `{"client":"x"}`, "--output", "json")
	if code != 0 {
		t.Fatalf("%d %s", code, errs)
	}
	var d map[string]any
	if err := json.Unmarshal([]byte(out), &d); err != nil || d["allow"] != false || d["reason"] != "only app" {
		t.Fatalf("%s %v", out, err)
	}
	// The threat signals (issue 13) are inputs too.
	os.WriteFile(pol, []byte(`risk >= 1.0 && "token_guessing" in alerts ? dyn({"allow": false, "reason": "under alert"}) : dyn({"allow": tenant_alerts.size() == 0})`), 0o644)
	for input, allow := range map[string]bool{`{"risk":1,"alerts":["token_guessing"]}`: false, `{"risk":0.5,"tenant_alerts":["credential_stuffing"]}`: false, `{}`: true} {
		code, out, errs := runCLI(t, nil, "admin", "policy", "test", "--tenant", "acme", "--file", pol, "--input", input, "--output", "json")
		d = nil
		if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d["allow"] != allow {
			t.Errorf("input %s: %d %s %s, want allow %v", input, code, out, errs, allow)
		}
	}
	os.WriteFile(pol, []byte(`client ==`), 0o644)
	if code, _, _ := runCLI(t, nil, "admin", "policy", "test", "--file", pol, "--input", `{}`); code != 2 {
		t.Errorf("a policy that does not compile: exit %d, want 2", code)
	}
}
