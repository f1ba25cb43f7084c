package raft

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// The outbox of the event log.
//
// For every command whose effect the outside world must see, the FSM writes
// a raftpb.Event into the events bucket in the same bbolt transaction as the
// change itself, keyed by the command's Raft index and an ordinal within the
// command. Its content is derived from the command and the stored state
// only, so the outbox is part of the deterministic state: two replicas fed
// the same log hold events buckets with identical keys and values. Every node's publisher
// (package replication) reads its own replica's outbox with EventsSince and
// publishes each event to JetStream with a message id derived from the
// index; the stream's de-duplication keeps one copy.
//
// Events emitted today:
//
//	RevokeToken that stores a new revocation   EVENT_KIND_TOKEN_REVOKED
//	SetClientDisabled that changes the flag    EVENT_KIND_CLIENT_DISABLED / _ENABLED
//	AddKeys with signing keys                  EVENT_KIND_KEY_ROTATED
//	RotateRefresh presenting an old generation EVENT_KIND_REUSE_DETECTED, then as below
//	a family revocation (reuse, code replay,   EVENT_KIND_TOKEN_REVOKED per live access
//	  RevokeFamily, the user made inactive)      token, EVENT_KIND_FAMILY_REVOKED
//	SetUserStatus active → inactive            EVENT_KIND_USER_LOCKED, then the family
//	                                             revocations of the user
//	SetUserStatus inactive → active            EVENT_KIND_USER_UNLOCKED (with the lock time)
//	DeleteClient                               the family revocations of the client, then
//	                                             EVENT_KIND_CLIENT_DELETED
//	DeleteUser                                 the family revocations of the user, then
//	                                             EVENT_KIND_USER_DELETED (the user id only)
//	DeleteTenant                               EVENT_KIND_TENANT_DELETED (signed with the
//	                                             keys its tombstone keeps)
//	AppendAudit                                EVENT_KIND_ADMIN_AUDIT
//	RaiseSecurityAlert, first of its key       EVENT_KIND_SECURITY_ALERT
//	  in the minute
//	RotateRefresh from another network than    EVENT_KIND_SECURITY_ALERT
//	  the family's last (refresh_new_network)
//
// Every reversible change has its reverse event, so a receiver that applies
// the events in order (or resyncs) converges to the replica's state. Apply
// functions call emit after all of their checks passed (a failed command
// emits nothing).
//
// A Sweep command carrying events_before_unix_nano removes events of that
// time or older, in index order, stopping at the first newer one, and
// records the highest removed index (EventsSweptThrough), so a publisher that
// finds its position below it knows it lost events.

// maxEventsPerCommand bounds the ordinal (2 bytes).
const maxEventsPerCommand = 1 << 16

// ErrEventsSwept is returned by EventsSince when events after the requested
// index have already been removed by a Sweep: the caller fell behind the
// outbox retention.
var ErrEventsSwept = errors.New("raft: events already swept")

func eventKey(index uint64, ordinal uint32) []byte {
	k := make([]byte, 10)
	binary.BigEndian.PutUint64(k, index)
	binary.BigEndian.PutUint16(k[8:], uint16(ordinal))
	return k
}

// emit writes one outbox event for the command being applied.
func (a *applier) emit(ev *raftpb.Event) {
	if a.events >= maxEventsPerCommand {
		storageFault("command at index %d emits more than %d events", a.index, maxEventsPerCommand)
	}
	ev.Index = a.index
	ev.Ordinal = a.events
	a.events++
	v, err := marshalOpts.Marshal(ev)
	if err != nil {
		storageFault("marshal event %d: %v", a.index, err)
	}
	a.put(a.bucket(bucketEvents), eventKey(ev.Index, ev.Ordinal), v)
}

func (a *applier) emitRevoked(r *raftpb.Revocation, now int64) {
	a.emit(&raftpb.Event{
		Tenant:       r.Tenant,
		Kind:         raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED,
		TimeUnixNano: now,
		Revocation:   r,
		ClientId:     r.ClientId,
		Subject:      r.Subject,
	})
}

func (a *applier) emitClientDisabled(tenant, clientID string, disabled bool, now int64) {
	kind := raftpb.EventKind_EVENT_KIND_CLIENT_DISABLED
	if !disabled {
		kind = raftpb.EventKind_EVENT_KIND_CLIENT_ENABLED
	}
	a.emit(&raftpb.Event{Tenant: tenant, Kind: kind, TimeUnixNano: now, ClientId: clientID})
}

// emitKeysAdded announces the signing keys of an AddKeys command; sealing
// keys are internal to the cluster and announce nothing.
func (a *applier) emitKeysAdded(tenant string, keys []*raftpb.Key, now int64) {
	var kids []string
	for _, k := range keys {
		if k.GetUse() == "sig" {
			kids = append(kids, k.GetKid())
		}
	}
	if len(kids) == 0 {
		return
	}
	a.emit(&raftpb.Event{Tenant: tenant, Kind: raftpb.EventKind_EVENT_KIND_KEY_ROTATED, TimeUnixNano: now, Kids: kids})
}

// sweepEvents removes events whose time is at or before cutoff, in index
// order, stopping at the first newer one. cutoff <= 0 removes nothing.
func (a *applier) sweepEvents(cutoff int64) {
	if cutoff <= 0 {
		return
	}
	b := a.bucket(bucketEvents)
	var dead [][]byte
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		ev := new(raftpb.Event)
		if err := proto.Unmarshal(v, ev); err != nil || len(k) != 10 {
			storageFault("event %x undecodable: %v", k, err)
		}
		if ev.TimeUnixNano > cutoff || !a.lim.take() {
			break
		}
		dead = append(dead, bytes.Clone(k))
	}
	if len(dead) == 0 {
		return
	}
	for _, k := range dead {
		a.del(b, k)
	}
	last := binary.BigEndian.Uint64(dead[len(dead)-1][:8])
	meta := a.bucket(bucketMeta)
	if last > readU64(meta, metaEventsSweptThrough) {
		a.put(meta, []byte(metaEventsSweptThrough), u64(last))
	}
}

// EventsSince returns up to limit outbox events with a Raft index greater
// than after, in log order (limit <= 0 means 1000; a page may exceed the
// limit to end between commands). It returns
// ErrEventsSwept (with no events) when a Sweep removed events newer than
// after. It reads the last committed batch in a bbolt read transaction and
// does not wait for (or hold up) a batch being applied (issue 14: the
// publisher calls it after every batch); safe for concurrent use.
func (f *FSM) EventsSince(after uint64, limit int) ([]*raftpb.Event, error) {
	if limit <= 0 {
		limit = 1000
	}
	var out []*raftpb.Event
	err := f.view(func(tx *bbolt.Tx) error {
		out = out[:0]
		meta := tx.Bucket([]byte(bucketMeta))
		if v := meta.Get([]byte(metaEventsSweptThrough)); len(v) == 8 && binary.BigEndian.Uint64(v) > after {
			return ErrEventsSwept
		}
		b := tx.Bucket([]byte(bucketEvents))
		if b == nil {
			return nil
		}
		// A command's events share its index: a page ends only between
		// commands, so that a caller resuming "after index" loses none.
		c := b.Cursor()
		for k, v := c.Seek(eventKey(after+1, 0)); k != nil; k, v = c.Next() {
			if len(out) >= limit && binary.BigEndian.Uint64(k[:8]) != out[len(out)-1].Index {
				break
			}
			ev := new(raftpb.Event)
			if err := proto.Unmarshal(v, ev); err != nil {
				return fmt.Errorf("raft: event %x: %w", k, err)
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// EventsSweptThrough is the highest outbox index removed by a Sweep (0 if
// none was).
func (f *FSM) EventsSweptThrough() uint64 {
	var n uint64
	_ = f.view(func(tx *bbolt.Tx) error {
		if v := tx.Bucket([]byte(bucketMeta)).Get([]byte(metaEventsSweptThrough)); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return n
}

// RevocationsSnapshot returns the revocations of tenant, sorted by jti, and
// the applied index they reflect, read atomically: every revocation
// committed at or before index is included (unless swept as expired), none
// after it.
func (s *State) RevocationsSnapshot(tenant string) (uint64, []*raftpb.Revocation) {
	s.mu.RLock()
	index := s.applied.Load()
	var out []*raftpb.Revocation
	if tv := s.tenants[tenant]; tv != nil {
		out = make([]*raftpb.Revocation, 0, len(tv.revocations))
		for _, r := range tv.revocations {
			out = append(out, r)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *raftpb.Revocation) int { return cmp.Compare(a.Jti, b.Jti) })
	return index, out
}

// EventsSince is FSM.EventsSince, for callers holding a Node.
func (n *Node) EventsSince(after uint64, limit int) ([]*raftpb.Event, error) {
	return n.fsm.EventsSince(after, limit)
}
