package raft

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Threat protection (issue 13): named admin credentials and the
// hash-chained audit log. Both live in global buckets of their own
// (schema.go) and are read from the database, not the in-memory view:
// they are read on admin calls only.
//
// The audit log is append-only. Each record's hash is
// SHA-256(prev_hash || canonical encoding of the record) (AuditHash), with
// prev_hash the hash of the record before it, so editing, removing or
// reordering a stored record breaks the chain at that record
// (VerifyAuditChain). The FSM assigns seq, time, Raft index and both hashes:
// every replica stores the same bytes, and "tally admin audit verify" can
// check the chain on any node or on a copy of its state database.

// auditEventTenant is the tenant under whose subjects (and keys) the event
// of a cluster-wide audit record is published: the bootstrap tenant.
const auditEventTenant = "default"

// Admin credential roles (AdminCredential.role; readers use RoleOf, which
// also reads the typed role of enums_v3.go).
const (
	RoleAdmin       = "admin"
	RoleOperator    = "operator"
	RoleTenantAdmin = "tenant-admin"
	RoleAuditor     = "auditor"
)

// AdminRoles lists the roles of admin credentials.
var AdminRoles = []string{RoleAdmin, RoleOperator, RoleTenantAdmin, RoleAuditor}

const (
	maxAuditFieldLen = 512
	maxCredIDLen     = 64
)

// checkThreatCommand validates the issue-13 commands; ok is false for any
// other operation.
func checkThreatCommand(cmd *raftpb.Command) (ok bool, err error) {
	switch op := cmd.GetOp().(type) {
	case *raftpb.Command_PutAdminCredential:
		return true, checkAdminCredential(op.PutAdminCredential.GetCredential())
	case *raftpb.Command_RevokeAdminCredential:
		if id := op.RevokeAdminCredential.GetId(); !validID(id) || len(id) > maxCredIDLen {
			return true, invalidf("revoke admin credential: id %q", id)
		}
		return true, nil
	case *raftpb.Command_AppendAudit:
		r := op.AppendAudit.GetRecord()
		if r == nil {
			return true, invalidf("append audit: no record")
		}
		if r.GetActor() == "" || r.GetAction() == "" || r.GetOutcome() == "" {
			return true, invalidf("append audit: actor, action and outcome are required")
		}
		for _, f := range []string{r.GetActor(), r.GetAction(), r.GetTarget(), r.GetTenant(), r.GetOutcome(), r.GetNode(), r.GetRole()} {
			if len(f) > maxAuditFieldLen {
				return true, invalidf("append audit: field longer than %d bytes", maxAuditFieldLen)
			}
		}
		return true, nil
	}
	return false, nil
}

func checkAdminCredential(c *raftpb.AdminCredential) error {
	if c == nil {
		return invalidf("put admin credential: no credential")
	}
	if !validID(c.GetId()) || len(c.GetId()) > maxCredIDLen {
		return invalidf("admin credential id %q", c.GetId())
	}
	if c.GetName() == "" || len(c.GetName()) > 200 {
		return invalidf("admin credential name: want 1-200 bytes")
	}
	switch c.GetRole() {
	case RoleAdmin, RoleOperator, RoleAuditor:
		if c.GetTenant() != "" {
			return invalidf("admin credential: role %q takes no tenant", c.GetRole())
		}
	case RoleTenantAdmin:
		if err := checkTenantID(c.GetTenant()); err != nil {
			return err
		}
	default:
		return invalidf("admin credential role %q: want admin, operator, tenant-admin or auditor", c.GetRole())
	}
	if len(c.GetTokenHash()) == 0 || len(c.GetTokenHash()) > maxHashLen {
		return invalidf("admin credential: token hash required")
	}
	return checkText("created by", c.GetCreatedBy())
}

// dispatchThreat applies the issue-13 commands; ok is false for any other
// operation.
func (a *applier) dispatchThreat(cmd *raftpb.Command, now int64) (ok bool, err error) {
	switch op := cmd.GetOp().(type) {
	case *raftpb.Command_PutAdminCredential:
		return true, a.putAdminCredential(op.PutAdminCredential, now)
	case *raftpb.Command_RevokeAdminCredential:
		return true, a.revokeAdminCredential(op.RevokeAdminCredential, now)
	case *raftpb.Command_AppendAudit:
		a.appendAudit(op.AppendAudit, now)
		return true, nil
	}
	return false, nil
}

// threatBucket returns a global issue-13 bucket, creating it if a state
// database restored from an older snapshot lacks it.
func (a *applier) threatBucket(name string) *bbolt.Bucket {
	b, err := a.tx.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		storageFault("bucket %q: %v", name, err)
	}
	return b
}

// putAdminCredential stores a new credential (apply logic of op 120).
func (a *applier) putAdminCredential(p *raftpb.PutAdminCredential, now int64) error {
	c := proto.Clone(p.GetCredential()).(*raftpb.AdminCredential)
	b := a.threatBucket(bucketThreatAdminCreds)
	if b.Get([]byte(c.Id)) != nil {
		return fmt.Errorf("%w: admin credential %q", ErrExists, c.Id)
	}
	cur := b.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		var o raftpb.AdminCredential
		if err := proto.Unmarshal(v, &o); err != nil {
			storageFault("admin credential %q undecodable: %v", k, err)
		}
		if o.Name == c.Name && o.RevokedUnixNano == 0 && (o.ExpiresUnixNano == 0 || o.ExpiresUnixNano > now) {
			return fmt.Errorf("%w: an active admin credential named %q", ErrExists, c.Name)
		}
	}
	if c.CreatedUnixNano == 0 {
		c.CreatedUnixNano = now
	}
	c.RevokedUnixNano = 0
	a.putAdminCredentialRecord(b, c)
	return nil
}

// putAdminCredentialRecord stores c in b (the admin credentials bucket),
// with its typed role set or cleared as the recorded cluster version says
// (enums_v3.go).
func (a *applier) putAdminCredentialRecord(b *bbolt.Bucket, c *raftpb.AdminCredential) {
	a.deriveTypedV3(c)
	v, err := marshalOpts.Marshal(c)
	if err != nil {
		storageFault("marshal admin credential: %v", err)
	}
	a.put(b, []byte(c.Id), v)
}

// revokeAdminCredential revokes a credential (apply logic of op 121);
// revoking a revoked one keeps the first time.
func (a *applier) revokeAdminCredential(r *raftpb.RevokeAdminCredential, now int64) error {
	b := a.threatBucket(bucketThreatAdminCreds)
	var c raftpb.AdminCredential
	if !a.get(b, r.GetId(), &c) {
		return fmt.Errorf("%w: admin credential %q", ErrNotFound, r.GetId())
	}
	if c.RevokedUnixNano != 0 {
		return nil
	}
	c.RevokedUnixNano = now
	a.putAdminCredentialRecord(b, &c)
	return nil
}

// appendAudit appends a record to the chain (apply logic of op 122) and
// announces it on the event log.
func (a *applier) appendAudit(p *raftpb.AppendAudit, now int64) {
	b := a.threatBucket(bucketThreatAudit)
	r := proto.Clone(p.GetRecord()).(*raftpb.AuditRecord)
	r.Seq, r.PrevHash = 1, nil
	if k, v := b.Cursor().Last(); k != nil {
		var last raftpb.AuditRecord
		if err := proto.Unmarshal(v, &last); err != nil {
			storageFault("audit record %x undecodable: %v", k, err)
		}
		r.Seq, r.PrevHash = last.Seq+1, last.Hash
	}
	r.TimeUnixNano = now
	r.RaftIndex = a.index
	r.Hash = AuditHash(r.PrevHash, r)
	v, err := marshalOpts.Marshal(r)
	if err != nil {
		storageFault("marshal audit record: %v", err)
	}
	a.put(b, u64(r.Seq), v)
	// The event is signed with the tenant's keys: a record about a tenant
	// that does not exist (a refused or failed call naming one) goes out
	// under the default tenant, and with no default tenant not at all.
	tenant := r.Tenant
	if tenant == "" || !a.tenantExists(tenant) {
		tenant = auditEventTenant
	}
	if !a.tenantExists(tenant) {
		return
	}
	a.emit(&raftpb.Event{Tenant: tenant, Kind: raftpb.EventKind_EVENT_KIND_ADMIN_AUDIT, TimeUnixNano: now, Audit: r})
}

// AuditHash is the chain hash of r: SHA-256 over prev and a canonical,
// length-prefixed encoding of every field of r except hash and prev_hash
// (prev is the link). The encoding does not depend on protobuf's
// serialization, so it stays stable across versions.
func AuditHash(prev []byte, r *raftpb.AuditRecord) []byte {
	h := sha256.New()
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	num := func(v uint64) {
		binary.BigEndian.PutUint64(n[:], v)
		h.Write(n[:])
	}
	h.Write([]byte("tally-audit-v1"))
	field(prev)
	num(r.GetSeq())
	num(uint64(r.GetTimeUnixNano()))
	num(r.GetRaftIndex())
	for _, s := range []string{r.GetActor(), r.GetRole(), r.GetAction(), r.GetTarget(), r.GetTenant(), r.GetOutcome(), r.GetNode()} {
		field([]byte(s))
	}
	return h.Sum(nil)
}

// AuditBreak describes the first record of a chain that does not verify.
type AuditBreak struct {
	Seq    uint64
	Reason string
}

// VerifyAuditChain checks records (in seq order, from the first) and
// returns the first broken one, or nil when the chain is intact.
func VerifyAuditChain(records []*raftpb.AuditRecord) *AuditBreak {
	var prev []byte
	for i, r := range records {
		want := uint64(i + 1)
		if r.GetSeq() != want {
			return &AuditBreak{Seq: want, Reason: fmt.Sprintf("record %d missing or out of order (found seq %d)", want, r.GetSeq())}
		}
		if !bytes.Equal(r.GetPrevHash(), prev) {
			return &AuditBreak{Seq: r.GetSeq(), Reason: "prev_hash does not match the previous record's hash"}
		}
		if !bytes.Equal(AuditHash(prev, r), r.GetHash()) {
			return &AuditBreak{Seq: r.GetSeq(), Reason: "hash does not match the record's content"}
		}
		prev = r.GetHash()
	}
	return nil
}

// ReadAuditDB reads every audit record of a state database (a copy, or
// one no node has open), for offline verification.
func ReadAuditDB(path string) ([]*raftpb.AuditRecord, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 2e9})
	if err != nil {
		return nil, fmt.Errorf("raft: open %s: %w", path, err)
	}
	defer db.Close()
	var out []*raftpb.AuditRecord
	err = db.View(func(tx *bbolt.Tx) error {
		out, err = readAudit(tx, 0, 0, "")
		return err
	})
	return out, err
}

// readAudit reads records with seq > after (limit <= 0: all), of tenant
// when it is not empty. A record that does not decode is returned as an
// empty record with its key's seq, so that verification names it.
func readAudit(tx *bbolt.Tx, after uint64, limit int, tenant string) ([]*raftpb.AuditRecord, error) {
	b := tx.Bucket([]byte(bucketThreatAudit))
	if b == nil {
		return nil, nil
	}
	var out []*raftpb.AuditRecord
	c := b.Cursor()
	for k, v := c.Seek(u64(after + 1)); k != nil; k, v = c.Next() {
		r := new(raftpb.AuditRecord)
		if err := proto.Unmarshal(v, r); err != nil {
			r = &raftpb.AuditRecord{Outcome: "undecodable"}
			if len(k) == 8 {
				r.Seq = binary.BigEndian.Uint64(k)
			}
		}
		if tenant != "" && r.Tenant != tenant {
			continue
		}
		out = append(out, r)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out, nil
}

// AuditRecords returns up to limit audit records with seq > after (limit
// <= 0: all), of tenant unless it is empty.
func (f *FSM) AuditRecords(after uint64, limit int, tenant string) ([]*raftpb.AuditRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil, ErrClosed
	}
	var out []*raftpb.AuditRecord
	err := f.db.View(func(tx *bbolt.Tx) (err error) {
		out, err = readAudit(tx, after, limit, tenant)
		return err
	})
	return out, err
}

// AdminCredential returns the stored credential with id.
func (f *FSM) AdminCredential(id string) (*raftpb.AdminCredential, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil, false
	}
	var c *raftpb.AdminCredential
	_ = f.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucketThreatAdminCreds))
		if b == nil {
			return nil
		}
		if v := b.Get([]byte(id)); v != nil {
			c = new(raftpb.AdminCredential)
			if proto.Unmarshal(v, c) != nil {
				c = nil
			}
		}
		return nil
	})
	return c, c != nil
}

// AdminCredentials returns every stored credential, revoked ones included,
// in id order.
func (f *FSM) AdminCredentials() ([]*raftpb.AdminCredential, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil, ErrClosed
	}
	var out []*raftpb.AdminCredential
	err := f.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucketThreatAdminCreds))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			c := new(raftpb.AdminCredential)
			if err := proto.Unmarshal(v, c); err != nil {
				return fmt.Errorf("raft: admin credential %q: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	return out, err
}
