package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// retryEvery is the pause between attempts while leadership is unknown or
// moving.
const retryEvery = 20 * time.Millisecond

// propose commits cmd through the leader, wherever it is, and returns once
// this node has applied it (read-your-writes). The leader proposes it
// itself; a follower forwards it over the internal service and then waits
// for its own replica to reach the returned index. While there is no leader,
// or leadership moves, it retries with the same command (its request_id
// makes a repeated commit answer with the first result) until
// Config.WriteTimeout or ctx ends, and then fails with ErrUnavailable.
//
// Domain outcomes come back in Result.Err (a remote one wraps the same raft
// sentinel); the error is non-nil only when the outcome is not known to be
// applied here.
func (c *cluster) propose(ctx context.Context, cmd *raftpb.Command) (raft.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
	defer cancel()
	var data []byte
	var last error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return raft.Result{}, fmt.Errorf("%w: %v (last: %v)", ErrUnavailable, ctx.Err(), last)
			case <-time.After(retryEvery):
			}
		}
		if c.rn.IsLeader() {
			res, err := c.rn.Propose(ctx, cmd)
			if err == nil {
				return res, nil
			}
			if errors.Is(err, raft.ErrClosed) || ctx.Err() != nil {
				return res, fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
			last = err // not leader any more, or leadership lost: retry
			continue
		}
		_, addr := c.rn.Leader()
		if addr == "" {
			last = errors.New("no raft leader")
			continue
		}
		if data == nil {
			var err error
			if data, err = (proto.MarshalOptions{Deterministic: true}).Marshal(cmd); err != nil {
				return raft.Result{Err: fmt.Errorf("%w: marshal: %v", raft.ErrInvalid, err)}, nil
			}
		}
		resp, err := c.peer(addr).Apply(ctx, connect.NewRequest(&clusterv1.ApplyRequest{Command: data}))
		if err != nil {
			if code := connect.CodeOf(err); code == connect.CodeInvalidArgument || code == connect.CodePermissionDenied {
				return raft.Result{Err: fmt.Errorf("%w: %v", raft.ErrInvalid, err)}, nil
			}
			last = err
			continue
		}
		res := raft.Result{Index: resp.Msg.Index, Err: resultErr(resp.Msg.Result, resp.Msg.Message)}
		if err := c.rn.WaitApplied(ctx, res.Index); err != nil {
			return res, fmt.Errorf("%w: committed at index %d but not yet applied here: %v", ErrUnavailable, res.Index, err)
		}
		return res, nil
	}
}

// remoteResult is a domain outcome decided on the leader.
type remoteResult struct {
	sentinel error
	msg      string
}

func (e *remoteResult) Error() string { return e.msg }
func (e *remoteResult) Unwrap() error { return e.sentinel }

// resultCodes is the one table between raft's domain outcomes and the wire.
var resultCodes = []struct {
	err  error
	code clusterv1.ResultCode
}{
	{raft.ErrNotFound, clusterv1.ResultCode_RESULT_CODE_NOT_FOUND},
	{raft.ErrExists, clusterv1.ResultCode_RESULT_CODE_EXISTS},
	{raft.ErrConflict, clusterv1.ResultCode_RESULT_CODE_CONFLICT},
	{raft.ErrInvalid, clusterv1.ResultCode_RESULT_CODE_INVALID},
}

func resultCode(err error) clusterv1.ResultCode {
	if err == nil {
		return clusterv1.ResultCode_RESULT_CODE_OK
	}
	for _, rc := range resultCodes {
		if errors.Is(err, rc.err) {
			return rc.code
		}
	}
	return clusterv1.ResultCode_RESULT_CODE_INVALID
}

func resultErr(code clusterv1.ResultCode, msg string) error {
	if code == clusterv1.ResultCode_RESULT_CODE_OK {
		return nil
	}
	for _, rc := range resultCodes {
		if rc.code == code {
			if msg == "" {
				return rc.err
			}
			return &remoteResult{sentinel: rc.err, msg: msg}
		}
	}
	return &remoteResult{sentinel: raft.ErrInvalid, msg: fmt.Sprintf("unknown result code %v: %s", code, msg)}
}

// changeMembership applies a membership change on the leader, forwarding
// it when this node is not the leader, retrying while leadership moves,
// until WriteTimeout or ctx ends.
func (c *cluster) changeMembership(ctx context.Context, req *clusterv1.ChangeMembershipRequest) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
	defer cancel()
	var last error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w: %v (last: %v)", ErrUnavailable, ctx.Err(), last)
			case <-time.After(retryEvery):
			}
		}
		if c.rn.IsLeader() {
			err := c.changeLocal(ctx, req)
			switch {
			case err == nil, errors.Is(err, raft.ErrInvalid), errors.Is(err, raft.ErrNotFound):
				return err
			case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
				last = err
				continue
			}
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		_, addr := c.rn.Leader()
		if addr == "" {
			last = errors.New("no raft leader")
			continue
		}
		_, err := c.peer(addr).ChangeMembership(ctx, connect.NewRequest(req))
		switch connect.CodeOf(err) {
		case connect.CodeUnavailable, connect.CodeFailedPrecondition, connect.CodeDeadlineExceeded, connect.CodeUnknown:
			if err != nil {
				last = err
				continue
			}
		}
		return remoteMembershipErr(err)
	}
}

// remoteMembershipErr turns a peer's answer back into this package's
// errors, so connectError maps it to the same code.
func remoteMembershipErr(err error) error {
	if err == nil {
		return nil
	}
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		return fmt.Errorf("%w: %v", raft.ErrUnknownMember, err)
	case connect.CodeInvalidArgument:
		return fmt.Errorf("%w: %v", raft.ErrInvalid, err)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

func (c *cluster) changeLocal(ctx context.Context, req *clusterv1.ChangeMembershipRequest) error {
	switch req.Change {
	case clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_VOTER:
		return c.rn.AddVoter(ctx, req.Id, req.Address)
	case clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_NONVOTER:
		return c.rn.AddNonvoter(ctx, req.Id, req.Address)
	case clusterv1.MembershipChange_MEMBERSHIP_CHANGE_REMOVE:
		return c.rn.RemoveServer(ctx, req.Id)
	case clusterv1.MembershipChange_MEMBERSHIP_CHANGE_TRANSFER_LEADERSHIP:
		return c.rn.TransferLeadership(ctx, req.Id)
	}
	return fmt.Errorf("%w: unknown membership change %v", raft.ErrInvalid, req.Change)
}

func validHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if host == "" || port == "" || port == "0" {
		return fmt.Errorf("%q: want host:port", a)
	}
	return nil
}

// validMembership checks a membership request before anything is changed.
func validMembership(req *clusterv1.ChangeMembershipRequest) error {
	switch req.Change {
	case clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_VOTER, clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_NONVOTER:
		if !nodeIDPattern.MatchString(req.Id) {
			return fmt.Errorf("%w: member id %q", raft.ErrInvalid, req.Id)
		}
		if err := validHostPort(req.Address); err != nil {
			return fmt.Errorf("%w: member address: %v", raft.ErrInvalid, err)
		}
	case clusterv1.MembershipChange_MEMBERSHIP_CHANGE_REMOVE:
		if !nodeIDPattern.MatchString(req.Id) {
			return fmt.Errorf("%w: member id %q", raft.ErrInvalid, req.Id)
		}
	case clusterv1.MembershipChange_MEMBERSHIP_CHANGE_TRANSFER_LEADERSHIP:
		if req.Id != "" && !nodeIDPattern.MatchString(req.Id) {
			return fmt.Errorf("%w: member id %q", raft.ErrInvalid, req.Id)
		}
	default:
		return fmt.Errorf("%w: unknown membership change %v", raft.ErrInvalid, req.Change)
	}
	return nil
}

// clusterService implements the internal Connect service. Every caller has
// presented a node certificate of the cluster CA (the cluster port verified
// it); its node id is in the context.
type clusterService struct {
	c *cluster
}

var _ clusterv1connect.ClusterServiceHandler = (*clusterService)(nil)

// Apply proposes a forwarded command on this node, which must be the
// leader.
func (s *clusterService) Apply(ctx context.Context, req *connect.Request[clusterv1.ApplyRequest]) (*connect.Response[clusterv1.ApplyResponse], error) {
	cmd := &raftpb.Command{}
	if err := proto.Unmarshal(req.Msg.Command, cmd); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("command: %w", err))
	}
	if !s.c.rn.IsLeader() {
		return nil, notLeader(s.c.rn)
	}
	res, err := s.c.rn.Propose(ctx, cmd)
	if err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, notLeader(s.c.rn)
		}
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	out := &clusterv1.ApplyResponse{Index: res.Index, Result: resultCode(res.Err)}
	if res.Err != nil {
		out.Message = res.Err.Error()
	}
	return connect.NewResponse(out), nil
}

func notLeader(rn *raft.Node) error {
	_, addr := rn.Leader()
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%w (leader at %q)", raft.ErrNotLeader, addr))
}

// Join adds the calling node. A node may only add itself: the id must be
// the one in its certificate.
func (s *clusterService) Join(ctx context.Context, req *connect.Request[clusterv1.JoinRequest]) (*connect.Response[clusterv1.JoinResponse], error) {
	caller, _ := ctx.Value(peerIDKey{}).(string)
	if caller != req.Msg.Id {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %q may not join as %q", caller, req.Msg.Id))
	}
	change := clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_VOTER
	if req.Msg.Nonvoter {
		change = clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_NONVOTER
	}
	mreq := &clusterv1.ChangeMembershipRequest{Change: change, Id: req.Msg.Id, Address: req.Msg.Address}
	if err := validMembership(mreq); err != nil {
		return nil, connectError(err)
	}
	if err := s.c.changeMembership(ctx, mreq); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&clusterv1.JoinResponse{}), nil
}

// ChangeMembership applies a change on this node, which must be the
// leader (followers forward to the leader before calling it).
func (s *clusterService) ChangeMembership(ctx context.Context, req *connect.Request[clusterv1.ChangeMembershipRequest]) (*connect.Response[clusterv1.ChangeMembershipResponse], error) {
	if err := validMembership(req.Msg); err != nil {
		return nil, connectError(err)
	}
	if !s.c.rn.IsLeader() {
		return nil, notLeader(s.c.rn)
	}
	if err := s.c.changeLocal(ctx, req.Msg); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, notLeader(s.c.rn)
		}
		return nil, connectError(err)
	}
	return connect.NewResponse(&clusterv1.ChangeMembershipResponse{}), nil
}

// LocalStatus reports this node's own status.
func (s *clusterService) LocalStatus(ctx context.Context, _ *connect.Request[clusterv1.LocalStatusRequest]) (*connect.Response[clusterv1.LocalStatusResponse], error) {
	resp := connect.NewResponse(&clusterv1.LocalStatusResponse{Status: s.c.localStatus(ctx)})
	resp.Header().Set(clockHeader, strconv.FormatInt(s.c.now().UnixNano(), 10)) // clock.go
	return resp, nil
}
