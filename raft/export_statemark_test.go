package raft

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"

	"go.etcd.io/bbolt"
)

// SkipCleanCloseForTest makes n's Close leave its state database as a
// killed process leaves it: no final fsync, the mark still "dirty".
func SkipCleanCloseForTest(n *Node) {
	n.fsm.mu.Lock()
	n.fsm.skipCleanClose = true
	n.fsm.mu.Unlock()
}

// MarkStateFromOtherBootForTest rewrites the mark of the state database in
// dataDir as a stopped node leaves it when the machine went down under it:
// "dirty", written by another boot.
func MarkStateFromOtherBootForTest(dataDir string) error {
	return writeStateMark(filepath.Join(dataDir, "state.db"), stateMark{boot: "another-boot"})
}

// StateMarkForTest returns the mark of the state database in dataDir.
func StateMarkForTest(dataDir string) (boot string, clean bool, err error) {
	m, ok, err := readStateMark(filepath.Join(dataDir, "state.db"))
	if err == nil && !ok {
		err = fmt.Errorf("no state mark in %s", dataDir)
	}
	return m.boot, m.clean, err
}

// StateDumpForTest renders every bucket, key and value of n's state
// database (the determinism tests' comparison), with its applied index.
func StateDumpForTest(n *Node) (dump string, applied uint64, err error) {
	var b strings.Builder
	err = n.fsm.view(func(tx *bbolt.Tx) error {
		applied = 0
		b.Reset()
		if v := tx.Bucket([]byte(bucketMeta)).Get([]byte(metaAppliedIndex)); len(v) == 8 {
			applied = binary.BigEndian.Uint64(v)
		}
		return tx.ForEach(func(name []byte, bk *bbolt.Bucket) error {
			fmt.Fprintf(&b, "[%s]\n", name)
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "%x=%x\n", k, v)
				return nil
			})
		})
	})
	return b.String(), applied, err
}
