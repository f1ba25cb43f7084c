package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

func fakeUser(tenant, username string) *adminv1.User {
	return &adminv1.User{Tenant: tenant, UserId: "u_1", Username: username, Email: username + "@example.com",
		CreatedAt: timestamppb.New(fakeTime), UpdatedAt: timestamppb.New(fakeTime), Revision: 1, HasPassword: true}
}

func (f *fakeAdmin) CreateUser(ctx context.Context, r *connect.Request[adminv1.CreateUserRequest]) (*connect.Response[adminv1.CreateUserResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	u := fakeUser(r.Msg.GetTenant(), r.Msg.GetUsername())
	u.HasPassword = r.Msg.GetPassword() != ""
	return connect.NewResponse(&adminv1.CreateUserResponse{User: u}), nil
}

func (f *fakeAdmin) GetUser(ctx context.Context, r *connect.Request[adminv1.GetUserRequest]) (*connect.Response[adminv1.GetUserResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetUserResponse{User: fakeUser(r.Msg.GetTenant(), r.Msg.GetUser())}), nil
}

func (f *fakeAdmin) ListUsers(ctx context.Context, r *connect.Request[adminv1.ListUsersRequest]) (*connect.Response[adminv1.ListUsersResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.ListUsersResponse{Users: []*adminv1.User{fakeUser(r.Msg.GetTenant(), "alice")}}), nil
}

func (f *fakeAdmin) DisableUser(ctx context.Context, r *connect.Request[adminv1.DisableUserRequest]) (*connect.Response[adminv1.DisableUserResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	u := fakeUser(r.Msg.GetTenant(), r.Msg.GetUser())
	u.Disabled = true
	return connect.NewResponse(&adminv1.DisableUserResponse{User: u}), nil
}

func (f *fakeAdmin) EnableUser(ctx context.Context, r *connect.Request[adminv1.EnableUserRequest]) (*connect.Response[adminv1.EnableUserResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.EnableUserResponse{User: fakeUser(r.Msg.GetTenant(), r.Msg.GetUser())}), nil
}

func (f *fakeAdmin) SetUserPassword(ctx context.Context, r *connect.Request[adminv1.SetUserPasswordRequest]) (*connect.Response[adminv1.SetUserPasswordResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetUserPasswordResponse{User: fakeUser(r.Msg.GetTenant(), r.Msg.GetUser())}), nil
}

func TestAdminUserCommands(t *testing.T) {
	f, url := newFakeAdmin(t)
	vars := serverEnv(url)

	r := runTally(t, vars, "s3cret pass\n", "admin", "user", "create", "--tenant", "default", "--username", "alice",
		"--email", "alice@example.com", "--password-stdin", "--output", "json")
	if r.code != 0 {
		t.Fatalf("create: exit %d: %s", r.code, r.stderr)
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("create --output json: %v: %q", err, r.stdout)
	}
	if out["username"] != "alice" || out["has_password"] != true {
		t.Errorf("create output = %v", out)
	}
	f.mu.Lock()
	req := f.calls[len(f.calls)-1].msg.(*adminv1.CreateUserRequest)
	f.mu.Unlock()
	if req.GetPassword() != "s3cret pass" || req.GetTenant() != "default" {
		t.Errorf("create request: password %q tenant %q", req.GetPassword(), req.GetTenant())
	}
	if strings.Contains(r.stdout, "s3cret") {
		t.Error("the password is echoed")
	}

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"get", "", []string{"user", "get", "alice"}, 0, "alice"},
		{"list", "", []string{"user", "list"}, 0, "USERNAME"},
		{"disable", "", []string{"user", "disable", "alice"}, 0, "disabled:"},
		{"enable", "", []string{"user", "enable", "alice"}, 0, "alice"},
		{"set-password", "new pass\n", []string{"user", "set-password", "alice", "--password-stdin"}, 0, "alice"},
		{"set-password without stdin flag", "", []string{"user", "set-password", "alice"}, 2, "password-stdin"},
		{"create empty password", "\n", []string{"user", "create", "--username", "bob", "--password-stdin"}, 2, "no password"},
		{"create without username", "", []string{"user", "create"}, 2, "username"},
		{"get without user", "", []string{"user", "get"}, 2, "USER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runTally(t, vars, tc.stdin, append([]string{"admin"}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %s %s", r.code, tc.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Errorf("output lacks %q: %s %s", tc.want, r.stdout, r.stderr)
			}
		})
	}
}
