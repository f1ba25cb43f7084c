package raft

import (
	"encoding/binary"
)

// SchemaVersion is the layout version of the state database, stored under
// metaSchemaVersion. A node refuses to open a database of another version.
const SchemaVersion = 1

// Every bbolt bucket of the state database is declared here, and only here.
//
// Global buckets:
//
//	meta           applied_index, applied_term (uint64 big-endian), schema_version,
//	               clock (time | tick anchor, 2×int64 big-endian; see clock.go)
//	tenants        tenant id → raftpb.Tenant
//	requests       request_id → result code (1 byte) | index (8) | command time (8)
//	request_times  command time (8, big-endian) | request_id → empty; sweep order
//	events         Raft index (8) | ordinal (2), big-endian → raftpb.Event; the
//	               outbox of the event log (see events.go)
//	threat_admin_credentials  credential id → raftpb.AdminCredential (issue 13,
//	               apply_threat.go; created on first use)
//	threat_audit   seq (8, big-endian) → raftpb.AuditRecord: the hash-chained
//	               audit log (issue 13, apply_threat.go; created on first use)
//	deleted_tenants  tenant id → raftpb.DeletedTenant: tombstones of deleted
//	               tenants (issue 16, apply_delete_tenant.go; created on first use)
//	threat_alerts  minute (8, big-endian) | alert key → empty: the security
//	               alerts announced this minute (issue 13, apply_alert.go;
//	               created on first use)
//	threat_client_scopes  tenant NUL client id → raftpb.ClientScopes: a
//	               client's scope history (issue 13, apply_threat3.go;
//	               created on first use)
//	threat_alert_log  time (8) | index (8) | ordinal (2) → raftpb.SecurityAlert,
//	               key {0} → count: announced alerts of the last 24 h once
//	               threat_v3 is recorded (apply_threat3.go; first use)
//
// Per tenant, named "t/<tenant>/<kind>" (tenant ids cannot contain '/'):
//
//	clients            client id → raftpb.Client
//	keys               kid → raftpb.Key
//	revocations        jti → raftpb.Revocation
//	revocation_expiry  expires (8, big-endian) | jti → empty; sweep order
//
// Per tenant, end-user flows (created on first use, see apply_users.go):
//
//	users              user id → raftpb.User
//	usernames          lower-case username → user id
//	consents           user id | 0x00 | client id → raftpb.Consent
//	used_codes         SHA-256 of a redeemed code → raftpb.UsedCode
//	used_code_expiry   expires (8, big-endian) | code hash → empty; sweep order
//	families           family id → raftpb.Family
//	device_codes       SHA-256 of a device code → raftpb.DeviceCode
//	user_codes         normalized user code → device code hash
//
// Per tenant, tombstones of deletions (created on first use, see
// apply_delete.go; kinds declared there):
//
//	deleted_clients    client id → raftpb.Deleted
//	deleted_users      user id → raftpb.Deleted
//
// Per tenant, zero-trust clients (issue 11, created on first use, see
// apply_ztauth.go):
//
//	ztauth_jti         SHA-256(client_id | 0 | jti) → expires (8, big-endian)
//	ztauth_jti_expiry  expires (8, big-endian) | key → empty; sweep order
//
// Per tenant, issue 11 (created on first use, see apply_par.go):
//
//	par_requests       SHA-256 of a request_uri → raftpb.PushedRequest
//	par_request_expiry expires (8, big-endian) | uri hash → empty; sweep order
const (
	bucketMeta         = "meta"
	bucketTenants      = "tenants"
	bucketRequests     = "requests"
	bucketRequestTimes = "request_times"
	bucketEvents       = "events"

	bucketThreatAdminCreds = "threat_admin_credentials"
	bucketThreatAudit      = "threat_audit"
	bucketThreatAlerts     = "threat_alerts"
	// bucketThreatClientScopes and bucketThreatAlertLog: apply_threat3.go.

	tenantBucketPrefix = "t/"

	kindClients          = "clients"
	kindKeys             = "keys"
	kindRevocations      = "revocations"
	kindRevocationExpiry = "revocation_expiry"

	kindUsers          = "users"
	kindUsernames      = "usernames"
	kindConsents       = "consents"
	kindUsedCodes      = "used_codes"
	kindUsedCodeExpiry = "used_code_expiry"
	kindFamilies       = "families"
	kindDeviceCodes    = "device_codes"
	kindUserCodes      = "user_codes"

	kindZTJTI       = "ztauth_jti"
	kindZTJTIExpiry = "ztauth_jti_expiry"

	kindPARRequests = "par_requests"
	kindPARExpiry   = "par_request_expiry"
)

// Keys of the meta bucket.
const (
	metaAppliedIndex  = "applied_index"
	metaAppliedTerm   = "applied_term"
	metaSchemaVersion = "schema_version"
	// metaCluster is the raftpb.ClusterMeta record: the cluster's issuer
	// and the node ids removed for good (apply_cluster.go).
	metaCluster = "cluster"
	// metaClusterVersion is the raftpb.ClusterVersion record: the
	// cluster's version and enabled feature set (apply_version.go).
	metaClusterVersion = "cluster_version"
	// metaEventsSweptThrough is the highest outbox index a Sweep removed.
	metaEventsSweptThrough = "events_swept_through"
	// metaClock is the FSM's bounded clock (clock.go); absent until the
	// first Tick.
	metaClock = "clock"
)

// globalBuckets are created when a state database is opened.
func globalBuckets() []string {
	return []string{bucketMeta, bucketTenants, bucketRequests, bucketRequestTimes, bucketEvents}
}

// tenantKinds are the buckets created with each tenant.
func tenantKinds() []string {
	return []string{kindClients, kindKeys, kindRevocations, kindRevocationExpiry}
}

// tenantBucket names the bucket of one kind for one tenant.
func tenantBucket(tenant, kind string) []byte {
	return []byte(tenantBucketPrefix + tenant + "/" + kind)
}

// requestRetentionNanos is how long (in command time) a request id is
// remembered for idempotency before Sweep forgets it.
const requestRetentionNanos = int64(24 * 60 * 60 * 1e9)

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// timeKey is an index key ordered by time: big-endian t (t > 0), then id.
func timeKey(t int64, id string) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(t))
	return append(k, id...)
}

// requestValue encodes a remembered result.
func requestValue(code resultCode, index uint64, t int64) []byte {
	v := make([]byte, 17)
	v[0] = byte(code)
	binary.BigEndian.PutUint64(v[1:9], index)
	binary.BigEndian.PutUint64(v[9:17], uint64(t))
	return v
}

func decodeRequestValue(v []byte) (resultCode, uint64, int64, bool) {
	if len(v) < 17 {
		return 0, 0, 0, false
	}
	return resultCode(v[0]), binary.BigEndian.Uint64(v[1:9]), int64(binary.BigEndian.Uint64(v[9:17])), true
}
