package raft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// fsmSnapshot streams a consistent copy of the state database from the read
// transaction opened by FSM.Snapshot. Applies continue meanwhile.
type fsmSnapshot struct {
	tx   *bbolt.Tx
	once sync.Once
}

// Snapshot opens a read transaction; the copy is written by Persist. The
// copy is consistent whether or not the database was fsynced: the read
// transaction sees the last committed batch through the page cache.
//
// A database written without fsync (statemark.go) is fsynced first: a
// checkpoint per snapshot, and a write-back error of the batches before it
// (which the skipped fsyncs did not report) fails the snapshot, so that the
// log is not compacted over it.
func (f *FSM) Snapshot() (hraft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil, errors.New("raft: snapshot: state database closed")
	}
	if f.noSync {
		if err := f.db.Sync(); err != nil {
			f.logger.Error("state database write-back failed: snapshot refused", "err", err)
			return nil, fmt.Errorf("raft: snapshot: sync state: %w", err)
		}
	}
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("raft: snapshot: %w", err)
	}
	return &fsmSnapshot{tx: tx}, nil
}

// Persist writes the database file (bbolt Tx.WriteTo) to sink.
func (s *fsmSnapshot) Persist(sink hraft.SnapshotSink) error {
	_, err := s.tx.WriteTo(sink)
	s.Release()
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("raft: persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("raft: persist snapshot: %w", err)
	}
	return nil
}

// Release ends the read transaction; safe to call more than once.
func (s *fsmSnapshot) Release() {
	s.once.Do(func() { _ = s.tx.Rollback() })
}

// Restore replaces the state with a snapshot stream: the stream is written
// to a temporary file beside the database, synced and checked, then renamed
// over the live file, which is reopened and the view rebuilt. If the stream
// is not a valid state database the live state is left as it was.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(f.path)+".restore-*")
	if err != nil {
		return fmt.Errorf("raft: restore: %w", err)
	}
	tmpPath := tmp.Name()
	installed := false
	defer func() {
		if !installed {
			_ = os.Remove(tmpPath)
		}
	}()
	if _, err := io.Copy(tmp, rc); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("raft: restore: copy: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("raft: restore: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("raft: restore: %w", err)
	}
	if err := checkStateFile(tmpPath); err != nil {
		return fmt.Errorf("raft: restore: snapshot is not a state database: %w", err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db != nil {
		if err := f.db.Close(); err != nil {
			return fmt.Errorf("raft: restore: close live state: %w", err)
		}
		f.db = nil
	}
	if err := os.Rename(tmpPath, f.path); err != nil {
		if db, rerr := openStateDB(f.path, f.noSync); rerr == nil {
			f.db = db // keep serving the old state
		}
		return fmt.Errorf("raft: restore: %w", err)
	}
	installed = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("raft: restore: %w", err)
	}
	db, err := openStateDB(f.path, f.noSync)
	if err != nil {
		return fmt.Errorf("raft: restore: reopen: %w", err)
	}
	f.db = db
	if err := f.loadView(); err != nil {
		return fmt.Errorf("raft: restore: %w", err)
	}
	f.logger.Info("restored state from snapshot", "applied_index", f.state.AppliedIndex())
	f.obsMu.Lock()
	for _, fn := range f.restored {
		go fn() // outside f.mu: fn may read the new state
	}
	f.obsMu.Unlock()
	return nil
}

// OnRestored registers fn to be called, on a goroutine of its own, after
// each Restore has replaced the state (the OnApplied observers see none of
// the entries a snapshot stands for): node/risk.go rebuilds its alert
// index from the restored alert log.
func (f *FSM) OnRestored(fn func()) {
	f.obsMu.Lock()
	f.restored = append(f.restored, fn)
	f.obsMu.Unlock()
}

// checkStateFile opens path read-only and checks that it is a tally state
// database of this schema version with all global buckets.
func checkStateFile(path string) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bbolt.Tx) error {
		for _, name := range globalBuckets() {
			if tx.Bucket([]byte(name)) == nil {
				return fmt.Errorf("bucket %q missing", name)
			}
		}
		v := tx.Bucket([]byte(bucketMeta)).Get([]byte(metaSchemaVersion))
		if len(v) != 8 || binary.BigEndian.Uint64(v) != SchemaVersion {
			return fmt.Errorf("schema version %x, this node understands %d", v, SchemaVersion)
		}
		return nil
	})
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
