package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
)

func (f *fakeAdmin) DeleteClient(ctx context.Context, r *connect.Request[adminv1.DeleteClientRequest]) (*connect.Response[adminv1.DeleteClientResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteClientResponse{Tenant: r.Msg.Tenant, ClientId: r.Msg.ClientId, RaftIndex: 42}), nil
}

func (f *fakeAdmin) DeleteUser(ctx context.Context, r *connect.Request[adminv1.DeleteUserRequest]) (*connect.Response[adminv1.DeleteUserResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteUserResponse{Tenant: r.Msg.Tenant, UserId: "u_1", RaftIndex: 43}), nil
}

func (f *fakeAdmin) DeleteTenant(ctx context.Context, r *connect.Request[adminv1.DeleteTenantRequest]) (*connect.Response[adminv1.DeleteTenantResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteTenantResponse{Id: r.Msg.Id, RaftIndex: 44}), nil
}

// TestAdminDelete (issue 16): the delete commands send what they are given,
// tenant delete only with --yes, and print JSON with numbers as numbers.
func TestAdminDelete(t *testing.T) {
	for _, tt := range []struct {
		args      []string
		procedure string
		want      proto.Message
		field     string
	}{
		{[]string{"client", "delete", "--tenant", "acme", "c-1"}, adminv1connect.AdminServiceDeleteClientProcedure,
			&adminv1.DeleteClientRequest{Tenant: "acme", ClientId: "c-1"}, "client_id"},
		{[]string{"user", "delete", "alice"}, adminv1connect.AdminServiceDeleteUserProcedure,
			&adminv1.DeleteUserRequest{Tenant: "default", User: "alice"}, "user_id"},
		{[]string{"tenant", "delete", "acme", "--yes"}, adminv1connect.AdminServiceDeleteTenantProcedure,
			&adminv1.DeleteTenantRequest{Id: "acme"}, "id"},
	} {
		t.Run(strings.Join(tt.args[:2], " "), func(t *testing.T) {
			fake, url := newFakeAdmin(t)
			res := runTally(t, serverEnv(url), "", append(append([]string{"admin"}, tt.args...), "--output", "json")...)
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			calls := fake.recorded()
			if len(calls) != 1 || calls[0].procedure != tt.procedure || !proto.Equal(calls[0].msg, tt.want) {
				t.Fatalf("calls %v, want %s %v", calls, tt.procedure, tt.want)
			}
			var out map[string]any
			if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
				t.Fatalf("output %q: %v", res.stdout, err)
			}
			if _, ok := out["raft_index"].(float64); !ok || out[tt.field] == "" {
				t.Fatalf("output %v", out)
			}
			text := runTally(t, serverEnv(url), "", append([]string{"admin"}, tt.args...)...)
			if text.code != 0 || !strings.Contains(text.stdout, "raft_index:") {
				t.Fatalf("text output %q %s", text.stdout, text.stderr)
			}
		})
	}
	fake, url := newFakeAdmin(t)
	res := runTally(t, serverEnv(url), "", "admin", "tenant", "delete", "acme")
	if res.code != 2 || !strings.Contains(res.stderr, "--yes") || len(fake.recorded()) != 0 {
		t.Fatalf("tenant delete without --yes: exit %d, stderr %q, %d calls", res.code, res.stderr, len(fake.recorded()))
	}
}
