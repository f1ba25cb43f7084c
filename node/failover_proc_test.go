package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/node/proctest"
)

// gapWriteEvery is the pause between the writes of the write-gap client.
const gapWriteEvery = 100 * time.Millisecond

// gapRuns is how many faults a write-gap test injects
// (TALLY_GAP_RUNS overrides, for figures).
func gapRuns(t *testing.T, def int) int {
	if v := os.Getenv("TALLY_GAP_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TALLY_GAP_RUNS=%q", v)
		}
		return n
	}
	return def
}

// revokeVia makes one admin write (a revocation by jti) through p.
func revokeVia(c *proctest.Cluster, p *proctest.Proc, jti string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Call(ctx, p, "/tally.admin.v1.AdminService/RevokeToken", map[string]any{
		"tenant": "default", "jti": jti, "expiresAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano), "reason": "gap",
	}, nil)
}

// writeGap injects fault into the leader while a client makes admin
// writes through a follower one after another, gapWriteEvery apart, and
// returns the time from the fault to the first write acknowledged after
// it. It then calls heal and waits until every node is ready again.
func writeGap(t *testing.T, c *proctest.Cluster, run int, fault, heal func(*proctest.Proc)) time.Duration {
	t.Helper()
	leader := c.Leader(30 * time.Second)
	via := c.Followers(leader)[0]
	// The default tenant appears shortly after the nodes are ready.
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		return revokeVia(c, via, fmt.Sprintf("warm-%d", run))
	})

	// One client, as in the issue: it sends a write, waits for the answer
	// (success or failure), pauses gapWriteEvery and sends the next.
	type outcome struct {
		sent, done time.Time
		err        error
	}
	var mu sync.Mutex
	var outs []outcome
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for seq := 0; ; seq++ {
			sent := time.Now()
			err := revokeVia(c, via, fmt.Sprintf("gap-%d-%d", run, seq))
			mu.Lock()
			outs = append(outs, outcome{sent: sent, done: time.Now(), err: err})
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(gapWriteEvery):
			}
		}
	}()
	<-time.After(500 * time.Millisecond) // some writes before the fault
	at := time.Now()
	fault(leader)
	// The gap ends with the first write acknowledged after the fault. An
	// acknowledgement within gapSettle of the fault is one the leader
	// sent before it stopped, and does not end the gap.
	const gapSettle = 50 * time.Millisecond
	var gap time.Duration
	deadline := time.Now().Add(2 * nodetest.Timeout) // an election on a loaded machine took 12 s
	for gap == 0 && time.Now().Before(deadline) {
		<-time.After(20 * time.Millisecond)
		mu.Lock()
		for _, o := range outs {
			if d := o.done.Sub(at); o.err == nil && d >= gapSettle && (gap == 0 || d < gap) {
				gap = d
			}
		}
		mu.Unlock()
	}
	close(stop)
	<-finished
	healAt := time.Now()
	heal(leader)
	c.WaitReady(90 * time.Second)
	if d := time.Since(healAt); d > 10*time.Second {
		t.Logf("run %d: the cluster took %s to be ready again after healing %s", run, d.Round(time.Millisecond), leader.ID)
	}
	if gap == 0 {
		t.Fatalf("run %d: no write through %s succeeded within %v of the fault", run, via.ID, 2*nodetest.Timeout)
	}
	elected := electedAfter(c, at)
	t.Logf("run %d: a new leader was elected %s after the fault; the first write through %s succeeded after %s",
		run, elected.Round(time.Millisecond), via.ID, gap.Round(time.Millisecond))
	return gap
}

// electedAfter reads the nodes' logs for the first "entering leader state"
// after at, and returns how long after at it was (0 if none).
func electedAfter(c *proctest.Cluster, at time.Time) time.Duration {
	var first time.Time
	for _, p := range c.Nodes() {
		b, err := os.ReadFile(p.LogFile)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			var rec struct {
				Time time.Time `json:"time"`
				Msg  string    `json:"msg"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "entering leader state" || !rec.Time.After(at) {
				continue
			}
			if first.IsZero() || rec.Time.Before(first) {
				first = rec.Time
			}
		}
	}
	if first.IsZero() {
		return 0
	}
	return first.Sub(at)
}

// gapBound is the write gap a quiet machine stays under (target 2 s).
const gapBound = 4 * time.Second

// checkGap holds a run's write gap to gapBound only when figures are
// measured (TALLY_FIGURES=1, on a quiet machine). In make test the gap is
// logged: it is a speed figure, and on a loaded machine (two cores, the
// race detector, another CPU-heavy process) an election alone took 12 s;
// writeGap itself fails the test when no write succeeds at all.
func checkGap(t *testing.T, run int, fault string, gap time.Duration) {
	t.Helper()
	if gap <= gapBound {
		return
	}
	if os.Getenv("TALLY_FIGURES") != "" {
		t.Errorf("run %d: first write %s after the leader's %s, want under %v (target 2s)", run, gap, fault, gapBound)
		return
	}
	t.Logf("run %d: first write %s after the leader's %s, over the %v a quiet machine stays under (a figure, asserted with TALLY_FIGURES=1)", run, gap, fault, gapBound)
}

func reportGaps(t *testing.T, what string, gaps []time.Duration) {
	s := slices.Clone(gaps)
	slices.Sort(s)
	t.Logf("%s: write gap over %d runs: p50 %s, max %s, all %v", what, len(s),
		s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), s)
}

// TestLeaderFreezeWriteGap stops the leader of three real `tally serve`
// processes with SIGSTOP while a client sends a revocation through a
// follower every 100 ms, and measures how long after the SIGSTOP the
// first write succeeds. Forwarding notices the leader is gone within the
// leader lease and retries at the new leader, so the gap is about one
// election (target under 2 s), not the write timeout (5 s). The figure is
// logged; the 4 s bound is asserted only with TALLY_FIGURES=1 (checkGap):
// on a loaded machine an election alone may take longer.
func TestLeaderFreezeWriteGap(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := proctest.Start(t, proctest.Options{})
	var gaps []time.Duration
	for run := range gapRuns(t, 3) {
		gap := writeGap(t, c, run, (*proctest.Proc).Freeze, (*proctest.Proc).Thaw)
		gaps = append(gaps, gap)
		checkGap(t, run, "SIGSTOP", gap)
	}
	reportGaps(t, "leader SIGSTOP", gaps)
}

// TestLeaderKillWriteGap is TestLeaderFreezeWriteGap with SIGKILL; the
// killed node is started again after each run.
func TestLeaderKillWriteGap(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := proctest.Start(t, proctest.Options{})
	var gaps []time.Duration
	for run := range gapRuns(t, 3) {
		gap := writeGap(t, c, run, (*proctest.Proc).Kill, func(p *proctest.Proc) {
			if err := p.Start(); err != nil {
				t.Fatal(err)
			}
			p.WaitReady(90 * time.Second)
		})
		gaps = append(gaps, gap)
		checkGap(t, run, "SIGKILL", gap)
	}
	reportGaps(t, "leader SIGKILL", gaps)
}
