package raft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tallyauth/tally/raft/raftpb"
)

// The FSM's clock.
//
// Every command carries its proposer's clock (Command.time_unix_nano), and
// the FSM expires revocations, codes, device codes and refresh families
// against it. A proposer whose wall clock jumps forward (a leader after a
// bad NTP step, a follower forwarding writes) must not make the FSM expire
// live records early, so the FSM does not take a command's time as it is:
//
//   - Time never goes backwards: an entry's time is at least the previous
//     entry's.
//   - Time moves forward only as fast as the leader's ticks allow: the
//     leader proposes a Tick every ClockTickInterval, timed by its
//     monotonic clock (which a wall-clock step does not move), and no entry
//     may carry a time later than the last Tick's time plus MaxClockStep. A
//     Tick itself is bounded the same way and then becomes the new anchor.
//
// So, whatever the proposers' wall clocks say, the FSM's clock advances by
// at most MaxClockStep per Tick, that is at most MaxClockStep /
// ClockTickInterval (5×) real time, and only while ticks are committed. A
// leader that jumps 1 h ahead moves the FSM's clock at most 5 s per second
// until it steps down (the node package refuses writes on a leader whose
// clock is off the voters' median and hands leadership to one whose clock
// agrees; ticks are writes too), instead of 1 h at once. In the other
// direction, while no tick is committed (an election), the FSM's clock
// stands still at most MaxClockStep past the last tick and then catches up
// by MaxClockStep per tick: records expire late, never early.
//
// The bound starts with the first Tick a log contains: logs written before
// ticks existed replay exactly as they did, and a node too old to know Tick
// stops at it ("unknown operation; upgrade this node") instead of applying
// later entries with different times than its peers.
//
// The clock (time and anchor) is stored in the meta bucket in the same
// bbolt transaction as the entry, so it is part of snapshots and replicas
// agree on it byte for byte.

// ClockTickInterval is how often the leader proposes a Tick.
const ClockTickInterval = time.Second

// MaxClockStep is how far past the last Tick's time any entry may move the
// FSM's clock.
const MaxClockStep = 5 * time.Second

// fsmClock is the stored clock: the last entry's (bounded) time and the
// time of the last Tick.
type fsmClock struct {
	now, anchor int64
}

func (a *applier) readClock() (fsmClock, bool) {
	v := a.bucket(bucketMeta).Get([]byte(metaClock))
	if v == nil {
		return fsmClock{}, false
	}
	if len(v) != 16 {
		storageFault("meta %q: %d bytes", metaClock, len(v))
	}
	return fsmClock{now: int64(binary.BigEndian.Uint64(v[:8])), anchor: int64(binary.BigEndian.Uint64(v[8:]))}, true
}

func (a *applier) writeClock(c fsmClock) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(c.now))
	binary.BigEndian.PutUint64(b[8:], uint64(c.anchor))
	a.put(a.bucket(bucketMeta), []byte(metaClock), b[:])
}

// boundTime returns the time the FSM applies cmd at (see above) and records
// it. cmd has passed checkCommand (its time is positive).
func (a *applier) boundTime(cmd *raftpb.Command) int64 {
	p := cmd.GetTimeUnixNano()
	_, tick := cmd.GetOp().(*raftpb.Command_Tick)
	c, ok := a.readClock()
	if !ok {
		if tick { // the first Tick turns the bound on
			a.writeClock(fsmClock{now: p, anchor: p})
		}
		return p
	}
	now := max(min(p, addSat(c.anchor, int64(MaxClockStep))), c.now)
	c.now = now
	if tick {
		c.anchor = now
	}
	a.writeClock(c)
	return now
}

// boundCutoff moves a time the proposer derived from its own clock (a
// sweep cutoff: "events older than proposed-retention") back by as much as
// boundTime held the proposer's clock back, and never past now.
func (a *applier) boundCutoff(cutoff, proposed, now int64) int64 {
	if cutoff <= 0 || proposed == now {
		return cutoff
	}
	if proposed > now {
		cutoff -= proposed - now
	}
	return max(min(cutoff, now), 0)
}

// Clock returns the FSM's bounded clock (the time the last entry was
// applied at) and whether the bound is on (a Tick was applied).
func (f *FSM) Clock() (time.Time, bool) {
	f.mu.Lock()
	db := f.db
	f.mu.Unlock()
	if db == nil {
		return time.Time{}, false
	}
	var c fsmClock
	var ok bool
	_ = db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket([]byte(bucketMeta)).Get([]byte(metaClock))
		if len(v) == 16 {
			c.now, ok = int64(binary.BigEndian.Uint64(v[:8])), true
		}
		return nil
	})
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, c.now), true
}

// ErrClockSkew is returned by Propose while the propose gate refuses
// writes because this node's clock is off the cluster's (see
// Node.SetProposeGate); the write may be retried, on the next leader.
var ErrClockSkew = errors.New("raft: clock skew")

// SetProposeGate installs fn, called by Propose before every command is
// proposed: a non-nil error refuses the command (Propose returns it
// wrapped, nothing is appended). The node package uses it to stop a leader
// whose clock is off the cluster's from writing. nil removes the gate.
func (n *Node) SetProposeGate(fn func() error) { storeGate(&n.clockGate, fn) }

func (n *Node) checkGate() error {
	if err := callGate(&n.clockGate); err != nil {
		return fmt.Errorf("raft: propose refused: %w", err)
	}
	return nil
}

// StartTicker proposes a Tick every interval while this node is the
// leader, the first as soon as it leads, with now() as the command's time,
// until ctx ends or the node closes. The interval is timed by the
// monotonic clock, so a step of the wall clock does not make ticks come
// faster; the ticks are what lets the FSM's clock advance (see
// ClockTickInterval). A non-positive interval starts nothing.
func (n *Node) StartTicker(ctx context.Context, every time.Duration, now func() time.Time) {
	if every <= 0 {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		poll := max(every/10, time.Millisecond)
		t := time.NewTicker(poll)
		defer t.Stop()
		var last time.Time // monotonic: when the last tick was proposed
		for {
			select {
			case <-ctx.Done():
				return
			case <-n.closing:
				return
			case <-t.C:
			}
			if !n.IsLeader() {
				last = time.Time{}
				continue
			}
			if !last.IsZero() && time.Since(last) < every {
				continue
			}
			last = time.Now()
			cmd := &raftpb.Command{
				Version:      CommandVersion,
				TimeUnixNano: now().UnixNano(),
				Op:           &raftpb.Command_Tick{Tick: &raftpb.Tick{}},
			}
			pctx, cancel := context.WithTimeout(ctx, every)
			_, err := n.Propose(pctx, cmd)
			cancel()
			if err != nil && !errors.Is(err, ErrNotLeader) {
				n.logger.Debug("tick not applied", "err", err)
			}
		}
	}()
}
