package raft

import (
	"bytes"
	"encoding/binary"
	"slices"
	"time"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Threat protection, third part (issue 13, feature "threat_v3"):
//
//   - op 142 RecordScopeUse: a client's scope history (bucket
//     threat_client_scopes) and the scope_first_use alert, raised when a
//     client is granted a scope it was never granted before (a privilege
//     escalation signal). The history is replicated; the issuing node
//     compares a grant's scopes with it and proposes the new ones. The FSM
//     decides: the first RecordScopeUse applied for a (client, scope) adds
//     it and raises the alert, later ones (other nodes that saw the same
//     first use concurrently) find it and raise nothing. A client's first
//     recorded grant is its baseline: it records the scopes and raises no
//     alert (a client that existed before the cluster enabled threat_v3,
//     or a new client, has no history to compare with).
//   - RotateRefresh.travel_region and travel_window_nanos (fieldGates):
//     the family records the region of the node that served its last
//     rotation and that rotation's command time (Family.last_region,
//     last_region_unix_nano); a rotation served in another region less
//     than the window after raises refresh_impossible_travel (familyTravel),
//     unless both rotations came from the same network (the client did not
//     move: a load balancer spanning regions, a failover). The serving
//     region stands in for the client's location, because clients are
//     routed to their nearest region; a failover moves clients
//     legitimately, so this is a signal (an event and a policy input),
//     never a refusal.
//   - the alert log (bucket threat_alert_log): once the recorded cluster
//     version enables threat_v3, every announced alert (of any kind, op 140
//     included) is also kept for AlertLogRetention of command time, so a
//     node that restarts or restores a snapshot rebuilds its risk index
//     (node/risk.go) from replicated state (SecurityAlertsSince). Writing
//     it only once the feature is recorded keeps every member's state the
//     same while a member of the threat_v2 release (which applies op 140
//     without the log) is in the cluster.
//
// Bucket threat_client_scopes: tenant NUL client id → raftpb.ClientScopes.
// Bucket threat_alert_log: time (8, big-endian) | index (8) | ordinal (2)
// → raftpb.SecurityAlert; key {0} holds the number of entries (8).

// FeatureThreatV3 names op 142 (RecordScopeUse), RotateRefresh's travel
// fields and the alert log.
const FeatureThreatV3 = "threat_v3"

// The FSM implements threat_v3 whether or not a node proposes it, so a
// recorded version that enables it never stops this binary.
func init() { RegisterFeatures(FeatureThreatV3) }

// Alert kinds raised by the FSM itself under threat_v3 (not accepted by op
// 140, whose AlertKinds a replica of the threat_v2 release checks).
const (
	AlertScopeFirstUse           = "scope_first_use"
	AlertRefreshImpossibleTravel = "refresh_impossible_travel"
)

const (
	// DefaultTravelWindow is the default impossible-travel window: two
	// rotations of one refresh family served in different regions less
	// than this apart raise refresh_impossible_travel.
	DefaultTravelWindow = 10 * time.Minute
	// MaxScopeUse is how many scopes one RecordScopeUse may carry.
	MaxScopeUse = 64
	// MaxClientScopes bounds a client's scope history.
	MaxClientScopes = maxListLen
	// AlertLogRetention is how long (of command time) the alert log keeps
	// an alert; node.Config.AlertRiskWindow beyond it sees no older alerts
	// after a restart.
	AlertLogRetention = 24 * time.Hour
	// MaxAlertLog bounds the alert log: beyond it the oldest entry goes.
	MaxAlertLog = 20000
	// alertLogPrune bounds the expired entries one command deletes.
	alertLogPrune = 64
)

const (
	bucketThreatClientScopes = "threat_client_scopes"
	bucketThreatAlertLog     = "threat_alert_log"
)

var alertLogCountKey = []byte{0}

func checkRecordScopeUse(r *raftpb.RecordScopeUse) error {
	if err := checkTenantID(r.GetTenant()); err != nil {
		return err
	}
	if err := checkClientID(r.GetClientId()); err != nil {
		return err
	}
	if len(r.GetScopes()) == 0 || len(r.GetScopes()) > MaxScopeUse {
		return invalidf("record scope use: want 1 to %d scopes", MaxScopeUse)
	}
	if err := checkList("scopes", r.GetScopes()); err != nil {
		return err
	}
	for _, f := range []string{r.GetSource(), r.GetGrantType(), r.GetNode(), r.GetRegion()} {
		if len(f) > 256 {
			return invalidf("record scope use: field longer than 256 bytes")
		}
	}
	return nil
}

func clientScopesKey(tenant, client string) []byte {
	return append(append([]byte(tenant), 0), client...)
}

// recordScopeUse is the apply logic of op 142 (see raftpb.RecordScopeUse).
// A client that does not exist (deleted meanwhile) records nothing.
func (a *applier) recordScopeUse(r *raftpb.RecordScopeUse, now int64) (*raftpb.GrantResult, error) {
	if !a.tenantExists(r.GetTenant()) {
		return nil, notFoundTenant(r.GetTenant())
	}
	c, err := a.getClient(r.GetTenant(), r.GetClientId())
	if err != nil {
		return &raftpb.GrantResult{Outcome: OutcomeNotFound}, nil
	}
	b := a.threatBucket(bucketThreatClientScopes)
	key := clientScopesKey(r.GetTenant(), r.GetClientId())
	h := new(raftpb.ClientScopes)
	baseline := true
	if v := b.Get(key); v != nil {
		if err := proto.Unmarshal(v, h); err != nil {
			storageFault("client scopes %q undecodable: %v", key, err)
		}
		baseline = h.ClientCreatedUnixNano != c.CreatedUnixNano // deleted and created again
	}
	if baseline {
		h = &raftpb.ClientScopes{Tenant: r.GetTenant(), ClientId: r.GetClientId(), FirstUnixNano: now, ClientCreatedUnixNano: c.CreatedUnixNano}
	}
	var added []string
	for _, s := range r.GetScopes() {
		if _, found := slices.BinarySearch(h.Scopes, s); found || slices.Contains(added, s) {
			continue
		}
		if len(h.Scopes)+len(added) >= MaxClientScopes {
			h.Full = true
			break
		}
		added = append(added, s)
	}
	if len(added) == 0 && !h.Full {
		return &raftpb.GrantResult{}, nil
	}
	h.Scopes = append(h.Scopes, added...)
	slices.Sort(h.Scopes)
	v, err := marshalOpts.Marshal(h)
	if err != nil {
		storageFault("marshal client scopes: %v", err)
	}
	a.put(b, key, v)
	g := &raftpb.GrantResult{}
	if baseline {
		return g, nil
	}
	slices.Sort(added)
	for _, s := range added {
		al := &raftpb.SecurityAlert{Kind: AlertScopeFirstUse, Tenant: r.GetTenant(), ClientId: r.GetClientId(),
			Source: r.GetSource(), Signal: r.GetGrantType(), Count: 1, Node: r.GetNode(), Region: r.GetRegion(), Scope: s}
		a.announceAlert(al, now)
		g.Alerts = append(g.Alerts, al)
	}
	return g, nil
}

// familyTravel records the region of a rotation (RotateRefresh.travel_region)
// in the family and, when the family's last recorded rotation was served
// in another region less than travel_window_nanos (of command time)
// before, announces a refresh_impossible_travel alert and returns it. A
// family's first recorded rotation only records its region.
//
// A rotation from the same network as the family's last (prevNetwork,
// RotateRefresh.network: both known and equal) is not travel, whatever
// region served it: the client has not moved, its requests were routed to
// another region (a load balancer spanning regions, a failover). Without
// a network on both rotations the region alone decides.
// Deterministic: region, window, network and time travel in the command.
func (a *applier) familyTravel(f *raftpb.Family, r *raftpb.RotateRefresh, prevNetwork string, now int64) *raftpb.SecurityAlert {
	reg := r.GetTravelRegion()
	if reg == "" {
		return nil
	}
	prev, prevAt := f.LastRegion, f.LastRegionUnixNano
	f.LastRegion, f.LastRegionUnixNano = reg, now
	if prev == "" || prev == reg {
		return nil
	}
	if nw := r.GetNetwork(); nw != "" && nw == prevNetwork {
		return nil
	}
	gap := max(now-prevAt, 0)
	if w := r.GetTravelWindowNanos(); w <= 0 || gap >= w {
		return nil
	}
	al := &raftpb.SecurityAlert{Kind: AlertRefreshImpossibleTravel, Tenant: f.Tenant, ClientId: f.ClientId, Subject: f.UserId,
		Source: r.GetNetwork(), Signal: "refresh_family_region", Count: 1, WindowSeconds: uint32(r.GetTravelWindowNanos() / int64(time.Second)),
		Node: r.GetNode(), Region: reg, PreviousRegion: prev, GapNanos: gap}
	a.announceAlert(al, now)
	return al
}

// threatV3 reports whether the recorded cluster version (as of this
// command) enables FeatureThreatV3.
func (a *applier) threatV3() bool {
	return a.recorded(FeatureThreatV3)
}

// logAlert keeps al (announced at now) in the alert log once threat_v3 is
// recorded, forgetting entries older than AlertLogRetention (a bounded
// number per command) and the oldest beyond MaxAlertLog.
func (a *applier) logAlert(al *raftpb.SecurityAlert, now int64) {
	if !a.threatV3() {
		return
	}
	b := a.threatBucket(bucketThreatAlertLog)
	n := uint64(0)
	if v := b.Get(alertLogCountKey); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	cutoff := now - int64(AlertLogRetention)
	var dead [][]byte
	c := b.Cursor()
	for k, _ := c.Seek([]byte{1}); k != nil && len(dead) < alertLogPrune; k, _ = c.Next() {
		if len(k) != 18 {
			continue
		}
		if int64(binary.BigEndian.Uint64(k[:8])) >= cutoff && n-uint64(len(dead)) < MaxAlertLog {
			break
		}
		dead = append(dead, bytes.Clone(k))
	}
	for _, k := range dead {
		a.del(b, k)
	}
	n -= uint64(len(dead))
	key := make([]byte, 18)
	binary.BigEndian.PutUint64(key[:8], uint64(max(now, 0)))
	binary.BigEndian.PutUint64(key[8:16], a.index)
	for i := uint16(0); ; i++ {
		binary.BigEndian.PutUint16(key[16:], i)
		if b.Get(key) == nil {
			break
		}
	}
	v, err := marshalOpts.Marshal(al)
	if err != nil {
		storageFault("marshal alert: %v", err)
	}
	a.put(b, key, v)
	a.put(b, alertLogCountKey, u64(n+1))
}

// SecurityAlertsSince returns the alerts of the alert log announced at or
// after since (command time), oldest first, with their time set.
func (f *FSM) SecurityAlertsSince(since time.Time) ([]*raftpb.SecurityAlert, error) {
	var out []*raftpb.SecurityAlert
	err := f.view(func(tx *bbolt.Tx) error {
		out = out[:0]
		b := tx.Bucket([]byte(bucketThreatAlertLog))
		if b == nil {
			return nil
		}
		start := make([]byte, 8)
		binary.BigEndian.PutUint64(start, uint64(max(since.UnixNano(), 1)))
		c := b.Cursor()
		for k, v := c.Seek(start); k != nil; k, v = c.Next() {
			if len(k) != 18 {
				continue
			}
			al := new(raftpb.SecurityAlert)
			if proto.Unmarshal(v, al) != nil {
				continue
			}
			out = append(out, al)
		}
		return nil
	})
	return out, err
}

// ClientScopes returns the scope history of a client (nil if none).
func (f *FSM) ClientScopes(tenant, client string) (*raftpb.ClientScopes, error) {
	var h *raftpb.ClientScopes
	err := f.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucketThreatClientScopes))
		if b == nil {
			return nil
		}
		if v := b.Get(clientScopesKey(tenant, client)); v != nil {
			h = new(raftpb.ClientScopes)
			return proto.Unmarshal(v, h)
		}
		return nil
	})
	return h, err
}
