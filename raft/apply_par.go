package raft

import (
	"bytes"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Issue 11: pushed authorization requests (RFC 9126) and per-tenant key
// policies. The operations are gated on the node feature "par_keypolicy":
// a leader proposes them only once every voter lists it.

// Bounds of a pushed request.
const (
	// MaxPushedRequestTTL bounds expires - created of a pushed request
	// (RFC 9126 §2.2: short-lived; 5 to 600 s recommended).
	MaxPushedRequestTTL = int64(10 * 60 * 1e9)
	// maxPushedParams bounds the stored parameters.
	maxPushedParams = 16 << 10
)

// dispatchPAR applies the issue 11 operations; ok is false for others.
func (a *applier) dispatchPAR(cmd *raftpb.Command, now int64) (ok bool, res *raftpb.GrantResult, err error) {
	switch op := cmd.GetOp().(type) {
	case *raftpb.Command_PushAuthorizationRequest:
		return true, nil, a.pushAuthorizationRequest(op.PushAuthorizationRequest, now)
	case *raftpb.Command_RedeemRequestUri:
		res, err = a.redeemRequestURI(op.RedeemRequestUri, now)
		return true, res, err
	case *raftpb.Command_SetKeyPolicy:
		return true, nil, a.setKeyPolicy(op.SetKeyPolicy, now)
	case *raftpb.Command_SetTenantPar:
		return true, nil, a.setTenantPAR(op.SetTenantPar, now)
	}
	return false, nil, nil
}

// checkPARCommand validates the issue 11 operations; ok is false for others.
func checkPARCommand(cmd *raftpb.Command) (ok bool, err error) {
	switch op := cmd.GetOp().(type) {
	case *raftpb.Command_PushAuthorizationRequest:
		r := op.PushAuthorizationRequest.GetRequest()
		if r == nil {
			return true, invalidf("push authorization request: no request")
		}
		if err := checkTenantID(r.GetTenant()); err != nil {
			return true, err
		}
		if err := checkClientID(r.GetClientId()); err != nil {
			return true, err
		}
		switch {
		case len(r.GetUriHash()) != 32:
			return true, invalidf("pushed request: uri hash must be 32 bytes")
		case len(r.GetParams()) == 0 || len(r.GetParams()) > maxPushedParams:
			return true, invalidf("pushed request: params must be 1 to %d bytes", maxPushedParams)
		case r.GetExpiresUnixNano() <= 0:
			return true, invalidf("pushed request: expiry must be positive")
		}
		return true, nil
	case *raftpb.Command_RedeemRequestUri:
		r := op.RedeemRequestUri
		if err := checkTenantID(r.GetTenant()); err != nil {
			return true, err
		}
		if err := checkClientID(r.GetClientId()); err != nil {
			return true, err
		}
		if len(r.GetUriHash()) != 32 {
			return true, invalidf("redeem request uri: uri hash must be 32 bytes")
		}
		return true, nil
	case *raftpb.Command_SetKeyPolicy:
		p := op.SetKeyPolicy
		if err := checkTenantID(p.GetTenant()); err != nil {
			return true, err
		}
		if p.GetRotateEveryNanos() < 0 || p.GetSealRotateEveryNanos() < 0 {
			return true, invalidf("key policy: negative interval")
		}
		return true, nil
	case *raftpb.Command_SetTenantPar:
		return true, checkTenantID(op.SetTenantPar.GetTenant())
	}
	return false, nil
}

// pushAuthorizationRequest stores a pushed request. Its expiry is capped
// at MaxPushedRequestTTL after the command's time.
func (a *applier) pushAuthorizationRequest(p *raftpb.PushAuthorizationRequest, now int64) error {
	in := p.GetRequest()
	if !a.tenantExists(in.GetTenant()) {
		return notFoundTenant(in.GetTenant())
	}
	b := a.flowBucket(in.GetTenant(), kindPARRequests)
	key := string(in.GetUriHash())
	if b.Get([]byte(key)) != nil {
		return ErrExists
	}
	r := proto.Clone(in).(*raftpb.PushedRequest)
	r.CreatedUnixNano = now
	if r.ExpiresUnixNano > now+MaxPushedRequestTTL {
		r.ExpiresUnixNano = now + MaxPushedRequestTTL
	}
	v, err := marshalOpts.Marshal(r)
	if err != nil {
		storageFault("marshal pushed request: %v", err)
	}
	a.put(b, []byte(key), v)
	a.put(a.flowBucket(in.GetTenant(), kindPARExpiry), timeKey(r.ExpiresUnixNano, key), nil)
	return nil
}

// redeemRequestURI consumes a pushed request once.
func (a *applier) redeemRequestURI(r *raftpb.RedeemRequestURI, now int64) (*raftpb.GrantResult, error) {
	if !a.tenantExists(r.GetTenant()) {
		return nil, notFoundTenant(r.GetTenant())
	}
	b := a.flowBucket(r.GetTenant(), kindPARRequests)
	key := string(r.GetUriHash())
	pr := new(raftpb.PushedRequest)
	if !a.get(b, key, pr) {
		return &raftpb.GrantResult{Outcome: OutcomeNotFound}, nil
	}
	if pr.GetClientId() != r.GetClientId() {
		// Another client cannot use (nor burn) the request.
		return &raftpb.GrantResult{Outcome: OutcomeInvalid}, nil
	}
	a.del(b, []byte(key))
	a.del(a.flowBucket(r.GetTenant(), kindPARExpiry), timeKey(pr.GetExpiresUnixNano(), key))
	if pr.GetExpiresUnixNano() <= now {
		return &raftpb.GrantResult{Outcome: OutcomeExpiredToken}, nil
	}
	return &raftpb.GrantResult{Outcome: OutcomeDone, PushedRequest: pr}, nil
}

// sweepPushed drops the tenant's expired pushed requests.
func (a *applier) sweepPushed(tenant string, now int64) {
	exp := a.tx.Bucket(tenantBucket(tenant, kindPARExpiry))
	if exp == nil {
		return
	}
	reqs := a.flowBucket(tenant, kindPARRequests)
	for _, k := range a.expiredKeys(exp, now) {
		a.del(exp, k)
		if v := reqs.Get(k[8:]); v != nil {
			a.del(reqs, bytes.Clone(k[8:]))
		}
	}
}

func (a *applier) getTenant(id string) (*raftpb.Tenant, error) {
	t := new(raftpb.Tenant)
	if !a.get(a.bucket(bucketTenants), id, t) {
		return nil, notFoundTenant(id)
	}
	return t, nil
}

// setKeyPolicy records the tenant's key rotation policy.
func (a *applier) setKeyPolicy(p *raftpb.SetKeyPolicy, now int64) error {
	t, err := a.getTenant(p.GetTenant())
	if err != nil {
		return err
	}
	t.KeyRotateEveryNanos = p.GetRotateEveryNanos()
	t.SealRotateEveryNanos = p.GetSealRotateEveryNanos()
	t.KeyPolicyUpdatedUnixNano = now
	a.putRecord(a.bucket(bucketTenants), bucketTenants, t.Id, "", t)
	return nil
}

// setTenantPAR sets whether the tenant requires pushed requests.
func (a *applier) setTenantPAR(p *raftpb.SetTenantPAR, _ int64) error {
	t, err := a.getTenant(p.GetTenant())
	if err != nil {
		return err
	}
	t.RequirePushedAuthorizationRequests = p.GetRequire()
	a.putRecord(a.bucket(bucketTenants), bucketTenants, t.Id, "", t)
	return nil
}
