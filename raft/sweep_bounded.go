package raft

import (
	"bytes"
	"context"
	"time"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Bounded sweeps (issue 14). An unbounded Sweep scans every family, device
// code, consent, tombstone and key of every tenant inside the apply
// transaction; with a million families that stalls applying on every
// replica for seconds. A Sweep with max_scan > 0 examines or removes at
// most max_scan records: the kinds with an expiry index (revocations, used
// codes, assertion ids, pushed requests, request ids, events) remove at most
// what the budget allows, oldest first, and the kinds without one are
// scanned from a cursor kept in the state database (meta "sweep_cursor"),
// so that consecutive bounded Sweeps make one pass over everything. Meta
// "sweep_more" records that the budget ran out (or a pass is under way):
// the proposer (StartSweeper, and node's event-log sweeper) then proposes
// the next bounded Sweep after SweepPause instead of after its interval.
// Everything depends only on the log and the state, so every replica does
// the same work; expiry is also checked wherever a record is used, so a
// record waiting for its turn is never honoured.
//
// A proposer sets max_scan only while the recorded cluster version enables
// FeatureBoundedSweep: a binary without it stops at the field (an unknown
// field is not understood) instead of sweeping differently.

// FeatureBoundedSweep names Sweep.max_scan.
const FeatureBoundedSweep = "bounded_sweep_v1"

// SweepMaxScan is the bound a proposer puts in Sweep.max_scan: about 2-5 ms
// of apply work on a small machine (loadtest TestSweepFigures).
const SweepMaxScan = 2000

// maxSweepScan bounds Sweep.max_scan.
const maxSweepScan = 1 << 20

// SweepPause is how long a proposer waits between bounded Sweeps while
// one pass is under way.
const SweepPause = 20 * time.Millisecond

const (
	metaSweepCursor = "sweep_cursor"
	metaSweepMore   = "sweep_more"
)

func init() { RegisterFeatures(FeatureBoundedSweep) }

// sweepLimit is the budget of a bounded Sweep; a nil *sweepLimit has none.
type sweepLimit struct {
	left int
	out  bool // the budget ran out
}

// take spends one unit; false (and out set) when none is left.
func (l *sweepLimit) take() bool {
	if l == nil {
		return true
	}
	if l.left <= 0 {
		l.out = true
		return false
	}
	l.left--
	return true
}

// scanKind is a kind of tenant record that has no expiry index: dead
// decodes a record and returns how to remove it if it expired at now (the
// removals run after the scan: deleting under a bbolt cursor can skip
// entries).
type scanKind struct {
	kind    string
	flow    bool // a flow bucket, absent until first used (else always there)
	prepare func(a *applier, tenant string)
	dead    func(a *applier, tenant string, k, v []byte, now int64) func()
}

// scanKinds in the order of a pass. The first three are sweepGrants'.
var scanKinds = []scanKind{
	{kind: kindFamilies, flow: true, dead: familyDead},
	{kind: kindDeviceCodes, flow: true, dead: deviceDead,
		// As the unbounded sweep always did (the bucket's existence is part
		// of the state).
		prepare: func(a *applier, tenant string) { a.flowBucket(tenant, kindUserCodes) }},
	{kind: kindConsents, flow: true, dead: consentDead},
	{kind: kindDeletedClients, flow: true, dead: tombstoneDead(kindDeletedClients)},
	{kind: kindDeletedUsers, flow: true, dead: tombstoneDead(kindDeletedUsers)},
	{kind: kindKeys, dead: keyDead},
}

func tombstoneDead(kind string) func(a *applier, tenant string, k, v []byte, now int64) func() {
	return func(a *applier, tenant string, k, v []byte, now int64) func() {
		t := new(raftpb.Deleted)
		if err := proto.Unmarshal(v, t); err != nil {
			storageFault("tombstone %q undecodable: %v", k, err)
		}
		if addSat(t.DeletedUnixNano, deletedRetentionNanos) <= now {
			id := string(k)
			return func() { a.delRecord(a.flowBucket(tenant, kind), kind, tenant, id) }
		}
		return nil
	}
}

func keyDead(a *applier, tenant string, kid, v []byte, now int64) func() {
	k := new(raftpb.Key)
	if err := proto.Unmarshal(v, k); err != nil {
		storageFault("key %q undecodable: %v", kid, err)
	}
	if k.ExpiresUnixNano != 0 && k.ExpiresUnixNano <= now {
		id := string(kid)
		return func() { a.delRecord(a.tenantBucket(tenant, kindKeys), kindKeys, tenant, id) }
	}
	return nil
}

// kindBucket is the tenant's bucket of sk, nil if it does not exist.
func (a *applier) kindBucket(tenant string, sk scanKind) *bbolt.Bucket {
	return a.tx.Bucket(tenantBucket(tenant, sk.kind))
}

// sweepAll removes every expired record of sk in tenant (unbounded).
func (a *applier) sweepAll(tenant string, sk scanKind, now int64) {
	b := a.kindBucket(tenant, sk)
	if b == nil {
		return
	}
	if sk.prepare != nil {
		sk.prepare(a, tenant)
		b = a.kindBucket(tenant, sk)
	}
	var dels []func()
	_ = b.ForEach(func(k, v []byte) error {
		if d := sk.dead(a, tenant, k, v, now); d != nil {
			dels = append(dels, d)
		}
		return nil
	})
	for _, d := range dels {
		d()
	}
}

// sweepBounded is a Sweep with max_scan = max (see the comment above).
func (a *applier) sweepBounded(now, eventsCutoff int64, max int) {
	lim := &sweepLimit{left: max}
	a.lim = lim
	defer func() { a.lim = nil }()
	tenants := a.tenantIDs()
	for _, t := range tenants {
		revs := a.tenantBucket(t, kindRevocations)
		exp := a.tenantBucket(t, kindRevocationExpiry)
		for _, k := range a.expiredKeys(exp, now) {
			a.del(exp, k)
			a.delRecord(revs, kindRevocations, t, string(k[8:]))
		}
		a.sweepUsedCodes(t, now)
		a.sweepZT(t, now)
		a.sweepPushed(t, now)
	}
	if cutoff := now - requestRetentionNanos; cutoff > 0 {
		reqs := a.bucket(bucketRequests)
		times := a.bucket(bucketRequestTimes)
		for _, k := range a.expiredKeys(times, cutoff) {
			a.del(times, k)
			a.del(reqs, k[8:])
		}
	}
	a.sweepEvents(eventsCutoff)
	passOpen := a.sweepScan(tenants, now, lim)
	meta := a.bucket(bucketMeta)
	if lim.out || passOpen {
		a.put(meta, []byte(metaSweepMore), []byte{1})
	} else if meta.Get([]byte(metaSweepMore)) != nil {
		a.del(meta, []byte(metaSweepMore))
	}
}

// tenantIDs lists the tenants in key order.
func (a *applier) tenantIDs() []string {
	var tenants []string
	tc := a.bucket(bucketTenants).Cursor()
	for k, _ := tc.First(); k != nil; k, _ = tc.Next() {
		tenants = append(tenants, string(k))
	}
	return tenants
}

// sweepScan continues the pass over the kinds without an expiry index from
// the stored cursor, within lim. It reports whether the pass is still open
// (the cursor was stored); at the pass's end the cursor is removed, and the
// next bounded Sweep starts a new pass.
func (a *applier) sweepScan(tenants []string, now int64, lim *sweepLimit) bool {
	meta := a.bucket(bucketMeta)
	curTenant, curKind, curKey, hasCursor := decodeSweepCursor(meta.Get([]byte(metaSweepCursor)))
	var dels []func()
	var stopAt []byte // the cursor to store; nil: the pass ended
	for _, t := range tenants {
		if hasCursor && t < curTenant {
			continue
		}
		for ki, sk := range scanKinds {
			if hasCursor && t == curTenant && ki < curKind {
				continue
			}
			b := a.kindBucket(t, sk)
			if b == nil {
				continue
			}
			if sk.prepare != nil {
				sk.prepare(a, t)
				b = a.kindBucket(t, sk)
			}
			c := b.Cursor()
			k, v := c.First()
			if hasCursor && t == curTenant && ki == curKind {
				k, v = c.Seek(curKey)
				if k != nil && bytes.Equal(k, curKey) {
					k, v = c.Next()
				}
			}
			for ; k != nil; k, v = c.Next() {
				if !lim.take() {
					break
				}
				if d := sk.dead(a, t, k, v, now); d != nil {
					dels = append(dels, d)
				}
				stopAt = encodeSweepCursor(t, ki, k)
			}
			if lim.out {
				break
			}
		}
		if lim.out {
			break
		}
	}
	for _, d := range dels {
		d()
	}
	if lim.out && stopAt == nil && hasCursor {
		// Nothing examined at all: keep the cursor where it was.
		return true
	}
	if lim.out && stopAt != nil {
		a.put(meta, []byte(metaSweepCursor), stopAt)
		return true
	}
	if lim.out {
		return true // no budget left before the scan began: it starts next time
	}
	if meta.Get([]byte(metaSweepCursor)) != nil {
		a.del(meta, []byte(metaSweepCursor))
	}
	return false
}

// The cursor: tenant, 0, kind index, key (tenant ids never hold 0 bytes).
func encodeSweepCursor(tenant string, kind int, key []byte) []byte {
	out := make([]byte, 0, len(tenant)+2+len(key))
	out = append(out, tenant...)
	out = append(out, 0, byte(kind))
	return append(out, key...)
}

func decodeSweepCursor(v []byte) (tenant string, kind int, key []byte, ok bool) {
	i := bytes.IndexByte(v, 0)
	if i < 0 || i+2 > len(v) {
		return "", 0, nil, false
	}
	return string(v[:i]), int(v[i+1]), bytes.Clone(v[i+2:]), true
}

// SweepMore reports whether the last bounded Sweep left work for the next
// one (its budget ran out, or a pass over the records without an expiry
// index is under way).
func (f *FSM) SweepMore() bool {
	more := false
	_ = f.view(func(tx *bbolt.Tx) error {
		more = tx.Bucket([]byte(bucketMeta)).Get([]byte(metaSweepMore)) != nil
		return nil
	})
	return more
}

// SweepCommand is the Sweep a proposer sends at time now: bounded when the
// recorded cluster version enables FeatureBoundedSweep.
func (n *Node) SweepCommand(now time.Time, eventsBefore int64) *raftpb.Command {
	sw := &raftpb.Sweep{EventsBeforeUnixNano: eventsBefore}
	if n.State().FeatureEnabled(FeatureBoundedSweep) {
		sw.MaxScan = SweepMaxScan
	}
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now.UnixNano(), Op: &raftpb.Command_Sweep{Sweep: sw}}
}

// sweepPaced waits every, or SweepPause while the last bounded Sweep left
// work; false when ctx ended or the node closes.
func (n *Node) sweepPaced(ctx context.Context, every time.Duration) bool {
	d := every
	if n.IsLeader() && n.fsm.SweepMore() {
		d = SweepPause
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-n.closing:
		return false
	case <-t.C:
		return true
	}
}
