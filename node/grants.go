package node

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// flowStore implements issuance.Users (local reads of the replica) and
// issuance.Grants (one Raft command per call) for the end-user flows.
type flowStore struct {
	rep    *replica
	node   string
	region string
	par    *featureGate // par.go
	// refreshNet gates RotateRefresh.network (raft.FeatureRefreshNetwork).
	refreshNet *featureGate
	// threatV3 gates RotateRefresh.travel_region (raft.FeatureThreatV3);
	// travelWindow is Config.AlertTravelWindow, tenantTravel the tenants'
	// own windows (Config.RateLimits.Tenants[t].AlertTravelWindow, non-zero
	// only); see travelWindowOf.
	threatV3     *featureGate
	travelWindow time.Duration
	tenantTravel map[string]time.Duration
}

// tenantTravelWindows collects the tenants' own impossible-travel windows
// from the rate-limit overrides.
func tenantTravelWindows(rl issuance.RateLimits) map[string]time.Duration {
	m := map[string]time.Duration{}
	for t, l := range rl.Tenants {
		if l.AlertTravelWindow != 0 {
			m[t] = l.AlertTravelWindow
		}
	}
	return m
}

// travelWindowOf is the impossible-travel window of tenant: its own
// (issuance.RateLimits.AlertTravelWindow) if set, else the node's; 0 means
// raft.DefaultTravelWindow, negative off.
func (f *flowStore) travelWindowOf(tenant string) time.Duration {
	if w, ok := f.tenantTravel[tenant]; ok {
		return w
	}
	return f.travelWindow
}

// gateOpen reports whether a proposer may use feature, gated by g: the
// recorded cluster version enables it, or none is recorded yet and every
// member lists it.
func (f *flowStore) gateOpen(ctx context.Context, g *featureGate, feature string) bool {
	if st := f.rep.rn.State(); st.ClusterVersion() != nil {
		return st.FeatureEnabled(feature)
	}
	return g.allow(ctx)
}

var (
	_ issuance.Users            = (*flowStore)(nil)
	_ issuance.Grants           = (*flowStore)(nil)
	_ issuance.DeviceCodeReader = (*flowStore)(nil)
)

func (f *flowStore) state() *raft.State { return f.rep.rn.State() }

func (f *flowStore) User(_ context.Context, tenant, id string) (issuance.User, error) {
	u, ok := f.state().User(tenant, id)
	if !ok {
		return issuance.User{}, issuance.ErrNotFound
	}
	return userFromPB(u), nil
}

func (f *flowStore) UserByUsername(_ context.Context, tenant, username string) (issuance.User, error) {
	u, ok := f.state().UserByUsername(tenant, username)
	if !ok {
		return issuance.User{}, issuance.ErrNotFound
	}
	return userFromPB(u), nil
}

func (f *flowStore) Consent(_ context.Context, tenant, userID, clientID string) (issuance.Consent, error) {
	c, ok := f.state().Consent(tenant, userID, clientID)
	if !ok {
		return issuance.Consent{}, issuance.ErrNotFound
	}
	return issuance.Consent{Scopes: c.Scopes, ExpiresAt: unixNano(c.ExpiresUnixNano)}, nil
}

func (f *flowStore) DeviceCode(_ context.Context, tenant, userCode string) (issuance.DeviceCode, error) {
	d, ok := f.state().DeviceCodeByUserCode(tenant, userCode)
	if !ok {
		return issuance.DeviceCode{}, issuance.ErrNotFound
	}
	return deviceFromPB(d), nil
}

// DeviceCodeByHash implements issuance.DeviceCodeReader: device polls that
// change nothing are answered from this replica, without a Raft write.
func (f *flowStore) DeviceCodeByHash(_ context.Context, tenant string, hash []byte) (issuance.DeviceCode, error) {
	d, ok := f.state().DeviceCodeByHash(tenant, hash)
	if !ok {
		return issuance.DeviceCode{}, issuance.ErrNotFound
	}
	return deviceFromPB(d), nil
}

func deviceFromPB(d *raftpb.DeviceCode) issuance.DeviceCode {
	return issuance.DeviceCode{Tenant: d.Tenant, UserCode: d.UserCode, ClientID: d.ClientId, Scopes: d.Scopes,
		ExpiresAt: unixNano(d.ExpiresUnixNano), Status: raft.DeviceStatusOf(d), Interval: time.Duration(d.IntervalNanos)}
}

func userFromPB(u *raftpb.User) issuance.User {
	out := issuance.User{Tenant: u.Tenant, ID: u.Id, Username: u.Username, Email: u.Email, EmailVerified: u.EmailVerified,
		Name: u.Name, Disabled: u.Disabled, Locked: u.Locked, LockedAt: unixNano(u.LockedUnixNano),
		SessionsRevokedAt: unixNano(u.SessionsRevokedUnixNano)}
	if p := u.Password; p != nil {
		out.Password = issuance.PasswordHash{Alg: p.Alg, Salt: p.Salt, Hash: p.Hash, Time: p.Time, MemoryKiB: p.MemoryKib, Threads: uint8(min(p.Threads, 255))}
	}
	return out
}

func passwordToPB(p issuance.PasswordHash) *raftpb.PasswordHash {
	return &raftpb.PasswordHash{Alg: p.Alg, Salt: p.Salt, Hash: p.Hash, Time: p.Time, MemoryKib: p.MemoryKiB, Threads: uint32(p.Threads)}
}

func familyFromPB(f *raftpb.Family) *issuance.Family {
	if f == nil {
		return nil
	}
	return &issuance.Family{ID: f.Id, ClientID: f.ClientId, UserID: f.UserId, Scopes: f.Scopes,
		AuthTime: unixNano(f.AuthTimeUnixNano), Generation: f.Generation}
}

func accessToPB(a issuance.AccessTokenRef) *raftpb.AccessToken {
	if a.JTI == "" {
		return nil
	}
	return &raftpb.AccessToken{Jti: a.JTI, ExpiresUnixNano: a.ExpiresAt.UnixNano()}
}

func newFamilyPB(tenant, clientID, userID string, scopes []string, authTime time.Time, nf *issuance.NewFamily) *raftpb.Family {
	if nf == nil {
		return nil
	}
	f := &raftpb.Family{Tenant: tenant, Id: nf.ID, ClientId: clientID, UserId: userID, Scopes: scopes,
		ExpiresUnixNano: nf.ExpiresAt.UnixNano(), IdleTimeoutNanos: int64(nf.IdleTimeout), Generation: 1, CurrentHash: nf.Hash}
	if !authTime.IsZero() {
		f.AuthTimeUnixNano = authTime.UnixNano()
	}
	return f
}

// proposeGrant proposes an end-user command and returns its value outcome.
// A command forwarded to the leader gets it in the leader's answer
// (ApplyResponse.grant); from a leader too old to send it, it reads it from
// the local state database, where applying the entry remembered it under
// the request id.
func (f *flowStore) proposeGrant(ctx context.Context, cmd *raftpb.Command) (*raftpb.GrantResult, error) {
	res, err := f.rep.propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	g := res.Grant
	if g == nil {
		g = f.rep.rn.FSM().RememberedGrant(cmd.RequestId)
	}
	if g == nil {
		return nil, errors.New("node: command applied without a grant result")
	}
	return g, nil
}

// outcomeErr maps the FSM's outcomes to issuance's sentinels.
func outcomeErr(o string) error {
	switch o {
	case raft.OutcomeDone:
		return nil
	case raft.OutcomeCodeReused:
		return issuance.ErrCodeReused
	case raft.OutcomeReuseDetected:
		return issuance.ErrRefreshReused
	case raft.OutcomeAuthorizationPending:
		return issuance.ErrAuthorizationPending
	case raft.OutcomeSlowDown:
		return issuance.ErrSlowDown
	case raft.OutcomeAccessDenied:
		return issuance.ErrAccessDenied
	case raft.OutcomeExpiredToken:
		return issuance.ErrExpiredToken
	default: // invalid, family_revoked, family_expired, not_found
		return issuance.ErrGrantInvalid
	}
}

func (f *flowStore) RememberConsent(ctx context.Context, tenant, userID, clientID string, scopes []string, expires time.Time) error {
	c := &raftpb.Consent{Tenant: tenant, UserId: userID, ClientId: clientID, Scopes: scopes}
	if !expires.IsZero() {
		c.ExpiresUnixNano = expires.UnixNano()
	}
	_, err := f.rep.propose(ctx, &raftpb.Command{Op: &raftpb.Command_RememberConsent{RememberConsent: &raftpb.RememberConsent{Consent: c}}})
	return err
}

func (f *flowStore) RedeemCode(ctx context.Context, r issuance.CodeRedemption) (*issuance.Family, error) {
	g, err := f.proposeGrant(ctx, &raftpb.Command{Op: &raftpb.Command_RedeemCode{RedeemCode: &raftpb.RedeemCode{
		Tenant: r.Tenant, CodeHash: r.CodeHash, CodeExpiresUnixNano: r.CodeExpires.UnixNano(),
		ClientId: r.ClientID, UserId: r.UserID,
		Family:      newFamilyPB(r.Tenant, r.ClientID, r.UserID, r.Scopes, r.AuthTime, r.Family),
		AccessToken: accessToPB(r.AccessToken),
	}}})
	if err != nil {
		return nil, err
	}
	if err := outcomeErr(raft.OutcomeOf(g)); err != nil {
		return nil, err
	}
	return familyFromPB(g.Family), nil
}

func (f *flowStore) RotateRefresh(ctx context.Context, r issuance.Rotation) (issuance.RotationResult, error) {
	rot := &raftpb.RotateRefresh{
		Tenant: r.Tenant, FamilyId: r.FamilyID, Generation: r.Generation, TokenHash: r.TokenHash, ClientId: r.ClientID,
		NewHash: r.NewHash, SealedSuccessor: r.SealedSuccessor, ReuseIntervalNanos: int64(r.ReuseInterval),
		AccessToken: accessToPB(r.AccessToken), Node: f.node, Region: f.region,
	}
	// The family's network (a refresh_new_network alert when it moves)
	// once every member records it the same way, and not after a
	// recorded cluster version without it (a downgrade).
	if r.Network != "" && f.refreshNet.allow(ctx) {
		if st := f.rep.rn.State(); st.ClusterVersion() == nil || st.FeatureEnabled(raft.FeatureRefreshNetwork) {
			rot.Network = r.Network
		}
	}
	// The serving region, for impossible travel (raft.FeatureThreatV3):
	// the region stands in for the client's location (clients are routed
	// to their nearest region).
	// The window is the tenant's own or the node's (travelWindowOf).
	if w := f.travelWindowOf(r.Tenant); f.region != "" && w >= 0 && f.gateOpen(ctx, f.threatV3, raft.FeatureThreatV3) {
		rot.TravelRegion = f.region
		rot.TravelWindowNanos = int64(cmp.Or(w, raft.DefaultTravelWindow))
	}
	g, err := f.proposeGrant(ctx, &raftpb.Command{Op: &raftpb.Command_RotateRefresh{RotateRefresh: rot}})
	if err != nil && (rot.Network != "" || rot.TravelRegion != "") && errors.Is(err, raft.ErrFeatureDisabled) {
		// Recorded off meanwhile (a downgrade): rotate without the gated
		// fields.
		rot.Network, rot.TravelRegion, rot.TravelWindowNanos = "", "", 0
		g, err = f.proposeGrant(ctx, &raftpb.Command{Op: &raftpb.Command_RotateRefresh{RotateRefresh: rot}})
	}
	if err != nil {
		return issuance.RotationResult{}, err
	}
	if raft.OutcomeOf(g) == raft.OutcomeReuseInterval {
		return issuance.RotationResult{Family: *familyFromPB(g.Family), Replayed: true, SealedSuccessor: g.SealedSuccessor}, nil
	}
	if err := outcomeErr(raft.OutcomeOf(g)); err != nil {
		return issuance.RotationResult{}, err
	}
	return issuance.RotationResult{Family: *familyFromPB(g.Family)}, nil
}

func (f *flowStore) RevokeFamily(ctx context.Context, tenant, clientID, familyID, reason string) error {
	g, err := f.proposeGrant(ctx, &raftpb.Command{Op: &raftpb.Command_RevokeFamily{RevokeFamily: &raftpb.RevokeFamily{
		Tenant: tenant, FamilyId: familyID, Reason: reason, ClientId: clientID}}})
	if err != nil {
		return err
	}
	switch raft.OutcomeOf(g) {
	case raft.OutcomeNotFound:
		return issuance.ErrNotFound
	case raft.OutcomeInvalid:
		return issuance.ErrGrantInvalid
	}
	return nil
}

func (f *flowStore) CreateDeviceCode(ctx context.Context, d issuance.DeviceCode, codeHash []byte, interval time.Duration) error {
	_, err := f.rep.propose(ctx, &raftpb.Command{Op: &raftpb.Command_CreateDeviceCode{CreateDeviceCode: &raftpb.CreateDeviceCode{
		DeviceCode: &raftpb.DeviceCode{Tenant: d.Tenant, DeviceCodeHash: codeHash, UserCode: d.UserCode, ClientId: d.ClientID,
			Scopes: d.Scopes, ExpiresUnixNano: d.ExpiresAt.UnixNano(), IntervalNanos: int64(interval)},
	}}})
	if errors.Is(err, raft.ErrExists) {
		return issuance.ErrUserCodeInUse
	}
	return err
}

func (f *flowStore) DecideDeviceCode(ctx context.Context, tenant, userCode string, approve bool, userID string, authTime time.Time) error {
	g, err := f.proposeGrant(ctx, &raftpb.Command{Op: &raftpb.Command_DecideDeviceCode{DecideDeviceCode: &raftpb.DecideDeviceCode{
		Tenant: tenant, UserCode: userCode, Approve: approve, UserId: userID, AuthTimeUnixNano: authTime.UnixNano(),
	}}})
	if err != nil {
		return err
	}
	return outcomeErr(raft.OutcomeOf(g))
}

func (f *flowStore) PollDeviceCode(ctx context.Context, p issuance.DevicePoll) (issuance.DeviceGrant, error) {
	g, err := f.proposeGrant(ctx, &raftpb.Command{Op: &raftpb.Command_PollDeviceCode{PollDeviceCode: &raftpb.PollDeviceCode{
		Tenant: p.Tenant, DeviceCodeHash: p.CodeHash, ClientId: p.ClientID,
		Family:      newFamilyPB(p.Tenant, p.ClientID, "", nil, time.Time{}, p.Family),
		AccessToken: accessToPB(p.AccessToken),
	}}})
	if err != nil {
		return issuance.DeviceGrant{}, err
	}
	if err := outcomeErr(raft.OutcomeOf(g)); err != nil {
		return issuance.DeviceGrant{}, err
	}
	d := g.DeviceCode
	if d == nil {
		return issuance.DeviceGrant{}, issuance.ErrGrantInvalid
	}
	return issuance.DeviceGrant{UserID: d.UserId, Scopes: d.Scopes, AuthTime: unixNano(d.AuthTimeUnixNano), Family: familyFromPB(g.Family)}, nil
}
