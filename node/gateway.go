package node

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/policy"
	"github.com/tallyauth/tally/node/gateway"
	"github.com/tallyauth/tally/raft/raftpb"
)

// The gateway and policy integration of a node (issue 12): the CEL policy
// engine evaluated on every grant, the forward-auth endpoint
// GET {issuer}/gateway/check, the sidecar's rules endpoint
// GET {issuer}/gateway/rules and Envoy's ext_authz (gateway_envoy.go).

// policyEngine evaluates the tenants' policies at the revision of their
// gateway configuration this replica has applied.
func (n *Node) policyEngine() *policy.Engine {
	return policy.NewEngine(func(tenant string) (uint64, []policy.Spec) {
		return policySpecs(n.raft.State().GatewayConfig(tenant))
	}, n.log.With("component", "policy"))
}

func policySpecs(c *raftpb.GatewayConfig) (uint64, []policy.Spec) {
	if c == nil {
		return 0, nil
	}
	specs := make([]policy.Spec, 0, len(c.Policies))
	for _, p := range c.Policies {
		specs = append(specs, policy.Spec{ClientID: p.ClientId, Source: p.Source, DryRun: p.DryRun})
	}
	return c.Revision, specs
}

// gatewayRules converts the tenant's stored configuration.
func (n *Node) gatewayRules(tenant string) (gateway.Rules, bool) {
	t, ok := n.raft.State().Tenant(tenant)
	if !ok || t.Disabled {
		return gateway.Rules{}, false
	}
	return rulesOf(n.raft.State().GatewayConfig(tenant)), true
}

func rulesOf(c *raftpb.GatewayConfig) gateway.Rules {
	var r gateway.Rules
	if c == nil {
		return r
	}
	r.Version = c.Revision
	for _, x := range c.Routes {
		r.Routes = append(r.Routes, gateway.Route{PathPrefix: x.PathPrefix, Method: x.Method, Scopes: slices.Clone(x.Scopes), PhantomAudience: x.PhantomAudience})
	}
	for _, l := range c.RateLimits {
		r.RateLimits = append(r.RateLimits, gateway.RateLimit{ClientID: l.ClientId, PerSecond: l.PerSecond, Burst: int(l.Burst)})
	}
	return r
}

// newChecker is the node's checker: tokens verified against the local
// replica (no write, no call to another node), phantom tokens minted
// locally.
func (n *Node) newChecker() *gateway.Checker {
	return &gateway.Checker{
		Rules: n.gatewayRules,
		Verify: func(ctx context.Context, tenant, token string) (*gateway.Identity, error) {
			at, err := n.iss.VerifyAccessToken(ctx, tenant, token)
			switch {
			case errors.Is(err, issuance.ErrInvalidToken) || errors.Is(err, issuance.ErrNotFound):
				return nil, gateway.ErrInvalidToken
			case err != nil:
				return nil, errors.Join(gateway.ErrUnavailable, err)
			}
			return &gateway.Identity{Subject: at.Subject, ClientID: at.ClientID, Actor: at.Actor, JTI: at.JTI,
				Scopes: at.Scopes, ExpiresAt: at.ExpiresAt, Token: token, JKT: at.JKT, X5T: at.X5T}, nil
		},
		Phantom: func(ctx context.Context, tenant string, id *gateway.Identity, audience string) (string, error) {
			at, err := n.iss.VerifyAccessToken(ctx, tenant, id.Token)
			if err != nil {
				return "", gateway.ErrInvalidToken
			}
			tok, err := n.iss.PhantomToken(ctx, tenant, at, audience)
			if errors.Is(err, issuance.ErrInvalidToken) {
				return "", gateway.ErrInvalidToken
			}
			return tok, err
		},
		Policy: n.iss.Policy(),
		Risk:   n.risk.signal,
		Realm:  n.base,
		Now:    n.now,
	}
}

// gatewayRoutes registers the gateway endpoints on the node's mux.
func (n *Node) gatewayRoutes(mux *http.ServeMux) {
	c := n.newChecker()
	mux.Handle("GET /t/{tenant}/gateway/check", c.ForwardAuth(func(r *http.Request) string { return r.PathValue("tenant") }, gateway.DefaultTrusted))
	mux.HandleFunc("GET /t/{tenant}/gateway/rules", n.serveGatewayRules)
	path, h := gateway.ExtAuthzHandler(c, "default")
	mux.Handle(path, h)
}

// SidecarRules is what GET {issuer}/gateway/rules returns to a sidecar.
type SidecarRules struct {
	gateway.Rules
	Policies []policy.Spec `json:"policies,omitempty"`
}

// serveGatewayRules gives a sidecar the tenant's rules and policies. The
// caller authenticates as a confidential client allowed the token
// exchange grant (the gateway's own client).
func (n *Node) serveGatewayRules(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	rules, ok := n.gatewayRules(tenant)
	if !ok {
		http.Error(w, `{"error":"invalid_request","error_description":"unknown tenant"}`, http.StatusNotFound)
		return
	}
	c, err := n.iss.AuthenticateClient(r.Context(), tenant, r.Header)
	if err != nil {
		n.iss.WriteError(w, r, err)
		return
	}
	if !slices.Contains(c.GrantTypes, issuance.GrantTokenExchange) {
		http.Error(w, `{"error":"unauthorized_client","error_description":"only a gateway client (allowed token exchange) may read the gateway rules"}`, http.StatusForbidden)
		return
	}
	_, specs := policySpecs(n.raft.State().GatewayConfig(tenant))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(SidecarRules{Rules: rules, Policies: specs})
}
