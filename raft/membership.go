package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	hraft "github.com/hashicorp/raft"
	"go.etcd.io/bbolt"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Member is one server of the Raft configuration.
type Member struct {
	ID    string
	Addr  string
	Voter bool
}

// Status is a node's own view of the Raft group, for status reports.
type Status struct {
	ID string
	// State is "Leader", "Follower", "Candidate" or "Shutdown".
	State       string
	Term        uint64
	LastIndex   uint64 // last log index stored
	CommitIndex uint64
	// AppliedIndex is the last log index this node has handed to the FSM
	// or skipped (hashicorp/raft's AppliedIndex): it counts entries that
	// never reach the FSM (a new leader's no-op, configuration changes) and
	// may run slightly ahead of the state database. Compare it with a
	// leader's CommitIndex for lag.
	AppliedIndex uint64
	// StateIndex is the index of the last command applied to the state
	// database (State().AppliedIndex()); it lags AppliedIndex when the
	// latest entries were not commands.
	StateIndex uint64
	LeaderID   string
	LeaderAddr string
	// LastContact is when this node last heard from a leader (now, on the
	// leader); zero if never.
	LastContact time.Time
}

// ErrUnknownMember is returned for a membership change naming a server
// that is not in the configuration. It matches ErrNotFound.
var ErrUnknownMember = fmt.Errorf("raft: unknown member: %w", ErrNotFound)

// Members returns the committed-or-latest Raft configuration.
func (n *Node) Members(ctx context.Context) ([]Member, error) {
	f := n.raft.GetConfiguration()
	if err := n.wait(ctx, f); err != nil {
		return nil, err
	}
	var out []Member
	for _, s := range f.Configuration().Servers {
		out = append(out, Member{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == hraft.Voter})
	}
	return out, nil
}

// AddNonvoter adds (or updates) a non-voting member, which receives the log
// but neither votes nor counts towards a quorum. Only the leader can do it.
// A removed id (see RemoveServer) is refused with ErrNodeDenied.
func (n *Node) AddNonvoter(ctx context.Context, id, addr string) error {
	if n.fsm.State().NodeDenied(id) {
		return fmt.Errorf("%w: %q", ErrNodeDenied, id)
	}
	return n.wait(ctx, n.raft.AddNonvoter(hraft.ServerID(id), hraft.ServerAddress(addr), 0, n.timeout(ctx)))
}

// RemoveServer removes a member for good. Only the leader can do it. It
// removes id from the Raft configuration and then records it in the
// replicated deny list (a DenyNode command), so that every node refuses
// id's certificate on its cluster port from then on and id can never be
// added again. (In this order, removing a dead voter that a quorum needs
// gone still works.) If the leader loses leadership between the two, the
// error says so and the id is removed but not denied.
//
// A leader that removes itself steps down once the change is committed,
// and is not added to the deny list (its followers would refuse the very
// connections that carry the change): to remove a leader for good, move
// leadership first and remove it from the new leader (node does).
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	members, err := n.Members(ctx)
	if err != nil {
		return err
	}
	found := false
	for _, m := range members {
		found = found || m.ID == id
	}
	if !found {
		return fmt.Errorf("%w: %q", ErrUnknownMember, id)
	}
	if err := n.wait(ctx, n.raft.RemoveServer(hraft.ServerID(id), 0, n.timeout(ctx))); err != nil {
		return err
	}
	if id == n.cfg.ID || n.fsm.State().NodeDenied(id) {
		return nil
	}
	cmd := &raftpb.Command{
		Version: CommandVersion, TimeUnixNano: time.Now().UnixNano(),
		Op: &raftpb.Command_DenyNode{DenyNode: &raftpb.DenyNode{NodeId: id, Reason: "removed from the cluster"}},
	}
	res, err := n.Propose(ctx, cmd)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return fmt.Errorf("raft: %q was removed but could not be added to the deny list: %w", id, err)
	}
	return nil
}

// TransferLeadership hands leadership to the voter id, or to the most
// up-to-date voter when id is empty, and waits until the transfer is done.
// Only the leader can do it; naming the leader itself is a no-op.
//
// ctx is the budget: hashicorp/raft gives one attempt an election timeout
// (the target's catching up included) and answers "leadership transfer
// timeout" when the target has not won by then, which a loaded machine or
// a slow disk makes ordinary. After such an answer TransferLeadership
// waits for a leader: if leadership moved (to id, when one was named) the
// transfer is done; if this node still leads it tries again; otherwise it
// returns the error.
func (n *Node) TransferLeadership(ctx context.Context, id string) error {
	for {
		err := n.transferOnce(ctx, id)
		if err == nil || !transferTimedOut(err) || ctx.Err() != nil {
			return err
		}
		// The target may yet win the election it started: give it an
		// election timeout before looking.
		select {
		case <-ctx.Done():
			return err
		case <-n.closing:
			return ErrClosed
		case <-time.After(n.raft.ReloadableConfig().ElectionTimeout):
		}
		if n.WaitLeader(ctx) != nil {
			return err
		}
		if n.IsLeader() {
			continue
		}
		if leader, _ := n.Leader(); id == "" || leader == id {
			return nil
		}
		return err
	}
}

// transferTimedOut reports hashicorp/raft's answers to a transfer that
// may succeed when tried again: the target did not win within an election
// timeout (an error without a sentinel), or a previous attempt is still
// being wound down.
func transferTimedOut(err error) bool {
	return errors.Is(err, hraft.ErrLeadershipTransferInProgress) ||
		strings.Contains(err.Error(), "leadership transfer timeout")
}

func (n *Node) transferOnce(ctx context.Context, id string) error {
	if id == "" {
		return n.wait(ctx, n.raft.LeadershipTransfer())
	}
	if id == n.cfg.ID && n.IsLeader() {
		return nil // already there
	}
	members, err := n.Members(ctx)
	if err != nil {
		return err
	}
	for _, m := range members {
		if m.ID == id {
			if !m.Voter {
				return fmt.Errorf("%w: %q is not a voter", ErrInvalid, id)
			}
			return n.wait(ctx, n.raft.LeadershipTransferToServer(hraft.ServerID(m.ID), hraft.ServerAddress(m.Addr)))
		}
	}
	return fmt.Errorf("%w: %q", ErrUnknownMember, id)
}

// LastLeaderContact is when this node last heard from a leader: now if it
// is the leader itself (hashicorp/raft makes a leader step down when it
// cannot reach a quorum within LeaderLeaseTimeout), the time of the last
// accepted AppendEntries or InstallSnapshot otherwise, and zero if it has
// never heard from one. A node that was leader until recently counts the
// moment it stepped down, less the lease, as a contact: until the next
// leader's first heartbeat its last AppendEntries dates from before its own
// term, and a leadership transfer must not make it look stale.
func (n *Node) LastLeaderContact() time.Time {
	// leading is cleared just after hashicorp/raft leaves the Leader state
	// (and well before it refreshes LastContact on the way out).
	if n.raft.State() == hraft.Leader || n.leading.Load() {
		return time.Now()
	}
	last := n.raft.LastContact()
	if left := n.leftLeadership.Load(); left != 0 {
		if t := time.Unix(0, left).Add(-n.leaseTimeout); t.After(last) {
			return t
		}
	}
	return last
}

// observeState is a hashicorp/raft observer filter (called synchronously
// on every observation, it never lets one through): it records when this
// node stops being the leader.
func (n *Node) observeState(o *hraft.Observation) bool {
	st, ok := o.Data.(hraft.RaftState)
	if !ok {
		return false
	}
	if st == hraft.Leader {
		n.leading.Store(true)
	} else if n.leading.Load() {
		// The time first, then leading: a reader never sees leading
		// cleared without the moment it ended (observations come from
		// one goroutine).
		n.leftLeadership.Store(time.Now().UnixNano())
		n.leading.Store(false)
	}
	return false
}

// Status reports this node's view of the group.
func (n *Node) Status() Status {
	st := n.raft.Stats()
	u := func(k string) uint64 {
		v, _ := strconv.ParseUint(st[k], 10, 64)
		return v
	}
	addr, id := n.raft.LeaderWithID()
	return Status{
		ID:           n.cfg.ID,
		State:        n.raft.State().String(),
		Term:         n.raft.CurrentTerm(),
		LastIndex:    n.raft.LastIndex(),
		CommitIndex:  u("commit_index"),
		AppliedIndex: n.raft.AppliedIndex(),
		StateIndex:   n.fsm.AppliedIndex(),
		LeaderID:     string(id),
		LeaderAddr:   string(addr),
		LastContact:  n.LastLeaderContact(),
	}
}

// WaitApplied waits until this node's state database has applied index, so
// that a write committed elsewhere can be read here. It sleeps until the
// applied index moves (State wakes its waiters at every applied batch and
// restore; no polling) and returns ctx's error or ErrClosed if they come
// first.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	st := n.fsm.State()
	for {
		moved := st.appliedChanged() // before the check: no wake-up is lost
		if n.fsm.AppliedIndex() >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raft: wait for index %d (applied %d): %w", index, n.fsm.AppliedIndex(), ctx.Err())
		case <-n.closing:
			return ErrClosed
		case <-moved:
		}
	}
}

// StateCopy is a consistent, read-only copy of a node's state database in
// the making: one bbolt read transaction, open until Close. Applies continue
// meanwhile. It is not safe for concurrent use.
type StateCopy struct {
	// Index is the last applied index the copy holds.
	Index uint64
	snap  *fsmSnapshot
}

// CopyState opens a StateCopy; the caller must Close it.
func (n *Node) CopyState() (*StateCopy, error) {
	s, err := n.fsm.Snapshot()
	if err != nil {
		return nil, err
	}
	fs := s.(*fsmSnapshot)
	return &StateCopy{Index: readU64(fs.tx.Bucket([]byte(bucketMeta)), metaAppliedIndex), snap: fs}, nil
}

// WriteTo writes the copy (the same bytes a Raft snapshot holds: a bbolt
// file) to w.
func (s *StateCopy) WriteTo(w io.Writer) (int64, error) {
	n, err := s.snap.tx.WriteTo(w)
	if err != nil {
		return n, fmt.Errorf("raft: copy state: %w", err)
	}
	return n, nil
}

// Close ends the read transaction; it is idempotent.
func (s *StateCopy) Close() error {
	s.snap.Release()
	return nil
}

// FirstLogIndex is the first index in this node's log store (0 when empty);
// it grows when a snapshot compacts the log.
func (n *Node) FirstLogIndex() uint64 {
	i, err := n.logs.FirstIndex()
	if err != nil {
		return 0
	}
	return i
}

// RestoreFile replaces the replicated state with a state database file
// saved by CopyState (tally admin snapshot save): the leader installs it as
// a user snapshot at an index past both its own log and the file's applied
// index, and followers receive it by snapshot install. It is for disaster
// recovery into a fresh cluster and needs the leader. The file is checked
// (a state database of this schema version) before anything changes. It
// returns the applied index recorded in the file and the Raft index of the
// restore.
func (n *Node) RestoreFile(ctx context.Context, path string) (stateIndex, raftIndex uint64, err error) {
	if err := checkStateFile(path); err != nil {
		return 0, 0, fmt.Errorf("%w: not a state database: %v", ErrInvalid, err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var term uint64
	err = db.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket([]byte(bucketMeta))
		stateIndex, term = readU64(meta, metaAppliedIndex), readU64(meta, metaAppliedTerm)
		return nil
	})
	db.Close()
	if err != nil {
		return 0, 0, fmt.Errorf("raft: restore: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("raft: restore: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("raft: restore: %w", err)
	}
	if !n.IsLeader() {
		return 0, 0, n.mapErr(hraft.ErrNotLeader)
	}
	meta := &hraft.SnapshotMeta{Version: hraft.SnapshotVersionMax, Index: stateIndex, Term: term, Size: fi.Size()}
	done := make(chan error, 1)
	go func() { done <- n.raft.Restore(meta, f, n.timeout(ctx)) }()
	select {
	case err = <-done:
	case <-n.closing:
		return 0, 0, ErrClosed
	}
	if err != nil {
		return 0, 0, n.mapErr(err)
	}
	n.logger.Warn("restored the cluster state from a file", "state_index", stateIndex, "raft_index", n.raft.LastIndex())
	return stateIndex, n.raft.LastIndex(), nil
}
