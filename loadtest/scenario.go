package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Outcome is how one iteration of a scenario ended.
type Outcome struct {
	// Scenario names the scenario the iteration belonged to; empty means
	// the one being run (a mixed load names its parts).
	Scenario string
	// Code is OutcomeOK, an OAuth error code (RFC 6749 section 5.2), or
	// one of the other Outcome constants.
	Code string
}

// Op is one virtual client of a scenario. Do runs one iteration and
// reports its outcome; answered is false when ctx ended the iteration,
// which is then not counted. An Op is used by one goroutine at a time.
type Op interface {
	Do(ctx context.Context) (o Outcome, answered bool)
}

// Recoverer is an optional capability of an Op: after an iteration that did
// not end in OutcomeOK, Run calls Recover, untimed, so that the virtual
// client can restore its state (for example start a new refresh chain).
type Recoverer interface {
	Recover(ctx context.Context) error
}

// Scenario makes the virtual clients of a load. NewOp prepares client i
// (signing a user in, for instance) before any request is timed; it may be
// called from several goroutines at once.
type Scenario interface {
	Name() string
	NewOp(ctx context.Context, i int) (Op, error)
}

// RunConfig is how Run drives a Scenario: closed loop or open loop, for how
// long, and what it reports while it runs.
type RunConfig struct {
	// Target labels the reports (e.g. the issuer URL, or several joined).
	Target string
	// Concurrency is the number of virtual clients: closed-loop workers,
	// or, in an open-loop run (Rate > 0), senders that bound the requests
	// in flight.
	Concurrency int
	// Rate > 0 selects an open-loop run at this many iterations per
	// second, each iteration's latency measured from its scheduled start.
	Rate float64
	// Duration is the recorded time after Warmup; Requests, if positive,
	// stops the run after that many recorded iterations. At least one must
	// be set.
	Duration time.Duration
	Requests int64
	// Warmup runs before recording starts and is not recorded.
	Warmup time.Duration
	// Progress, if set, is called every ProgressInterval from one
	// goroutine while the run lasts.
	Progress         func(Progress)
	ProgressInterval time.Duration
	// Markers, if set, collects events (a leader killed, a new leader)
	// that the result places on its timeline.
	Markers *Markers

	// now, if set, replaces time.Now for a closed loop's warm-up, end and
	// latencies (tests drive it; an open loop's timers need the real
	// clock).
	now func() time.Time
}

// DefaultRunConfig returns a closed-loop run of 32 virtual clients for ten
// seconds after a one-second warm-up.
func DefaultRunConfig() RunConfig {
	return RunConfig{Concurrency: 32, Duration: 10 * time.Second, Warmup: time.Second, ProgressInterval: time.Second}
}

// Validate reports the first problem with c, or nil.
func (c RunConfig) Validate() error {
	if c.Concurrency < 1 || c.Concurrency > maxConcurrency {
		return fmt.Errorf("loadtest: concurrency %d is not in [1, %d]", c.Concurrency, maxConcurrency)
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("loadtest: rate %v is not a non-negative number", c.Rate)
	}
	if c.Rate > 0 && c.Rate < 1.0/3600 {
		return fmt.Errorf("loadtest: rate %v is below one request an hour", c.Rate)
	}
	if c.Duration < 0 || c.Requests < 0 || c.Warmup < 0 {
		return errors.New("loadtest: duration, requests and warm-up must not be negative")
	}
	if c.Duration == 0 && c.Requests == 0 {
		return errors.New("loadtest: set a duration or a request count")
	}
	if c.Duration > maxRunDuration {
		return fmt.Errorf("loadtest: duration %s is longer than %s", c.Duration, maxRunDuration)
	}
	if c.Progress != nil && c.ProgressInterval <= 0 {
		return errors.New("loadtest: progress interval must be positive")
	}
	return nil
}

// maxRunDuration bounds a run, and so the per-second timeline.
const maxRunDuration = 24 * time.Hour

// Markers collects labelled moments of a run, for the timeline of its
// Result and HTML report. It is safe for concurrent use; the zero value is
// not usable, use NewMarkers.
type Markers struct {
	mu     sync.Mutex
	events []marker
}

type marker struct {
	at    time.Time
	label string
}

// NewMarkers returns an empty set of markers.
func NewMarkers() *Markers { return &Markers{} }

// Mark records label at the current time.
func (m *Markers) Mark(label string) { m.MarkAt(time.Now(), label) }

// MarkAt records label at t.
func (m *Markers) MarkAt(t time.Time, label string) {
	m.mu.Lock()
	m.events = append(m.events, marker{at: t, label: label})
	m.mu.Unlock()
}

// relativeTo returns the events as offsets from start, in time order.
func (m *Markers) relativeTo(start time.Time) []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Event, 0, len(m.events))
	for _, e := range m.events {
		out = append(out, Event{AtMS: ms(e.at.Sub(start)), Label: e.label})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].AtMS < out[j].AtMS })
	return out
}

// Event is a marked moment on a run's timeline.
type Event struct {
	// AtMS is the time since the start of recording, in milliseconds
	// (negative during the warm-up).
	AtMS  float64 `json:"at_ms"`
	Label string  `json:"label"`
}

// Second is one second of a run's timeline: the iterations that started in
// it (their scheduled start, in an open-loop run) and their latencies.
type Second struct {
	// T is the second since the start of recording, from 0.
	T        int     `json:"t"`
	Requests int64   `json:"requests"`
	OK       int64   `json:"ok"`
	Errors   int64   `json:"errors"`
	P50MS    float64 `json:"p50_ms"`
	P90MS    float64 `json:"p90_ms"`
	P99MS    float64 `json:"p99_ms"`
	MaxMS    float64 `json:"max_ms"`
}

// Point is one point of the latency distribution.
type Point struct {
	Percentile float64 `json:"percentile"`
	MS         float64 `json:"ms"`
}

// Result is everything one Run measured: the totals, one Report per
// scenario (several for a mixed load), the per-second timeline, the
// latency distribution and the marked events.
type Result struct {
	// Report covers every iteration; Report.Scenario is the run's name.
	Report Report `json:"report"`
	// Scenarios has one Report per scenario, sorted by name.
	Scenarios []Report `json:"scenarios"`
	// Started is the wall-clock time recording started.
	Started      time.Time `json:"started"`
	Timeline     []Second  `json:"timeline"`
	Distribution []Point   `json:"distribution"`
	Events       []Event   `json:"events"`
}

// distributionPercentiles are where Result.Distribution samples the
// latency distribution: evenly on the 1/(1-p) scale of HDR plots.
var distributionPercentiles = []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96, 97, 98, 99, 99.5, 99.75, 99.9, 99.95, 99.975, 99.99, 99.995, 99.999, 100}

// Timeline histograms: microseconds, 2 significant digits (a few KiB
// each, one per second of the run).
const secondSigFigs = 2

func newSecondHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), secondSigFigs)
}

// Run runs sc under cfg: it prepares cfg.Concurrency virtual clients (not
// timed), then runs them closed loop, or open loop when cfg.Rate > 0, and
// returns what was recorded. If ctx ends early, the result of what was
// recorded is returned with ctx's error; an error preparing the clients or
// an invalid cfg returns no result.
func Run(ctx context.Context, cfg RunConfig, sc Scenario) (Result, error) {
	res, _, err := run(ctx, cfg, sc)
	return res, err
}

// run is Run that also returns the merged latency histogram of the
// recorded iterations (nil when there is no result), for Compare.
func run(ctx context.Context, cfg RunConfig, sc Scenario) (Result, *hdrhistogram.Histogram, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, nil, err
	}
	if c, ok := sc.(interface{ CloseIdleConnections() }); ok {
		defer c.CloseIdleConnections()
	}
	e := &engine{cfg: cfg, name: sc.Name(), seconds: map[int]*secondAgg{}, now: cfg.now}
	if e.now == nil {
		e.now = time.Now
	}
	e.workers = make([]*engineWorker, cfg.Concurrency)
	var wg sync.WaitGroup
	errs := make([]error, cfg.Concurrency)
	sem := make(chan struct{}, 8) // bound concurrent preparation (sign-ins hash passwords)
	for i := range e.workers {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			op, err := sc.NewOp(ctx, i)
			if err != nil {
				errs[i] = fmt.Errorf("loadtest: preparing virtual client %d of %s: %w", i, sc.Name(), err)
				return
			}
			e.workers[i] = &engineWorker{e: e, op: op, hists: map[string]*hdrhistogram.Histogram{}, outcomes: map[string]map[string]int64{}, sec: -1}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Result{}, nil, err
	}

	e.start = e.now()
	e.recordFrom = e.start.Add(cfg.Warmup)
	if cfg.Duration > 0 {
		e.end = e.recordFrom.Add(cfg.Duration)
	}
	var stopProgress func()
	if cfg.Progress != nil {
		stopProgress = e.startProgress()
	}
	var elapsed time.Duration
	if cfg.Rate > 0 {
		toEnd := e.openLoop(ctx)
		elapsed = time.Since(e.recordFrom)
		if toEnd {
			elapsed = max(elapsed, cfg.Duration)
		}
	} else {
		e.closedLoop(ctx)
		elapsed = e.now().Sub(e.recordFrom)
	}
	elapsed = max(elapsed, 0)
	if stopProgress != nil {
		stopProgress()
	}
	res, total := e.result(elapsed)
	return res, total, ctx.Err()
}

// engine is one Run's shared state.
type engine struct {
	cfg        RunConfig
	name       string
	workers    []*engineWorker
	start      time.Time
	recordFrom time.Time
	end        time.Time
	now        func() time.Time
	claimed    atomic.Int64
	notSent    int64

	mu      sync.Mutex
	seconds map[int]*secondAgg
}

type secondAgg struct {
	hist         *hdrhistogram.Histogram
	requests, ok int64
}

// engineWorker is one virtual client's results. Everything but the atomics
// is touched only by its goroutine until the run ends.
type engineWorker struct {
	e        *engine
	op       Op
	hists    map[string]*hdrhistogram.Histogram
	outcomes map[string]map[string]int64
	requests atomic.Int64
	ok       atomic.Int64

	// The current second of the timeline, merged into the engine's when
	// the worker moves to another second.
	sec      int
	secHist  *hdrhistogram.Histogram
	secReq   int64
	secOK    int64
	nOutcome int
}

func (e *engine) pastEnd(t time.Time) bool { return !e.end.IsZero() && !t.Before(e.end) }

func (e *engine) claim() bool {
	return e.cfg.Requests <= 0 || e.claimed.Add(1) <= e.cfg.Requests
}

// iterate runs one iteration of w and records it if started is in the
// recorded part of the run. It reports false when ctx cut it short.
func (w *engineWorker) iterate(ctx context.Context, started time.Time) bool {
	o, answered := w.op.Do(ctx)
	if !answered {
		return false
	}
	if !started.Before(w.e.recordFrom) {
		w.record(o, started, w.e.now().Sub(started))
	}
	if o.Code != OutcomeOK {
		if r, ok := w.op.(Recoverer); ok {
			_ = r.Recover(ctx) // a failure shows in the next iteration's outcome
		}
	}
	return true
}

func (e *engine) closedLoop(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range e.workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				start := e.now()
				if e.pastEnd(start) {
					break
				}
				if !start.Before(e.recordFrom) && !e.claim() {
					break
				}
				if !w.iterate(ctx, start) {
					break
				}
			}
			w.flushSecond()
		})
	}
	wg.Wait()
}

// openLoop schedules iteration i at start + i/Rate and hands it to a free
// virtual client; latency counts from the scheduled time, so a stalled
// server cannot hide the requests it delayed (no coordinated omission).
// It reports whether the schedule ran to the end of the duration.
func (e *engine) openLoop(ctx context.Context) (scheduledToEnd bool) {
	slots := make(chan time.Time, len(e.workers))
	var wg sync.WaitGroup
	for _, w := range e.workers {
		wg.Go(func() {
			for intended := range slots {
				if ctx.Err() != nil {
					continue
				}
				w.iterate(ctx, intended)
			}
			w.flushSecond()
		})
	}
	var endC <-chan time.Time
	if !e.end.IsZero() {
		t := time.NewTimer(time.Until(e.end))
		defer t.Stop()
		endC = t.C
	}
	wait := time.NewTimer(time.Hour)
	wait.Stop()
	defer wait.Stop()
	perReq := float64(time.Second) / e.cfg.Rate
	at := func(i int64) time.Time { return e.start.Add(time.Duration(float64(i) * perReq)) }
schedule:
	for i := int64(0); ; i++ {
		intended := at(i)
		if e.pastEnd(intended) {
			scheduledToEnd = true
			break
		}
		if !intended.Before(e.recordFrom) && !e.claim() {
			break
		}
		if d := time.Until(intended); d > 0 {
			wait.Reset(d)
			select {
			case <-wait.C:
			case <-ctx.Done():
				break schedule
			case <-endC:
				// Unreachable in practice (intended is before the end),
				// but a late timer must not block the run.
				e.countNotSent(i, at)
				scheduledToEnd = true
				break schedule
			}
		}
		select {
		case slots <- intended:
			continue
		default:
		}
		select {
		case slots <- intended:
		case <-ctx.Done():
			break schedule
		case <-endC:
			// Every sender stayed busy until the end: the rest of the
			// schedule was never sent.
			e.countNotSent(i, at)
			scheduledToEnd = true
			break schedule
		}
	}
	close(slots)
	wg.Wait()
	return scheduledToEnd
}

// countNotSent counts the recorded iterations scheduled from index i (which
// already holds its claim) to the end of the run.
func (e *engine) countNotSent(i int64, at func(int64) time.Time) {
	for first := true; ; i, first = i+1, false {
		t := at(i)
		if e.pastEnd(t) {
			return
		}
		if t.Before(e.recordFrom) {
			continue
		}
		if !first && !e.claim() {
			return
		}
		e.notSent++
	}
}

// record counts one recorded iteration.
func (w *engineWorker) record(o Outcome, started time.Time, latency time.Duration) {
	sc := o.Scenario
	if sc == "" {
		sc = w.e.name
	}
	h := w.hists[sc]
	if h == nil {
		if len(w.hists) >= maxOutcomes {
			sc = OutcomeOther
			h = w.hists[sc]
		}
		if h == nil {
			h = newHistogram()
			w.hists[sc] = h
			w.outcomes[sc] = map[string]int64{}
		}
	}
	recordLatency(h, latency)
	code := o.Code
	oc := w.outcomes[sc]
	if _, seen := oc[code]; !seen && w.nOutcome >= maxOutcomes*4 {
		code = OutcomeOther
	}
	if _, seen := oc[code]; !seen {
		w.nOutcome++
	}
	oc[code]++
	w.requests.Add(1)
	ok := code == OutcomeOK
	if ok {
		w.ok.Add(1)
	}

	sec := int(started.Sub(w.e.recordFrom) / time.Second)
	if sec != w.sec {
		w.flushSecond()
		w.sec = sec
	}
	if w.secHist == nil {
		w.secHist = newSecondHistogram()
	}
	us := max(int64(latency/time.Microsecond), 1)
	_ = w.secHist.RecordValue(min(us, w.secHist.HighestTrackableValue()))
	w.secReq++
	if ok {
		w.secOK++
	}
}

// flushSecond merges the worker's current second into the engine's.
func (w *engineWorker) flushSecond() {
	if w.secReq == 0 {
		return
	}
	e := w.e
	e.mu.Lock()
	agg := e.seconds[w.sec]
	if agg == nil {
		agg = &secondAgg{hist: newSecondHistogram()}
		e.seconds[w.sec] = agg
	}
	agg.hist.Merge(w.secHist)
	agg.requests += w.secReq
	agg.ok += w.secOK
	e.mu.Unlock()
	w.secHist.Reset()
	w.secReq, w.secOK = 0, 0
}

func (e *engine) startProgress() (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(e.cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				p := Progress{Elapsed: now.Sub(e.recordFrom)}
				for _, w := range e.workers {
					p.Requests += w.requests.Load()
					p.OK += w.ok.Load()
				}
				p.Failed = p.Requests - p.OK
				e.cfg.Progress(p)
			}
		}
	}()
	return func() { close(done); <-finished }
}

// result merges the workers' histograms and counts; total is the merged
// latency histogram.
func (e *engine) result(elapsed time.Duration) (res Result, total *hdrhistogram.Histogram) {
	res = Result{Started: e.recordFrom, Events: []Event{}}
	total = newHistogram()
	perSc := map[string]*merger{}
	for _, w := range e.workers {
		for sc, h := range w.hists {
			m := perSc[sc]
			if m == nil {
				m = newMerger(e.cfg.Target)
				perSc[sc] = m
			}
			r := Report{Scenario: sc, Concurrency: e.cfg.Concurrency, Rate: e.cfg.Rate, Errors: map[string]int64{}}
			for code, n := range w.outcomes[sc] {
				r.Requests += n
				if code == OutcomeOK {
					r.OK += n
				} else {
					r.Errors[code] += n
				}
			}
			m.add(r, h)
			total.Merge(h)
		}
	}
	rep := Report{Scenario: e.name, Target: e.cfg.Target, Concurrency: e.cfg.Concurrency, Rate: e.cfg.Rate, Duration: elapsed, Errors: map[string]int64{}}
	names := make([]string, 0, len(perSc))
	for sc := range perSc {
		names = append(names, sc)
	}
	sort.Strings(names)
	for _, sc := range names {
		m := perSc[sc]
		m.rep.Duration = elapsed
		r := m.report()
		res.Scenarios = append(res.Scenarios, r)
		rep.Requests += r.Requests
		rep.OK += r.OK
		for code, n := range r.Errors {
			rep.Errors[code] += n
		}
	}
	if e.notSent > 0 {
		rep.Requests += e.notSent
		rep.Errors[OutcomeNotSent] += e.notSent
	}
	rep.fillLatencies(total)
	rep.fillThroughput()
	res.Report = rep
	if len(res.Scenarios) == 0 {
		res.Scenarios = []Report{}
	}

	secs := make([]int, 0, len(e.seconds))
	for s := range e.seconds {
		secs = append(secs, s)
	}
	sort.Ints(secs)
	res.Timeline = make([]Second, 0, len(secs))
	usMS := func(v int64) float64 { return float64(v) / 1000 }
	for _, s := range secs {
		a := e.seconds[s]
		res.Timeline = append(res.Timeline, Second{
			T: s, Requests: a.requests, OK: a.ok, Errors: a.requests - a.ok,
			P50MS: usMS(a.hist.ValueAtPercentile(50)), P90MS: usMS(a.hist.ValueAtPercentile(90)),
			P99MS: usMS(a.hist.ValueAtPercentile(99)), MaxMS: usMS(a.hist.Max()),
		})
	}
	res.Distribution = distribution(total)
	if e.cfg.Markers != nil {
		res.Events = e.cfg.Markers.relativeTo(e.recordFrom)
	}
	return res, total
}

// distribution samples h at distributionPercentiles.
func distribution(h *hdrhistogram.Histogram) []Point {
	out := []Point{}
	if h.TotalCount() == 0 {
		return out
	}
	for _, p := range distributionPercentiles {
		v := h.ValueAtPercentile(p)
		if p == 100 {
			v = h.Max()
		}
		out = append(out, Point{Percentile: p, MS: ms(time.Duration(v))})
	}
	return out
}
