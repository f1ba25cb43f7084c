package raft

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// ErrNoSpace marks a write that failed because the file system holding the
// node's data is full (ENOSPC or EDQUOT). It is a storage fault the node
// survives: the FSM retries the same batch and the log store is retried by
// hashicorp/raft, until space returns (see FSM.ApplyBatch).
var ErrNoSpace = errors.New("raft: no space left on the data file system")

// isNoSpace reports whether err says the file system is full. bbolt loses
// the error chain in some paths (it formats the cause with %s when growing
// the file), so the message is checked too.
func isNoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, ErrNoSpace) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "no space left on device") || strings.Contains(msg, "disk quota exceeded")
}

// StorageFault is a write to the node's own storage that is failing now.
type StorageFault struct {
	// Store is "state" (the FSM's database), "log" (the Raft log) or
	// "stable" (the Raft term and vote, kept in the log's database).
	Store string
	// Since is when the first failing write of this episode happened.
	Since time.Time
	// Err is the latest failure.
	Err error
}

func (f StorageFault) Error() string {
	return fmt.Sprintf("raft: %s storage failing since %s: %v", f.Store, f.Since.UTC().Format(time.RFC3339), f.Err)
}

func (f StorageFault) Unwrap() error { return f.Err }

// faults records the storage faults of one node's stores. A fault is
// cleared by the next successful write to the same store.
type faults struct {
	mu    sync.Mutex
	state map[string]StorageFault // store → open fault
}

// note records err (nil clears) for store and returns err unchanged.
func (f *faults) note(store string, err error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.state, store)
		return nil
	}
	if f.state == nil {
		f.state = make(map[string]StorageFault)
	}
	old, ok := f.state[store]
	if !ok {
		old = StorageFault{Store: store, Since: time.Now()}
	}
	old.Err = err
	f.state[store] = old
	return err
}

// oldestOf returns store's open fault, if any.
func (f *faults) oldestOf(store string) (StorageFault, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sf, ok := f.state[store]
	return sf, ok
}

// oldest returns the longest-open fault, if any.
func (f *faults) oldest() (StorageFault, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out StorageFault
	found := false
	for _, sf := range f.state {
		if !found || sf.Since.Before(out.Since) {
			out, found = sf, true
		}
	}
	return out, found
}

// faultLogStore is the Raft log and stable store with its write failures
// recorded, so that a node whose log cannot grow says so (readiness,
// staleness) instead of only logging. Writes of the stable store (current
// term, vote) that fail for lack of space are retried until space returns
// or the node closes: hashicorp/raft panics when it cannot persist a term,
// and a node that waits is only unavailable, where one that panics is down.
type faultLogStore struct {
	*raftboltdb.BoltStore
	faults *faults
	halt   <-chan struct{}
}

func (s *faultLogStore) StoreLogs(logs []*hraft.Log) error {
	return s.faults.note("log", s.BoltStore.StoreLogs(logs))
}

func (s *faultLogStore) StoreLog(l *hraft.Log) error {
	return s.faults.note("log", s.BoltStore.StoreLog(l))
}

func (s *faultLogStore) Set(k, v []byte) error {
	return s.retry(func() error { return s.BoltStore.Set(k, v) })
}

func (s *faultLogStore) SetUint64(k []byte, v uint64) error {
	return s.retry(func() error { return s.BoltStore.SetUint64(k, v) })
}

// noSpaceRetry is how long a store waits between attempts while its file
// system is full.
const noSpaceRetry = 250 * time.Millisecond

func (s *faultLogStore) retry(write func() error) error {
	for {
		err := s.faults.note("stable", write())
		if !isNoSpace(err) {
			return err
		}
		select {
		case <-s.halt:
			return err
		case <-time.After(noSpaceRetry):
		}
	}
}
