package node

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// A user's remembered consents and sign-in sessions (issue 13): listed and
// revoked by an admin, e.g. for an account that was taken over. Revoking
// is op 141 RevokeUserAccess (feature "threat_v2"); sessions are sealed
// cookies, so "revoking" them moves the user's sessions cut-off, and every
// session that began at or before it is refused on every node.

var errNoThreatV2 = connect.NewError(connect.CodeFailedPrecondition,
	errors.New(`a cluster member runs a version without the "threat_v2" feature: upgrade every node first`))

func (a *adminService) ListUserConsents(_ context.Context, req *connect.Request[adminv1.ListUserConsentsRequest]) (*connect.Response[adminv1.ListUserConsentsResponse], error) {
	u, err := a.findUser(req.Msg.Tenant, req.Msg.User)
	if err != nil {
		return nil, err
	}
	out := &adminv1.ListUserConsentsResponse{UserId: u.Id}
	for _, c := range a.rep.rn.State().UserConsents(req.Msg.Tenant, u.Id) {
		out.Consents = append(out.Consents, &adminv1.UserConsent{ClientId: c.ClientId, Scopes: c.Scopes,
			CreatedAt: ts(c.CreatedUnixNano), ExpiresAt: ts(c.ExpiresUnixNano)})
	}
	return connect.NewResponse(out), nil
}

func (a *adminService) revokeUserAccess(ctx context.Context, r *raftpb.RevokeUserAccess) error {
	if a.supports != nil && !a.supports(ctx, raft.FeatureThreatV2) {
		return errNoThreatV2
	}
	return a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_RevokeUserAccess{RevokeUserAccess: r}})
}

func (a *adminService) RevokeUserConsents(ctx context.Context, req *connect.Request[adminv1.RevokeUserConsentsRequest]) (*connect.Response[adminv1.RevokeUserConsentsResponse], error) {
	m := req.Msg
	u, err := a.findUser(m.Tenant, m.User)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, c := range a.rep.rn.State().UserConsents(m.Tenant, u.Id) {
		if m.ClientId == "" || c.ClientId == m.ClientId {
			n++
		}
	}
	if m.ClientId != "" && n == 0 {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("user %s gave client %q no consent", u.Id, m.ClientId))
	}
	if err := a.revokeUserAccess(ctx, &raftpb.RevokeUserAccess{Tenant: m.Tenant, UserId: u.Id, Consents: true, ClientId: m.ClientId}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.RevokeUserConsentsResponse{UserId: u.Id, Revoked: uint32(n)}), nil
}

func (a *adminService) RevokeUserSessions(ctx context.Context, req *connect.Request[adminv1.RevokeUserSessionsRequest]) (*connect.Response[adminv1.RevokeUserSessionsResponse], error) {
	m := req.Msg
	u, err := a.findUser(m.Tenant, m.User)
	if err != nil {
		return nil, err
	}
	if err := a.revokeUserAccess(ctx, &raftpb.RevokeUserAccess{Tenant: m.Tenant, UserId: u.Id, Sessions: true}); err != nil {
		return nil, err
	}
	got, err := a.findUser(m.Tenant, u.Id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.RevokeUserSessionsResponse{UserId: u.Id, SessionsRevokedAt: ts(got.SessionsRevokedUnixNano)}), nil
}
