package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/raft"
)

// statusTimeout bounds how long Status waits for each member.
const statusTimeout = 2 * time.Second

// clusterAdminService is the operators' cluster API, on the HTTP port with
// the admin credential. Changes go to the leader wherever it is.
type clusterAdminService struct {
	c    *cluster
	auth adminAuth
}

var _ clusterv1connect.ClusterAdminServiceHandler = (*clusterAdminService)(nil)

func (a *clusterAdminService) Status(ctx context.Context, _ *connect.Request[clusterv1.StatusRequest]) (*connect.Response[clusterv1.StatusResponse], error) {
	resp, err := a.c.status(ctx, statusTimeout)
	if err != nil {
		return nil, connectError(errors.Join(ErrUnavailable, err))
	}
	return connect.NewResponse(resp), nil
}

func (a *clusterAdminService) change(ctx context.Context, req *clusterv1.ChangeMembershipRequest) error {
	if err := validMembership(req); err != nil {
		return connectError(err)
	}
	return connectError(a.c.changeMembership(ctx, req))
}

func (a *clusterAdminService) AddVoter(ctx context.Context, req *connect.Request[clusterv1.AddVoterRequest]) (*connect.Response[clusterv1.AddVoterResponse], error) {
	err := a.change(ctx, &clusterv1.ChangeMembershipRequest{Change: clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_VOTER, Id: req.Msg.Id, Address: req.Msg.Address})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&clusterv1.AddVoterResponse{}), nil
}

func (a *clusterAdminService) AddNonvoter(ctx context.Context, req *connect.Request[clusterv1.AddNonvoterRequest]) (*connect.Response[clusterv1.AddNonvoterResponse], error) {
	err := a.change(ctx, &clusterv1.ChangeMembershipRequest{Change: clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_NONVOTER, Id: req.Msg.Id, Address: req.Msg.Address})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&clusterv1.AddNonvoterResponse{}), nil
}

func (a *clusterAdminService) RemoveServer(ctx context.Context, req *connect.Request[clusterv1.RemoveServerRequest]) (*connect.Response[clusterv1.RemoveServerResponse], error) {
	err := a.change(ctx, &clusterv1.ChangeMembershipRequest{Change: clusterv1.MembershipChange_MEMBERSHIP_CHANGE_REMOVE, Id: req.Msg.Id})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&clusterv1.RemoveServerResponse{}), nil
}

func (a *clusterAdminService) TransferLeadership(ctx context.Context, req *connect.Request[clusterv1.TransferLeadershipRequest]) (*connect.Response[clusterv1.TransferLeadershipResponse], error) {
	err := a.change(ctx, &clusterv1.ChangeMembershipRequest{Change: clusterv1.MembershipChange_MEMBERSHIP_CHANGE_TRANSFER_LEADERSHIP, Id: req.Msg.To})
	if err != nil {
		return nil, err
	}
	// Report the new leader once this node knows it.
	wctx, cancel := context.WithTimeout(ctx, a.c.cfg.WriteTimeout)
	defer cancel()
	_ = a.c.rn.WaitLeader(wctx)
	id, _ := a.c.rn.Leader()
	return connect.NewResponse(&clusterv1.TransferLeadershipResponse{LeaderId: id}), nil
}

// snapshotChunk is the size of the pieces SaveSnapshot streams.
const snapshotChunk = 256 << 10

// SaveSnapshot streams a consistent copy of this node's state database.
// Streams bypass the unary admin interceptor, so it checks the credential
// itself.
func (a *clusterAdminService) SaveSnapshot(ctx context.Context, req *connect.Request[clusterv1.SaveSnapshotRequest], stream *connect.ServerStream[clusterv1.SaveSnapshotResponse]) error {
	if !a.auth.checkRoles(req.Header().Get("Authorization"), raft.RoleAdmin, raft.RoleOperator) {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("admin credential missing or wrong"))
	}
	cp, err := a.c.rn.CopyState()
	if err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	defer cp.Close()
	w := &chunkWriter{send: stream.Send, index: cp.Index, ctx: ctx}
	if _, err := cp.WriteTo(w); err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	return w.flush()
}

// chunkWriter sends what is written to it as SaveSnapshotResponse messages
// of snapshotChunk bytes; the first carries the applied index.
type chunkWriter struct {
	send  func(*clusterv1.SaveSnapshotResponse) error
	ctx   context.Context
	index uint64
	buf   []byte
	sent  bool
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if err := w.ctx.Err(); err != nil {
			return 0, err
		}
		k := min(snapshotChunk-len(w.buf), len(p))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == snapshotChunk {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 && w.sent {
		return nil
	}
	msg := &clusterv1.SaveSnapshotResponse{Chunk: w.buf}
	if !w.sent {
		msg.AppliedIndex = w.index
	}
	w.sent = true
	err := w.send(msg)
	w.buf = w.buf[:0:0]
	return err
}

// maxRestoreBytes bounds an uploaded snapshot.
const maxRestoreBytes = 8 << 30

// RestoreSnapshot receives a saved state database and installs it through
// Raft on this node, which must be the leader. The upload goes to a
// temporary file in the data directory first, so a broken upload changes
// nothing.
func (a *clusterAdminService) RestoreSnapshot(ctx context.Context, stream *connect.ClientStream[clusterv1.RestoreSnapshotRequest]) (*connect.Response[clusterv1.RestoreSnapshotResponse], error) {
	if !a.auth.checkRoles(stream.RequestHeader().Get("Authorization"), raft.RoleAdmin, raft.RoleOperator) {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("admin credential missing or wrong"))
	}
	if !a.c.rn.IsLeader() {
		return nil, a.notLeaderHTTP(ctx)
	}
	f, err := os.CreateTemp(a.c.cfg.DataDir, "restore-*.db")
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var size int64
	for stream.Receive() {
		chunk := stream.Msg().Chunk
		size += int64(len(chunk))
		if size > maxRestoreBytes {
			return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("snapshot larger than %d bytes", int64(maxRestoreBytes)))
		}
		if _, err := f.Write(chunk); err != nil {
			return nil, connect.NewError(connect.CodeInternal, err)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	if size == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty snapshot"))
	}
	stateIdx, raftIdx, err := a.c.rn.RestoreFile(ctx, f.Name())
	if err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, a.notLeaderHTTP(ctx)
		}
		return nil, connectError(err)
	}
	return connect.NewResponse(&clusterv1.RestoreSnapshotResponse{StateIndex: stateIdx, RaftIndex: raftIdx}), nil
}

// notLeaderHTTP is FailedPrecondition naming the leader's HTTP address,
// for calls that only the leader can serve.
func (a *clusterAdminService) notLeaderHTTP(ctx context.Context) error {
	leader := ""
	if st, err := a.c.status(ctx, statusTimeout); err == nil {
		for _, m := range st.Members {
			if m.Leader {
				leader = "http://" + m.HttpAddress
			}
		}
	}
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("this node is not the leader; send it to the leader at %q", leader))
}
