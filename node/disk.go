package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/metric"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/raft"
)

// DefaultMinFreeDisk is the default free-space watermark (Config.MinFreeDisk).
// Below it a node refuses writes; the space left is the reserve its replica
// needs to keep applying what the rest of the cluster commits (a few hundred
// thousand revocations) and to take a snapshot, so that it keeps issuing and
// introspecting from an up-to-date replica while an operator frees space.
const DefaultMinFreeDisk = 256 << 20

// ErrDiskLow marks a write refused because this node's data file system has
// less free space than Config.MinFreeDisk, or a write to its storage failed
// for lack of space.
var ErrDiskLow = errors.New("node: disk space low")

// Disk watch timing: how often the free space is measured in the
// background, how old a measurement a write check may use, and how long a
// leader low on disk waits after a leadership transfer before trying again.
const (
	diskCheckEvery    = time.Second
	diskCheckMaxAge   = 250 * time.Millisecond
	diskTransferEvery = 5 * time.Second
)

// diskWatch measures the free space of the file system that holds the data
// directory and decides whether this node may propose writes. Its methods
// are safe for concurrent use.
type diskWatch struct {
	dir string
	min uint64
	log *slog.Logger
	rn  *raft.Node

	mu      sync.Mutex // serialises measurements
	checked atomic.Int64
	free    atomic.Uint64
	total   atomic.Uint64
	low     atomic.Bool
	statErr atomic.Pointer[string]
}

func newDiskWatch(dir string, min uint64, rn *raft.Node, log *slog.Logger) *diskWatch {
	d := &diskWatch{dir: dir, min: min, rn: rn, log: log}
	d.measure()
	return d
}

func (d *diskWatch) old() bool {
	return time.Since(time.Unix(0, d.checked.Load())) > diskCheckMaxAge
}

// measureIfOld measures unless another caller just did: under a burst of
// writes one statfs serves them all.
func (d *diskWatch) measureIfOld() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.old() {
		d.measureLocked()
	}
}

// measure runs statfs on the data directory and logs a change of state.
func (d *diskWatch) measure() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.measureLocked()
}

func (d *diskWatch) measureLocked() {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.dir, &st); err != nil {
		// Unknown free space does not refuse writes: a failing write
		// says so itself (raft.StorageFault).
		msg := err.Error()
		if old := d.statErr.Swap(&msg); old == nil {
			d.log.Warn("cannot measure free disk space", "dir", d.dir, "err", err)
		}
		d.checked.Store(time.Now().UnixNano())
		return
	}
	d.statErr.Store(nil)
	free := st.Bavail * uint64(st.Bsize)
	d.free.Store(free)
	d.total.Store(st.Blocks * uint64(st.Bsize))
	d.checked.Store(time.Now().UnixNano())
	low := d.min > 0 && free < d.min
	if was := d.low.Swap(low); was != low {
		if low {
			d.log.Error("free disk space below the watermark: refusing writes until space is freed; issuance and introspection continue",
				"dir", d.dir, "free_bytes", free, "min_free_disk", d.min)
		} else {
			d.log.Info("free disk space back above the watermark: accepting writes", "dir", d.dir, "free_bytes", free, "min_free_disk", d.min)
		}
	}
}

// refused is the write gate (raft.Node.SetWriteGate): why this node must not
// propose a write now, or nil. It re-measures when the last measurement is
// older than diskCheckMaxAge.
func (d *diskWatch) refused() error {
	if d.old() {
		d.measureIfOld()
	}
	if d.low.Load() {
		return fmt.Errorf("%w: %s free on the data file system, below min_free_disk %s", ErrDiskLow,
			humanBytes(d.free.Load()), FormatByteSize(d.min))
	}
	if sf, ok := d.rn.StorageFault(); ok {
		return fmt.Errorf("%w: %v", ErrDiskLow, sf)
	}
	return nil
}

// reasons lists what /readyz reports about storage: a refused write gate
// and any failing write to the node's storage.
func (d *diskWatch) reasons() []string {
	var why []string
	if err := d.refused(); err != nil {
		why = append(why, "refusing writes: "+err.Error())
	}
	if sf, ok := d.rn.StorageFault(); ok {
		why = append(why, sf.Error())
	}
	return why
}

// run measures every diskCheckEvery until ctx ends. While this node leads
// and refuses writes, it hands leadership to a voter that is healthy (not
// low on disk itself, not stale, reachable) and not lagging, trying again
// diskTransferEvery after a transfer and at every tick while there is no
// such voter: a leader that refuses proposals makes the whole cluster
// read-only although a quorum of healthy nodes could take writes. When no
// voter qualifies it stays leader and keeps refusing: a new leader would
// refuse too, and an election costs a second of unavailability.
func (d *diskWatch) run(ctx context.Context, c *cluster) {
	t := time.NewTicker(diskCheckEvery)
	defer t.Stop()
	var lastTransfer time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.measure()
		if c == nil || !d.rn.IsLeader() || d.refused() == nil || time.Since(lastTransfer) < diskTransferEvery {
			continue
		}
		if d.handOver(ctx, c) {
			lastTransfer = time.Now()
		}
	}
}

// handOver transfers leadership to the healthy voter with the least lag,
// if there is one; it reports whether it tried. hashicorp/raft catches the
// target up before handing over, so a small lag is no obstacle.
func (d *diskWatch) handOver(ctx context.Context, c *cluster) bool {
	st, err := c.status(ctx, statusTimeout)
	if err != nil {
		return false
	}
	var best *clusterv1.MemberStatus
	for _, m := range st.Members {
		if m.Id == c.cfg.NodeID || !m.Voter || m.Leader || m.Health != "healthy" {
			continue
		}
		if best == nil || m.Lag < best.Lag {
			best = m
		}
	}
	if best == nil {
		d.log.Warn("leader low on disk and no healthy voter to hand leadership to: writes stay refused")
		return false
	}
	tctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
	err = d.rn.TransferLeadership(tctx, best.Id)
	cancel()
	d.log.Warn("leader low on disk: handing leadership to a healthy voter", "to", best.Id, "lag", best.Lag, "err", err)
	return true
}

// observe registers the disk gauges: tally_disk_free_bytes,
// tally_disk_total_bytes, tally_disk_min_free_bytes (the watermark),
// tally_disk_low (1 while writes are refused for
// lack of space) and tally_storage_fault (1 while a write to the state
// database or Raft log is failing).
func (d *diskWatch) observe(m metric.Meter) error {
	free, err := m.Int64ObservableGauge("tally.disk.free", metric.WithUnit("By"),
		metric.WithDescription("free space on the data file system (available to the node)"))
	if err != nil {
		return err
	}
	total, err := m.Int64ObservableGauge("tally.disk.total", metric.WithUnit("By"),
		metric.WithDescription("size of the data file system"))
	if err != nil {
		return err
	}
	low, err := m.Int64ObservableGauge("tally.disk.low",
		metric.WithDescription("1 while the node refuses writes for lack of disk space (min_free_disk or a failing write)"))
	if err != nil {
		return err
	}
	minFree, err := m.Int64ObservableGauge("tally.disk.min_free", metric.WithUnit("By"),
		metric.WithDescription("the min_free_disk watermark: below it the node refuses writes (0: off)"))
	if err != nil {
		return err
	}
	fault, err := m.Int64ObservableGauge("tally.storage.fault",
		metric.WithDescription("1 while a write to the state database or the Raft log is failing"))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(free, int64(min(d.free.Load(), 1<<62)))
		o.ObserveInt64(total, int64(min(d.total.Load(), 1<<62)))
		o.ObserveInt64(minFree, int64(min(d.min, 1<<62)))
		o.ObserveInt64(low, b2i(d.refused() != nil))
		_, f := d.rn.StorageFault()
		o.ObserveInt64(fault, b2i(f))
		return nil
	}, free, total, minFree, low, fault)
	return err
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ParseByteSize parses a byte count with an optional binary suffix: "0",
// "1048576", "512KiB", "256MiB", "2GiB", "1TiB". The suffix is
// case-insensitive; a plain "B" is allowed.
func ParseByteSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	lower := strings.ToLower(t)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40}, {"b", 1}} {
		if strings.HasSuffix(lower, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || t == "" {
		return 0, fmt.Errorf("byte size %q: want a whole number of bytes with an optional KiB, MiB, GiB or TiB suffix", s)
	}
	if n > (1<<64-1)/mult {
		return 0, fmt.Errorf("byte size %q is too large", s)
	}
	return n * mult, nil
}

// FormatByteSize writes n in the largest binary unit that divides it, so
// that ParseByteSize reads it back ("256MiB", "1000").
func FormatByteSize(n uint64) string {
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatUint(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(n, 10)
}

// humanBytes is n for messages: "12.3MiB".
func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return strconv.FormatUint(n, 10) + "B"
}
