package raft

import (
	"bytes"
	"fmt"
	"maps"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Deleting clients, users and tenants (issue 16; feature "delete_v1",
// raft ops 80-82, event kinds 20-22).
//
// Deleting is final and revokes what the deleted record held, in the same
// command: refresh families are revoked with the access tokens they
// recorded (TOKEN_REVOKED and FAMILY_REVOKED events), consents, device
// codes and used codes are removed, and a CLIENT_DELETED or USER_DELETED
// event tells resource servers to reject every access token of the client
// or user issued at or before the deletion (client-credentials tokens are
// recorded nowhere, so the event, not a revocation list, covers them).
//
// Right to erasure: a deleted user's record (username, email, name,
// password hash) and its username index entry are deleted from the state
// database, and what remains is a tombstone (raftpb.Deleted: the random
// user id and the time) that keeps the id from being taken again while
// tokens issued before the deletion live; Sweep removes it after
// deletedRetentionNanos. No outbox event carries more than the user id.
// Deleted bytes would survive in bbolt's free pages, so the FSM compacts
// the state database after committing a batch that erased personal data
// (FSM.compactLocked): the file holds no copy of it after that. What is
// left is outside the state database: the Raft log entries that carried
// the data (CreateUser, SetUserPassword) until a snapshot compacts the log
// past them (at most Config.TrailingLogs entries after the next snapshot),
// and snapshots taken before the deletion (Config.SnapshotRetain of them)
// until newer ones replace them. See node/DESIGN.md, "Deleting".

const (
	kindDeletedClients = "deleted_clients"
	kindDeletedUsers   = "deleted_users"
)

// deletedRetentionNanos is how long a tombstone is kept: longer than any
// access token lives (issuance.MaxAccessTokenTTL, one hour) plus leeway.
const deletedRetentionNanos = int64(2 * 60 * 60 * 1e9)

// ReasonClientDeleted and ReasonUserDeleted are the revocation reasons of
// the families a deletion revokes.
const (
	ReasonClientDeleted = "client_deleted"
	ReasonUserDeleted   = "user_deleted"
)

// FeatureDelete names the DeleteClient, DeleteUser and DeleteTenant
// operations (ops 80-82) in the cluster's feature set: a proposer uses them
// only once every member applies them (opRegistry, State.FeatureEnabled).
const FeatureDelete = "delete_v1"

func checkDeleteClient(d *raftpb.DeleteClient) error {
	if err := checkTenantID(d.GetTenant()); err != nil {
		return err
	}
	return checkClientID(d.GetClientId())
}

func checkDeleteUser(d *raftpb.DeleteUser) error {
	return checkTenantUser(d.GetTenant(), d.GetUserId())
}

func checkDeleteTenant(d *raftpb.DeleteTenant) error { return checkTenantID(d.GetTenant()) }

// tombstoned reports whether id has a tombstone of kind in tenant.
func (a *applier) tombstoned(tenant, kind, id string) bool {
	b := a.tx.Bucket(tenantBucket(tenant, kind))
	return b != nil && b.Get([]byte(id)) != nil
}

func (a *applier) putTombstone(tenant, kind, id string, now int64) {
	a.putRecord(a.flowBucket(tenant, kind), kind, tenant, id, &raftpb.Deleted{Id: id, DeletedUnixNano: now})
}

// families returns the families of tenant that match keep.
func (a *applier) families(tenant string, keep func(*raftpb.Family) bool) []*raftpb.Family {
	if a.tx.Bucket(tenantBucket(tenant, kindFamilies)) == nil {
		return nil
	}
	var out []*raftpb.Family
	_ = a.flowBucket(tenant, kindFamilies).ForEach(func(k, v []byte) error {
		f := new(raftpb.Family)
		if err := proto.Unmarshal(v, f); err != nil {
			storageFault("family %q undecodable: %v", k, err)
		}
		if keep(f) {
			out = append(out, f)
		}
		return nil
	})
	return out
}

// dropFamilies revokes the matching families (events and revocations of
// their live access tokens) and then removes their records.
func (a *applier) dropFamilies(tenant, reason string, match func(*raftpb.Family) bool, now int64) {
	fams := a.families(tenant, match)
	for _, f := range fams {
		a.revokeFamilyRecord(f, reason, now)
	}
	for _, f := range fams {
		a.del(a.flowBucket(tenant, kindFamilies), []byte(f.Id))
	}
}

// dropConsents removes the consents that match.
func (a *applier) dropConsents(tenant string, match func(*raftpb.Consent) bool) {
	if a.tx.Bucket(tenantBucket(tenant, kindConsents)) == nil {
		return
	}
	b := a.flowBucket(tenant, kindConsents)
	var dead []string
	_ = b.ForEach(func(k, v []byte) error {
		c := new(raftpb.Consent)
		if err := proto.Unmarshal(v, c); err != nil {
			storageFault("consent undecodable: %v", err)
		}
		if match(c) {
			dead = append(dead, string(k))
		}
		return nil
	})
	for _, k := range dead {
		a.delRecord(b, kindConsents, tenant, k)
	}
}

// dropDeviceCodes removes the device codes that match, with their user
// codes.
func (a *applier) dropDeviceCodes(tenant string, match func(*raftpb.DeviceCode) bool) {
	if a.tx.Bucket(tenantBucket(tenant, kindDeviceCodes)) == nil {
		return
	}
	b := a.flowBucket(tenant, kindDeviceCodes)
	ucs := a.flowBucket(tenant, kindUserCodes)
	var dead []*raftpb.DeviceCode
	_ = b.ForEach(func(k, v []byte) error {
		d := new(raftpb.DeviceCode)
		if err := proto.Unmarshal(v, d); err != nil {
			storageFault("device code undecodable: %v", err)
		}
		if match(d) {
			dead = append(dead, d)
		}
		return nil
	})
	for _, d := range dead {
		if h := ucs.Get([]byte(d.UserCode)); bytes.Equal(h, d.DeviceCodeHash) {
			a.del(ucs, []byte(d.UserCode))
		}
		a.delRecord(b, kindDeviceCodes, tenant, string(d.DeviceCodeHash))
	}
}

// dropUsedCodes revokes the access tokens recorded on the used codes that
// match and removes them with their expiry index entries.
func (a *applier) dropUsedCodes(tenant, reason string, match func(*raftpb.UsedCode) bool, now int64) {
	if a.tx.Bucket(tenantBucket(tenant, kindUsedCodes)) == nil {
		return
	}
	b := a.flowBucket(tenant, kindUsedCodes)
	idx := a.flowBucket(tenant, kindUsedCodeExpiry)
	var dead []*raftpb.UsedCode
	_ = b.ForEach(func(k, v []byte) error {
		u := new(raftpb.UsedCode)
		if err := proto.Unmarshal(v, u); err != nil {
			storageFault("used code undecodable: %v", err)
		}
		if match(u) {
			dead = append(dead, u)
		}
		return nil
	})
	for _, u := range dead {
		a.revokeAccessTokens(tenant, u.ClientId, u.UserId, reason, u.AccessTokens, now)
		a.del(idx, timeKey(u.ExpiresUnixNano, string(u.CodeHash)))
		a.del(b, u.CodeHash)
	}
}

// deleteClient: see raftpb.DeleteClient.
func (a *applier) deleteClient(d *raftpb.DeleteClient, now int64) error {
	c, err := a.getClient(d.GetTenant(), d.GetClientId())
	if err != nil {
		return err
	}
	t, id := c.Tenant, c.Id
	a.dropFamilies(t, ReasonClientDeleted, func(f *raftpb.Family) bool { return f.ClientId == id }, now)
	a.dropUsedCodes(t, ReasonClientDeleted, func(u *raftpb.UsedCode) bool { return u.ClientId == id }, now)
	a.dropConsents(t, func(c *raftpb.Consent) bool { return c.ClientId == id })
	a.dropDeviceCodes(t, func(dc *raftpb.DeviceCode) bool { return dc.ClientId == id })
	a.dropClientScopes(t, id) // apply_threat3_delete.go
	a.delRecord(a.tenantBucket(t, kindClients), kindClients, t, id)
	a.putTombstone(t, kindDeletedClients, id, now)
	a.emit(&raftpb.Event{Tenant: t, Kind: raftpb.EventKind_EVENT_KIND_CLIENT_DELETED, TimeUnixNano: now, ClientId: id})
	return nil
}

// deleteUser: see raftpb.DeleteUser.
func (a *applier) deleteUser(d *raftpb.DeleteUser, now int64) error {
	u, err := a.getUser(d.GetTenant(), d.GetUserId())
	if err != nil {
		return err
	}
	t, id := u.Tenant, u.Id
	a.dropFamilies(t, ReasonUserDeleted, func(f *raftpb.Family) bool { return f.UserId == id }, now)
	a.dropUsedCodes(t, ReasonUserDeleted, func(uc *raftpb.UsedCode) bool { return uc.UserId == id }, now)
	a.dropConsents(t, func(c *raftpb.Consent) bool { return c.UserId == id })
	a.dropDeviceCodes(t, func(dc *raftpb.DeviceCode) bool { return dc.UserId == id })
	names := a.flowBucket(t, kindUsernames)
	uname := []byte(normalizeUsername(u.Username))
	if bytes.Equal(names.Get(uname), []byte(id)) {
		a.del(names, uname)
	}
	a.delRecord(a.flowBucket(t, kindUsers), kindUsers, t, id)
	a.putTombstone(t, kindDeletedUsers, id, now)
	a.erased = true
	a.emit(&raftpb.Event{Tenant: t, Kind: raftpb.EventKind_EVENT_KIND_USER_DELETED, TimeUnixNano: now, Subject: id})
	return nil
}

// deleteTenant: see raftpb.DeleteTenant. Every bucket named for the tenant
// goes, whatever its kind (including kinds added after this code), and so
// does its gateway configuration, its clients' scope histories and its
// alert-log entries (global threat_v3 buckets); its tenant-admin
// credentials are revoked; its tombstone (raftpb.DeletedTenant)
// keeps the deletion time and its signing keys for the TENANT_DELETED
// event (apply_delete_tenant.go).
func (a *applier) deleteTenant(d *raftpb.DeleteTenant, now int64) error {
	id := d.GetTenant()
	if !a.tenantExists(id) {
		return notFoundTenant(id)
	}
	tomb := a.tenantTombstone(id, now) // apply_delete_tenant.go
	prefix := []byte(tenantBucketPrefix + id + "/")
	var names [][]byte
	_ = a.tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
		if bytes.HasPrefix(name, prefix) {
			names = append(names, bytes.Clone(name))
		}
		return nil
	})
	for _, n := range names {
		if err := a.tx.DeleteBucket(n); err != nil {
			storageFault("delete bucket %q: %v", n, err)
		}
	}
	a.del(a.bucket(bucketTenants), []byte(id))
	a.changes = append(a.changes, change{kind: bucketTenants, tenant: id})
	a.dropGatewayConfig(id)
	a.revokeTenantAdmins(id, now)
	a.dropTenantThreatState(id) // apply_threat3_delete.go
	a.putTenantTombstone(tomb)
	a.erased = true
	a.emit(&raftpb.Event{Tenant: id, Kind: raftpb.EventKind_EVENT_KIND_TENANT_DELETED, TimeUnixNano: now})
	return nil
}

// sweepTombstones removes tombstones older than deletedRetentionNanos.
func (a *applier) sweepTombstones(tenant string, now int64) {
	for _, kind := range []string{kindDeletedClients, kindDeletedUsers} {
		if a.tx.Bucket(tenantBucket(tenant, kind)) == nil {
			continue
		}
		b := a.flowBucket(tenant, kind)
		var dead []string
		_ = b.ForEach(func(k, v []byte) error {
			t := new(raftpb.Deleted)
			if err := proto.Unmarshal(v, t); err != nil {
				storageFault("tombstone %q undecodable: %v", k, err)
			}
			if addSat(t.DeletedUnixNano, deletedRetentionNanos) <= now {
				dead = append(dead, string(k))
			}
			return nil
		})
		for _, k := range dead {
			a.delRecord(b, kind, tenant, k)
		}
	}
}

func errTombstoned(what, tenant, id string) error {
	return fmt.Errorf("%w: %s %q in tenant %q was deleted less than two hours ago; its id cannot be taken yet",
		ErrExists, what, id, tenant)
}

// ----- read view -----

// deletedView holds a tenant's tombstones: id → deletion time.
type deletedView struct {
	clients map[string]int64
	users   map[string]int64
}

// applyDeleteChange publishes a tombstone change; false for other kinds.
func (tv *tenantView) applyDeleteChange(c change) bool {
	var m *map[string]int64
	switch c.kind {
	case kindDeletedClients:
		m = &tv.deleted.clients
	case kindDeletedUsers:
		m = &tv.deleted.users
	default:
		return false
	}
	if *m == nil {
		*m = make(map[string]int64)
	}
	if c.msg == nil {
		delete(*m, c.id)
	} else {
		(*m)[c.id] = c.msg.(*raftpb.Deleted).DeletedUnixNano
	}
	return true
}

// loadDeletedRecords reads a tenant's tombstones into tv.
func loadDeletedRecords(tx *bbolt.Tx, tenant string, tv *tenantView) error {
	for _, kind := range []string{kindDeletedClients, kindDeletedUsers} {
		b := tx.Bucket(tenantBucket(tenant, kind))
		if b == nil {
			continue
		}
		if err := b.ForEach(func(k, v []byte) error {
			d := new(raftpb.Deleted)
			if err := proto.Unmarshal(v, d); err != nil {
				return fmt.Errorf("%s %q of tenant %q: %w", kind, k, tenant, err)
			}
			tv.applyDeleteChange(change{kind: kind, tenant: tenant, id: string(k), msg: d})
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// DeletedClients returns the tenant's clients deleted within the tombstone
// retention: client id → deletion time (unix nanoseconds).
func (s *State) DeletedClients(tenant string) map[string]int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		return maps.Clone(tv.deleted.clients)
	}
	return nil
}

// DeletedUsers returns the tenant's users deleted within the tombstone
// retention: user id → deletion time (unix nanoseconds).
func (s *State) DeletedUsers(tenant string) map[string]int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		return maps.Clone(tv.deleted.users)
	}
	return nil
}
