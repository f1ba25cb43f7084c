package node

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Keys that rotate themselves (issue 11).
//
// A tenant's key policy (SetKeyPolicy, stored on the tenant record) says
// how often its signing keys and its sealing keys (opaque tokens, and the
// session cookies, login forms and authorization codes sealed with a key
// derived from them: sealkeys.go) are rotated. The leader looks every keyPolicyEvery and, for a tenant whose
// newest signing key is older than rotate_every or whose newest sealing key
// is older than seal_rotate_every, proposes an AddKeys entry with a new
// signing and a new sealing key, exactly as `tally admin key rotate` does:
//
//   - the new keys are published (pending) for max(KeyPublishDelay,
//     JWKSMaxAge) before they sign, so every JWKS cache of a resource server
//     has seen the new kid before the first token it signed exists (the
//     SDK additionally drops its cache on the key_rotated event that AddKeys
//     emits, and refetches an unknown kid at most every JWKSRefetchInterval);
//   - AddKeys retires the previous keys when the new ones become current,
//     and they stay published for max(KeyRetention, MaxAccessTokenTTL +
//     JWKSMaxAge): the longest token they signed and every cached JWKS that
//     lists them have expired by then (tokens never outlive their key:
//     the minter caps exp at the key's expiry); a sealing key stays at
//     least a session cookie's lifetime (sealRetention);
//   - sealing keys are rotated at most every maxSealRotateEvery: AES-GCM
//     with random nonces must stay well below 2^32 seals per key (NIST SP
//     800-38D §8.3), i.e. about 5 days at 10,000 opaque tokens/s.
//
// Every decision is a Raft entry, so all nodes agree on the keys; a new
// leader picks up where the old one stopped, since "due" is computed from
// the replicated keys only. While a rotation's keys are pending, nothing
// more is proposed.

// keyPolicyEvery is how often the leader checks the policies.
var keyPolicyEvery = 30 * time.Second

// minKeyRotateEvery bounds rotate_every from below: every rotation adds a
// key that stays published for the retention period.
var minKeyRotateEvery = time.Hour

// maxSealRotateEvery is the AES-GCM bound on sealing key age (see above).
const maxSealRotateEvery = 5 * 24 * time.Hour

// sealEvery is the effective sealing key interval of a policy.
func sealEvery(t *raftpb.Tenant) time.Duration {
	d := time.Duration(t.SealRotateEveryNanos)
	if d <= 0 {
		d = time.Duration(t.KeyRotateEveryNanos)
	}
	return min(d, maxSealRotateEvery)
}

// newestKeys returns when the newest signing and sealing keys became (or
// become) current; pending reports whether one is not current yet.
func newestKeys(keys []*raftpb.Key, now time.Time) (sig, seal time.Time, pending bool) {
	for _, k := range keys {
		nb := time.Unix(0, k.NotBeforeUnixNano)
		if nb.After(now) {
			pending = true
		}
		switch raft.KeyUseOf(k) {
		case raftpb.KeyUse_KEY_USE_SIG:
			if nb.After(sig) {
				sig = nb
			}
		case raftpb.KeyUse_KEY_USE_SEAL:
			if nb.After(seal) {
				seal = nb
			}
		}
	}
	return sig, seal, pending
}

// nextRotation is when the policy of t next rotates its keys; zero when
// the policy is off. A time not after now means due.
func nextRotation(t *raftpb.Tenant, keys []*raftpb.Key, now time.Time) time.Time {
	if t.KeyRotateEveryNanos <= 0 {
		return time.Time{}
	}
	sig, seal, _ := newestKeys(keys, now)
	next := sig.Add(time.Duration(t.KeyRotateEveryNanos))
	if s := seal.Add(sealEvery(t)); s.Before(next) {
		next = s
	}
	return next
}

// keyPolicyDue reports whether the leader should rotate t's keys now.
func keyPolicyDue(t *raftpb.Tenant, keys []*raftpb.Key, now time.Time) bool {
	if t.Disabled || t.KeyRotateEveryNanos <= 0 {
		return false
	}
	if _, _, pending := newestKeys(keys, now); pending {
		return false
	}
	return !nextRotation(t, keys, now).After(now)
}

// policyPublishDelay and policyRetention are the key times of a policy
// rotation (see above).
func (a *adminService) policyPublishDelay() time.Duration {
	return max(a.cfg.KeyPublishDelay, a.cfg.JWKSMaxAge)
}

func (a *adminService) policyRetention() time.Duration {
	return max(a.cfg.KeyRetention, MaxAccessTokenTTL+a.cfg.JWKSMaxAge)
}

// rotateByPolicy proposes the rotation of every tenant whose policy is due.
func (a *adminService) rotateByPolicy(ctx context.Context) {
	st := a.rep.rn.State()
	now := a.now()
	for _, t := range st.Tenants() {
		if !keyPolicyDue(t, st.Keys(t.Id), now) {
			continue
		}
		keys, err := a.newKeys(t.Id, raft.SigningAlgOf(t), now, now.Add(a.policyPublishDelay()))
		if err != nil {
			continue
		}
		for _, k := range keys {
			k.RetentionNanos = int64(a.policyRetention())
			if k.Use == "seal" {
				k.RetentionNanos = int64(sealRetention(a.policyRetention())) // sealkeys.go
			}
		}
		_ = a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_AddKeys{AddKeys: &raftpb.AddKeys{Tenant: t.Id, Keys: keys}}})
	}
}

// keyPolicyLoop runs rotateByPolicy every keyPolicyEvery while this node
// leads and every member supports the policy operations.
func (n *Node) keyPolicyLoop(ctx context.Context, a *adminService) {
	t := time.NewTicker(keyPolicyEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.raft.IsLeader() && a.par.allow(ctx) {
			a.rotateByPolicy(ctx)
		}
	}
}

// ----- admin API -----

func (a *adminService) keyPolicyPB(t *raftpb.Tenant) *adminv1.KeyPolicy {
	p := &adminv1.KeyPolicy{Tenant: t.Id, UpdatedAt: ts(t.KeyPolicyUpdatedUnixNano)}
	if t.KeyRotateEveryNanos <= 0 {
		return p
	}
	now := a.now()
	keys := a.rep.rn.State().Keys(t.Id)
	sig, seal, _ := newestKeys(keys, now)
	p.RotateEverySeconds = int64(time.Duration(t.KeyRotateEveryNanos) / time.Second)
	p.SealRotateEverySeconds = int64(sealEvery(t) / time.Second)
	p.SigningKeySince, p.SealingKeySince = ts(sig.UnixNano()), ts(seal.UnixNano())
	p.NextRotationAt = ts(nextRotation(t, keys, now).UnixNano())
	return p
}

func (a *adminService) SetKeyPolicy(ctx context.Context, req *connect.Request[adminv1.SetKeyPolicyRequest]) (*connect.Response[adminv1.SetKeyPolicyResponse], error) {
	m := req.Msg
	if _, ok := a.rep.rn.State().Tenant(m.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	every := time.Duration(m.RotateEverySeconds) * time.Second
	seal := time.Duration(m.SealRotateEverySeconds) * time.Second
	switch {
	case m.RotateEverySeconds < 0 || m.SealRotateEverySeconds < 0:
		return nil, invalid("intervals must not be negative")
	case every != 0 && every < minKeyRotateEvery:
		return nil, invalid("rotate-every must be at least %s (or 0 to turn rotation off)", minKeyRotateEvery)
	case seal != 0 && (seal < minKeyRotateEvery || seal > maxSealRotateEvery):
		return nil, invalid("seal-rotate-every must be between %s and %s", minKeyRotateEvery, maxSealRotateEvery)
	case every > 10*365*24*time.Hour:
		return nil, invalid("rotate-every must be at most 10 years")
	}
	if !a.par.allow(ctx) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, ErrFeatureNotReady)
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_SetKeyPolicy{SetKeyPolicy: &raftpb.SetKeyPolicy{
		Tenant: m.Tenant, RotateEveryNanos: int64(every), SealRotateEveryNanos: int64(seal)}}}); err != nil {
		return nil, err
	}
	t, _ := a.rep.rn.State().Tenant(m.Tenant)
	return connect.NewResponse(&adminv1.SetKeyPolicyResponse{Policy: a.keyPolicyPB(t)}), nil
}

func (a *adminService) GetKeyPolicy(_ context.Context, req *connect.Request[adminv1.GetKeyPolicyRequest]) (*connect.Response[adminv1.GetKeyPolicyResponse], error) {
	t, ok := a.rep.rn.State().Tenant(req.Msg.Tenant)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", req.Msg.Tenant))
	}
	return connect.NewResponse(&adminv1.GetKeyPolicyResponse{Policy: a.keyPolicyPB(t)}), nil
}

func (a *adminService) SetTenantPAR(ctx context.Context, req *connect.Request[adminv1.SetTenantPARRequest]) (*connect.Response[adminv1.SetTenantPARResponse], error) {
	m := req.Msg
	if _, ok := a.rep.rn.State().Tenant(m.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	if !a.par.allow(ctx) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, ErrFeatureNotReady)
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_SetTenantPar{SetTenantPar: &raftpb.SetTenantPAR{Tenant: m.Tenant, Require: m.Require}}}); err != nil {
		return nil, err
	}
	t, _ := a.rep.rn.State().Tenant(m.Tenant)
	return connect.NewResponse(&adminv1.SetTenantPARResponse{Tenant: a.tenantPB(t)}), nil
}
