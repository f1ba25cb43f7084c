package main

import (
	"context"
	"encoding/json"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
)

func (f *fakeAdmin) SetKeyPolicy(ctx context.Context, r *connect.Request[adminv1.SetKeyPolicyRequest]) (*connect.Response[adminv1.SetKeyPolicyResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetKeyPolicyResponse{Policy: &adminv1.KeyPolicy{Tenant: r.Msg.Tenant,
		RotateEverySeconds: r.Msg.RotateEverySeconds, SealRotateEverySeconds: min(r.Msg.RotateEverySeconds, 5*86400)}}), nil
}

func (f *fakeAdmin) GetKeyPolicy(ctx context.Context, r *connect.Request[adminv1.GetKeyPolicyRequest]) (*connect.Response[adminv1.GetKeyPolicyResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetKeyPolicyResponse{Policy: &adminv1.KeyPolicy{Tenant: r.Msg.Tenant, RotateEverySeconds: 30 * 86400, SealRotateEverySeconds: 5 * 86400}}), nil
}

func (f *fakeAdmin) SetTenantPAR(ctx context.Context, r *connect.Request[adminv1.SetTenantPARRequest]) (*connect.Response[adminv1.SetTenantPARResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	t := f.tenant(r.Msg.Tenant)
	t.RequirePushedAuthorizationRequests = r.Msg.Require
	return connect.NewResponse(&adminv1.SetTenantPARResponse{Tenant: t}), nil
}

// TestAdminIssue11Requests: the contract commands of issue 11 send what
// they say.
func TestAdminIssue11Requests(t *testing.T) {
	for _, tt := range []struct {
		name      string
		args      []string
		procedure string
		want      proto.Message
	}{
		{"key policy set days", []string{"key", "policy", "set", "--tenant", "acme", "--rotate-every", "30d"},
			adminv1connect.AdminServiceSetKeyPolicyProcedure, &adminv1.SetKeyPolicyRequest{Tenant: "acme", RotateEverySeconds: 30 * 86400}},
		{"key policy set duration and seal", []string{"key", "policy", "set", "--rotate-every", "720h", "--seal-rotate-every", "1d"},
			adminv1connect.AdminServiceSetKeyPolicyProcedure, &adminv1.SetKeyPolicyRequest{Tenant: "default", RotateEverySeconds: 720 * 3600, SealRotateEverySeconds: 86400}},
		{"key policy off", []string{"key", "policy", "set", "--rotate-every", "0"},
			adminv1connect.AdminServiceSetKeyPolicyProcedure, &adminv1.SetKeyPolicyRequest{Tenant: "default"}},
		{"key policy get", []string{"key", "policy", "get", "--tenant", "acme", "--output", "json"},
			adminv1connect.AdminServiceGetKeyPolicyProcedure, &adminv1.GetKeyPolicyRequest{Tenant: "acme"}},
		{"tenant par", []string{"tenant", "par", "--tenant", "acme", "--require"},
			adminv1connect.AdminServiceSetTenantPARProcedure, &adminv1.SetTenantPARRequest{Tenant: "acme", Require: true}},
		{"client create dpop-bound", []string{"client", "create", "--name", "svc", "--dpop-bound", "--require-par"},
			adminv1connect.AdminServiceCreateClientProcedure, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc",
				GrantTypes: []string{"client_credentials"}, DpopBound: true, RequirePushedAuthorizationRequests: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake, url := newFakeAdmin(t)
			res := runTally(t, serverEnv(url), "", append([]string{"admin"}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
			}
			calls := fake.recorded()
			if len(calls) != 1 || calls[0].procedure != tt.procedure || !proto.Equal(calls[0].msg, tt.want) {
				t.Fatalf("calls %v, want %s %s", calls, tt.procedure, protojson.Format(tt.want))
			}
		})
	}
	// get --output json is one object with the contract's fields.
	_, url := newFakeAdmin(t)
	res := runTally(t, serverEnv(url), "", "admin", "key", "policy", "get", "--tenant", "acme", "--output", "json")
	var m map[string]any
	if err := json.Unmarshal([]byte(res.stdout), &m); err != nil || m["tenant"] != "acme" || m["rotate_every_seconds"] != float64(30*86400) {
		t.Fatalf("json %q: %v", res.stdout, err)
	}
	// Bad input is a usage error, not a call.
	for _, args := range [][]string{
		{"key", "policy", "set", "--tenant", "acme"},
		{"key", "policy", "set", "--rotate-every", "-1d"},
		{"key", "policy", "set", "--rotate-every", "soon"},
	} {
		fake, url := newFakeAdmin(t)
		if res := runTally(t, serverEnv(url), "", append([]string{"admin"}, args...)...); res.code == 0 || len(fake.recorded()) != 0 {
			t.Errorf("%v: exit %d, %d calls", args, res.code, len(fake.recorded()))
		}
	}
}
