package node

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/metric"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/raft"
)

// Clock skew between voters.
//
// Every command carries its proposer's clock, and the FSM bounds how fast
// that time may move (raft/clock.go). This is the other half: a node
// compares its clock with the voters' clocks every clockCheckEvery and,
// when it is more than Config.MaxClockSkew ahead of or behind their median,
//
//   - refuses writes (a leader refuses every command, including its ticks,
//     through raft.Node.SetProposeGate; any node refuses to stamp a command
//     with its own clock): they fail with ErrUnavailable → 503
//     temporarily_unavailable / Connect Unavailable, with the reason;
//   - reports not ready (/readyz reason "clock skew: …") and sets the
//     tally_clock_skew_seconds and tally_clock_write_refused metrics;
//   - if it leads, hands leadership to a voter whose clock is within the
//     bound of the median (the one closest to it), so writes resume there.
//
// A peer's clock is read from the clockHeader of its LocalStatus answer
// (the internal service on the cluster port, node mTLS) and corrected by
// half the round trip, as NTP does: offset = peer − (sent + rtt/2). The
// median is over the voters that answered within clockProbeTimeout and
// this node if it is a voter (a non-voter is measured against the voters
// only); a verdict needs a majority of the voters. Without one
// (a lone node, a partition) the node keeps its last verdict for
// clockVerdictTTL and then counts as agreeing: a node that cannot reach a
// quorum cannot commit writes anyway. With two answers the median is
// their mean, so two voters an hour apart both refuse writes until a
// third answers: with no majority there is no telling which clock is right.

// clockHeader carries a node's clock (Unix nanoseconds) on its internal
// LocalStatus answer.
const clockHeader = "Tally-Clock"

const (
	clockCheckEvery   = time.Second
	clockProbeTimeout = time.Second
	clockVerdictTTL   = 10 * time.Second
	// clockTransferPause spaces leadership transfers away from a skewed
	// leader.
	clockTransferPause = 3 * time.Second
)

// DefaultMaxClockSkew is the default of Config.MaxClockSkew. NTP keeps
// servers within milliseconds; 2 s is far beyond that and well inside the
// FSM's own bound (raft.MaxClockStep).
const DefaultMaxClockSkew = 2 * time.Second

// clockGuard tracks this node's clock against the voters'.
type clockGuard struct {
	c   *cluster
	now func() time.Time
	max time.Duration
	log func(msg string, args ...any)

	mu        sync.Mutex
	skew      time.Duration // this node's clock minus the voters' median
	skewed    bool
	checkedAt time.Time // monotonic: when the verdict was reached
	transfer  time.Time
}

func newClockGuard(c *cluster, now func() time.Time, max time.Duration, log func(msg string, args ...any)) *clockGuard {
	return &clockGuard{c: c, now: now, max: max, log: log}
}

// err returns why this node must not write now, or nil.
func (g *clockGuard) err() error {
	if g == nil || g.max <= 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.skewed || time.Since(g.checkedAt) > clockVerdictTTL {
		return nil
	}
	dir := "ahead of"
	d := g.skew
	if d < 0 {
		dir, d = "behind", -d
	}
	return fmt.Errorf("%w: this node's clock is %s %s the voters' median (bound %s)", raft.ErrClockSkew, d.Round(time.Millisecond), dir, g.max)
}

// state returns the measured skew and whether writes are refused.
func (g *clockGuard) state() (time.Duration, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.skew, g.skewed && time.Since(g.checkedAt) <= clockVerdictTTL
}

// probe is one peer's clock offset from ours.
type probe struct {
	id     string
	offset time.Duration
}

// measure asks every other voter for its clock and returns the offsets
// (peer minus this node) of those that answered, the voter count and
// whether this node is a voter.
func (g *clockGuard) measure(ctx context.Context) (out []probe, voters int, selfVoter bool, err error) {
	members, err := g.c.rn.Members(ctx)
	if err != nil {
		return nil, 0, false, err
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, m := range members {
		if !m.Voter {
			continue
		}
		voters++
		if m.ID == g.c.cfg.NodeID {
			selfVoter = true
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, clockProbeTimeout)
			defer cancel()
			sent, start := g.now(), time.Now()
			resp, err := g.c.peer(m.Addr).LocalStatus(cctx, connect.NewRequest(&clusterv1.LocalStatusRequest{}))
			rtt := time.Since(start)
			if err != nil {
				return
			}
			ns, err := strconv.ParseInt(resp.Header().Get(clockHeader), 10, 64)
			if err != nil || ns <= 0 {
				return
			}
			mu.Lock()
			out = append(out, probe{id: m.ID, offset: time.Unix(0, ns).Sub(sent.Add(rtt / 2))})
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out, voters, selfVoter, nil
}

// medianOf returns the median of ds (the mean of the middle two for an
// even count).
func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return s[len(s)/2-1] + (s[len(s)/2]-s[len(s)/2-1])/2
}

// check measures once, updates the verdict and, on a skewed leader, hands
// leadership to a voter whose clock agrees with the median.
func (g *clockGuard) check(ctx context.Context) {
	probes, voters, selfVoter, err := g.measure(ctx)
	if err != nil {
		return
	}
	var offsets []time.Duration
	if selfVoter {
		offsets = append(offsets, 0) // this node's own clock is one of the voters'
	}
	if 2*(len(probes)+len(offsets)) <= voters || len(probes) == 0 {
		return // no majority answered: keep the last verdict until it ages out
	}
	for _, p := range probes {
		offsets = append(offsets, p.offset)
	}
	med := medianOf(offsets)
	skew := -med
	skewed := skew > g.max || skew < -g.max

	g.mu.Lock()
	was := g.skewed
	g.skew, g.skewed, g.checkedAt = skew, skewed, time.Now()
	transferDue := time.Since(g.transfer) >= clockTransferPause
	g.mu.Unlock()

	if skewed != was {
		if skewed {
			g.log("clock skew: refusing writes", "skew", skew.String(), "bound", g.max.String())
		} else {
			g.log("clock skew resolved: accepting writes", "skew", skew.String())
		}
	}
	if !skewed || !g.c.rn.IsLeader() || !transferDue {
		return
	}
	// The voter closest to the median, if it is within the bound.
	best := ""
	var bestDist time.Duration
	for _, p := range probes {
		d := p.offset - med
		if d < 0 {
			d = -d
		}
		if d <= g.max && (best == "" || d < bestDist) {
			best, bestDist = p.id, d
		}
	}
	if best == "" {
		return
	}
	g.mu.Lock()
	g.transfer = time.Now()
	g.mu.Unlock()
	tctx, cancel := context.WithTimeout(ctx, g.c.cfg.WriteTimeout)
	err = g.c.rn.TransferLeadership(tctx, best)
	cancel()
	g.log("clock skew: handed leadership to a voter whose clock agrees", "to", best, "skew", skew.String(), "err", errString(err))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// run checks every clockCheckEvery until ctx ends.
func (g *clockGuard) run(ctx context.Context) {
	if g.max <= 0 {
		return
	}
	g.c.wg.Add(1)
	go func() {
		defer g.c.wg.Done()
		t := time.NewTicker(clockCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			g.check(ctx)
		}
	}()
}

// registerMetrics exports the measured skew and whether writes are
// refused because of it.
func (g *clockGuard) registerMetrics(m metric.Meter) error {
	skew, err := m.Float64ObservableGauge("tally_clock_skew_seconds",
		metric.WithDescription("This node's clock minus the median of the voters' clocks."), metric.WithUnit("s"))
	if err != nil {
		return err
	}
	refused, err := m.Int64ObservableGauge("tally_clock_write_refused",
		metric.WithDescription("1 while this node refuses writes because its clock is off the voters' median by more than max_clock_skew."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s, bad := g.state()
		o.ObserveFloat64(skew, s.Seconds())
		v := int64(0)
		if bad {
			v = 1
		}
		o.ObserveInt64(refused, v)
		return nil
	}, skew, refused)
	return err
}
