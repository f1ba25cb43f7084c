package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyauth/tally/issuance/policy"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// featureGatewayConfig names the SetGatewayConfig operation (raft op 110)
// in MemberStatus.features: the admin API refuses to propose it until
// every voter runs a binary that applies it.
const featureGatewayConfig = "gateway_config"

// updateGateway is a read-modify-write of the tenant's gateway
// configuration: mod changes a copy of the current record, and the write
// carries the revision it read (retried on a conflict with a concurrent
// writer).
func (a *adminService) updateGateway(ctx context.Context, tenant string, mod func(*raftpb.GatewayConfig) error) (*adminv1.GatewayConfig, error) {
	if _, ok := a.rep.rn.State().Tenant(tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", tenant))
	}
	if a.supports != nil && !a.supports(ctx, featureGatewayConfig) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("not every node of the cluster supports gateway configuration yet (upgrade them first)"))
	}
	for attempt := 0; ; attempt++ {
		cur := a.rep.rn.State().GatewayConfig(tenant)
		next := &raftpb.GatewayConfig{Tenant: tenant}
		var rev uint64
		if cur != nil {
			next = proto.Clone(cur).(*raftpb.GatewayConfig)
			rev = cur.Revision
		}
		if err := mod(next); err != nil {
			return nil, err
		}
		if err := raft.CheckGatewayConfig(next); err != nil {
			return nil, connectError(err)
		}
		err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_SetGatewayConfig{SetGatewayConfig: &raftpb.SetGatewayConfig{Config: next, ExpectedRevision: rev}}})
		if err != nil && connect.CodeOf(err) == connect.CodeFailedPrecondition && attempt < 5 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return gatewayPB(a.rep.rn.State().GatewayConfig(tenant), tenant), nil
	}
}

func gatewayPB(c *raftpb.GatewayConfig, tenant string) *adminv1.GatewayConfig {
	out := &adminv1.GatewayConfig{Tenant: tenant}
	if c == nil {
		return out
	}
	out.Revision = c.Revision
	if c.UpdatedUnixNano != 0 {
		out.UpdatedAt = timestamppb.New(time.Unix(0, c.UpdatedUnixNano))
	}
	for _, r := range c.Routes {
		out.Routes = append(out.Routes, &adminv1.GatewayRoute{PathPrefix: r.PathPrefix, Method: r.Method, Scopes: r.Scopes, PhantomAudience: r.PhantomAudience})
	}
	for _, l := range c.RateLimits {
		out.RateLimits = append(out.RateLimits, &adminv1.GatewayRateLimit{ClientId: l.ClientId, PerSecond: l.PerSecond, Burst: l.Burst})
	}
	for _, p := range c.Policies {
		out.Policies = append(out.Policies, &adminv1.PolicyInfo{ClientId: p.ClientId, Source: p.Source, DryRun: p.DryRun})
	}
	return out
}

func (a *adminService) GetGatewayConfig(_ context.Context, req *connect.Request[adminv1.GetGatewayConfigRequest]) (*connect.Response[adminv1.GetGatewayConfigResponse], error) {
	t := req.Msg.Tenant
	if _, ok := a.rep.rn.State().Tenant(t); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", t))
	}
	return connect.NewResponse(&adminv1.GetGatewayConfigResponse{Config: gatewayPB(a.rep.rn.State().GatewayConfig(t), t)}), nil
}

func (a *adminService) SetGatewayRoute(ctx context.Context, req *connect.Request[adminv1.SetGatewayRouteRequest]) (*connect.Response[adminv1.SetGatewayRouteResponse], error) {
	r := req.Msg.Route
	if r == nil {
		return nil, invalid("route is required")
	}
	c, err := a.updateGateway(ctx, req.Msg.Tenant, func(c *raftpb.GatewayConfig) error {
		nr := &raftpb.GatewayRoute{PathPrefix: r.PathPrefix, Method: r.Method, Scopes: r.Scopes, PhantomAudience: r.PhantomAudience}
		i := slices.IndexFunc(c.Routes, func(x *raftpb.GatewayRoute) bool { return x.PathPrefix == r.PathPrefix && x.Method == r.Method })
		if i >= 0 {
			c.Routes[i] = nr
		} else {
			c.Routes = append(c.Routes, nr)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetGatewayRouteResponse{Config: c}), nil
}

func (a *adminService) DeleteGatewayRoute(ctx context.Context, req *connect.Request[adminv1.DeleteGatewayRouteRequest]) (*connect.Response[adminv1.DeleteGatewayRouteResponse], error) {
	c, err := a.updateGateway(ctx, req.Msg.Tenant, func(c *raftpb.GatewayConfig) error {
		n := len(c.Routes)
		c.Routes = slices.DeleteFunc(c.Routes, func(x *raftpb.GatewayRoute) bool {
			return x.PathPrefix == req.Msg.PathPrefix && x.Method == req.Msg.Method
		})
		if len(c.Routes) == n {
			return connect.NewError(connect.CodeNotFound, errors.New("no such route"))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteGatewayRouteResponse{Config: c}), nil
}

func (a *adminService) SetGatewayRateLimit(ctx context.Context, req *connect.Request[adminv1.SetGatewayRateLimitRequest]) (*connect.Response[adminv1.SetGatewayRateLimitResponse], error) {
	l := req.Msg.Limit
	if l == nil {
		return nil, invalid("limit is required")
	}
	c, err := a.updateGateway(ctx, req.Msg.Tenant, func(c *raftpb.GatewayConfig) error {
		c.RateLimits = slices.DeleteFunc(c.RateLimits, func(x *raftpb.GatewayRateLimit) bool { return x.ClientId == l.ClientId })
		if l.PerSecond > 0 {
			burst := l.Burst
			if burst == 0 {
				burst = 1
			}
			c.RateLimits = append(c.RateLimits, &raftpb.GatewayRateLimit{ClientId: l.ClientId, PerSecond: l.PerSecond, Burst: burst})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetGatewayRateLimitResponse{Config: c}), nil
}

// SetPolicy compiles the policy before proposing it: a policy that does
// not compile is refused at write time and never reaches the log.
func (a *adminService) SetPolicy(ctx context.Context, req *connect.Request[adminv1.SetPolicyRequest]) (*connect.Response[adminv1.SetPolicyResponse], error) {
	p := req.Msg.Policy
	if p == nil {
		return nil, invalid("policy is required")
	}
	if p.Source != "" {
		if _, err := policy.Compile(p.Source); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
	}
	c, err := a.updateGateway(ctx, req.Msg.Tenant, func(c *raftpb.GatewayConfig) error {
		c.Policies = slices.DeleteFunc(c.Policies, func(x *raftpb.Policy) bool { return x.ClientId == p.ClientId })
		if p.Source != "" {
			c.Policies = append(c.Policies, &raftpb.Policy{ClientId: p.ClientId, Source: p.Source, DryRun: p.DryRun})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetPolicyResponse{Config: c}), nil
}
