package raft

import (
	"bytes"
	"encoding/binary"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Deleting a client or a tenant drops its threat_v3 state (issue 13, part
// of DeleteClient and DeleteTenant, ops 80 and 82):
//
//   - DeleteClient removes the client's scope history (threat_client_scopes,
//     tenant NUL client id), so a client created again with the id starts
//     a new baseline without relying on the created-time check alone.
//   - DeleteTenant removes the scope histories of all the tenant's clients
//     (every key with the prefix tenant NUL) and the tenant's entries in
//     the alert log (threat_alert_log; each entry is a SecurityAlert that
//     names its tenant): they name its clients, users and source networks,
//     and a tenant created again with the id must not inherit its alerts
//     (node/risk.go rebuilds its risk index from the log after a restart).
//     DeleteClient keeps the client's alerts: they are the tenant's
//     security record, they expire after AlertLogRetention anyway, and
//     they are filtered by tenant, not by client, when read.
//
// Determinism: these buckets are written only by threat_v3 (op 142, and the
// alert log only once the recorded cluster version enables threat_v3, which
// it does only when every voter supports it). threat_v3 and this code were
// introduced together (no release applies threat_v3 without it), so every
// replica that can hold an entry in either bucket runs this code; a replica
// of an older release never has the buckets, and for it these functions do
// nothing, as they do for every replica while the buckets do not exist.

// dropClientScopes removes the scope history of one client.
func (a *applier) dropClientScopes(tenant, client string) {
	b := a.tx.Bucket([]byte(bucketThreatClientScopes))
	if b == nil {
		return
	}
	if key := clientScopesKey(tenant, client); b.Get(key) != nil {
		a.del(b, key)
	}
}

// dropTenantThreatState removes the scope histories of a tenant's clients
// and the tenant's entries in the alert log (keeping its count right).
func (a *applier) dropTenantThreatState(tenant string) {
	if b := a.tx.Bucket([]byte(bucketThreatClientScopes)); b != nil {
		prefix := append([]byte(tenant), 0)
		var dead [][]byte
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			dead = append(dead, bytes.Clone(k))
		}
		for _, k := range dead {
			a.del(b, k)
		}
	}
	b := a.tx.Bucket([]byte(bucketThreatAlertLog))
	if b == nil {
		return
	}
	var dead [][]byte
	_ = b.ForEach(func(k, v []byte) error {
		if len(k) != 18 {
			return nil
		}
		al := new(raftpb.SecurityAlert)
		if err := proto.Unmarshal(v, al); err != nil {
			storageFault("alert log entry %x undecodable: %v", k, err)
		}
		if al.Tenant == tenant {
			dead = append(dead, bytes.Clone(k))
		}
		return nil
	})
	if len(dead) == 0 {
		return
	}
	for _, k := range dead {
		a.del(b, k)
	}
	n := uint64(0)
	if v := b.Get(alertLogCountKey); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	a.put(b, alertLogCountKey, u64(n-min(n, uint64(len(dead)))))
}
