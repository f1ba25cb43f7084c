package raft

import (
	"fmt"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// The tombstone of a deleted tenant (issue 16; part of DeleteTenant, op 82,
// feature "delete_v1", which no released binary has applied in another
// way).
//
// Deleting a tenant removes its buckets, keys included, but the access
// tokens it issued live on (up to the longest access-token lifetime) at
// resource servers that verify them offline. So DeleteTenant keeps, in the
// global bucket deleted_tenants, a raftpb.DeletedTenant: the deletion time
// and the tenant's signing keys that had not expired (sealed as in its keys
// bucket) with its preferred algorithm. The event publishers sign the
// TENANT_DELETED event (and any event of the tenant not published yet) with
// them; the events API answers a resync for the tenant with the deletion
// time; neither the JWKS nor anything else serves the keys. Sweep removes
// the tombstone after deletedRetentionNanos (two hours, more than any token
// lives). A tenant created again with the same id meanwhile starts empty;
// the tombstone still says that the old tenant's tokens (issued at or
// before the deletion) are invalid.

const (
	// bucketDeletedTenants: tenant id → raftpb.DeletedTenant (created on
	// first use).
	bucketDeletedTenants = "deleted_tenants"
	// kindDeletedTenant is the change kind of a tenant tombstone.
	kindDeletedTenant = "deleted_tenant"
)

// tenantTombstone builds the tombstone of tenant id from its records,
// before its buckets go.
func (a *applier) tenantTombstone(id string, now int64) *raftpb.DeletedTenant {
	d := &raftpb.DeletedTenant{Id: id, DeletedUnixNano: now}
	t := new(raftpb.Tenant)
	if a.get(a.bucket(bucketTenants), id, t) {
		d.SigningAlg = t.SigningAlg
	}
	if b := a.tx.Bucket(tenantBucket(id, kindKeys)); b != nil {
		_ = b.ForEach(func(kid, v []byte) error {
			k := new(raftpb.Key)
			if err := proto.Unmarshal(v, k); err != nil {
				storageFault("key %q undecodable: %v", kid, err)
			}
			if k.Use == "sig" && (k.ExpiresUnixNano == 0 || k.ExpiresUnixNano > now) {
				d.SigningKeys = append(d.SigningKeys, k)
			}
			return nil
		})
	}
	return d
}

func (a *applier) putTenantTombstone(d *raftpb.DeletedTenant) {
	b, err := a.tx.CreateBucketIfNotExists([]byte(bucketDeletedTenants))
	if err != nil {
		storageFault("bucket %q: %v", bucketDeletedTenants, err)
	}
	a.deriveTypedV2(d) // enums_v2.go
	v, err := marshalOpts.Marshal(d)
	if err != nil {
		storageFault("marshal tenant tombstone %q: %v", d.Id, err)
	}
	a.put(b, []byte(d.Id), v)
	a.changes = append(a.changes, change{kind: kindDeletedTenant, tenant: d.Id, msg: d})
}

// dropGatewayConfig removes a deleted tenant's gateway configuration (kept
// in the meta bucket, not in the tenant's buckets), so that a tenant created
// again with the id does not inherit its routes and policies.
func (a *applier) dropGatewayConfig(tenant string) {
	meta := a.bucket(bucketMeta)
	key := []byte(metaGatewayPrefix + tenant)
	if meta.Get(key) == nil {
		return
	}
	a.del(meta, key)
	a.changes = append(a.changes, change{kind: kindGatewayConfig, tenant: tenant})
}

// revokeTenantAdmins revokes the tenant-admin credentials of a deleted
// tenant (issue 13's admin credentials live outside the tenant's buckets),
// so that none of them administers a tenant created again with the id.
func (a *applier) revokeTenantAdmins(tenant string, now int64) {
	b := a.tx.Bucket([]byte(bucketThreatAdminCreds))
	if b == nil {
		return
	}
	var revoke []*raftpb.AdminCredential
	_ = b.ForEach(func(k, v []byte) error {
		c := new(raftpb.AdminCredential)
		if err := proto.Unmarshal(v, c); err != nil {
			storageFault("admin credential %q undecodable: %v", k, err)
		}
		// The string, as every release decides (enums_v3.go).
		if c.Role == RoleTenantAdmin && c.Tenant == tenant && c.RevokedUnixNano == 0 {
			revoke = append(revoke, c)
		}
		return nil
	})
	for _, c := range revoke {
		c.RevokedUnixNano = now
		a.putAdminCredentialRecord(b, c) // apply_threat.go
	}
}

// sweepTenantTombstones removes tenant tombstones older than
// deletedRetentionNanos.
func (a *applier) sweepTenantTombstones(now int64) {
	b := a.tx.Bucket([]byte(bucketDeletedTenants))
	if b == nil {
		return
	}
	var dead []string
	_ = b.ForEach(func(k, v []byte) error {
		d := new(raftpb.DeletedTenant)
		if err := proto.Unmarshal(v, d); err != nil {
			storageFault("tenant tombstone %q undecodable: %v", k, err)
		}
		if addSat(d.DeletedUnixNano, deletedRetentionNanos) <= now {
			dead = append(dead, string(k))
		}
		return nil
	})
	for _, k := range dead {
		a.del(b, []byte(k))
		a.changes = append(a.changes, change{kind: kindDeletedTenant, tenant: k})
	}
}

// readTenantTombstones reads every tenant tombstone.
func readTenantTombstones(tx *bbolt.Tx) (map[string]*raftpb.DeletedTenant, error) {
	out := map[string]*raftpb.DeletedTenant{}
	b := tx.Bucket([]byte(bucketDeletedTenants))
	if b == nil {
		return out, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		d := new(raftpb.DeletedTenant)
		if err := proto.Unmarshal(v, d); err != nil {
			return fmt.Errorf("raft: tenant tombstone %q: %w", k, err)
		}
		out[string(k)] = d
		return nil
	})
	return out, err
}

// storeTenantTombstone publishes a tombstone change (copy on write); a nil
// msg removes it.
func (s *State) storeTenantTombstone(c change) {
	next := map[string]*raftpb.DeletedTenant{}
	if old := s.deletedTenants.Load(); old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	if c.msg == nil {
		delete(next, c.tenant)
	} else {
		next[c.tenant] = c.msg.(*raftpb.DeletedTenant)
	}
	s.deletedTenants.Store(&next)
}

// DeletedTenant returns the tombstone of a tenant deleted within the
// tombstone retention (two hours): when it was deleted and the signing keys
// that sign its last events. The record is shared: do not modify it.
func (s *State) DeletedTenant(id string) (*raftpb.DeletedTenant, bool) {
	if m := s.deletedTenants.Load(); m != nil {
		d, ok := (*m)[id]
		return d, ok
	}
	return nil, false
}
