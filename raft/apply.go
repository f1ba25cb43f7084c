package raft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	hraft "github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// applier applies the commands of one batch inside one bbolt write
// transaction and records what changed for the read view.
//
// Every operation checks all of its preconditions before its first write, so
// a command that ends in a domain error leaves the transaction untouched. A
// bbolt error or an undecodable stored record is a storage fault and panics.
type applier struct {
	tx      *bbolt.Tx
	changes []change

	index  uint64      // Raft index of the command being applied
	events uint32      // outbox events written for it so far (see events.go)
	erased bool        // personal data was deleted: compact the file (apply_delete.go)
	lim    *sweepLimit // the budget of a bounded Sweep being applied (sweep_bounded.go)

	// cv is the cluster version recorded in tx as of the command being
	// applied, read once per batch (clusterVersion) and dropped when a
	// SetClusterVersion writes a new one (apply_version.go).
	cv     *raftpb.ClusterVersion
	cvRead bool
}

// recorded reports whether the cluster version recorded in the batch's
// transaction (as of the command being applied) enables feature.
func (a *applier) recorded(feature string) bool {
	return slices.Contains(a.clusterVersion().GetFeatures(), feature)
}

// clusterVersion is the cluster version recorded in the batch's
// transaction, including one applied earlier in the same batch; nil while
// none is recorded. Callers must not modify it.
func (a *applier) clusterVersion() *raftpb.ClusterVersion {
	if !a.cvRead {
		v, err := readClusterVersion(a.tx)
		if err != nil {
			storageFault("%v", err)
		}
		a.cv, a.cvRead = v, true
	}
	return a.cv
}

// change is one record written or deleted, replayed into State after commit.
type change struct {
	kind   string // bucketTenants, kindClients, kindKeys or kindRevocations
	tenant string
	id     string        // client id, kid or jti; empty for tenant records
	msg    proto.Message // nil: deleted
}

var marshalOpts = proto.MarshalOptions{Deterministic: true}

func storageFault(format string, args ...any) {
	panic(fmt.Sprintf("raft: state storage fault: "+format, args...))
}

func (a *applier) bucket(name string) *bbolt.Bucket {
	b := a.tx.Bucket([]byte(name))
	if b == nil {
		storageFault("bucket %q missing", name)
	}
	return b
}

func (a *applier) tenantBucket(tenant, kind string) *bbolt.Bucket {
	name := tenantBucket(tenant, kind)
	b := a.tx.Bucket(name)
	if b == nil {
		storageFault("bucket %q missing", name)
	}
	return b
}

func (a *applier) tenantExists(tenant string) bool {
	return a.bucket(bucketTenants).Get([]byte(tenant)) != nil
}

// get decodes the record stored under key into m; false if there is none.
func (a *applier) get(b *bbolt.Bucket, key string, m proto.Message) bool {
	v := b.Get([]byte(key))
	if v == nil {
		return false
	}
	if err := proto.Unmarshal(v, m); err != nil {
		storageFault("record %q undecodable: %v", key, err)
	}
	return true
}

func (a *applier) put(b *bbolt.Bucket, key []byte, v []byte) {
	if err := b.Put(key, v); err != nil {
		storageFault("put %q: %v", key, err)
	}
}

func (a *applier) del(b *bbolt.Bucket, key []byte) {
	if err := b.Delete(key); err != nil {
		storageFault("delete %q: %v", key, err)
	}
}

func (a *applier) putRecord(b *bbolt.Bucket, kind, tenant, id string, m proto.Message) {
	a.deriveTypedV2(m) // enums_v2.go
	v, err := marshalOpts.Marshal(m)
	if err != nil {
		storageFault("marshal %s %q: %v", kind, id, err)
	}
	key := id
	if kind == bucketTenants {
		key = tenant
	}
	a.put(b, []byte(key), v)
	a.changes = append(a.changes, change{kind: kind, tenant: tenant, id: id, msg: m})
}

func (a *applier) delRecord(b *bbolt.Bucket, kind, tenant, id string) {
	a.del(b, []byte(id))
	a.changes = append(a.changes, change{kind: kind, tenant: tenant, id: id})
}

// applyLog applies one LogCommand entry. An entry this binary does not
// understand (see understood) is not applied: applyLog returns an
// *errNotUnderstood and the FSM stops there (fsm.go).
func (a *applier) applyLog(l *hraft.Log) (Result, *raftpb.Command, *errNotUnderstood) {
	cmd := new(raftpb.Command)
	if err := proto.Unmarshal(l.Data, cmd); err != nil {
		return Result{}, nil, &errNotUnderstood{index: l.Index, reason: fmt.Sprintf("undecodable command: %v", err)}
	}
	if why := understood(cmd); why != "" {
		return Result{}, nil, &errNotUnderstood{index: l.Index, reason: why}
	}
	if s := cmd.GetSetClusterVersion(); s != nil && checkSetClusterVersion(s) == nil {
		if why := tooNew(s.GetClusterVersion()); why != "" {
			return Result{}, nil, &errNotUnderstood{index: l.Index, reason: why}
		}
	}

	now := cmd.GetTimeUnixNano()
	rid := cmd.GetRequestId()
	remember := rid != "" && len(rid) <= maxRequestIDLen && now > 0
	if remember {
		if v := a.bucket(bucketRequests).Get([]byte(rid)); v != nil {
			code, idx, _, ok := decodeRequestValue(v)
			if !ok {
				storageFault("request %q: bad value", rid)
			}
			return Result{Index: idx, Err: code.err(), Grant: decodeRequestGrant(v)}, cmd, nil
		}
	}

	a.index, a.events = l.Index, 0
	err := checkCommand(cmd)
	var grant *raftpb.GrantResult
	if err == nil {
		now = a.boundTime(cmd)           // clock.go
		grant, err = a.applyOp(cmd, now) // ops.go
	}
	if grant != nil {
		a.deriveTypedV2(grant) // enums_v2.go
	}
	if remember {
		a.put(a.bucket(bucketRequests), []byte(rid), appendRequestGrant(requestValue(codeOf(err), l.Index, now), grant))
		a.put(a.bucket(bucketRequestTimes), timeKey(now, rid), nil)
	}
	return Result{Index: l.Index, Err: err, Grant: grant}, cmd, nil
}

func notFoundTenant(id string) error { return fmt.Errorf("%w: tenant %q", ErrNotFound, id) }

func notFoundClient(tenant, id string) error {
	return fmt.Errorf("%w: client %q in tenant %q", ErrNotFound, id, tenant)
}

func (a *applier) createTenant(c *raftpb.CreateTenant, now int64) error {
	id := c.GetTenant().GetId()
	if a.tenantExists(id) {
		return fmt.Errorf("%w: tenant %q", ErrExists, id)
	}
	t := proto.Clone(c.GetTenant()).(*raftpb.Tenant)
	if t.CreatedUnixNano == 0 {
		t.CreatedUnixNano = now
	}
	for _, kind := range tenantKinds() {
		if _, err := a.tx.CreateBucket(tenantBucket(id, kind)); err != nil {
			storageFault("create bucket for tenant %q: %v", id, err)
		}
	}
	a.putRecord(a.bucket(bucketTenants), bucketTenants, id, "", t)
	// A new tenant has no keys, so addKeys cannot fail with ErrExists.
	return a.addKeys(id, c.GetKeys(), now)
}

func (a *applier) getClient(tenant, id string) (*raftpb.Client, error) {
	if !a.tenantExists(tenant) {
		return nil, notFoundTenant(tenant)
	}
	c := new(raftpb.Client)
	if !a.get(a.tenantBucket(tenant, kindClients), id, c) {
		return nil, notFoundClient(tenant, id)
	}
	return c, nil
}

func (a *applier) putClient(c *raftpb.Client) {
	setTypedEnums(c, a.typedEnums()) // enums.go
	a.putRecord(a.tenantBucket(c.Tenant, kindClients), kindClients, c.Tenant, c.Id, c)
}

func (a *applier) createClient(cc *raftpb.CreateClient, now int64) error {
	in := cc.GetClient()
	if !a.tenantExists(in.GetTenant()) {
		return notFoundTenant(in.GetTenant())
	}
	if a.tenantBucket(in.GetTenant(), kindClients).Get([]byte(in.GetId())) != nil {
		return fmt.Errorf("%w: client %q in tenant %q", ErrExists, in.GetId(), in.GetTenant())
	}
	if a.tombstoned(in.GetTenant(), kindDeletedClients, in.GetId()) {
		return errTombstoned("client", in.GetTenant(), in.GetId())
	}
	c := proto.Clone(in).(*raftpb.Client)
	c.Revision = 1
	c.CreatedUnixNano = now
	c.UpdatedUnixNano = now
	for _, s := range c.Secrets {
		if s.CreatedUnixNano == 0 {
			s.CreatedUnixNano = now
		}
	}
	a.putClient(c)
	return nil
}

// updateClient replaces the mutable settings. Secrets, created time, id,
// tenant, the public flag and the disabled flag (changed only by
// SetClientDisabled) are kept from the stored record.
func (a *applier) updateClient(u *raftpb.UpdateClient, now int64) error {
	in := u.GetClient()
	old, err := a.getClient(in.GetTenant(), in.GetId())
	if err != nil {
		return err
	}
	if u.GetExpectedRevision() != 0 && u.GetExpectedRevision() != old.GetRevision() {
		return fmt.Errorf("%w: client %q is at revision %d, not %d",
			ErrConflict, old.GetId(), old.GetRevision(), u.GetExpectedRevision())
	}
	c := proto.Clone(in).(*raftpb.Client)
	c.Tenant = old.Tenant
	c.Id = old.Id
	c.Secrets = old.Secrets
	c.CreatedUnixNano = old.CreatedUnixNano
	c.Public = old.Public
	c.Disabled = old.Disabled
	if c.Auth == nil {
		c.Auth = old.Auth // issue 11: an update without auth settings keeps them
	}
	c.Revision = old.Revision + 1
	c.UpdatedUnixNano = now
	a.putClient(c)
	return nil
}

// rotateClientSecret puts the new secret first. Older secrets still valid at
// now expire at previous_expires_unix_nano (never later than they already
// did); those that would expire at or before now are dropped.
func (a *applier) rotateClientSecret(r *raftpb.RotateClientSecret, now int64) error {
	c, err := a.getClient(r.GetTenant(), r.GetClientId())
	if err != nil {
		return err
	}
	if c.GetPublic() {
		return invalidf("client %q is public and has no secret", c.GetId())
	}
	ns := proto.Clone(r.GetNewSecret()).(*raftpb.SecretHash)
	if ns.ExpiresUnixNano != 0 && ns.ExpiresUnixNano <= now {
		return invalidf("new secret already expired")
	}
	if ns.CreatedUnixNano == 0 {
		ns.CreatedUnixNano = now
	}
	secrets := []*raftpb.SecretHash{ns}
	for _, s := range c.Secrets {
		exp := r.GetPreviousExpiresUnixNano()
		if s.ExpiresUnixNano != 0 && s.ExpiresUnixNano < exp {
			exp = s.ExpiresUnixNano
		}
		if exp <= now {
			continue
		}
		s.ExpiresUnixNano = exp
		secrets = append(secrets, s)
	}
	if len(secrets) > maxListLen {
		secrets = secrets[:maxListLen]
	}
	c.Secrets = secrets
	c.Revision++
	c.UpdatedUnixNano = now
	a.putClient(c)
	return nil
}

func (a *applier) setClientDisabled(s *raftpb.SetClientDisabled, now int64) error {
	c, err := a.getClient(s.GetTenant(), s.GetClientId())
	if err != nil {
		return err
	}
	was := c.Disabled
	c.Disabled = s.GetDisabled()
	c.Revision++
	c.UpdatedUnixNano = now
	a.putClient(c)
	if was != c.Disabled {
		a.emitClientDisabled(c.Tenant, c.Id, c.Disabled, now)
	}
	return nil
}

// addKeys stores keys for tenant. Before each new key is stored, every
// stored key of the same use that is not retired by the new key's
// not_before is retired then, and expires its own retention_nanos after
// that. This includes a pending key (published, not yet used) that a newer
// rotation supersedes: it never signs.
func (a *applier) addKeys(tenant string, keys []*raftpb.Key, now int64) error {
	if !a.tenantExists(tenant) {
		return notFoundTenant(tenant)
	}
	b := a.tenantBucket(tenant, kindKeys)
	for _, k := range keys {
		if b.Get([]byte(k.GetKid())) != nil {
			return fmt.Errorf("%w: key %q in tenant %q", ErrExists, k.GetKid(), tenant)
		}
	}
	for _, in := range keys {
		k := proto.Clone(in).(*raftpb.Key)
		k.Tenant = tenant
		if k.CreatedUnixNano == 0 {
			k.CreatedUnixNano = now
		}
		if k.NotBeforeUnixNano == 0 {
			k.NotBeforeUnixNano = k.CreatedUnixNano
		}
		var retire []*raftpb.Key
		c := b.Cursor()
		for kid, v := c.First(); kid != nil; kid, v = c.Next() {
			old := new(raftpb.Key)
			if err := proto.Unmarshal(v, old); err != nil {
				storageFault("key %q undecodable: %v", kid, err)
			}
			if old.Use == k.Use && (old.RetiredUnixNano == 0 || old.RetiredUnixNano > k.NotBeforeUnixNano) {
				retire = append(retire, old)
			}
		}
		typed := a.typedEnums() // enums.go
		for _, old := range retire {
			old.RetiredUnixNano = k.NotBeforeUnixNano
			old.ExpiresUnixNano = addSat(old.RetiredUnixNano, old.RetentionNanos)
			setKeyTypedEnums(old, typed)
			a.putRecord(b, kindKeys, tenant, old.Kid, old)
		}
		setKeyTypedEnums(k, typed)
		a.putRecord(b, kindKeys, tenant, k.Kid, k)
	}
	return nil
}

// revokeToken is idempotent: a jti already revoked keeps its first record,
// and a token already expired at now needs no record.
func (a *applier) revokeToken(in *raftpb.Revocation, now int64) error {
	if !a.tenantExists(in.GetTenant()) {
		return notFoundTenant(in.GetTenant())
	}
	b := a.tenantBucket(in.GetTenant(), kindRevocations)
	if b.Get([]byte(in.GetJti())) != nil || in.GetExpiresUnixNano() <= now {
		return nil
	}
	r := proto.Clone(in).(*raftpb.Revocation)
	if r.RevokedUnixNano == 0 {
		r.RevokedUnixNano = now
	}
	a.putRecord(b, kindRevocations, r.Tenant, r.Jti, r)
	a.put(a.tenantBucket(r.Tenant, kindRevocationExpiry), timeKey(r.ExpiresUnixNano, r.Jti), nil)
	a.emitRevoked(r, now)
	return nil
}

// sweep removes revocations and keys that expired at or before now, and
// request ids remembered for longer than requestRetentionNanos.
func (a *applier) sweep(now int64) {
	var tenants []string
	tc := a.bucket(bucketTenants).Cursor()
	for k, _ := tc.First(); k != nil; k, _ = tc.Next() {
		tenants = append(tenants, string(k))
	}
	for _, t := range tenants {
		revs := a.tenantBucket(t, kindRevocations)
		exp := a.tenantBucket(t, kindRevocationExpiry)
		for _, k := range a.expiredKeys(exp, now) {
			a.del(exp, k)
			a.delRecord(revs, kindRevocations, t, string(k[8:]))
		}

		keys := a.tenantBucket(t, kindKeys)
		var expired []string
		kc := keys.Cursor()
		for kid, v := kc.First(); kid != nil; kid, v = kc.Next() {
			k := new(raftpb.Key)
			if err := proto.Unmarshal(v, k); err != nil {
				storageFault("key %q undecodable: %v", kid, err)
			}
			if k.ExpiresUnixNano != 0 && k.ExpiresUnixNano <= now {
				expired = append(expired, string(kid))
			}
		}
		for _, kid := range expired {
			a.delRecord(keys, kindKeys, t, kid)
		}
		a.sweepGrants(t, now)
		a.sweepTombstones(t, now)
		a.sweepZT(t, now)     // apply_ztauth.go
		a.sweepPushed(t, now) // apply_par.go
	}
	a.sweepTenantTombstones(now) // apply_delete_tenant.go

	cutoff := now - requestRetentionNanos
	if cutoff <= 0 {
		return
	}
	reqs := a.bucket(bucketRequests)
	times := a.bucket(bucketRequestTimes)
	for _, k := range a.expiredKeys(times, cutoff) {
		a.del(times, k)
		a.del(reqs, k[8:])
	}
}

// expiredIndexKeysN returns the keys of a time index (see timeKey) whose
// time is at or before t, at most lim's budget (nil: no bound; see
// sweepLimit). Keys are collected first and deleted by the caller:
// deleting under a bbolt cursor can skip entries.
func expiredIndexKeysN(b *bbolt.Bucket, t int64, lim *sweepLimit) [][]byte {
	var out [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) <= 8 {
			storageFault("time index key %x too short", k)
		}
		if int64(binary.BigEndian.Uint64(k[:8])) > t {
			break
		}
		if !lim.take() {
			break
		}
		out = append(out, bytes.Clone(k))
	}
	return out
}

// expiredKeys is expiredIndexKeysN within the running Sweep's bound.
func (a *applier) expiredKeys(b *bbolt.Bucket, t int64) [][]byte {
	return expiredIndexKeysN(b, t, a.lim)
}
