package loadtest

// The Raft write figures of BENCHMARKS.md ("Replicated writes"): committed
// writes/s and latency on one node and on three, with and without a 30 ms
// one-way delay between two "regions", local reads during that load, and
// the time from a leader kill to the first acknowledged write.
//
//	TALLY_FIGURES=1 go test -run '^TestRaftFigures$' -v -timeout 30m ./loadtest/
//
// Without TALLY_FIGURES the same code runs briefly as a smoke test (and its
// numbers mean nothing).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

const figT0 = int64(1_700_000_000_000_000_000)

// figureTiming gives nodes the production LAN timing (raft.DefaultConfig)
// instead of rafttest's shortened one.
func figureTiming(cfg *raft.Config) {
	d := raft.DefaultConfig()
	cfg.HeartbeatTimeout, cfg.ElectionTimeout = d.HeartbeatTimeout, d.ElectionTimeout
	cfg.LeaderLeaseTimeout, cfg.CommitTimeout = d.LeaderLeaseTimeout, d.CommitTimeout
	cfg.MaxAppendEntries = d.MaxAppendEntries
}

func figSeed(t *testing.T, c *rafttest.Cluster) {
	t.Helper()
	for _, cmd := range []*raftpb.Command{
		{Version: raft.CommandVersion, TimeUnixNano: figT0, Op: &raftpb.Command_CreateTenant{CreateTenant: &raftpb.CreateTenant{
			Tenant: &raftpb.Tenant{Id: "acme", SigningAlg: "ES256"},
			Keys: []*raftpb.Key{{Kid: "k1", Alg: "ES256", Use: "sig", PublicKey: []byte("pub"),
				EncryptedPrivate: []byte("priv"), RetentionNanos: int64(time.Hour)}},
		}}},
		{Version: raft.CommandVersion, TimeUnixNano: figT0, Op: &raftpb.Command_CreateClient{CreateClient: &raftpb.CreateClient{
			Client: &raftpb.Client{Tenant: "acme", Id: "c1", Secrets: []*raftpb.SecretHash{{Hash: []byte("h")}},
				GrantTypes: []string{"client_credentials"}, TokenFormat: "jwt"},
		}}},
	} {
		if res := c.Propose(cmd); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
}

func figRevoke(jti string) *raftpb.Command {
	return &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: figT0 + 1, RequestId: "rid-" + jti,
		Op: &raftpb.Command_RevokeToken{RevokeToken: &raftpb.RevokeToken{Revocation: &raftpb.Revocation{
			Tenant: "acme", Jti: jti, ExpiresUnixNano: figT0 + int64(time.Hour)}}}}
}

// writeFigure is one closed-loop write run.
type writeFigure struct {
	name      string
	writers   int
	elapsed   time.Duration
	ok, errs  int64
	hist      *hdrhistogram.Histogram
	readHist  *hdrhistogram.Histogram // local reads during the run, if measured
	readNodes string
	// readErrs counts reads that missed the client; readRevoked those that
	// found the jti revoked (the writers had got there first).
	readErrs, readRevoked int
}

// runWrites has writers revoke unique jtis through node n (the leader) for
// d, each waiting for its acknowledgement before the next write. With
// reader set, one more goroutine reads reader's State (client lookup and
// revocation check, what token issuance and introspection do) in a loop.
func runWrites(n *raft.Node, writers int, d time.Duration, prefix string, reader *raft.Node) writeFigure {
	f := writeFigure{writers: writers, hist: newHistogram()}
	var mu sync.Mutex
	var ok, errs atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := newHistogram()
			for seq := 0; ctx.Err() == nil; seq++ {
				t := time.Now()
				pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
				res, err := n.Propose(pctx, figRevoke(fmt.Sprintf("%s-%d-%d", prefix, w, seq)))
				pcancel()
				recordLatency(h, time.Since(t))
				if err != nil || res.Err != nil {
					errs.Add(1)
				} else {
					ok.Add(1)
				}
			}
			mu.Lock()
			f.hist.Merge(h)
			mu.Unlock()
		}()
	}
	if reader != nil {
		f.readHist = hdrhistogram.New(1, int64(time.Second), 3) // nanoseconds
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := reader.State()
			for i := 0; ctx.Err() == nil; i++ {
				jti := fmt.Sprintf("%s-0-%d", prefix, i)
				t := time.Now()
				c, found := st.Client("acme", "c1")
				revoked := st.Revoked("acme", jti)
				_ = f.readHist.RecordValue(max(int64(time.Since(t)), 1)) // in range: reads take well under a second
				if !found || c.Disabled {
					f.readErrs++
				}
				if revoked {
					f.readRevoked++
				}
				if i%64 == 0 {
					runtime.Gosched() // leave the cores to the writers now and then
				}
			}
		}()
	}
	wg.Wait()
	f.elapsed = time.Since(start)
	f.ok, f.errs = ok.Load(), errs.Load()
	return f
}

func (f writeFigure) row() string {
	rate := float64(f.ok) / f.elapsed.Seconds()
	return fmt.Sprintf("| %s | %d | %d | %.0f | %s | %s | %s | %d |",
		f.name, f.writers, f.ok, rate,
		fmtLatency(time.Duration(f.hist.ValueAtQuantile(50))),
		fmtLatency(time.Duration(f.hist.ValueAtQuantile(99))),
		fmtLatency(time.Duration(f.hist.Max())), f.errs)
}

func readRow(f writeFigure) string {
	h := f.readHist
	return fmt.Sprintf("| %s | %d | %s | %d | %.1fµs | %.1fµs | %.1fµs | %d |", f.name, f.writers, f.readNodes, h.TotalCount(),
		float64(h.ValueAtQuantile(50))/1e3, float64(h.ValueAtQuantile(99))/1e3, float64(h.ValueAtQuantile(99.9))/1e3, f.readErrs)
}

func figMachine() string {
	model := ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%d cores (GOMAXPROCS %d), %s, %s %s/%s; all nodes and writers in one process on these cores; load average before: %s",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), model, runtime.Version(), runtime.GOOS, runtime.GOARCH, load)
}

// failover kills the leader of a fresh 3-node cluster under a write load
// and returns the time from the kill to the first write acknowledged after
// it, and to the new leader's election.
func failover(t *testing.T, opts ...func(*raft.Config)) (firstWrite, elected time.Duration) {
	c := rafttest.NewCluster(t, 3, opts...)
	defer c.Close()
	figSeed(t, c)
	var killedAt atomic.Int64 // unix nanos; 0 before the kill
	firstAck := make(chan time.Time, 1)
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				call := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.TryPropose(ctx, figRevoke(fmt.Sprintf("fo-%d-%d", w, seq)))
				cancel()
				if err != nil {
					continue
				}
				acked.Add(1)
				// Only a write sent after the kill proves the new leader.
				if k := killedAt.Load(); k != 0 && call.UnixNano() > k {
					select {
					case firstAck <- time.Now():
					default:
					}
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	rafttest.CheckFor(t, time.Minute, 5*time.Millisecond, func() error {
		if acked.Load() < 50 {
			return errors.New("warming up")
		}
		return nil
	})
	old := c.LeaderIndex()
	kill := time.Now()
	killedAt.Store(kill.UnixNano())
	c.Kill(old)
	rafttest.CheckFor(t, time.Minute, time.Millisecond, func() error {
		if n := c.LeaderNow(); n == nil || n.ID() == c.ID(old) {
			return errors.New("no new leader")
		}
		return nil
	})
	elected = time.Since(kill)
	select {
	case at := <-firstAck:
		firstWrite = at.Sub(kill)
	case <-time.After(time.Minute):
		t.Fatal("no write acknowledged within a minute of the leader kill")
	}
	return firstWrite, elected
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func TestRaftFigures(t *testing.T) {
	full := os.Getenv("TALLY_FIGURES") == "1"
	// The smoke run keeps rafttest's fast elections to stay short.
	dur, concs, foRuns, timing := 200*time.Millisecond, []int{1, 16}, 1, func(*raft.Config) {}
	if full {
		dur, concs, foRuns, timing = 5*time.Second, []int{1, 16, 64}, 7, figureTiming
	}
	var out strings.Builder
	say := func(format string, args ...any) { fmt.Fprintf(&out, format+"\n", args...) }
	say("date: %s", time.Now().UTC().Format(time.RFC3339))
	say("machine: %s", figMachine())
	say("")
	header := "| setup | writers | writes ok | writes/s | p50 | p99 | max | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|"

	// 1. One node beside three on loopback, same run.
	say("### Loopback: one node beside three (%v per row)", dur)
	say("")
	say("%s", header)
	for _, size := range []int{1, 3} {
		c := rafttest.NewCluster(t, size, timing)
		figSeed(t, c)
		leader := c.Leader()
		for _, w := range concs {
			f := runWrites(leader, w, dur, fmt.Sprintf("lo%d-%d", size, w), nil)
			f.name = map[int]string{1: "1 node, loopback", 3: "3 nodes, loopback"}[size]
			say("%s", f.row())
		}
		c.Close()
	}
	say("")

	// 2. Two regions: node0 alone in region A, node1 and node2 in region
	// B, 30 ms one way between the regions.
	const oneWay = 30 * time.Millisecond
	say("### Two regions, %v one way between A (node0) and B (node1, node2) (%v per row)", oneWay, dur)
	say("")
	say("%s", header)
	c := rafttest.NewCluster(t, 3, timing)
	figSeed(t, c)
	for _, b := range []int{1, 2} {
		c.Delay(0, b, oneWay)
		c.Delay(b, 0, oneWay)
	}
	var reads []writeFigure
	for _, place := range []struct {
		leader      int
		name, short string
		reader      int
	}{
		{0, "leader in A (alone): every commit needs an ack from B", "leader in A (alone)", 0},
		{1, "leader in B: the quorum is inside B", "leader in B", 0},
	} {
		rafttest.CheckFor(t, time.Minute, 10*time.Millisecond, func() error {
			l := c.Leader()
			if l.ID() == c.ID(place.leader) {
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return l.TransferLeadership(ctx, c.ID(place.leader))
		})
		for _, w := range concs {
			f := runWrites(c.Node(place.leader), w, dur, fmt.Sprintf("rg%d-%d", place.leader, w), c.Node(place.reader))
			f.name = place.name
			f.readNodes = fmt.Sprintf("node%d (%s)", place.reader, map[bool]string{true: "the leader", false: "a follower"}[place.reader == place.leader])
			say("%s", f.row())
			f.name = place.short
			reads = append(reads, f)
		}
	}
	c.Close()
	say("")
	say("Local reads in region A during those writes (client lookup + revocation check on the node's replica, what token issuance and introspection do):")
	say("")
	say("| write setup | writers | read on | reads | p50 | p99 | p99.9 | misses |\n|---|---:|---|---:|---:|---:|---:|---:|")
	for _, f := range reads {
		say("%s", readRow(f))
	}
	say("")

	// 3. Leader kill to first acknowledged write on the new leader.
	say("### Leader kill → first acknowledged write (%d runs each, 4 retrying writers)", foRuns)
	say("")
	say("| Raft timing | election: median (min–max) | first write: median (min–max) |\n|---|---|---|")
	type profile struct {
		name string
		opts []func(*raft.Config)
	}
	profiles := []profile{{"rafttest (heartbeat/election 300 ms, lease 150 ms)", nil}}
	if full {
		profiles = append([]profile{{"production LAN (heartbeat/election 1 s, lease 500 ms)", []func(*raft.Config){figureTiming}}}, profiles...)
	}
	for _, prof := range profiles {
		var firsts, elects []time.Duration
		for range foRuns {
			fw, el := failover(t, prof.opts...)
			firsts, elects = append(firsts, fw), append(elects, el)
		}
		say("| %s | %s (%s–%s) | %s (%s–%s) |", prof.name,
			fmtLatency(median(elects)), fmtLatency(slices.Min(elects)), fmtLatency(slices.Max(elects)),
			fmtLatency(median(firsts)), fmtLatency(slices.Min(firsts)), fmtLatency(slices.Max(firsts)))
	}
	t.Logf("\n%s", out.String())
}
