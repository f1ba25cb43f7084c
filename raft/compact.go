package raft

import (
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/bbolt"
)

// compactLocked rewrites the state database into a new file holding only
// its live records and puts it in place of the old one, so that bytes of
// deleted records (kept by bbolt in free pages until reused) leave the
// file: after DeleteUser and DeleteTenant, personal data is erased from
// the disk, not only from the state (apply_delete.go). A state database
// set aside as possibly torn after a machine crash is removed as well. Called with f.mu
// held, after a batch committed. The records do not change, so the view
// stays. A snapshot being persisted holds a read transaction: closing the
// old database waits for it. A failure leaves the old file in use and is
// logged; the next erasure compacts again.
func (f *FSM) compactLocked() {
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(f.path)+".compact-*")
	if err != nil {
		f.logger.Error("compacting the state database after an erasure", "err", err)
		return
	}
	tmpPath := tmp.Name()
	_ = tmp.Close()
	_ = os.Remove(tmpPath) // bbolt creates it
	installed := false
	defer func() {
		if !installed {
			_ = os.Remove(tmpPath)
		}
	}()
	dst, err := bbolt.Open(tmpPath, 0o600, &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		f.logger.Error("compacting the state database after an erasure", "err", err)
		return
	}
	// One fsync at the end instead of one per Compact transaction: the
	// file is not in use until it is renamed into place.
	dst.NoSync = true
	err = bbolt.Compact(dst, f.db, 64<<20)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		f.logger.Error("compacting the state database after an erasure", "err", err)
		return
	}
	if err := f.db.Close(); err != nil {
		storageFault("compact: close state: %v", err)
	}
	f.db = nil
	if err := os.Rename(tmpPath, f.path); err != nil {
		f.logger.Error("compacting the state database after an erasure", "err", err)
	} else {
		installed = true
		if err := syncDir(dir); err != nil {
			storageFault("compact: %v", err)
		}
	}
	db, err := openStateDB(f.path, f.noSync)
	if err != nil {
		storageFault("compact: reopen: %v", fmt.Errorf("%w", err))
	}
	f.db = db
	// A state database set aside as possibly torn (statemark.go) holds
	// the records as they were before the erasure: it goes too.
	removeTorn(f.path)
	f.logger.Info("state database compacted after an erasure: deleted records left the file")
}
