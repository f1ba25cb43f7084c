package raft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Node is one member of the Raft group: hashicorp/raft with the bbolt FSM,
// its log and stable store, snapshot store and transport. Its methods are
// safe for concurrent use.
type Node struct {
	cfg    Config
	logger *slog.Logger
	fsm    *FSM
	raft   *hraft.Raft
	logs   *raftboltdb.BoltStore
	store  *faultLogStore // logs, with its write failures recorded
	trans  hraft.Transport
	own    *hraft.NetworkTransport // the TCP transport Open created, closed by Close

	// leading and leftLeadership (unix nanoseconds) follow this node's
	// own leadership, for LastLeaderContact: a leader that steps down has
	// heard from a quorum within the lease before it did.
	leading        atomic.Bool
	leftLeadership atomic.Int64
	leaseTimeout   time.Duration

	gate      atomic.Pointer[func() error] // SetWriteGate
	clockGate atomic.Pointer[func() error] // SetProposeGate (clock.go)

	closing   chan struct{}
	wg        sync.WaitGroup // sweepers
	closeOnce sync.Once
	closeErr  error
}

// Open starts a node with the state in cfg.DataDir: <DataDir>/state.db (the
// FSM), <DataDir>/raft.db (Raft log and stable store) and
// <DataDir>/snapshots. If cfg.Bootstrap is set and the node has no Raft
// state yet, it bootstraps a cluster of cfg.BootstrapServers, or one whose
// only voter is itself. Raft traffic uses cfg.Transport, or a
// NetworkTransport on cfg.StreamLayer (mutual TLS, see ClusterListener), or
// plain TCP on cfg.BindAddr.
//
// On restart the FSM keeps its own state database and skips the entries it
// already applied; a snapshot is restored at start only when the state
// database is behind the latest snapshot (for example, after it was lost,
// or set aside by OpenFSM because it was open without fsync when the
// machine went down; see statemark.go).
func Open(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("raft_id", cfg.ID)
	hlog := newHCLogAdapter(logger.With("library", "hashicorp-raft"), hclog.Info)

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raft: open: %w", err)
	}
	n := &Node{cfg: cfg, logger: logger, closing: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			n.closeStores()
		}
	}()

	snaps, err := n.openStores(hlog)
	if err != nil {
		return nil, err
	}
	if err := n.openTransport(hlog); err != nil {
		return nil, err
	}

	rc := cfg.raftConfig(hlog)
	metas, err := snaps.List()
	if err != nil {
		return nil, fmt.Errorf("raft: list snapshots: %w", err)
	}
	rc.NoSnapshotRestoreOnStart = len(metas) == 0 || metas[0].Index <= n.fsm.AppliedIndex()

	if err := n.bootstrapIfNew(rc, snaps); err != nil {
		return nil, err
	}
	// The most recent entries are kept decoded in memory (issue 14): the
	// leader reads every entry back to replicate it, and without the cache
	// each read was a bbolt lookup plus a msgpack decode (7% of the CPU of
	// a three-node refresh run).
	logs, err := hraft.NewLogCache(logCacheSize, n.store)
	if err != nil {
		return nil, err
	}
	if n.raft, err = hraft.NewRaft(rc, n.fsm, logs, n.store, snaps, n.trans); err != nil {
		return nil, fmt.Errorf("raft: start: %w", err)
	}
	n.leaseTimeout = rc.LeaderLeaseTimeout
	n.raft.RegisterObserver(hraft.NewObserver(nil, false, n.observeState))
	if n.raft.State() == hraft.Leader { // elected before the observer
		n.leading.Store(true)
	}
	ok = true
	return n, nil
}

// openStores opens Open's stores in cfg.DataDir: the FSM (state.db), the
// Raft log and stable store (raft.db, as n.logs and, with its write
// failures recorded, n.store) and the snapshot store, which it returns.
// What it opened before an error stays in n for closeStores.
func (n *Node) openStores(hlog *hclogAdapter) (*hraft.FileSnapshotStore, error) {
	var err error
	if n.fsm, err = OpenFSM(filepath.Join(n.cfg.DataDir, "state.db"), n.logger); err != nil {
		return nil, err
	}
	if n.logs, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(n.cfg.DataDir, "raft.db")}); err != nil {
		return nil, fmt.Errorf("raft: open log store: %w", err)
	}
	n.store = &faultLogStore{BoltStore: n.logs, faults: n.fsm.faults, halt: n.closing}
	snaps, err := hraft.NewFileSnapshotStoreWithLogger(n.cfg.DataDir, n.cfg.SnapshotRetain, hlog)
	if err != nil {
		return nil, fmt.Errorf("raft: open snapshot store: %w", err)
	}
	return snaps, nil
}

// openTransport sets n.trans to cfg.Transport or, without one, to a
// transport it creates and keeps in n.own for Close: a NetworkTransport on
// cfg.StreamLayer (mutual TLS), or plain TCP on cfg.BindAddr advertising
// cfg.AdvertiseAddr if set.
func (n *Node) openTransport(hlog *hclogAdapter) error {
	cfg := n.cfg
	var err error
	switch {
	case cfg.Transport != nil:
		n.trans = cfg.Transport
	case cfg.StreamLayer != nil:
		n.own = hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{
			Stream:  cfg.StreamLayer,
			MaxPool: 3,
			Timeout: 10 * time.Second,
			Logger:  hlog,
			// No pipelined replication. When a follower answers an append
			// with Success=false (its disk is full, or it needs older
			// entries), hashicorp/raft's pipeline can deadlock: the leader
			// keeps sending heartbeats but never another entry to that
			// follower, and Shutdown hangs (hashicorp/raft#612; Grafana
			// Pyroscope disabled pipelining for it). With batching
			// (MaxAppendEntries) pipelining buys little (hashicorp/raft#541).
			MaxRPCsInFlight: 1,
		})
		n.trans = n.own
	default:
		var adv net.Addr
		if cfg.AdvertiseAddr != "" {
			if adv, err = net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr); err != nil {
				return fmt.Errorf("raft: advertise address: %w", err)
			}
		}
		n.own, err = hraft.NewTCPTransportWithLogger(cfg.BindAddr, adv, 3, 10*time.Second, hlog)
		if err != nil {
			return fmt.Errorf("raft: transport: %w", err)
		}
		n.trans = n.own
	}
	return nil
}

// bootstrapIfNew bootstraps a cluster (see bootstrapConfiguration) when
// cfg.Bootstrap is set and the node has no Raft state yet; otherwise it
// does nothing.
func (n *Node) bootstrapIfNew(rc *hraft.Config, snaps hraft.SnapshotStore) error {
	exists, err := hraft.HasExistingState(n.store, n.store, snaps)
	if err != nil {
		return fmt.Errorf("raft: open: %w", err)
	}
	if !n.cfg.Bootstrap || exists {
		return nil
	}
	conf := n.bootstrapConfiguration()
	if err := hraft.BootstrapCluster(rc, n.store, n.store, snaps, n.trans, conf); err != nil {
		return fmt.Errorf("raft: bootstrap: %w", err)
	}
	n.logger.Info("bootstrapped a cluster", "addr", n.trans.LocalAddr(), "servers", len(conf.Servers))
	return nil
}

// bootstrapConfiguration is the configuration a bootstrapping node starts
// the cluster with: cfg.BootstrapServers (voters unless marked otherwise),
// or, without them, this node alone as a voter at its transport's address.
func (n *Node) bootstrapConfiguration() hraft.Configuration {
	if len(n.cfg.BootstrapServers) == 0 {
		return hraft.Configuration{Servers: []hraft.Server{{
			Suffrage: hraft.Voter,
			ID:       hraft.ServerID(n.cfg.ID),
			Address:  n.trans.LocalAddr(),
		}}}
	}
	var conf hraft.Configuration
	for _, m := range n.cfg.BootstrapServers {
		s := hraft.Server{Suffrage: hraft.Voter, ID: hraft.ServerID(m.ID), Address: hraft.ServerAddress(m.Addr)}
		if !m.Voter {
			s.Suffrage = hraft.Nonvoter
		}
		conf.Servers = append(conf.Servers, s)
	}
	return conf
}

// closeStores closes what Open opened, in reverse order.
func (n *Node) closeStores() error {
	var errs []error
	if n.own != nil {
		if err := n.own.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft: close transport: %w", err))
		}
	}
	if n.logs != nil {
		if err := n.logs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft: close log store: %w", err))
		}
	}
	if n.fsm != nil {
		if err := n.fsm.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close stops the sweepers, shuts Raft down and closes the stores. It is
// idempotent; later calls return the first call's error.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		close(n.closing)
		n.fsm.Halt() // an apply waiting for disk space must not hold up Shutdown
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft: shutdown: %w", err))
		}
		n.wg.Wait()
		if err := n.closeStores(); err != nil {
			errs = append(errs, err)
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// ID is this node's Raft server id.
func (n *Node) ID() string { return n.cfg.ID }

// Addr is the address peers reach this node's transport at.
func (n *Node) Addr() string { return string(n.trans.LocalAddr()) }

// State is the node's read view of the replicated state.
func (n *Node) State() *State { return n.fsm.State() }

// NotUnderstood reports the committed entry this node stopped applying at
// because its binary is too old for it (FSM.NotUnderstood), or nil.
func (n *Node) NotUnderstood() error { return n.fsm.NotUnderstood() }

// FSM is the node's state machine (for OnApplied observers).
func (n *Node) FSM() *FSM { return n.fsm }

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == hraft.Leader }

// Leader returns the current leader's id and address, or empty strings when
// there is none known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// WaitLeader polls until some node (this one or another) is known as the
// leader, or ctx ends.
func (n *Node) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := n.Leader(); id != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raft: wait for leader: %w", ctx.Err())
		case <-n.closing:
			return ErrClosed
		case <-t.C:
		}
	}
}

// LeaseTimeout is the leader lease (Config.LeaderLeaseTimeout): a leader
// that has not heard from a quorum for that long steps down, and a follower
// that has not heard from its leader for that long may treat it as gone.
func (n *Node) LeaseTimeout() time.Duration { return n.leaseTimeout }

// LastContact is when this follower last heard from the leader (meaningful
// only on followers; see hashicorp/raft's Raft.LastContact).
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// Stats returns hashicorp/raft's statistics.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// Snapshot takes a snapshot now (and compacts the log).
func (n *Node) Snapshot() error {
	if err := n.raft.Snapshot().Error(); err != nil {
		return n.mapErr(err)
	}
	return nil
}

// AddVoter adds (or updates) a voting member and waits until the
// configuration change is committed. Only the leader can do it.
//
// A removed id (see RemoveServer) is refused with ErrNodeDenied.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	if n.fsm.State().NodeDenied(id) {
		return fmt.Errorf("%w: %q", ErrNodeDenied, id)
	}
	f := n.raft.AddVoter(hraft.ServerID(id), hraft.ServerAddress(addr), 0, n.timeout(ctx))
	if err := n.wait(ctx, f); err != nil {
		return err
	}
	return nil
}

// timeout is ApplyTimeout, bounded by ctx's deadline.
func (n *Node) timeout(ctx context.Context) time.Duration {
	d := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		if r := time.Until(dl); r < d {
			d = max(r, time.Millisecond)
		}
	}
	return d
}

// wait waits for f, ctx or Close, mapping errors. hashicorp/raft does not
// answer an apply future that is still queued when it shuts down, so Close
// must release waiters itself.
func (n *Node) wait(ctx context.Context, f hraft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return n.mapErr(err)
	case <-ctx.Done():
		return fmt.Errorf("raft: %w", ctx.Err())
	case <-n.closing:
		return ErrClosed
	}
}

func (n *Node) mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, hraft.ErrNotLeader):
		_, addr := n.Leader()
		return fmt.Errorf("%w (leader at %q): %w", ErrNotLeader, addr, err)
	case errors.Is(err, hraft.ErrLeadershipLost):
		return fmt.Errorf("%w: %w", ErrLeadershipLost, err)
	case errors.Is(err, hraft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	case errors.Is(err, hraft.ErrRaftShutdown):
		return fmt.Errorf("%w: %w", ErrClosed, err)
	default:
		return fmt.Errorf("raft: %w", err)
	}
}

// Propose replicates cmd and returns its Result once it is committed and
// applied on this node (the leader), so the caller reads its own write in
// State. A command that fails checks without reading state (wrong version,
// missing fields) is not proposed: Propose returns Result{Err: ErrInvalid…}.
//
// The error is non-nil when the outcome is not known to be applied:
// ErrNotLeader (nothing appended; forward or retry), ErrLeadershipLost
// (outcome unknown: retry with the same request_id), ErrWritesRefused
// (nothing appended: this node's write gate refused, e.g. low on disk),
// the propose gate's error (nothing appended: this node's clock is off the
// cluster's; see SetProposeGate), ErrTimeout, ErrClosed, or ctx's error.
// cmd must not be modified until Propose returns.
func (n *Node) Propose(ctx context.Context, cmd *raftpb.Command) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("raft: propose: %w", err)
	}
	select {
	case <-n.closing:
		return Result{}, ErrClosed
	default:
	}
	if cmd == nil {
		return Result{Err: invalidf("nil command")}, nil
	}
	if cmd.GetVersion() != CommandVersion {
		return Result{Err: invalidf("command version %d, want %d", cmd.GetVersion(), CommandVersion)}, nil
	}
	if err := checkCommand(cmd); err != nil {
		return Result{Err: err}, nil
	}
	if f := OpFeature(cmd); f != "" && !n.State().FeatureEnabled(f) {
		return Result{}, fmt.Errorf("%w: feature %q", ErrFeatureDisabled, f)
	}
	if f := OpProposerGated(cmd); f != "" && n.State().ClusterVersion() != nil && !n.State().FeatureEnabled(f) {
		return Result{}, fmt.Errorf("%w: feature %q (not in the recorded cluster version)", ErrFeatureDisabled, f)
	}
	if err := n.checkGate(); err != nil {
		return Result{}, err
	}
	data, err := marshalOpts.Marshal(cmd)
	if err != nil {
		return Result{Err: invalidf("marshal: %v", err)}, nil
	}
	if err := n.WritesRefused(); err != nil {
		return Result{}, err
	}
	f := n.raft.Apply(data, n.timeout(ctx))
	if err := n.wait(ctx, f); err != nil {
		return Result{}, err
	}
	if err, ok := f.Response().(error); ok { // the FSM halted before applying it
		return Result{}, err
	}
	res, ok := f.Response().(Result)
	if !ok {
		return Result{}, fmt.Errorf("raft: unexpected apply response %T", f.Response())
	}
	return res, nil
}

// SetWriteGate installs a check that Propose runs before appending a
// command: while gate returns an error, Propose refuses every command with
// ErrWritesRefused wrapping it (nothing is appended). The node package uses
// it to stop proposing when the data file system runs low on space, so that
// the Raft log never fills on a leader. nil removes the gate.
func (n *Node) SetWriteGate(gate func() error) { storeGate(&n.gate, gate) }

// WritesRefused returns why Propose refuses commands now (see SetWriteGate),
// or nil.
func (n *Node) WritesRefused() error {
	if err := callGate(&n.gate); err != nil {
		return fmt.Errorf("%w: %w", ErrWritesRefused, err)
	}
	return nil
}

// storeGate installs fn in p (nil removes it); callGate runs the installed
// check, nil when there is none. Both gates of Propose use them.
func storeGate(p *atomic.Pointer[func() error], fn func() error) {
	if fn == nil {
		p.Store(nil)
		return
	}
	p.Store(&fn)
}

func callGate(p *atomic.Pointer[func() error]) error {
	if g := p.Load(); g != nil {
		return (*g)()
	}
	return nil
}

// ErrWritesRefused: this node refuses to propose commands now (see
// SetWriteGate); nothing was appended. Another node may accept them.
var ErrWritesRefused = errors.New("raft: writes refused")

// StorageFault reports the oldest write to this node's storage (state
// database or Raft log) that is failing now, if any. A node with a fault
// does not crash: it waits for space (see FSM.ApplyBatch), but its view
// stops following the log meanwhile.
func (n *Node) StorageFault() (StorageFault, bool) { return n.fsm.faults.oldest() }

// logCacheSize is how many recent log entries the LogCache keeps (a few
// append batches of MaxAppendEntries).
const logCacheSize = 1024

// StartSweeper proposes a Sweep command every interval while this node is
// the leader, with now() as the command's time, until ctx ends or the node
// closes. It is the FSM's only source of expiry: the clock is read here, by
// the proposer, never in the FSM. A non-positive every starts nothing.
func (n *Node) StartSweeper(ctx context.Context, every time.Duration, now func() time.Time) {
	if every <= 0 {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for n.sweepPaced(ctx, every) { // sweep_bounded.go
			if !n.IsLeader() {
				continue
			}
			cmd := n.SweepCommand(now(), 0)
			pctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
			res, err := n.Propose(pctx, cmd)
			cancel()
			switch {
			case err != nil:
				n.logger.Warn("sweep not applied", "err", err)
			case res.Err != nil:
				n.logger.Error("sweep failed", "err", res.Err, "index", res.Index)
			default:
				n.logger.Debug("swept", "index", res.Index)
			}
		}
	}()
}
