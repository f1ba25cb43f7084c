package raft

import (
	"bytes"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Outcomes of the end-user commands (raftpb.GrantResult.outcome). They are
// values, not errors: a replayed code or a reused refresh token still
// commits the revocations it causes.
const (
	OutcomeDone                 = ""
	OutcomeCodeReused           = "code_reused"
	OutcomeReuseInterval        = "reuse_interval"
	OutcomeReuseDetected        = "reuse_detected"
	OutcomeFamilyRevoked        = "family_revoked"
	OutcomeFamilyExpired        = "family_expired"
	OutcomeInvalid              = "invalid"
	OutcomeAuthorizationPending = "authorization_pending"
	OutcomeSlowDown             = "slow_down"
	OutcomeAccessDenied         = "access_denied"
	OutcomeExpiredToken         = "expired_token"
	OutcomeNotFound             = "not_found"
)

// Kinds of GrantEvent, the hook for the event log: every replica computes
// the same events for the same entry, and FSM observers see them in
// Result.Grant.Events.
const (
	EventReuseDetected = "reuse_detected"
	EventFamilyRevoked = "family_revoked"
	EventCodeReused    = "code_reused"
)

// Reasons of the revocations a family revocation writes.
const (
	ReasonRefreshReuse = "refresh_reuse"
	ReasonCodeReuse    = "code_reuse"
	ReasonUserLocked   = "user_locked"
)

// DeviceSlowDownNanos is what a client adds to its polling interval on
// each slow_down (RFC 8628 §3.5: "increased by 5 seconds").
const DeviceSlowDownNanos = int64(5e9)

// devicePollJitter is how much sooner than the interval a poll may arrive
// and still count as on time (network jitter, clocks of different nodes):
// a quarter of the interval, at most 1 s. issuance applies the same rule.
func devicePollJitter(interval int64) int64 { return min(interval/4, int64(1e9)) }

// Device code states.
const (
	DevicePending  = "pending"
	DeviceApproved = "approved"
	DeviceDenied   = "denied"
	DeviceRedeemed = "redeemed"
)

// maxFamilyAccessTokens bounds the live access tokens recorded on one
// family. A family never issues a token it cannot record (revoking the
// family must revoke every access token it issued): a rotation that would
// exceed the bound is refused (outcome "invalid"; the client signs in
// again). Expired tokens are dropped first. A client that refreshes only
// when its access token expires holds one or two.
const maxFamilyAccessTokens = 1024

func outcome(o string) *raftpb.GrantResult { return &raftpb.GrantResult{Outcome: o} }

// userActive reports whether the user exists and may get tokens.
func (a *applier) userActive(tenant, id string) bool {
	u, err := a.getUser(tenant, id)
	return err == nil && !u.GetDisabled() && !u.GetLocked()
}

func (a *applier) clientActive(tenant, id string) bool {
	c, err := a.getClient(tenant, id)
	return err == nil && !c.GetDisabled()
}

// liveAccessTokens returns the tokens of list not expired at now.
func liveAccessTokens(list []*raftpb.AccessToken, now int64) []*raftpb.AccessToken {
	out := list[:0:0]
	for _, t := range list {
		if t.GetExpiresUnixNano() > now {
			out = append(out, t)
		}
	}
	return out
}

// addAccessToken records at after the tokens of list still live at now.
// Callers check familyFull first, so nothing live is ever dropped.
func addAccessToken(list []*raftpb.AccessToken, at *raftpb.AccessToken, now int64) []*raftpb.AccessToken {
	out := liveAccessTokens(list, now)
	if at != nil && at.GetJti() != "" {
		out = append(out, proto.Clone(at).(*raftpb.AccessToken))
	}
	return out
}

// familyFull reports whether f cannot record one more access token.
func familyFull(f *raftpb.Family, at *raftpb.AccessToken, now int64) bool {
	return at.GetJti() != "" && len(liveAccessTokens(f.AccessTokens, now)) >= maxFamilyAccessTokens
}

// revokeUserFamilies revokes every live refresh family of a user (the user
// was disabled or locked).
func (a *applier) revokeUserFamilies(tenant, userID, reason string, now int64) {
	if a.tx.Bucket(tenantBucket(tenant, kindFamilies)) == nil {
		return
	}
	var fams []*raftpb.Family
	_ = a.flowBucket(tenant, kindFamilies).ForEach(func(k, v []byte) error {
		f := new(raftpb.Family)
		if err := proto.Unmarshal(v, f); err != nil {
			storageFault("family %q undecodable: %v", k, err)
		}
		if f.UserId == userID && f.RevokedUnixNano == 0 {
			fams = append(fams, f)
		}
		return nil
	})
	for _, f := range fams { // bbolt: no writes while iterating
		a.revokeFamilyRecord(f, reason, now)
	}
}

// revokeAccessTokens writes a revocation for each token still live at now
// and returns their jtis.
func (a *applier) revokeAccessTokens(tenant, clientID, subject, reason string, ts []*raftpb.AccessToken, now int64) []string {
	var jtis []string
	for _, t := range ts {
		if t.GetExpiresUnixNano() <= now {
			continue
		}
		_ = a.revokeToken(&raftpb.Revocation{
			Tenant: tenant, Jti: t.GetJti(), ClientId: clientID, Subject: subject,
			RevokedUnixNano: now, ExpiresUnixNano: t.GetExpiresUnixNano(), Reason: reason,
		}, now)
		jtis = append(jtis, t.GetJti())
	}
	return jtis
}

func (a *applier) getFamily(tenant, id string) (*raftpb.Family, bool) {
	f := new(raftpb.Family)
	return f, a.get(a.flowBucket(tenant, kindFamilies), id, f)
}

func (a *applier) putFamily(f *raftpb.Family) {
	v, err := marshalOpts.Marshal(f)
	if err != nil {
		storageFault("marshal family %q: %v", f.Id, err)
	}
	a.put(a.flowBucket(f.Tenant, kindFamilies), []byte(f.Id), v)
}

// revokeFamilyRecord marks f revoked and revokes its access tokens. It is
// idempotent for a family already revoked (nothing is written).
func (a *applier) revokeFamilyRecord(f *raftpb.Family, reason string, now int64) *raftpb.GrantEvent {
	if f.RevokedUnixNano != 0 {
		return nil
	}
	jtis := a.revokeAccessTokens(f.Tenant, f.ClientId, f.UserId, reason, f.AccessTokens, now)
	f.RevokedUnixNano = now
	f.RevokeReason = reason
	f.AccessTokens = nil
	f.SealedSuccessor = nil
	a.putFamily(f)
	a.emit(&raftpb.Event{Tenant: f.Tenant, Kind: raftpb.EventKind_EVENT_KIND_FAMILY_REVOKED, TimeUnixNano: now,
		ClientId: f.ClientId, Subject: f.UserId, FamilyId: f.Id})
	return &raftpb.GrantEvent{Kind: EventFamilyRevoked, Tenant: f.Tenant, ClientId: f.ClientId,
		UserId: f.UserId, FamilyId: f.Id, RevokedJtis: jtis}
}

// newFamily checks and stores a family created by a code or device grant.
func (a *applier) newFamily(in *raftpb.Family, at *raftpb.AccessToken, now int64) (*raftpb.Family, error) {
	if _, exists := a.getFamily(in.GetTenant(), in.GetId()); exists {
		return nil, fmt.Errorf("%w: family %q", ErrExists, in.GetId())
	}
	f := proto.Clone(in).(*raftpb.Family)
	f.CreatedUnixNano = now
	f.LastUsedUnixNano = now
	if f.Generation == 0 {
		f.Generation = 1
	}
	f.AccessTokens = addAccessToken(nil, at, now)
	a.putFamily(f)
	return f, nil
}

// redeemCode: see raftpb.RedeemCode.
func (a *applier) redeemCode(c *raftpb.RedeemCode, now int64) (*raftpb.GrantResult, error) {
	if !a.tenantExists(c.GetTenant()) {
		return nil, notFoundTenant(c.GetTenant())
	}
	b := a.flowBucket(c.GetTenant(), kindUsedCodes)
	key := string(c.GetCodeHash())
	used := new(raftpb.UsedCode)
	if a.get(b, key, used) {
		// RFC 6749 §4.1.2: a code used twice revokes every token issued
		// from it (RFC 9700 §4.5 too).
		res := outcome(OutcomeCodeReused)
		ev := &raftpb.GrantEvent{Kind: EventCodeReused, Tenant: c.GetTenant(), ClientId: used.ClientId, UserId: used.UserId, FamilyId: used.FamilyId}
		ev.RevokedJtis = a.revokeAccessTokens(c.GetTenant(), used.ClientId, used.UserId, ReasonCodeReuse, used.AccessTokens, now)
		used.AccessTokens = nil
		if used.FamilyId != "" {
			if f, ok := a.getFamily(c.GetTenant(), used.FamilyId); ok {
				if fe := a.revokeFamilyRecord(f, ReasonCodeReuse, now); fe != nil {
					ev.RevokedJtis = append(ev.RevokedJtis, fe.RevokedJtis...)
					res.Events = append(res.Events, fe)
				}
			}
		}
		used.Replayed = true
		v, err := marshalOpts.Marshal(used)
		if err != nil {
			storageFault("marshal used code: %v", err)
		}
		a.put(b, []byte(key), v)
		res.Events = append([]*raftpb.GrantEvent{ev}, res.Events...)
		return res, nil
	}
	if c.GetCodeExpiresUnixNano() <= now {
		return outcome(OutcomeExpiredToken), nil
	}
	if !a.userActive(c.GetTenant(), c.GetUserId()) || !a.clientActive(c.GetTenant(), c.GetClientId()) {
		return outcome(OutcomeInvalid), nil
	}
	used = &raftpb.UsedCode{CodeHash: c.GetCodeHash(), ClientId: c.GetClientId(), UserId: c.GetUserId(),
		ExpiresUnixNano: c.GetCodeExpiresUnixNano()}
	res := &raftpb.GrantResult{}
	if in := c.GetFamily(); in != nil {
		f, err := a.newFamily(in, c.GetAccessToken(), now)
		if err != nil {
			return nil, err
		}
		used.FamilyId = f.Id
		res.Family = f
	} else {
		used.AccessTokens = addAccessToken(nil, c.GetAccessToken(), now)
	}
	v, err := marshalOpts.Marshal(used)
	if err != nil {
		storageFault("marshal used code: %v", err)
	}
	a.put(b, []byte(key), v)
	a.put(a.flowBucket(c.GetTenant(), kindUsedCodeExpiry), timeKey(used.ExpiresUnixNano, key), nil)
	return res, nil
}

// familyState reports why f cannot be used at now (an Outcome), or "".
func (a *applier) familyState(f *raftpb.Family, now int64) string {
	switch {
	case f.RevokedUnixNano != 0:
		return OutcomeFamilyRevoked
	case f.ExpiresUnixNano != 0 && f.ExpiresUnixNano <= now:
		return OutcomeFamilyExpired
	case f.IdleTimeoutNanos > 0 && addSat(f.LastUsedUnixNano, f.IdleTimeoutNanos) <= now:
		return OutcomeFamilyExpired
	case !a.userActive(f.Tenant, f.UserId) || !a.clientActive(f.Tenant, f.ClientId):
		return OutcomeInvalid
	}
	return ""
}

// rotateRefresh: see raftpb.RotateRefresh.
func (a *applier) rotateRefresh(r *raftpb.RotateRefresh, now int64) (*raftpb.GrantResult, error) {
	if !a.tenantExists(r.GetTenant()) {
		return nil, notFoundTenant(r.GetTenant())
	}
	f, ok := a.getFamily(r.GetTenant(), r.GetFamilyId())
	if !ok || f.ClientId != r.GetClientId() {
		return outcome(OutcomeInvalid), nil
	}
	if o := a.familyState(f, now); o != "" {
		return outcome(o), nil
	}
	gen := r.GetGeneration()
	switch {
	case gen == f.Generation && bytes.Equal(r.GetTokenHash(), f.CurrentHash):
		if familyFull(f, r.GetAccessToken(), now) {
			return outcome(OutcomeInvalid), nil
		}
		f.PreviousHash = f.CurrentHash
		f.CurrentHash = r.GetNewHash()
		f.Generation++
		f.SupersededUnixNano = now
		f.SealedSuccessor = r.GetSealedSuccessor()
		f.LastUsedUnixNano = now
		f.AccessTokens = addAccessToken(f.AccessTokens, r.GetAccessToken(), now)
		prevNetwork := f.LastNetwork
		al := a.familyNetwork(f, r, now) // apply_alert.go
		g := &raftpb.GrantResult{Family: f, Alert: al}
		if tr := a.familyTravel(f, r, prevNetwork, now); tr != nil { // apply_threat3.go
			g.Alerts = []*raftpb.SecurityAlert{tr}
		}
		a.putFamily(f)
		return g, nil
	case gen+1 == f.Generation && bytes.Equal(r.GetTokenHash(), f.PreviousHash) &&
		r.GetReuseIntervalNanos() > 0 && now-f.SupersededUnixNano <= r.GetReuseIntervalNanos() &&
		len(f.SealedSuccessor) > 0:
		// The client lost the response: hand out the same successor.
		if familyFull(f, r.GetAccessToken(), now) {
			return outcome(OutcomeInvalid), nil
		}
		f.LastUsedUnixNano = now
		f.AccessTokens = addAccessToken(f.AccessTokens, r.GetAccessToken(), now)
		a.putFamily(f)
		return &raftpb.GrantResult{Outcome: OutcomeReuseInterval, Family: f, SealedSuccessor: f.SealedSuccessor}, nil
	case gen < f.Generation:
		// RFC 9700 §4.14.2: a superseded refresh token was presented; one of
		// its holders is not legitimate. Revoke the whole family.
		a.emit(&raftpb.Event{Tenant: f.Tenant, Kind: raftpb.EventKind_EVENT_KIND_REUSE_DETECTED, TimeUnixNano: now,
			ClientId: f.ClientId, Subject: f.UserId, FamilyId: f.Id, Node: r.GetNode(), Region: r.GetRegion()})
		fe := a.revokeFamilyRecord(f, ReasonRefreshReuse, now)
		fe.Node, fe.Region = r.GetNode(), r.GetRegion()
		ev := &raftpb.GrantEvent{Kind: EventReuseDetected, Tenant: f.Tenant, ClientId: f.ClientId, UserId: f.UserId,
			FamilyId: f.Id, Node: r.GetNode(), Region: r.GetRegion(), RevokedJtis: fe.RevokedJtis}
		return &raftpb.GrantResult{Outcome: OutcomeReuseDetected, Family: f, Events: []*raftpb.GrantEvent{ev, fe}}, nil
	default:
		return outcome(OutcomeInvalid), nil
	}
}

func (a *applier) revokeFamily(r *raftpb.RevokeFamily, now int64) (*raftpb.GrantResult, error) {
	if !a.tenantExists(r.GetTenant()) {
		return nil, notFoundTenant(r.GetTenant())
	}
	f, ok := a.getFamily(r.GetTenant(), r.GetFamilyId())
	if !ok {
		return outcome(OutcomeNotFound), nil
	}
	if r.GetClientId() != "" && r.GetClientId() != f.ClientId {
		return outcome(OutcomeInvalid), nil
	}
	res := &raftpb.GrantResult{Family: f}
	if ev := a.revokeFamilyRecord(f, r.GetReason(), now); ev != nil {
		res.Events = []*raftpb.GrantEvent{ev}
	}
	return res, nil
}

// ----- device authorization -----

func (a *applier) getDevice(tenant string, hash []byte) (*raftpb.DeviceCode, bool) {
	d := new(raftpb.DeviceCode)
	return d, a.get(a.flowBucket(tenant, kindDeviceCodes), string(hash), d)
}

func (a *applier) putDevice(d *raftpb.DeviceCode) {
	a.putRecord(a.flowBucket(d.Tenant, kindDeviceCodes), kindDeviceCodes, d.Tenant, string(d.DeviceCodeHash), d)
}

func (a *applier) createDeviceCode(c *raftpb.CreateDeviceCode, now int64) error {
	in := c.GetDeviceCode()
	if !a.tenantExists(in.GetTenant()) {
		return notFoundTenant(in.GetTenant())
	}
	if _, err := a.getClient(in.GetTenant(), in.GetClientId()); err != nil {
		return err
	}
	ucs := a.flowBucket(in.GetTenant(), kindUserCodes)
	if h := ucs.Get([]byte(in.GetUserCode())); h != nil {
		if old, ok := a.getDevice(in.GetTenant(), h); ok && old.ExpiresUnixNano > now {
			return fmt.Errorf("%w: user code in use", ErrExists)
		}
	}
	if _, ok := a.getDevice(in.GetTenant(), in.GetDeviceCodeHash()); ok {
		return fmt.Errorf("%w: device code", ErrExists)
	}
	d := proto.Clone(in).(*raftpb.DeviceCode)
	d.CreatedUnixNano = now
	d.Status = DevicePending
	d.LastPollUnixNano = 0
	a.put(ucs, []byte(d.UserCode), d.DeviceCodeHash)
	a.putDevice(d)
	return nil
}

func (a *applier) decideDeviceCode(c *raftpb.DecideDeviceCode, now int64) (*raftpb.GrantResult, error) {
	if !a.tenantExists(c.GetTenant()) {
		return nil, notFoundTenant(c.GetTenant())
	}
	h := a.flowBucket(c.GetTenant(), kindUserCodes).Get([]byte(c.GetUserCode()))
	if h == nil {
		return outcome(OutcomeNotFound), nil
	}
	d, ok := a.getDevice(c.GetTenant(), h)
	switch {
	case !ok:
		return outcome(OutcomeNotFound), nil
	case d.ExpiresUnixNano <= now:
		return outcome(OutcomeExpiredToken), nil
	case d.Status != DevicePending:
		return outcome(OutcomeInvalid), nil
	}
	if c.GetApprove() {
		if !a.userActive(c.GetTenant(), c.GetUserId()) {
			return outcome(OutcomeInvalid), nil
		}
		d.Status = DeviceApproved
		d.UserId = c.GetUserId()
		d.AuthTimeUnixNano = c.GetAuthTimeUnixNano()
		if len(c.GetScopes()) > 0 {
			d.Scopes = c.GetScopes()
		}
	} else {
		d.Status = DeviceDenied
	}
	a.putDevice(d)
	return &raftpb.GrantResult{DeviceCode: d}, nil
}

func (a *applier) pollDeviceCode(c *raftpb.PollDeviceCode, now int64) (*raftpb.GrantResult, error) {
	if !a.tenantExists(c.GetTenant()) {
		return nil, notFoundTenant(c.GetTenant())
	}
	d, ok := a.getDevice(c.GetTenant(), c.GetDeviceCodeHash())
	switch {
	case !ok || d.ClientId != c.GetClientId() || d.Status == DeviceRedeemed:
		return outcome(OutcomeInvalid), nil
	case d.ExpiresUnixNano <= now:
		return outcome(OutcomeExpiredToken), nil
	}
	// RFC 8628 §3.5: a poll sooner than the interval after the previous
	// one is slow_down. The interval enforced here is the advertised one
	// (less DevicePollJitter) and does not grow: a client that adds 5 s per
	// slow_down it received is always at or above it, whatever happened
	// before, so it converges. (Growing the stored interval on every
	// slow_down, as this did before, kept a client that joined late 5 s
	// behind for ever.) Nodes answer pending and too-fast polls from their
	// replica without a write (issuance/device_pace.go, which also applies
	// the 5 s growth to clients that keep polling faster than advertised);
	// this check remains for a write proposed anyway.
	if d.LastPollUnixNano != 0 && now-d.LastPollUnixNano < d.IntervalNanos-devicePollJitter(d.IntervalNanos) {
		d.LastPollUnixNano = now
		a.putDevice(d)
		return &raftpb.GrantResult{Outcome: OutcomeSlowDown, DeviceCode: d}, nil
	}
	d.LastPollUnixNano = now
	switch d.Status {
	case DevicePending:
		a.putDevice(d)
		return &raftpb.GrantResult{Outcome: OutcomeAuthorizationPending, DeviceCode: d}, nil
	case DeviceDenied:
		a.putDevice(d)
		return &raftpb.GrantResult{Outcome: OutcomeAccessDenied, DeviceCode: d}, nil
	}
	if !a.userActive(d.Tenant, d.UserId) || !a.clientActive(d.Tenant, d.ClientId) {
		return outcome(OutcomeInvalid), nil
	}
	res := &raftpb.GrantResult{}
	if in := c.GetFamily(); in != nil && slices.Contains(d.Scopes, "offline_access") {
		fam := proto.Clone(in).(*raftpb.Family)
		fam.UserId, fam.Scopes, fam.AuthTimeUnixNano = d.UserId, d.Scopes, d.AuthTimeUnixNano
		f, err := a.newFamily(fam, c.GetAccessToken(), now)
		if err != nil {
			return nil, err
		}
		res.Family = f
	}
	d.Status = DeviceRedeemed
	a.putDevice(d)
	res.DeviceCode = d
	return res, nil
}

// sweepGrants removes used codes, families, device codes and consents that
// expired at or before now.
func (a *applier) sweepGrants(tenant string, now int64) {
	a.sweepUsedCodes(tenant, now)
	for _, sk := range scanKinds[:3] {
		a.sweepAll(tenant, sk, now)
	}
}

// sweepUsedCodes removes used codes that expired (an expiry index).
func (a *applier) sweepUsedCodes(tenant string, now int64) {
	if a.tx.Bucket(tenantBucket(tenant, kindUsedCodeExpiry)) != nil {
		idx := a.flowBucket(tenant, kindUsedCodeExpiry)
		codes := a.flowBucket(tenant, kindUsedCodes)
		for _, k := range a.expiredKeys(idx, now) {
			a.del(idx, k)
			a.del(codes, k[8:])
		}
	}
}

// familyDead: a family expired or idle for too long at now.
func familyDead(a *applier, tenant string, k, v []byte, now int64) func() {
	f := new(raftpb.Family)
	if err := proto.Unmarshal(v, f); err != nil {
		storageFault("family %q undecodable: %v", k, err)
	}
	idleEnd := int64(0)
	if f.IdleTimeoutNanos > 0 {
		idleEnd = addSat(f.LastUsedUnixNano, f.IdleTimeoutNanos)
	}
	if (f.ExpiresUnixNano != 0 && f.ExpiresUnixNano <= now) || (idleEnd != 0 && idleEnd <= now) {
		// Its access tokens, at most an hour long, are covered by the
		// revocations written when it was revoked, if it was.
		k := bytes.Clone(k)
		return func() { a.del(a.flowBucket(tenant, kindFamilies), k) }
	}
	return nil
}

// deviceDead: a device code that expired at now.
func deviceDead(a *applier, tenant string, _, v []byte, now int64) func() {
	d := new(raftpb.DeviceCode)
	if err := proto.Unmarshal(v, d); err != nil {
		storageFault("device code undecodable: %v", err)
	}
	if d.ExpiresUnixNano > now {
		return nil
	}
	return func() {
		ucs := a.flowBucket(tenant, kindUserCodes)
		if h := ucs.Get([]byte(d.UserCode)); bytes.Equal(h, d.DeviceCodeHash) {
			a.del(ucs, []byte(d.UserCode))
		}
		a.delRecord(a.flowBucket(tenant, kindDeviceCodes), kindDeviceCodes, tenant, string(d.DeviceCodeHash))
	}
}

// consentDead: a consent that expired at now.
func consentDead(a *applier, tenant string, k, v []byte, now int64) func() {
	c := new(raftpb.Consent)
	if err := proto.Unmarshal(v, c); err != nil {
		storageFault("consent undecodable: %v", err)
	}
	if c.ExpiresUnixNano != 0 && c.ExpiresUnixNano <= now {
		id := string(k)
		return func() { a.delRecord(a.flowBucket(tenant, kindConsents), kindConsents, tenant, id) }
	}
	return nil
}

// ----- validation -----

const (
	maxHashBytes   = 64
	maxSealedBytes = 4096
)

func checkHash(field string, h []byte) error {
	if len(h) < 16 || len(h) > maxHashBytes {
		return invalidf("%s: want 16 to %d bytes", field, maxHashBytes)
	}
	return nil
}

func checkAccessToken(at *raftpb.AccessToken) error {
	if at == nil {
		return nil
	}
	if len(at.GetJti()) == 0 || len(at.GetJti()) > maxJTILen || at.GetExpiresUnixNano() <= 0 {
		return invalidf("access token: want a jti and an expiry")
	}
	return nil
}

func checkFamily(tenant string, f *raftpb.Family, needUser bool) error {
	if f == nil {
		return nil
	}
	if f.GetTenant() != tenant {
		return invalidf("family of tenant %q in a command for %q", f.GetTenant(), tenant)
	}
	if !validID(f.GetId()) {
		return invalidf("family id: want 1 to %d printable ASCII characters", maxIDLen)
	}
	if err := checkClientID(f.GetClientId()); err != nil {
		return err
	}
	if needUser {
		if err := checkUserID(f.GetUserId()); err != nil {
			return err
		}
	}
	if err := checkHash("family hash", f.GetCurrentHash()); err != nil {
		return err
	}
	if f.GetExpiresUnixNano() < 0 || f.GetIdleTimeoutNanos() < 0 || f.GetAuthTimeUnixNano() < 0 {
		return invalidf("family: negative time")
	}
	if len(f.GetAccessTokens()) > 0 || f.GetRevokedUnixNano() != 0 || len(f.GetPreviousHash()) > 0 {
		return invalidf("new family carries state")
	}
	return checkList("scopes", f.GetScopes())
}

func checkRedeemCode(c *raftpb.RedeemCode) error {
	if err := checkTenantUser(c.GetTenant(), c.GetUserId()); err != nil {
		return err
	}
	if err := checkClientID(c.GetClientId()); err != nil {
		return err
	}
	if err := checkHash("code hash", c.GetCodeHash()); err != nil {
		return err
	}
	if c.GetCodeExpiresUnixNano() <= 0 {
		return invalidf("code without expiry")
	}
	if f := c.GetFamily(); f != nil && (f.GetClientId() != c.GetClientId() || f.GetUserId() != c.GetUserId()) {
		return invalidf("family of another client or user")
	}
	if err := checkFamily(c.GetTenant(), c.GetFamily(), true); err != nil {
		return err
	}
	return checkAccessToken(c.GetAccessToken())
}

func checkRotateRefresh(r *raftpb.RotateRefresh) error {
	if err := checkTenantID(r.GetTenant()); err != nil {
		return err
	}
	if !validID(r.GetFamilyId()) {
		return invalidf("family id: want 1 to %d printable ASCII characters", maxIDLen)
	}
	if err := checkClientID(r.GetClientId()); err != nil {
		return err
	}
	if err := checkHash("token hash", r.GetTokenHash()); err != nil {
		return err
	}
	if err := checkHash("new hash", r.GetNewHash()); err != nil {
		return err
	}
	if len(r.GetSealedSuccessor()) > maxSealedBytes || r.GetReuseIntervalNanos() < 0 {
		return invalidf("sealed successor too long or negative reuse interval")
	}
	if len(r.GetNetwork()) > 64 {
		return invalidf("network longer than 64 bytes")
	}
	if len(r.GetTravelRegion()) > 64 || r.GetTravelWindowNanos() < 0 {
		return invalidf("travel region longer than 64 bytes or negative travel window")
	}
	if err := checkText("node", r.GetNode()); err != nil {
		return err
	}
	if err := checkText("region", r.GetRegion()); err != nil {
		return err
	}
	return checkAccessToken(r.GetAccessToken())
}

func checkUserCode(s string) error {
	if len(s) == 0 || len(s) > maxUserCodeLen {
		return invalidf("user code: want 1 to %d bytes", maxUserCodeLen)
	}
	return nil
}

func checkDeviceCode(d *raftpb.DeviceCode) error {
	if d == nil {
		return invalidf("no device code")
	}
	if err := checkTenantID(d.GetTenant()); err != nil {
		return err
	}
	if err := checkHash("device code hash", d.GetDeviceCodeHash()); err != nil {
		return err
	}
	if err := checkUserCode(d.GetUserCode()); err != nil {
		return err
	}
	if err := checkClientID(d.GetClientId()); err != nil {
		return err
	}
	if d.GetExpiresUnixNano() <= 0 || d.GetIntervalNanos() <= 0 {
		return invalidf("device code needs an expiry and an interval")
	}
	return checkList("scopes", d.GetScopes())
}

func checkDecideDevice(c *raftpb.DecideDeviceCode) error {
	if err := checkTenantID(c.GetTenant()); err != nil {
		return err
	}
	if err := checkUserCode(c.GetUserCode()); err != nil {
		return err
	}
	if c.GetApprove() {
		if err := checkUserID(c.GetUserId()); err != nil {
			return err
		}
	}
	return checkList("scopes", c.GetScopes())
}

func checkPollDevice(c *raftpb.PollDeviceCode) error {
	if err := checkTenantID(c.GetTenant()); err != nil {
		return err
	}
	if err := checkHash("device code hash", c.GetDeviceCodeHash()); err != nil {
		return err
	}
	if err := checkClientID(c.GetClientId()); err != nil {
		return err
	}
	if f := c.GetFamily(); f != nil && f.GetClientId() != c.GetClientId() {
		return invalidf("family of another client")
	}
	if err := checkFamily(c.GetTenant(), c.GetFamily(), false); err != nil {
		return err
	}
	return checkAccessToken(c.GetAccessToken())
}

// appendRequestGrant appends the encoded GrantResult of a command to its
// remembered request value, so that a retried request_id gets it back.
func appendRequestGrant(v []byte, g *raftpb.GrantResult) []byte {
	if g == nil {
		return v
	}
	b, err := marshalOpts.Marshal(g)
	if err != nil {
		storageFault("marshal grant result: %v", err)
	}
	return append(v, b...)
}

func decodeRequestGrant(v []byte) *raftpb.GrantResult {
	if len(v) <= 17 {
		return nil
	}
	g := new(raftpb.GrantResult)
	if err := proto.Unmarshal(v[17:], g); err != nil {
		storageFault("request grant result undecodable: %v", err)
	}
	return g
}

// RememberedGrant returns the GrantResult remembered for a command's
// request_id by this replica's state database, or nil. A proposer whose
// command was forwarded to the leader reads the value outcome here once
// the entry is applied locally: every replica stores the same one.
func (f *FSM) RememberedGrant(requestID string) *raftpb.GrantResult {
	if requestID == "" {
		return nil
	}
	f.mu.Lock()
	db := f.db
	f.mu.Unlock()
	if db == nil {
		return nil
	}
	var g *raftpb.GrantResult
	_ = db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucketRequests))
		if b == nil {
			return nil
		}
		if v := b.Get([]byte(requestID)); len(v) > 17 {
			g = new(raftpb.GrantResult)
			if err := proto.Unmarshal(v[17:], g); err != nil {
				g = nil
			}
		}
		return nil
	})
	return g
}
