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
// A forwarded attempt is abandoned as soon as this node stops hearing from
// the leader it forwarded to for longer than the leader lease, or learns of
// another leader (see forward), so a leader that stopped answering costs
// about one election, not the whole write timeout.
//
// A node that refuses writes itself (low on disk: raft.Node.WritesRefused)
// fails at once, without forwarding: it could not apply the write locally,
// so the caller could not read it here.
//
// Domain outcomes come back in Result.Err (a remote one wraps the same raft
// sentinel); the error is non-nil only when the outcome is not known to be
// applied here.
func (c *cluster) propose(ctx context.Context, cmd *raftpb.Command) (raft.Result, error) {
	if err := c.rn.WritesRefused(); err != nil {
		return raft.Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
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
			if errors.Is(err, raft.ErrClosed) || errors.Is(err, raft.ErrWritesRefused) || errors.Is(err, raft.ErrFeatureDisabled) || ctx.Err() != nil {
				// A feature refusal is a verdict of the recorded cluster
				// version, not a passing state: retrying until the write
				// timeout would only delay it (a caller may propose the
				// command again without the gated part).
				return res, fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			last = err // not leader any more, or leadership lost: retry
			continue
		}
		_, addr := c.rn.Leader()
		if addr == "" {
			last = errors.New("no raft leader")
			continue
		}
		if err := c.leaderGone(addr); err != nil {
			last = err // wait for an election or the leader's next heartbeat
			continue
		}
		if data == nil {
			var err error
			if data, err = (proto.MarshalOptions{Deterministic: true}).Marshal(cmd); err != nil {
				return raft.Result{Err: fmt.Errorf("%w: marshal: %v", raft.ErrInvalid, err)}, nil
			}
		}
		resp, err := c.forward(ctx, addr, data)
		if err != nil {
			if code := connect.CodeOf(err); code == connect.CodeInvalidArgument || code == connect.CodePermissionDenied {
				return raft.Result{Err: fmt.Errorf("%w: %v", raft.ErrInvalid, err)}, nil
			}
			if featureRefused(err) {
				return raft.Result{}, fmt.Errorf("%w: %w: the leader refused: %v", ErrUnavailable, raft.ErrFeatureDisabled, err)
			}
			last = err
			continue
		}
		res := raft.Result{Index: resp.Index, Err: resultErr(resp.Result, resp.Message)}
		if len(resp.Grant) > 0 {
			// The leader's outcome (issue 14); when it is missing (an older
			// leader) or unreadable, proposeGrant reads it back from this
			// node's state database once applied.
			g := new(raftpb.GrantResult)
			if proto.Unmarshal(resp.Grant, g) == nil {
				res.Grant = g
			}
		}
		if err := c.rn.WaitApplied(ctx, res.Index); err != nil {
			return res, fmt.Errorf("%w: committed at index %d but not yet applied here: %v", ErrUnavailable, res.Index, err)
		}
		return res, nil
	}
}

// leaderWatchEvery is how often a forwarded attempt checks that its leader
// is still there.
const leaderWatchEvery = 25 * time.Millisecond

// forward sends one attempt of a write to the leader at addr. The attempt
// has no fixed deadline of its own (a live leader that is slow to commit
// under load is waited for), but it is abandoned as soon as leaderGone
// says the leader is gone: no contact for longer than the leader lease, or
// another leader known. The peer client speaks HTTP/1.1 with one request
// per connection at a time, and abandoning an attempt closes its
// connection, so a stopped leader pins no connection that a later attempt
// would reuse to the new leader.
func (c *cluster) forward(ctx context.Context, addr string, data []byte) (*clusterv1.ApplyResponse, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(leaderWatchEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if err := c.leaderGone(addr); err != nil {
				cancel(err)
				return
			}
		}
	}()
	resp, err := c.peer(addr).Apply(actx, connect.NewRequest(&clusterv1.ApplyRequest{Command: data}))
	if err != nil {
		if cause := context.Cause(actx); cause != nil && ctx.Err() == nil && !errors.Is(cause, context.Canceled) {
			return nil, fmt.Errorf("forward abandoned: %w", cause)
		}
		return nil, err
	}
	return resp.Msg, nil
}

// leaderGone reports why the leader at addr should no longer be waited for:
// this node knows another (or no) leader, or has not heard from it for
// longer than the leader lease (a leader that cannot reach a quorum for that
// long steps down; one that reaches nobody, e.g. stopped by SIGSTOP, is
// replaced after an election timeout). It is nil while the leader is
// heard from.
func (c *cluster) leaderGone(addr string) error {
	if _, cur := c.rn.Leader(); cur != addr {
		return fmt.Errorf("leader moved from %q to %q", addr, cur)
	}
	lease := c.rn.LeaseTimeout()
	if d := time.Since(c.rn.LastContact()); d > lease {
		return fmt.Errorf("no contact with the leader at %q for %s (lease %s)", addr, d.Round(time.Millisecond), lease)
	}
	return nil
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
		if req.Id == c.cfg.NodeID {
			// Removal is final (the id goes on the deny list), and a
			// leader cannot deny itself: hand leadership over and let the
			// caller repeat the change at the new leader.
			if err := c.rn.TransferLeadership(ctx, ""); err != nil {
				return err
			}
			return raft.ErrNotLeader
		}
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
// it) and was not removed from the cluster (cluster.peerIdentity); its node
// id is in the context. Each method then authorises by role:
//
//	Apply             a member of the Raft configuration (voter or not),
//	                  forwarding a write; not the cluster identity commands,
//	                  which only a leader proposes itself
//	ChangeMembership  a member, forwarding an operator's change
//	Join              any node, as itself only, with the cluster's issuer
//	LocalStatus       any node not removed
type clusterService struct {
	c *cluster
}

// caller is the node id of the calling node's certificate.
func caller(ctx context.Context) string {
	id, _ := ctx.Value(peerIDKey{}).(string)
	return id
}

// requireMember refuses a caller that is not in this node's latest Raft
// configuration.
func (s *clusterService) requireMember(ctx context.Context, what string) error {
	id := caller(ctx)
	ms, err := s.c.rn.Members(ctx)
	if err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	for _, m := range ms {
		if m.ID == id {
			return nil
		}
	}
	return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %q is not a member of the cluster: only members may %s", id, what))
}

var _ clusterv1connect.ClusterServiceHandler = (*clusterService)(nil)

// Apply proposes a forwarded command on this node, which must be the
// leader.
func (s *clusterService) Apply(ctx context.Context, req *connect.Request[clusterv1.ApplyRequest]) (*connect.Response[clusterv1.ApplyResponse], error) {
	if err := s.requireMember(ctx, "forward writes"); err != nil {
		return nil, err
	}
	cmd := &raftpb.Command{}
	if err := proto.Unmarshal(req.Msg.Command, cmd); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("command: %w", err))
	}
	switch cmd.GetOp().(type) {
	case *raftpb.Command_SetClusterIssuer, *raftpb.Command_DenyNode:
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %q may not forward %T: the leader proposes cluster identity commands itself", caller(ctx), cmd.GetOp()))
	}
	if !s.c.rn.IsLeader() {
		return nil, notLeader(s.c.rn)
	}
	res, err := s.c.rn.Propose(ctx, cmd)
	if err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, notLeader(s.c.rn)
		}
		if errors.Is(err, raft.ErrFeatureDisabled) {
			ce := connect.NewError(connect.CodeFailedPrecondition, err)
			ce.Meta().Set(featureRefusedHeader, "1")
			return nil, ce
		}
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	out := &clusterv1.ApplyResponse{Index: res.Index, Result: resultCode(res.Err)}
	if res.Err != nil {
		out.Message = res.Err.Error()
	}
	if res.Grant != nil {
		// The forwarder need not read the outcome back (issue 14). A
		// marshal failure leaves it empty, and it does.
		out.Grant, _ = (proto.MarshalOptions{Deterministic: true}).Marshal(res.Grant)
	}
	return connect.NewResponse(out), nil
}

// featureRefusedHeader marks a forwarded write the leader refused because
// the recorded cluster version lacks its feature (raft.ErrFeatureDisabled):
// the forwarding node returns that at once instead of retrying until its
// write timeout. (A follower that has not yet applied a downgrade the
// leader has proposes a gated part, e.g. a refresh rotation's network,
// and proposes again without it.) Older forwarders see FailedPrecondition
// and retry, as before.
const featureRefusedHeader = "Tally-Feature-Refused"

func featureRefused(err error) bool {
	var ce *connect.Error
	return errors.As(err, &ce) && connect.CodeOf(err) == connect.CodeFailedPrecondition && ce.Meta().Get(featureRefusedHeader) != ""
}

func notLeader(rn *raft.Node) error {
	_, addr := rn.Leader()
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%w (leader at %q)", raft.ErrNotLeader, addr))
}

// Join adds the calling node. A node may only add itself: the id must be
// the one in its certificate.
func (s *clusterService) Join(ctx context.Context, req *connect.Request[clusterv1.JoinRequest]) (*connect.Response[clusterv1.JoinResponse], error) {
	if id := caller(ctx); id != req.Msg.Id {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %q may not join as %q", id, req.Msg.Id))
	}
	if err := s.c.peerAllowed(req.Msg.Id); err != nil {
		return nil, connect.NewError(connect.CodePermissionDenied, err)
	}
	if cluster := s.c.rn.State().ClusterIssuer(); cluster != "" && trimIssuer(req.Msg.Issuer) != cluster {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%w: node %q is configured with --issuer %q but the cluster's issuer is %q; every node of a cluster must use the same issuer",
			ErrIssuerMismatch, req.Msg.Id, req.Msg.Issuer, cluster))
	}
	if err := s.c.checkJoinVersion(req.Msg); err != nil { // version.go
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
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
	if err := s.requireMember(ctx, "change the membership"); err != nil {
		return nil, err
	}
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
