package rafttest

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// SmallDisk is a size-capped file system for disk-full tests: a tmpfs
// mounted on a fresh directory. Fill takes its free space away with a
// ballast file and Free gives it back.
type SmallDisk struct {
	tb      testing.TB
	Dir     string // the mount point
	ballast string
}

// MountSmallDisk mounts a tmpfs of size bytes on a temporary directory and
// unmounts it when the test ends (register it before anything that keeps
// files open on it, so that it is cleaned up last). It skips the test, with
// the reason, only when mounting is impossible: not root (no
// CAP_SYS_ADMIN). CI runs as root.
func MountSmallDisk(tb testing.TB, size int64) *SmallDisk {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	opts := "size=" + strconv.FormatInt(size, 10) + ",mode=0700"
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			tb.Skipf("disk-full test needs a size-capped tmpfs and mounting one is not permitted here (%v; run as root)", err)
		}
		tb.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			// Something still holds a file open: detach so the mount goes
			// away when it is closed, and say so.
			tb.Logf("unmount %s: %v; detaching", dir, err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return &SmallDisk{tb: tb, Dir: dir, ballast: filepath.Join(dir, "ballast")}
}

// Available returns the bytes available on the disk.
func (d *SmallDisk) Available() int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.Dir, &st); err != nil {
		d.tb.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// Fill grows the ballast file until at most leave bytes are available
// (leave 0: the disk is full and every write fails with ENOSPC).
func (d *SmallDisk) Fill(leave int64) {
	d.tb.Helper()
	f, err := os.OpenFile(d.ballast, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		d.tb.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		d.tb.Fatal(err)
	}
	size := st.Size()
	const page = 4096
	for {
		grow := (d.Available() - leave) / page * page
		for grow >= page {
			err := syscall.Fallocate(int(f.Fd()), 0, size, grow)
			if err == nil {
				size += grow
				break
			}
			if !errors.Is(err, syscall.ENOSPC) {
				d.tb.Fatalf("fill %s: %v", d.Dir, err)
			}
			grow = grow / 2 / page * page // the node wrote meanwhile
		}
		if grow < page {
			return
		}
	}
}

// Free removes the ballast file.
func (d *SmallDisk) Free() {
	d.tb.Helper()
	if err := os.Remove(d.ballast); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.tb.Fatal(err)
	}
}
