package node

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"unicode/utf8"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft/raftpb"
)

// maxUsernameLen bounds usernames (the FSM allows 255 bytes).
const maxUsernameLen = 128

func validUsername(s string) bool {
	if s == "" || len(s) > maxUsernameLen || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

func userToAdmin(u *raftpb.User) *adminv1.User {
	return &adminv1.User{
		Tenant: u.Tenant, UserId: u.Id, Username: u.Username, Email: u.Email, Name: u.Name,
		EmailVerified: u.EmailVerified, Disabled: u.Disabled, Locked: u.Locked,
		CreatedAt: ts(u.CreatedUnixNano), UpdatedAt: ts(u.UpdatedUnixNano), Revision: u.Revision,
		HasPassword: u.Password != nil,
	}
}

// findUser resolves a user named by id or username.
func (a *adminService) findUser(tenant, user string) (*raftpb.User, error) {
	st := a.rep.rn.State()
	if _, ok := st.Tenant(tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", tenant))
	}
	if u, ok := st.User(tenant, user); ok {
		return u, nil
	}
	if u, ok := st.UserByUsername(tenant, user); ok {
		return u, nil
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("user %q not found in tenant %q", user, tenant))
}

func (a *adminService) hashPassword(pw string) (*raftpb.PasswordHash, error) {
	if pw == "" || len(pw) > issuance.MaxPasswordLen {
		return nil, invalid("password must be 1 to %d bytes", issuance.MaxPasswordLen)
	}
	h, err := issuance.HashPassword(a.passwordParams(), pw, rand.Reader)
	if err != nil {
		return nil, connectError(err)
	}
	return passwordToPB(h), nil
}

// passwordParams are the argon2id parameters of new hashes.
func (a *adminService) passwordParams() issuance.PasswordParams {
	if a.pwParams != nil {
		return *a.pwParams
	}
	if a.cfg.PasswordParams != nil {
		return *a.cfg.PasswordParams
	}
	return issuance.DefaultPasswordParams()
}

func (a *adminService) CreateUser(ctx context.Context, req *connect.Request[adminv1.CreateUserRequest]) (*connect.Response[adminv1.CreateUserResponse], error) {
	m := req.Msg
	if _, ok := a.rep.rn.State().Tenant(m.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	if !validUsername(m.Username) {
		return nil, invalid("username: want 1 to %d printable characters without spaces", maxUsernameLen)
	}
	if len(m.Email) > maxNameLen || len(m.Name) > maxNameLen || strings.ContainsAny(m.Email, " \r\n") {
		return nil, invalid("email and name: at most %d characters", maxNameLen)
	}
	var pw *raftpb.PasswordHash
	if m.Password != "" {
		var err error
		if pw, err = a.hashPassword(m.Password); err != nil {
			return nil, err
		}
	}
	id, err := issuance.NewClientID(rand.Reader)
	if err != nil {
		return nil, connectError(err)
	}
	u := &raftpb.User{Tenant: m.Tenant, Id: "u_" + id, Username: m.Username, Email: m.Email, Name: m.Name,
		EmailVerified: m.EmailVerified, Password: pw}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_CreateUser{CreateUser: &raftpb.CreateUser{User: u}}}); err != nil {
		return nil, err
	}
	got, err := a.findUser(m.Tenant, u.Id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.CreateUserResponse{User: userToAdmin(got)}), nil
}

func (a *adminService) GetUser(_ context.Context, req *connect.Request[adminv1.GetUserRequest]) (*connect.Response[adminv1.GetUserResponse], error) {
	u, err := a.findUser(req.Msg.Tenant, req.Msg.User)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetUserResponse{User: userToAdmin(u)}), nil
}

func (a *adminService) ListUsers(_ context.Context, req *connect.Request[adminv1.ListUsersRequest]) (*connect.Response[adminv1.ListUsersResponse], error) {
	st := a.rep.rn.State()
	if _, ok := st.Tenant(req.Msg.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", req.Msg.Tenant))
	}
	var out []*adminv1.User
	for _, u := range st.Users(req.Msg.Tenant) {
		out = append(out, userToAdmin(u))
	}
	return connect.NewResponse(&adminv1.ListUsersResponse{Users: out}), nil
}

func (a *adminService) setUserDisabled(ctx context.Context, tenant, user string, disabled bool) (*adminv1.User, error) {
	u, err := a.findUser(tenant, user)
	if err != nil {
		return nil, err
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_SetUserStatus{SetUserStatus: &raftpb.SetUserStatus{
		Tenant: tenant, UserId: u.Id, Disabled: disabled, Locked: u.Locked}}}); err != nil {
		return nil, err
	}
	got, err := a.findUser(tenant, u.Id)
	if err != nil {
		return nil, err
	}
	return userToAdmin(got), nil
}

func (a *adminService) DisableUser(ctx context.Context, req *connect.Request[adminv1.DisableUserRequest]) (*connect.Response[adminv1.DisableUserResponse], error) {
	u, err := a.setUserDisabled(ctx, req.Msg.Tenant, req.Msg.User, true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DisableUserResponse{User: u}), nil
}

func (a *adminService) EnableUser(ctx context.Context, req *connect.Request[adminv1.EnableUserRequest]) (*connect.Response[adminv1.EnableUserResponse], error) {
	u, err := a.setUserDisabled(ctx, req.Msg.Tenant, req.Msg.User, false)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.EnableUserResponse{User: u}), nil
}

func (a *adminService) SetUserPassword(ctx context.Context, req *connect.Request[adminv1.SetUserPasswordRequest]) (*connect.Response[adminv1.SetUserPasswordResponse], error) {
	m := req.Msg
	u, err := a.findUser(m.Tenant, m.User)
	if err != nil {
		return nil, err
	}
	pw, err := a.hashPassword(m.Password)
	if err != nil {
		return nil, err
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_SetUserPassword{SetUserPassword: &raftpb.SetUserPassword{
		Tenant: m.Tenant, UserId: u.Id, Password: pw}}}); err != nil {
		return nil, err
	}
	got, err := a.findUser(m.Tenant, u.Id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetUserPasswordResponse{User: userToAdmin(got)}), nil
}

// normalizeGrants accepts "device_code" for the RFC 8628 grant type URN.
func normalizeGrants(in []string) []string {
	out := make([]string, len(in))
	for i, g := range in {
		if g == "device_code" {
			g = issuance.GrantDeviceCode
		}
		out[i] = g
	}
	return out
}
