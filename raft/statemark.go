package raft

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The state database is written without fsync (issue 14).
//
// Acknowledged writes are durable in the Raft log (fsynced on a quorum
// before they commit) and in Raft snapshots (fsynced by the snapshot store
// before the log is compacted); the state database is derived from them. So
// the FSM opens it with bbolt's NoSync: a committed batch is in the page
// cache, not necessarily on the disk. That costs nothing on a process crash
// (SIGKILL, a panic, the OOM killer): the kernel keeps the page cache and
// writes it back, and the next process reads the file as it was committed.
// It matters on an OS crash or a power loss: the file may then miss pages of
// committed batches in any combination, including a meta page that points
// at pages never written (a torn file bbolt cannot detect).
//
// The state mark tells the two apart. It is a small file beside the state
// database (<state.db>.mark) naming the kernel boot (Linux boot_id) that has
// the database open and whether its last close was clean:
//
//   - OpenFSM writes "dirty, boot B" and fsyncs it (and the directory)
//     before the first NoSync commit of boot B.
//   - FSM.Close fsyncs the database (db.Sync) and then writes "clean".
//   - At open, a "dirty" mark of another boot (or one that does not parse)
//     means the machine went down while the database had unsynced
//     commits: OpenFSM moves the file aside (<state.db>.torn-<UTC time>,
//     kept for forensics until the next one or the next erasure, which
//     removes it with the erased records) and starts from an
//     empty database. Node.Open then sees an applied index of 0: Raft
//     restores the latest snapshot and replays the log after it, which it
//     holds because the log is compacted only up to a snapshot. A "dirty"
//     mark of this boot (the process died, the machine did not) and a
//     "clean" mark keep the file; so does a missing mark (a database
//     written by an older tally, which fsynced every commit).
//
// Where the boot cannot be told (no /proc/sys/kernel/random/boot_id), the
// database is opened with fsync on every commit, as before, and marked
// clean.
const stateMarkSuffix = ".mark"

// bootIDPath is where Linux exposes the id of the current boot; a variable
// for tests.
var bootIDPath = "/proc/sys/kernel/random/boot_id"

// currentBoot returns the kernel boot id, or "" where there is none.
func currentBoot() string {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// stateMark is the content of the mark file.
type stateMark struct {
	boot  string
	clean bool
}

const stateMarkHeader = "tally state database mark v1"

func (m stateMark) encode() []byte {
	state := "dirty"
	if m.clean {
		state = "clean"
	}
	return fmt.Appendf(nil, "%s\nboot %s\nstate %s\n", stateMarkHeader, m.boot, state)
}

// readStateMark reads the mark of the database at path. exists is false
// when there is none; an error means it exists but does not parse.
func readStateMark(path string) (m stateMark, exists bool, err error) {
	b, err := os.ReadFile(path + stateMarkSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return stateMark{}, false, nil
	}
	if err != nil {
		return stateMark{}, true, err
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 3 || lines[0] != stateMarkHeader || !strings.HasPrefix(lines[1], "boot ") {
		return stateMark{}, true, fmt.Errorf("state mark %s: unreadable", path+stateMarkSuffix)
	}
	m.boot = strings.TrimPrefix(lines[1], "boot ")
	switch lines[2] {
	case "state clean":
		m.clean = true
	case "state dirty":
	default:
		return stateMark{}, true, fmt.Errorf("state mark %s: unreadable", path+stateMarkSuffix)
	}
	return m, true, nil
}

// writeStateMark replaces the mark atomically and durably: a temporary
// file, fsynced, renamed over the mark, and the directory fsynced.
func writeStateMark(path string, m stateMark) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+stateMarkSuffix+".tmp-*")
	if err != nil {
		return fmt.Errorf("raft: state mark: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(m.encode()); err != nil {
		return fmt.Errorf("raft: state mark: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("raft: state mark: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("raft: state mark: %w", err)
	}
	if err := os.Rename(tmp.Name(), path+stateMarkSuffix); err != nil {
		return fmt.Errorf("raft: state mark: %w", err)
	}
	ok = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("raft: state mark: %w", err)
	}
	return nil
}

// prepareStateDB decides, before the state database at path is opened,
// whether the file can be trusted (see the comment on stateMarkSuffix) and
// marks it open by this boot. It returns whether to open it without fsync:
// true when the boot is known.
func prepareStateDB(path, boot string, logger *slog.Logger) (noSync bool, err error) {
	m, exists, merr := readStateMark(path)
	torn := merr != nil || (exists && !m.clean && (m.boot != boot || boot == ""))
	if torn {
		if _, err := os.Stat(path); err == nil {
			aside, err := setAsideTorn(path)
			if err != nil {
				return false, err
			}
			logger.Warn("the state database was open without fsync when the machine went down: it may be torn, so it is set aside and rebuilt from the latest Raft snapshot and the log",
				"set_aside", aside, "mark_boot", m.boot, "boot", boot, "mark_err", merr)
		}
	}
	if boot == "" {
		// Every commit is fsynced: the file is always clean.
		return false, writeStateMark(path, stateMark{clean: true})
	}
	return true, writeStateMark(path, stateMark{boot: boot})
}

// setAsideTorn renames a possibly torn state database to
// <path>.torn-<UTC time> (removing an older such file, so repeated crashes
// do not fill the disk) and fsyncs the directory.
func setAsideTorn(path string) (string, error) {
	removeTorn(path)
	aside := path + ".torn-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("raft: set aside a torn state database: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("raft: set aside a torn state database: %w", err)
	}
	return aside, nil
}

// removeTorn removes state databases set aside by setAsideTorn: an older
// one when another is set aside, and every one after an erasure (they hold
// the erased records; compact.go).
func removeTorn(path string) {
	old, _ := filepath.Glob(path + ".torn-*")
	for _, o := range old {
		_ = os.Remove(o)
	}
}
