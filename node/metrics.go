package node

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// The node's own metrics (the OAuth endpoints' are in issuance, the event
// publisher's in replication). Names follow the Prometheus conventions once
// the OpenTelemetry exporter has translated them: dots become underscores,
// unit "s" adds _seconds, counters end in _total. Raft, staleness and event
// log state are observable gauges read at scrape time, so nothing is
// recorded on the hot path for them; writes and HTTP requests record one
// counter and one histogram each with cached attribute sets.
const (
	metricRaftLeader        = "tally.raft.leader"
	metricRaftHasLeader     = "tally.raft.has_leader"
	metricRaftTerm          = "tally.raft.term"
	metricRaftLastIndex     = "tally.raft.last_index"
	metricRaftCommitIndex   = "tally.raft.commit_index"
	metricRaftAppliedIndex  = "tally.raft.applied_index"
	metricRaftLastContact   = "tally.raft.last_contact"
	metricRaftVoters        = "tally.raft.voters"
	metricRaftFollowerLag   = "tally.raft.follower_lag_entries"
	metricRaftFollowerUp    = "tally.raft.follower_reachable"
	metricMaxStale          = "tally.max_stale"
	metricMaxStaleExceeded  = "tally.max_stale_exceeded"
	metricReady             = "tally.ready"
	metricWrites            = "tally.writes"
	metricWriteDuration     = "tally.write.duration"
	metricForwarded         = "tally.forwarded_writes"
	metricForwardedDuration = "tally.forwarded_write.duration"
	metricEventsBacklog     = "tally.events.backlog"
	metricEventsLag         = "tally.events.publish_lag"
	metricEventsPosition    = "tally.events.published_index"
	metricEventsHealthy     = "tally.events.publisher_healthy"
	metricNATSReady         = "tally.nats.ready"
	metricHTTPRequests      = "tally.http.requests"
	metricHTTPDuration      = "tally.http.request.duration"
)

// backlogScan bounds how many unpublished outbox events a scrape counts:
// tally_events_backlog saturates there (the lag gauge still tells how old
// the oldest one is).
const backlogScan = 1024

// followerPollEvery is how often the leader asks its followers for their
// status to export their lag.
const followerPollEvery = 5 * time.Second

// durationBuckets are the histogram bounds (seconds) of writes and HTTP
// requests.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// nodeMetrics records the node's metrics. The zero of every hook is safe:
// a nil *nodeMetrics records nothing.
type nodeMetrics struct {
	n *Node

	writes            metric.Int64Counter
	writeDuration     metric.Float64Histogram
	forwarded         metric.Int64Counter
	forwardedDuration metric.Float64Histogram
	httpRequests      metric.Int64Counter
	httpDuration      metric.Float64Histogram

	// attrs caches the attribute options of writes by key (writeKey,
	// resultKey), all from small fixed sets.
	attrs sync.Map

	// followers is the leader's last view of its followers (nil on a
	// follower).
	followers atomic.Pointer[[]followerStatus]

	stream streamMetrics // metrics_stream.go
}

type followerStatus struct {
	id        string
	lag       uint64
	reachable bool
}

type writeKey struct {
	kind   protoreflect.Name
	result string
}

type resultKey struct{ result string }

// opField is the oneof of raftpb.Command whose case names a write's kind.
var opField = (&raftpb.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("op")

func (m *nodeMetrics) option(key any, kvs func() []attribute.KeyValue) metric.MeasurementOption {
	if o, ok := m.attrs.Load(key); ok {
		return o.(metric.MeasurementOption)
	}
	o, _ := m.attrs.LoadOrStore(key, metric.WithAttributeSet(attribute.NewSet(kvs()...)))
	return o.(metric.MeasurementOption)
}

// newNodeMetrics registers the node's instruments on its meter.
func newNodeMetrics(n *Node) (*nodeMetrics, error) {
	m := &nodeMetrics{n: n}
	meter := n.tel.meter
	var err error
	counter := func(name, desc string) metric.Int64Counter {
		c, e := meter.Int64Counter(name, metric.WithDescription(desc))
		err = errors.Join(err, e)
		return c
	}
	hist := func(name, desc string) metric.Float64Histogram {
		h, e := meter.Float64Histogram(name, metric.WithDescription(desc), metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(durationBuckets...))
		err = errors.Join(err, e)
		return h
	}
	m.writes = counter(metricWrites, "Raft writes proposed by this node, by kind (the command) and result (ok, not_found, exists, conflict, invalid, unavailable).")
	m.writeDuration = hist(metricWriteDuration, "Duration of Raft writes proposed by this node, until applied here.")
	m.forwarded = counter(metricForwarded, "Writes this node forwarded to the leader (it was not the leader when the write began), by result.")
	m.forwardedDuration = hist(metricForwardedDuration, "Duration of forwarded writes, until applied here.")
	m.httpRequests = counter(metricHTTPRequests, "HTTP requests by endpoint (a fixed set) and status class.")
	m.httpDuration = hist(metricHTTPDuration, "HTTP request duration by endpoint.")
	if err != nil {
		return nil, err
	}
	if err := m.registerObservers(meter); err != nil {
		return nil, err
	}
	if err := m.registerStream(meter); err != nil {
		return nil, err
	}
	return m, nil
}

// registerObservers registers the gauges read at scrape time
// (observerGauges) and the callback that observes them (observe).
func (m *nodeMetrics) registerObservers(meter metric.Meter) error {
	g, err := newObserverGauges(meter)
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		m.observe(ctx, o, g)
		return nil
	}, g.leader, g.hasLeader, g.term, g.lastIndex, g.commitIndex, g.appliedIndex, g.lastContact, g.voters, g.followerLag, g.followerUp,
		g.maxStale, g.staleExceeded, g.ready, g.backlog, g.pubLag, g.position, g.pubHealthy, g.natsReady)
	return err
}

// observerGauges are the node's gauges read at scrape time: Raft state,
// staleness and readiness, and the event log's publication.
type observerGauges struct {
	leader, hasLeader, term, lastIndex, commitIndex, appliedIndex metric.Float64ObservableGauge
	lastContact, voters, followerLag, followerUp                  metric.Float64ObservableGauge
	maxStale, staleExceeded, ready                                metric.Float64ObservableGauge
	backlog, pubLag, position, pubHealthy, natsReady              metric.Float64ObservableGauge
}

// newObserverGauges creates the observerGauges on meter.
func newObserverGauges(meter metric.Meter) (*observerGauges, error) {
	var err error
	gauge := func(name, desc, unit string) metric.Float64ObservableGauge {
		opts := []metric.Float64ObservableGaugeOption{metric.WithDescription(desc)}
		if unit != "" {
			opts = append(opts, metric.WithUnit(unit))
		}
		g, e := meter.Float64ObservableGauge(name, opts...)
		err = errors.Join(err, e)
		return g
	}
	g := &observerGauges{}
	g.leader = gauge(metricRaftLeader, "1 if this node is the Raft leader.", "")
	g.hasLeader = gauge(metricRaftHasLeader, "1 if this node knows a Raft leader.", "")
	g.term = gauge(metricRaftTerm, "Current Raft term.", "")
	g.lastIndex = gauge(metricRaftLastIndex, "Last Raft log index on this node.", "")
	g.commitIndex = gauge(metricRaftCommitIndex, "Raft commit index known to this node.", "")
	g.appliedIndex = gauge(metricRaftAppliedIndex, "Raft index applied to this node's state.", "")
	g.lastContact = gauge(metricRaftLastContact, "Seconds since this node last heard from a Raft leader (0 on the leader; -1 if never).", "s")
	g.voters = gauge(metricRaftVoters, "Voters in this node's Raft configuration.", "")
	g.followerLag = gauge(metricRaftFollowerLag, "On the leader: entries each follower's applied index is behind the leader's commit index.", "")
	g.followerUp = gauge(metricRaftFollowerUp, "On the leader: 1 if the follower answered the last status poll.", "")
	g.maxStale = gauge(metricMaxStale, "The configured staleness bound (--max-stale).", "s")
	g.staleExceeded = gauge(metricMaxStaleExceeded, "1 if this node has not heard from a leader within --max-stale and refuses OAuth requests.", "")
	g.ready = gauge(metricReady, "1 if /readyz reports ready.", "")
	g.backlog = gauge(metricEventsBacklog, "Outbox events this node has not yet seen acknowledged by JetStream (saturates at 1024).", "")
	g.pubLag = gauge(metricEventsLag, "Age of the oldest outbox event this node has not yet seen acknowledged (0 when none).", "s")
	g.position = gauge(metricEventsPosition, "Highest Raft index whose events this node has seen acknowledged by JetStream.", "")
	g.pubHealthy = gauge(metricEventsHealthy, "1 if the event publisher's last attempt succeeded.", "")
	g.natsReady = gauge(metricNATSReady, "1 if the embedded NATS server (and JetStream) is ready.", "")
	if err != nil {
		return nil, err
	}
	return g, nil
}

// gaugeBool is a boolean gauge's value: 1 for true, 0 for false.
func gaugeBool(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// observe observes g: the Raft state, staleness and readiness, the
// followers (on the leader) and the voters, then the event log
// (observeEvents). Before Raft is open it observes nothing.
func (m *nodeMetrics) observe(ctx context.Context, o metric.Observer, g *observerGauges) {
	n := m.n
	if n.raft == nil {
		return
	}
	st := n.raft.Status()
	o.ObserveFloat64(g.leader, gaugeBool(st.State == "Leader"))
	o.ObserveFloat64(g.hasLeader, gaugeBool(st.LeaderID != ""))
	o.ObserveFloat64(g.term, float64(st.Term))
	o.ObserveFloat64(g.lastIndex, float64(st.LastIndex))
	o.ObserveFloat64(g.commitIndex, float64(st.CommitIndex))
	o.ObserveFloat64(g.appliedIndex, float64(st.AppliedIndex))
	switch {
	case st.State == "Leader":
		o.ObserveFloat64(g.lastContact, 0)
	case st.LastContact.IsZero():
		o.ObserveFloat64(g.lastContact, -1)
	default:
		o.ObserveFloat64(g.lastContact, max(time.Since(st.LastContact).Seconds(), 0))
	}
	o.ObserveFloat64(g.maxStale, n.cfg.MaxStale.Seconds())
	if n.cl != nil {
		o.ObserveFloat64(g.staleExceeded, gaugeBool(n.cl.stale() != nil))
	}
	o.ObserveFloat64(g.ready, gaugeBool(len(n.readiness()) == 0))
	if fs := m.followers.Load(); fs != nil && st.State == "Leader" {
		for _, f := range *fs {
			set := metric.WithAttributes(attribute.String("follower", f.id))
			o.ObserveFloat64(g.followerLag, float64(f.lag), set)
			o.ObserveFloat64(g.followerUp, gaugeBool(f.reachable), set)
		}
	}
	if ms, err := n.raft.Members(ctx); err == nil {
		nv := 0
		for _, mb := range ms {
			if mb.Voter {
				nv++
			}
		}
		o.ObserveFloat64(g.voters, float64(nv))
	}
	m.observeEvents(o, g)
}

// observeEvents observes the embedded NATS server's readiness and the
// event publisher's position, health, backlog (up to backlogScan outbox
// events) and the age of its oldest unacknowledged event.
func (m *nodeMetrics) observeEvents(o metric.Observer, g *observerGauges) {
	n := m.n
	if n.nats != nil {
		o.ObserveFloat64(g.natsReady, gaugeBool(n.nats.Ready()))
	}
	if n.events != nil {
		pos := n.events.pub.Position()
		o.ObserveFloat64(g.position, float64(pos))
		o.ObserveFloat64(g.pubHealthy, gaugeBool(n.events.pub.LastError() == ""))
		evs, err := n.raft.EventsSince(pos, backlogScan)
		if err == nil {
			o.ObserveFloat64(g.backlog, float64(len(evs)))
			age := 0.0
			if len(evs) > 0 {
				age = max(time.Since(time.Unix(0, evs[0].TimeUnixNano)).Seconds(), 0)
			}
			o.ObserveFloat64(g.pubLag, age)
		}
	}
}

// write records one write proposed by this node.
func (m *nodeMetrics) write(ctx context.Context, cmd *raftpb.Command, forwarded bool, d time.Duration, err error) {
	if m == nil {
		return
	}
	kind := protoreflect.Name("unknown")
	if fd := cmd.ProtoReflect().WhichOneof(opField); fd != nil {
		kind = fd.Name()
	}
	res := writeResult(err)
	m.writes.Add(ctx, 1, m.option(writeKey{kind, res}, func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String("kind", string(kind)), attribute.String("result", res)}
	}))
	m.writeDuration.Record(ctx, d.Seconds())
	if forwarded {
		m.forwarded.Add(ctx, 1, m.option(resultKey{res}, func() []attribute.KeyValue {
			return []attribute.KeyValue{attribute.String("result", res)}
		}))
		m.forwardedDuration.Record(ctx, d.Seconds())
	}
}

// writeResult is the low-cardinality result label of a write.
func writeResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, raft.ErrNotFound):
		return "not_found"
	case errors.Is(err, raft.ErrExists):
		return "exists"
	case errors.Is(err, raft.ErrConflict):
		return "conflict"
	case errors.Is(err, raft.ErrInvalid):
		return "invalid"
	default:
		return "error"
	}
}

// pollFollowers keeps, while this node leads, its view of every member's
// lag for the follower gauges.
func (m *nodeMetrics) pollFollowers(ctx context.Context) {
	t := time.NewTicker(followerPollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := m.n
		if !n.raft.IsLeader() {
			m.followers.Store(nil)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, followerPollEvery/2)
		resp, err := n.cl.status(pctx, followerPollEvery/2)
		cancel()
		if err != nil {
			continue
		}
		var fs []followerStatus
		for _, s := range resp.Members {
			if s.Id == n.cfg.NodeID {
				continue
			}
			fs = append(fs, followerStatus{id: s.Id, lag: s.Lag, reachable: s.State != "unreachable"})
		}
		m.followers.Store(&fs)
	}
}

// startMetrics serves the separate metrics listener and, in the background,
// keeps the leader's view of its followers.
func (n *Node) startMetrics(ctx context.Context) {
	n.metricsSrv.serve()
	if n.metrics == nil || n.cl == nil {
		return
	}
	n.cl.wg.Add(1)
	go func() {
		defer n.cl.wg.Done()
		n.metrics.pollFollowers(ctx)
	}()
	if n.events != nil {
		n.cl.wg.Add(1)
		go func() {
			defer n.cl.wg.Done()
			n.metrics.pollStream(ctx, n.events)
		}()
	}
}
