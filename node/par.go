package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Issue 11: pushed authorization requests (RFC 9126) and key policies.

// featurePARKeyPolicy names the PushAuthorizationRequest,
// RedeemRequestURI, SetKeyPolicy and SetTenantPAR operations (raft ops
// 100-103) in MemberStatus.features.
const featurePARKeyPolicy = "par_keypolicy"

// ErrFeatureNotReady: an operation's feature is not yet supported by every
// member (a rolling upgrade is under way).
var ErrFeatureNotReady = errors.New("node: not every cluster member supports this operation yet")

// featureGate caches cluster.allSupport for one feature (the PAR, key
// policy and zero-trust operations use it): once every member supports
// it, it stays allowed — a downgrade is enforced where it is recorded, by
// raft.Node.Propose (raft/ops.go gatedBy); a refusal is asked again after
// featureRecheck.
type featureGate struct {
	cl      *cluster
	feature string

	mu      sync.Mutex
	ok      bool
	checked time.Time
}

const featureRecheck = 2 * time.Second

func newFeatureGate(cl *cluster, feature string) *featureGate {
	return &featureGate{cl: cl, feature: feature}
}

func (g *featureGate) allow(ctx context.Context) bool {
	if g == nil || g.cl == nil {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ok || (!g.checked.IsZero() && time.Since(g.checked) < featureRecheck) {
		return g.ok
	}
	g.ok, g.checked = g.cl.allSupport(ctx, g.feature), time.Now()
	return g.ok
}

var _ issuance.PushedRequests = (*flowStore)(nil)

// PushRequest implements issuance.PushedRequests with one Raft write.
func (f *flowStore) PushRequest(ctx context.Context, tenant string, uriHash []byte, clientID, params string, expires time.Time) error {
	if !f.par.allow(ctx) {
		return ErrFeatureNotReady
	}
	_, err := f.rep.propose(ctx, &raftpb.Command{Op: &raftpb.Command_PushAuthorizationRequest{PushAuthorizationRequest: &raftpb.PushAuthorizationRequest{
		Request: &raftpb.PushedRequest{Tenant: tenant, UriHash: uriHash, ClientId: clientID, Params: params, ExpiresUnixNano: expires.UnixNano()}}}})
	return err
}

// RedeemRequest implements issuance.PushedRequests: one Raft write that
// deletes the request, so it is used once cluster-wide.
func (f *flowStore) RedeemRequest(ctx context.Context, tenant string, uriHash []byte, clientID string) (string, error) {
	if !f.par.allow(ctx) {
		return "", ErrFeatureNotReady
	}
	g, err := f.proposeGrant(ctx, &raftpb.Command{Op: &raftpb.Command_RedeemRequestUri{RedeemRequestUri: &raftpb.RedeemRequestURI{
		Tenant: tenant, UriHash: uriHash, ClientId: clientID}}})
	if err != nil {
		return "", err
	}
	switch raft.OutcomeOf(g) {
	case raft.OutcomeDone:
		return g.GetPushedRequest().GetParams(), nil
	case raft.OutcomeNotFound:
		return "", issuance.ErrNotFound
	case raft.OutcomeExpiredToken:
		return "", issuance.ErrExpiredToken
	default:
		return "", issuance.ErrGrantInvalid
	}
}
