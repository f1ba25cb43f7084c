package raft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// initialMmapSize keeps bbolt from re-mapping (which waits for open read
// transactions, such as a snapshot being streamed) until the state database
// outgrows it. It reserves address space, not memory.
const initialMmapSize = 1 << 30

// FSM is tally's hashicorp/raft state machine: it applies committed commands
// to a bbolt database and keeps a State view current. It implements
// hraft.BatchingFSM; see the package documentation for its contract.
//
// Apply, ApplyBatch, Snapshot and Restore are called by hashicorp/raft from
// one goroutine; State and AppliedIndex are safe for concurrent use.
type FSM struct {
	path   string
	logger *slog.Logger
	state  *State

	mu sync.Mutex // guards db: held while applying, snapshotting, restoring, closing
	db *bbolt.DB

	obsMu     sync.Mutex
	observers []func(index uint64, cmd *raftpb.Command, res Result)
	restored  []func() // OnRestored (snapshot.go)

	faults   *faults       // shared with the Node's log store
	halt     chan struct{} // closed by Halt
	haltOnce sync.Once
	halted   bool // a batch was abandoned; guarded by mu

	notUnderstood atomic.Pointer[error] // see ApplyBatch

	// noSync: the state database is opened without fsync and marked
	// (statemark.go); boot is the kernel boot id the mark names.
	noSync bool
	boot   string
	// skipCleanClose makes Close leave the database as a killed process
	// would: no final sync, the mark still "dirty" (tests).
	skipCleanClose bool

	// lastWork is how long the last applied batch took before its commit
	// (applying its entries in the transaction, without the commit's
	// write and fsync); guarded by mu. For measurements (sweep figures).
	lastWork time.Duration
}

var _ hraft.BatchingFSM = (*FSM)(nil)

// OpenFSM opens (creating if needed) the state database at path and builds
// the read view from it. A nil logger discards.
//
// The database is written without fsync where the kernel boot can be told
// (Linux): its durability is the Raft log's and the snapshots'. A database
// that was open without fsync when the machine (not only the process) went
// down may be torn: OpenFSM sets it aside and starts from an empty one,
// which Node.Open rebuilds from the latest snapshot and the log. See
// statemark.go for the contract.
func OpenFSM(path string, logger *slog.Logger) (*FSM, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	boot := currentBoot()
	noSync, err := prepareStateDB(path, boot, logger)
	if err != nil {
		return nil, err
	}
	db, err := openStateDB(path, noSync)
	if err != nil {
		return nil, err
	}
	f := &FSM{path: path, logger: logger, state: newState(), db: db, faults: new(faults), halt: make(chan struct{}), noSync: noSync, boot: boot}
	if err := f.loadView(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return f, nil
}

// openStateDB opens the state database; noSync skips the fsync of every
// commit (see OpenFSM).
func openStateDB(path string, noSync bool) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:         5 * time.Second,
		NoSync:          noSync,
		NoFreelistSync:  true,
		FreelistType:    bbolt.FreelistMapType,
		InitialMmapSize: initialMmapSize,
	})
	if err != nil {
		return nil, fmt.Errorf("raft: open state %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range globalBuckets() {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return err
			}
		}
		meta := tx.Bucket([]byte(bucketMeta))
		v := meta.Get([]byte(metaSchemaVersion))
		if v == nil {
			return meta.Put([]byte(metaSchemaVersion), u64(SchemaVersion))
		}
		if len(v) != 8 || binary.BigEndian.Uint64(v) != SchemaVersion {
			return fmt.Errorf("schema version %x, this node understands %d", v, SchemaVersion)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("raft: open state %s: %w", path, err)
	}
	return db, nil
}

// State returns the read view. The pointer stays the same for the FSM's
// life, across restores.
func (f *FSM) State() *State { return f.state }

// AppliedIndex is the index of the last log entry applied to the state
// database (and published in the view).
func (f *FSM) AppliedIndex() uint64 { return f.state.AppliedIndex() }

// OnApplied registers fn to be called for every command entry after its
// batch has committed, in log order, on the FSM goroutine and outside any
// bbolt transaction. For a repeated request_id, res is the first result, so
// res.Index != index. fn must be quick and must not modify cmd; it is not
// called for entries skipped on replay because the state database already
// had them. Register observers before the node starts applying.
func (f *FSM) OnApplied(fn func(index uint64, cmd *raftpb.Command, res Result)) {
	f.obsMu.Lock()
	f.observers = append(f.observers, fn)
	f.obsMu.Unlock()
}

// view runs fn in a read transaction of the state database without holding
// f.mu, so that it neither waits for nor delays a batch being applied: it
// sees the last committed batch. A Restore or compaction that replaces the
// database closes the old one only after open read transactions end
// (bbolt), and view then retries on the new one; ErrClosed once the FSM is
// closed.
func (f *FSM) view(fn func(tx *bbolt.Tx) error) error {
	for {
		f.mu.Lock()
		db := f.db
		f.mu.Unlock()
		if db == nil {
			return ErrClosed
		}
		err := db.View(fn)
		if !errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return err
		}
		f.mu.Lock()
		same := f.db == db
		f.mu.Unlock()
		if same {
			return ErrClosed
		}
	}
}

// Close closes the state database. The FSM must not be used afterwards.
// A database written without fsync is fsynced first and then marked clean
// (statemark.go), so that the next open trusts it even after a reboot.
func (f *FSM) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil
	}
	clean := f.noSync && !f.skipCleanClose
	var serr error
	if clean {
		serr = f.db.Sync()
	}
	err := f.db.Close()
	f.db = nil
	if err != nil {
		return fmt.Errorf("raft: close state: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("raft: close state: sync: %w", serr)
	}
	if clean {
		return writeStateMark(f.path, stateMark{boot: f.boot, clean: true})
	}
	return nil
}

// Apply applies one log entry; see ApplyBatch.
func (f *FSM) Apply(l *hraft.Log) any {
	return f.ApplyBatch([]*hraft.Log{l})[0]
}

type appliedCommand struct {
	index uint64
	cmd   *raftpb.Command
	res   Result
}

// ApplyBatch applies a batch of committed entries in one bbolt write
// transaction, which also records the last applied index and term. The
// response for a command entry is a Result; for other entries it is nil.
// Entries at or below the stored applied index (replayed after a restart)
// are skipped and answered with Result{Index: index}.
//
// When the commit fails because the file system is full, nothing of the
// batch is applied: ApplyBatch records a storage fault (StorageFault), waits
// and applies the same batch again in a new transaction, until it commits
// or the FSM is halted. It never skips or partly applies an entry, so
// replicas stay identical; meanwhile this node's view stops at the last
// committed batch. When halted while waiting (the node is closing), it
// answers every command entry with ErrClosed and applies nothing more: the
// entries are applied again from the log when the node restarts.
//
// At an entry this binary does not understand (undecodable, a newer
// Command.version, an unknown operation or field, a cluster version it does
// not implement) it commits the entries before it and stops: it reports the
// entry (NotUnderstood, logged), applies nothing more and waits until
// halted, then answers the rest with ErrClosed. The node keeps its state as
// of the entry before, and applies the entry once restarted with a binary
// that understands it. It never skips the entry (replicas would diverge)
// and never panics on it (a panic repeats at every restart).
//
// It panics on any other storage fault (see doc.go).
func (f *FSM) ApplyBatch(logs []*hraft.Log) []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		panic("raft: apply on a closed FSM")
	}
	wait := noSpaceRetry
	var lastLog time.Time
	for {
		if f.halted {
			return closedResponses(logs)
		}
		resp, done, stop, err := f.applyOnce(logs)
		if err == nil {
			if _, open := f.faults.oldestOf("state"); open {
				f.logger.Info("state storage recovered: the waiting batch is applied", "last_index", logs[len(logs)-1].Index)
			}
			f.faults.note("state", nil)
			f.notify(done)
			if stop != nil {
				f.stopApplying(stop, logs, resp)
			}
			return resp
		}
		if !isNoSpace(err) {
			storageFault("%v", err)
		}
		f.faults.note("state", err)
		if now := time.Now(); now.Sub(lastLog) >= 30*time.Second {
			lastLog = now
			f.logger.Error("state storage full: applying paused until space is freed; writes are refused meanwhile",
				"first_index", logs[0].Index, "last_index", logs[len(logs)-1].Index, "err", err)
		}
		select {
		case <-f.halt:
			f.halted = true
		case <-time.After(wait):
			wait = min(2*wait, 2*time.Second)
		}
	}
}

// stopApplying records stop, waits until the FSM is halted and answers the
// entries of logs from stop's on with ErrClosed. Called with f.mu held: the
// FSM applies nothing more.
func (f *FSM) stopApplying(stop *errNotUnderstood, logs []*hraft.Log, resp []any) {
	err := error(stop)
	f.notUnderstood.Store(&err)
	f.logger.Error("stopped applying the Raft log: this node is too old for an entry; upgrade it (its state stays at the entry before)",
		"index", stop.index, "reason", stop.reason)
	<-f.halt
	f.halted = true
	for i, l := range logs {
		if l.Index >= stop.index && l.Type == hraft.LogCommand {
			resp[i] = ErrClosed
		}
	}
}

// NotUnderstood reports the committed entry this node stopped applying at
// because its binary does not understand it, or nil.
func (f *FSM) NotUnderstood() error {
	if p := f.notUnderstood.Load(); p != nil {
		return *p
	}
	return nil
}

// closedResponses answers a batch that was not applied.
func closedResponses(logs []*hraft.Log) []any {
	resp := make([]any, len(logs))
	for i, l := range logs {
		if l.Type == hraft.LogCommand {
			resp[i] = ErrClosed
		}
	}
	return resp
}

// applyOnce applies logs in one write transaction. It returns an error only
// when the transaction could not be begun or committed; nothing of the
// batch is then applied.
func (f *FSM) applyOnce(logs []*hraft.Log) (resp []any, done []appliedCommand, stopped *errNotUnderstood, err error) {
	began := time.Now()
	resp = make([]any, len(logs))
	tx, err := f.db.Begin(true)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = tx.Rollback()
		}
	}()

	a := &applier{tx: tx}
	meta := a.bucket(bucketMeta)
	applied := readU64(meta, metaAppliedIndex)
	last, lastTerm := applied, uint64(0)
	for i, l := range logs {
		if l.Index <= applied {
			if l.Type == hraft.LogCommand {
				resp[i] = Result{Index: l.Index}
			}
			continue
		}
		if l.Type == hraft.LogCommand {
			res, cmd, stop := a.applyLog(l)
			if stop != nil {
				// Stop before this entry (applyLog wrote nothing for it):
				// the entries before it commit; it and the rest of the
				// batch are not applied.
				stopped = stop
				break
			}
			resp[i] = res
			done = append(done, appliedCommand{index: l.Index, cmd: cmd, res: res})
		}
		last, lastTerm = l.Index, l.Term
	}
	if last == applied {
		return resp, nil, stopped, nil // nothing new; nothing written
	}
	a.put(meta, []byte(metaAppliedIndex), u64(last))
	a.put(meta, []byte(metaAppliedTerm), u64(lastTerm))
	f.lastWork = time.Since(began)
	if err := tx.Commit(); err != nil {
		return nil, nil, nil, fmt.Errorf("commit at index %d: %w", last, err)
	}
	committed = true
	f.state.apply(a.changes, last)
	if a.erased {
		f.compactLocked() // compact.go
	}
	return resp, done, stopped, nil
}

// notify calls the OnApplied observers for a committed batch.
func (f *FSM) notify(done []appliedCommand) {
	if len(done) == 0 {
		return
	}
	f.obsMu.Lock()
	obs := f.observers
	f.obsMu.Unlock()
	for _, fn := range obs {
		for _, d := range done {
			fn(d.index, d.cmd, d.res)
		}
	}
}

// Halt makes an ApplyBatch that waits for disk space give up (see
// ApplyBatch); call it before shutting Raft down, which waits for the FSM.
// It is idempotent and safe for concurrent use.
func (f *FSM) Halt() { f.haltOnce.Do(func() { close(f.halt) }) }

// StorageFault reports the state database's open storage fault, if any.
func (f *FSM) StorageFault() (StorageFault, bool) { return f.faults.oldestOf("state") }

func readU64(b *bbolt.Bucket, key string) uint64 {
	v := b.Get([]byte(key))
	if v == nil {
		return 0
	}
	if len(v) != 8 {
		storageFault("meta %q: %d bytes", key, len(v))
	}
	return binary.BigEndian.Uint64(v)
}

// loadView rebuilds the read view from the database. Called with f.mu held
// or before the FSM is shared.
func (f *FSM) loadView() error {
	tenants, applied, err := readView(f.db)
	if err != nil {
		return err
	}
	var cm *raftpb.ClusterMeta
	if err := f.db.View(func(tx *bbolt.Tx) (err error) { cm, err = readClusterMeta(tx); return err }); err != nil {
		return err
	}
	f.state.cluster.Store(cm)
	var cv *raftpb.ClusterVersion
	if err := f.db.View(func(tx *bbolt.Tx) (err error) { cv, err = readClusterVersion(tx); return err }); err != nil {
		return err
	}
	f.state.version.Store(cv)
	var gw map[string]*raftpb.GatewayConfig
	if err := f.db.View(func(tx *bbolt.Tx) (err error) { gw, err = readGatewayConfigs(tx); return err }); err != nil {
		return err
	}
	f.state.gateway.Store(&gw)
	var dt map[string]*raftpb.DeletedTenant
	if err := f.db.View(func(tx *bbolt.Tx) (err error) { dt, err = readTenantTombstones(tx); return err }); err != nil {
		return err
	}
	f.state.deletedTenants.Store(&dt)
	f.state.replace(tenants, applied)
	return nil
}

// readView reads every record of the database into view maps.
func readView(db *bbolt.DB) (map[string]*tenantView, uint64, error) {
	tenants := make(map[string]*tenantView)
	var applied uint64
	err := db.View(func(tx *bbolt.Tx) error {
		switch v := tx.Bucket([]byte(bucketMeta)).Get([]byte(metaAppliedIndex)); len(v) {
		case 0:
		case 8:
			applied = binary.BigEndian.Uint64(v)
		default:
			return fmt.Errorf("applied index: %d bytes", len(v))
		}
		return tx.Bucket([]byte(bucketTenants)).ForEach(func(k, v []byte) error {
			t := new(raftpb.Tenant)
			if err := proto.Unmarshal(v, t); err != nil {
				return fmt.Errorf("tenant %q: %w", k, err)
			}
			tv := newTenantView(t)
			tenants[string(k)] = tv
			if err := loadRecords(tx, t.Id, kindClients, func(id string) proto.Message {
				c := new(raftpb.Client)
				tv.clients[id] = c
				return c
			}); err != nil {
				return err
			}
			if err := loadRecords(tx, t.Id, kindKeys, func(id string) proto.Message {
				k := new(raftpb.Key)
				tv.keys[id] = k
				return k
			}); err != nil {
				return err
			}
			if err := loadRecords(tx, t.Id, kindRevocations, func(id string) proto.Message {
				r := new(raftpb.Revocation)
				tv.revocations[id] = r
				return r
			}); err != nil {
				return err
			}
			if err := loadFlowRecords(tx, t.Id, tv); err != nil {
				return err
			}
			return loadDeletedRecords(tx, t.Id, tv)
		})
	})
	if err != nil {
		return nil, 0, fmt.Errorf("raft: load state view: %w", err)
	}
	return tenants, applied, nil
}

func loadRecords(tx *bbolt.Tx, tenant, kind string, alloc func(id string) proto.Message) error {
	b := tx.Bucket(tenantBucket(tenant, kind))
	if b == nil {
		return fmt.Errorf("bucket %s missing", tenantBucket(tenant, kind))
	}
	return b.ForEach(func(k, v []byte) error {
		if err := proto.Unmarshal(v, alloc(string(k))); err != nil {
			return fmt.Errorf("%s %q of tenant %q: %w", kind, k, tenant, err)
		}
		return nil
	})
}
