package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	eventsv1 "github.com/tallyauth/tally/revocation/eventwire/eventsv1"
)

// Deleting clients, users and tenants (issue 16): raft ops DeleteClient,
// DeleteUser and DeleteTenant (raft/apply_delete.go), proposed only once
// every member of the cluster applies them (feature "delete_v1").

// featureDelete names the DeleteClient, DeleteUser and DeleteTenant
// operations (raft ops 80-82) in MemberStatus.features.
const featureDelete = raft.FeatureDelete

// errNoDeleteFeature answers a deletion while a member runs an older binary.
var errNoDeleteFeature = connect.NewError(connect.CodeFailedPrecondition,
	errors.New("deleting needs every cluster member to run a tally version with feature delete_v1; upgrade the other nodes first"))

// supportsFeature reports whether every member of the cluster applies the
// operations named feature (a node without a cluster port is alone).
func (n *Node) supportsFeature(ctx context.Context, feature string) bool {
	if n.cl == nil {
		return true
	}
	return n.cl.allSupport(ctx, feature)
}

// proposeDelete checks the feature gate and proposes cmd; it returns the
// Raft index of the deletion.
func (a *adminService) proposeDelete(ctx context.Context, cmd *raftpb.Command) (uint64, error) {
	if a.supports != nil && !a.supports(ctx, featureDelete) {
		return 0, errNoDeleteFeature
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	res, err := a.rep.propose(ctx, cmd)
	if err != nil {
		return 0, connectError(err)
	}
	return res.Index, nil
}

func (a *adminService) DeleteClient(ctx context.Context, req *connect.Request[adminv1.DeleteClientRequest]) (*connect.Response[adminv1.DeleteClientResponse], error) {
	m := req.Msg
	st := a.rep.rn.State()
	if _, ok := st.Tenant(m.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	if _, ok := st.Client(m.Tenant, m.ClientId); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("client %q not found in tenant %q", m.ClientId, m.Tenant))
	}
	idx, err := a.proposeDelete(ctx, &raftpb.Command{Op: &raftpb.Command_DeleteClient{DeleteClient: &raftpb.DeleteClient{
		Tenant: m.Tenant, ClientId: m.ClientId}}})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteClientResponse{Tenant: m.Tenant, ClientId: m.ClientId, RaftIndex: idx}), nil
}

func (a *adminService) DeleteUser(ctx context.Context, req *connect.Request[adminv1.DeleteUserRequest]) (*connect.Response[adminv1.DeleteUserResponse], error) {
	u, err := a.findUser(req.Msg.Tenant, req.Msg.User)
	if err != nil {
		return nil, err
	}
	idx, err := a.proposeDelete(ctx, &raftpb.Command{Op: &raftpb.Command_DeleteUser{DeleteUser: &raftpb.DeleteUser{
		Tenant: u.Tenant, UserId: u.Id}}})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteUserResponse{Tenant: u.Tenant, UserId: u.Id, RaftIndex: idx}), nil
}

// DeleteTenant refuses the default tenant: the cluster's leader creates it
// again whenever it is missing (ensureDefaultTenant), and the tour, the
// loadtest and the examples rely on it.
func (a *adminService) DeleteTenant(ctx context.Context, req *connect.Request[adminv1.DeleteTenantRequest]) (*connect.Response[adminv1.DeleteTenantResponse], error) {
	id := req.Msg.Id
	if id == DefaultTenant {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("the %q tenant cannot be deleted", DefaultTenant))
	}
	if _, ok := a.rep.rn.State().Tenant(id); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", id))
	}
	idx, err := a.proposeDelete(ctx, &raftpb.Command{Op: &raftpb.Command_DeleteTenant{DeleteTenant: &raftpb.DeleteTenant{Tenant: id}}})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteTenantResponse{Id: id, RaftIndex: idx}), nil
}

// addDeletionCutoffs adds the tenant's recently deleted clients and users
// to a revocation set (GetRevocationSet): their tokens issued at or before
// the deletion are invalid, so a resource server that resyncs after
// missing the CLIENT_DELETED or USER_DELETED event converges.
func addDeletionCutoffs(resp *eventsv1.GetRevocationSetResponse, st *raft.State, tenant string) {
	clients := st.DeletedClients(tenant)
	for _, id := range slices.Sorted(maps.Keys(clients)) {
		resp.ClientCutoffs = append(resp.ClientCutoffs, &eventsv1.ClientCutoff{
			ClientId: id, TokensIssuedUntilUnix: clients[id] / int64(time.Second)})
	}
	users := st.DeletedUsers(tenant)
	for _, id := range slices.Sorted(maps.Keys(users)) {
		until := users[id] / int64(time.Second)
		if i := slices.IndexFunc(resp.SubjectCutoffs, func(c *eventsv1.SubjectCutoff) bool { return c.Subject == id }); i >= 0 {
			resp.SubjectCutoffs[i].TokensIssuedUntilUnix = max(resp.SubjectCutoffs[i].TokensIssuedUntilUnix, until)
			continue
		}
		resp.SubjectCutoffs = append(resp.SubjectCutoffs, &eventsv1.SubjectCutoff{Subject: id, TokensIssuedUntilUnix: until})
	}
}
