package raft

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/tallyauth/tally/raft/raftpb"
)

// TestSweepFigures measures what a sweep does to applying (issue 14): a
// state database with N live refresh families, N used authorization codes
// and N device codes (default 1,000,000 each; TALLY_SWEEP_RECORDS), built
// by applying real RedeemCode and CreateDeviceCode commands, then a writer
// that sends one small command every millisecond to an apply loop that
// works like hashicorp/raft's (one goroutine; what is waiting is applied as
// one batch), while Sweeps are applied in between. Each write's latency is
// from its arrival until its batch committed. Rows: no sweep (the
// baseline), one unbounded Sweep (max_scan 0, the behaviour before issue
// 14), and a whole pass of bounded Sweeps (max_scan raft.SweepMaxScan,
// SweepPause apart, as the leader proposes them). It runs only with
// TALLY_FIGURES=1 (`make sweep-bench`):
//
//	TALLY_FIGURES=1 go test -run '^TestSweepFigures$' -v -timeout 60m ./raft/
func TestSweepFigures(t *testing.T) {
	if os.Getenv("TALLY_FIGURES") == "" {
		t.Skip("set TALLY_FIGURES=1 to measure")
	}
	n := 1_000_000
	if v := os.Getenv("TALLY_SWEEP_RECORDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("machine: %d cores (GOMAXPROCS %d), %s; load average before: %s", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), strings.TrimSpace(string(load)))

	f := openTestFSM(t)
	c := testClient("t", "c1")
	c.GrantTypes = []string{"authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"}
	mustApply(t, f, createTenant(t0, "t"), createClient(t0, c), flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u1", "Alice")}))

	// The records: live for hours after the sweeps' time.
	start := time.Now()
	const batch = 1000
	hash := func(kind byte, i int) []byte {
		b := make([]byte, 32)
		b[0] = kind
		binary.BigEndian.PutUint64(b[1:], uint64(i))
		return b
	}
	var cmds []*raftpb.Command
	flush := func() {
		if len(cmds) == 0 {
			return
		}
		logs := logOf(t, f.AppliedIndex()+1, cmds...)
		for i, r := range f.ApplyBatch(logs) {
			if res, ok := r.(Result); !ok || res.Err != nil {
				t.Fatalf("populating: entry %d: %v", i, r)
			}
		}
		cmds = cmds[:0]
	}
	for i := range n {
		fam := fmt.Sprintf("fam%08d", i)
		cmds = append(cmds, flowCmd(t0, &raftpb.RedeemCode{Tenant: "t", CodeHash: hash('c', i), CodeExpiresUnixNano: t0 + 24*hour,
			ClientId: "c1", UserId: "u1", Family: &raftpb.Family{Tenant: "t", Id: fam, ClientId: "c1", UserId: "u1", Generation: 1,
				CurrentHash: hash('f', i), ExpiresUnixNano: t0 + 30*24*hour, IdleTimeoutNanos: 24 * hour}}))
		uc := fmt.Sprintf("U%08d", i)
		cmds = append(cmds, flowCmd(t0, &raftpb.CreateDeviceCode{DeviceCode: &raftpb.DeviceCode{Tenant: "t", DeviceCodeHash: hash('d', i), UserCode: uc,
			ClientId: "c1", Scopes: []string{"openid"}, ExpiresUnixNano: t0 + 24*hour, IntervalNanos: 5 * sec}}))
		if len(cmds) >= batch {
			flush()
		}
	}
	flush()
	t.Logf("populated %d families, %d used codes, %d device codes in %s (state file %d MiB)", countKeys(t, f, "t", kindFamilies),
		countKeys(t, f, "t", kindUsedCodes), countKeys(t, f, "t", kindDeviceCodes), time.Since(start).Round(time.Second), fileSize(t, f.path)>>20)

	now := t0 + hour // nothing has expired: a sweep examines everything and removes nothing
	var seq atomic.Int64
	write := func() *raftpb.Command {
		i := seq.Add(1)
		return withRequestID(flowCmd(now, &raftpb.RotateRefresh{Tenant: "t", FamilyId: fmt.Sprintf("nofam%d", i), Generation: 1,
			TokenHash: hash('x', int(i)), ClientId: "c1", NewHash: hash('y', int(i))}), fmt.Sprintf("w%d", i))
	}

	type item struct {
		cmd     *raftpb.Command
		arrived time.Time
	}
	// run feeds a write every millisecond for d (or until sweeps returns)
	// to one apply loop; sweeps (if set) gets a function that queues a
	// Sweep and waits until it is applied, returning its apply time.
	run := func(name string, d time.Duration, sweeps func(apply func(*raftpb.Command) time.Duration) []time.Duration) {
		t.Helper()
		h := hdr.New(1, int64(60*time.Second/time.Microsecond), 3)
		queue := make(chan item, 1<<16)
		type sweepReq struct {
			cmd  *raftpb.Command
			done chan time.Duration
		}
		var works []time.Duration
		sweepQ := make(chan sweepReq)
		stop := make(chan struct{})
		loopDone := make(chan struct{})
		go func() { // the apply loop
			defer close(loopDone)
			for {
				select {
				case <-stop:
					return
				case s := <-sweepQ:
					t0 := time.Now()
					f.ApplyBatch(logOf(t, f.AppliedIndex()+1, s.cmd))
					d := time.Since(t0)
					f.mu.Lock()
					works = append(works, f.lastWork)
					f.mu.Unlock()
					s.done <- d
				case it := <-queue:
					items := []item{it}
				more:
					for len(items) < 64 {
						select {
						case it := <-queue:
							items = append(items, it)
						default:
							break more
						}
					}
					cs := make([]*raftpb.Command, len(items))
					for i, it := range items {
						cs[i] = it.cmd
					}
					f.ApplyBatch(logOf(t, f.AppliedIndex()+1, cs...))
					done := time.Now()
					for _, it := range items {
						_ = h.RecordValue(done.Sub(it.arrived).Microseconds())
					}
				}
			}
		}()
		feedDone := make(chan struct{})
		go func() { // the writer: one command a millisecond
			defer close(feedDone)
			tk := time.NewTicker(time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stop:
					return
				case now := <-tk.C:
					queue <- item{write(), now}
				}
			}
		}()
		began := time.Now()
		var sweepTimes []time.Duration
		if sweeps != nil {
			time.Sleep(200 * time.Millisecond)
			sweepTimes = sweeps(func(cmd *raftpb.Command) time.Duration {
				r := sweepReq{cmd, make(chan time.Duration)}
				sweepQ <- r
				return <-r.done
			})
			time.Sleep(200 * time.Millisecond)
		} else {
			time.Sleep(d)
		}
		close(stop)
		<-feedDone
		<-loopDone
		el := time.Since(began)
		var total time.Duration
		sh := hdr.New(1, int64(60*time.Second/time.Microsecond), 3)
		for _, s := range sweepTimes {
			_ = sh.RecordValue(s.Microseconds())
			total += s
		}
		ms := func(us int64) string { return fmt.Sprintf("%.2f ms", float64(us)/1000) }
		wh := hdr.New(1, int64(60*time.Second/time.Microsecond), 3)
		for _, w := range works {
			_ = wh.RecordValue(w.Microseconds())
		}
		sweepCols := "- | - | - | - | - | - | -"
		if len(sweepTimes) > 0 {
			sweepCols = fmt.Sprintf("%s | %s | %s | %s | %s | %s | %s", ms(sh.ValueAtQuantile(50)), ms(sh.ValueAtQuantile(99)), ms(sh.Max()),
				ms(wh.ValueAtQuantile(50)), ms(wh.ValueAtQuantile(99)), ms(wh.Max()), total.Round(time.Millisecond))
		}
		t.Logf("| %s | %s | %d | %s | %s | %s | %s | %d | %s |", name, el.Round(time.Millisecond), h.TotalCount(),
			ms(h.ValueAtQuantile(50)), ms(h.ValueAtQuantile(99)), ms(h.ValueAtQuantile(99.9)), ms(h.Max()), len(sweepTimes), sweepCols)
	}
	// A sweep's apply is its work in the transaction plus the commit
	// (write and fsync, as for any batch): both are reported.
	t.Log("| row | elapsed | writes | write p50 | p99 | p99.9 | max | sweeps | sweep apply p50 | p99 | max | sweep work before commit p50 | p99 | max | all sweeps |")
	t.Log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	run("no sweep (baseline)", 3*time.Second, nil)
	run("one unbounded Sweep (max_scan 0)", 0, func(apply func(*raftpb.Command) time.Duration) []time.Duration {
		return []time.Duration{apply(sweep(now))}
	})
	run(fmt.Sprintf("one pass of bounded Sweeps (max_scan %d, %s apart)", SweepMaxScan, SweepPause), 0, func(apply func(*raftpb.Command) time.Duration) []time.Duration {
		var out []time.Duration
		for {
			out = append(out, apply(boundedSweep(now, SweepMaxScan)))
			if !f.SweepMore() {
				return out
			}
			time.Sleep(SweepPause)
		}
	})
	run("no sweep (baseline, again)", 3*time.Second, nil)
	load, _ = os.ReadFile("/proc/loadavg")
	t.Logf("load average after: %s", strings.TrimSpace(string(load)))
}
