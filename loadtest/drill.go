package loadtest

// Drills: a client-credentials and revocation load across every node of a
// cluster while a fault is injected and healed, then a check that no
// acknowledged write was lost. The fault itself (kill, leadership
// transfer, partition) is the caller's: RunDrill only needs the nodes'
// issuer URLs and a plan.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DrillNode is one node of the cluster under a drill.
type DrillNode struct {
	// ID is the node's Raft id.
	ID string
	// Issuer is the tenant's issuer URL on this node ({base}/t/{tenant}):
	// the token, revocation and introspection endpoints are below it.
	Issuer string
}

// Fault is what a drill does to the cluster, chosen by DrillConfig.Plan
// when it is due.
type Fault struct {
	// Event names the fault on the timeline ("leader node0 killed").
	Event string
	// Down are the nodes that stop answering from Inject until Heal
	// returns: requests to them in that time are not counted.
	Down []string
	// Isolated are the nodes cut off from the quorum: they may keep
	// issuing until the staleness bound and must then fail closed (503
	// temporarily_unavailable) until healed.
	Isolated []string
	// Inject applies the fault; it may block until it has taken effect
	// (a leadership transfer returns when the new leader is known).
	Inject func(ctx context.Context) error
	// EffectiveOnReturn says the fault takes effect when Inject returns
	// rather than when it is called (an operator's command that takes a
	// while, like docker kill): the fault's time, from which the windows
	// are measured, is then Inject's return.
	EffectiveOnReturn bool
	// Heal, if set, undoes the fault (restarts the killed node, heals the
	// partition) and returns once it is done; HealEvent names it.
	Heal      func(ctx context.Context) error
	HealEvent string
	// Settle, if set, waits after Heal until the faulted nodes serve again
	// (a restarted node answers /readyz); until it returns they stay down
	// or isolated for the load and the judge.
	Settle func(ctx context.Context) error
}

// DrillConfig configures RunDrill.
type DrillConfig struct {
	// Name labels the report ("failover", "partition").
	Name string
	// Nodes are every node of the cluster.
	Nodes []DrillNode
	// ClientID and ClientSecret are a confidential client_credentials
	// client of the tenant (HTTP Basic); it also revokes and introspects
	// its tokens. Its access tokens must outlive the drill.
	ClientID     string
	ClientSecret string
	// Plan returns the fault when it is due (so it can ask who leads at
	// that moment).
	Plan func(ctx context.Context) (Fault, error)
	// Before is the load before the fault, FaultFor the time from the
	// injection to the heal, After the load after the heal (longer, by at
	// most VerifyTimeout, until a write sent after the heal is
	// acknowledged: a healed node may need seconds to catch up).
	Before, FaultFor, After time.Duration
	// Steps is how many faults are injected one after another (a rolling
	// restart: one per node), each planned, injected, held for FaultFor
	// and healed, with After of load between them; 0 means 1.
	Steps int
	// IssueWorkers send client-credentials requests round-robin to every
	// node that is not down; WriteWorkers obtain a token and revoke it
	// (RFC 7009) through a node that is neither down nor isolated.
	IssueWorkers, WriteWorkers int
	// MaxStale is the nodes' staleness bound; StaleGrace the slack allowed
	// past it (heartbeat and election timing) before an isolated node that
	// still issues is a violation.
	MaxStale, StaleGrace time.Duration
	// Timeout bounds each request; VerifyTimeout bounds the wait for every
	// node to show every acknowledged revocation after the load, and the
	// wait past After for a write acknowledged after the heal.
	Timeout, VerifyTimeout time.Duration
	// HTTPClient sends every request; nil means a client made for the run.
	HTTPClient *http.Client
	// Event, if set, is called with each timeline event as it happens.
	Event func(DrillEvent)

	// loseWrite makes the verifier count one token that was issued but
	// never revoked as acknowledged: a deliberately lost write, so tests
	// can see the drill fail.
	loseWrite bool
}

// DefaultDrillConfig returns a drill of 3 s before the fault, 3 s of fault
// and 3 s after the heal, with 4 issuing and 2 writing workers and the
// default staleness bound of a node (5 s). Name, Nodes, the client and
// Plan must still be set.
func DefaultDrillConfig() DrillConfig {
	return DrillConfig{
		Before:        3 * time.Second,
		FaultFor:      3 * time.Second,
		After:         3 * time.Second,
		IssueWorkers:  4,
		WriteWorkers:  2,
		MaxStale:      5 * time.Second,
		StaleGrace:    time.Second,
		Timeout:       10 * time.Second,
		VerifyTimeout: 30 * time.Second,
	}
}

// Validate reports the first problem with c, or nil.
func (c DrillConfig) Validate() error {
	if len(c.Nodes) == 0 {
		return errors.New("loadtest: a drill needs at least one node")
	}
	seen := map[string]bool{}
	for _, n := range c.Nodes {
		u, err := url.Parse(n.Issuer)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("loadtest: issuer %q of node %q is not an absolute http(s) URL", n.Issuer, n.ID)
		}
		if n.ID == "" || seen[n.ID] {
			return fmt.Errorf("loadtest: node id %q is empty or repeated", n.ID)
		}
		seen[n.ID] = true
	}
	if c.ClientID == "" || c.ClientSecret == "" {
		return errors.New("loadtest: a drill needs a confidential client (id and secret)")
	}
	if c.Plan == nil {
		return errors.New("loadtest: a drill needs a fault plan")
	}
	if c.Steps < 0 || c.Steps > 64 {
		return errors.New("loadtest: a drill takes between 1 and 64 steps")
	}
	if c.Before <= 0 || c.FaultFor <= 0 || c.After <= 0 {
		return errors.New("loadtest: before, fault and after durations must be positive")
	}
	if c.IssueWorkers < 1 || c.WriteWorkers < 1 || c.IssueWorkers > maxConcurrency || c.WriteWorkers > maxConcurrency {
		return fmt.Errorf("loadtest: issue and write workers must be in [1, %d]", maxConcurrency)
	}
	if c.MaxStale <= 0 || c.StaleGrace < 0 || c.Timeout <= 0 || c.VerifyTimeout <= 0 {
		return errors.New("loadtest: max-stale, timeouts must be positive and the grace not negative")
	}
	return nil
}

// DrillEvent is one moment of a drill's timeline.
type DrillEvent struct {
	// At is the time since the load started.
	At   time.Duration `json:"-"`
	Name string        `json:"name"`
}

// MarshalJSON writes At in milliseconds, as the other reports do.
func (e DrillEvent) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		AtMS float64 `json:"at_ms"`
		Name string  `json:"name"`
	}{ms(e.At), e.Name})
}

// DrillReport is the outcome of a drill. Durations are measured from the
// injection of the fault.
type DrillReport struct {
	Name    string       `json:"name"`
	Fault   string       `json:"fault"`
	Started time.Time    `json:"started"`
	Events  []DrillEvent `json:"events"`

	// Issuance on the serving nodes (neither down nor isolated): every
	// answer, the errors among them by outcome, and the requests and
	// errors sent during the write unavailability window.
	Issued            int64            `json:"issued"`
	IssueErrors       map[string]int64 `json:"issue_errors"`
	IssueErrorNodes   map[string]int64 `json:"issue_error_nodes"`
	WindowIssued      int64            `json:"window_issued"`
	WindowIssueErrors int64            `json:"window_issue_errors"`

	// Writes (revocations) through serving nodes: attempted, acknowledged,
	// failures by outcome.
	Writes      int64            `json:"writes"`
	WritesAcked int64            `json:"writes_acked"`
	WriteErrors map[string]int64 `json:"write_errors"`
	// WriteWindow is from the fault until the first acknowledgment of a
	// write sent after it; Recovery is until the first acknowledgment of a
	// write sent after the last failed request to a serving node.
	WriteWindow time.Duration `json:"-"`
	Recovery    time.Duration `json:"-"`

	// Isolated nodes: tokens issued after the fault, fail-closed answers,
	// and when the first fail-closed answer came.
	IsolatedIssued     int64         `json:"isolated_issued"`
	IsolatedFailClosed int64         `json:"isolated_fail_closed"`
	FailClosedAfter    time.Duration `json:"-"`
	// ToDownNodes counts requests to down nodes while they were down (not
	// judged).
	ToDownNodes int64 `json:"to_down_nodes"`

	// Verification: acknowledged writes checked on every node, those
	// missing on some node at the deadline, and how long after the load
	// every node showed every acknowledged write.
	Verified  int64         `json:"verified"`
	Nodes     int           `json:"nodes"`
	Lost      []string      `json:"lost,omitempty"`
	Converged time.Duration `json:"-"`

	Violations []string `json:"violations"`
	Pass       bool     `json:"pass"`

	// Load is the drill's load as a scenario Result (both kinds of
	// request, per second, with the events as markers), for WriteHTML.
	Load Result `json:"-"`
}

// MarshalJSON writes durations in milliseconds.
func (r DrillReport) MarshalJSON() ([]byte, error) {
	type plain DrillReport
	return json.Marshal(struct {
		plain
		WriteWindowMS     float64 `json:"write_window_ms"`
		RecoveryMS        float64 `json:"recovery_ms"`
		FailClosedAfterMS float64 `json:"fail_closed_after_ms"`
		ConvergedMS       float64 `json:"converged_ms"`
		IssueErrorRate    float64 `json:"window_issue_error_rate"`
	}{plain(r), ms(r.WriteWindow), ms(r.Recovery), ms(r.FailClosedAfter), ms(r.Converged), r.WindowIssueErrorRate()})
}

// WindowIssueErrorRate is the fraction of issuance requests to serving
// nodes during the write unavailability window that failed.
func (r DrillReport) WindowIssueErrorRate() float64 {
	if r.WindowIssued == 0 {
		return 0
	}
	return float64(r.WindowIssueErrors) / float64(r.WindowIssued)
}

// WriteText writes the report for a terminal.
func (r DrillReport) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "drill %s: %s\n", r.Name, r.Fault)
	for _, e := range r.Events {
		fmt.Fprintf(&b, "  %8.3fs  %s\n", e.At.Seconds(), e.Name)
	}
	fmt.Fprintf(&b, "issuance (serving nodes): %d requests, errors %s\n", r.Issued, fmtCounts(r.IssueErrors))
	fmt.Fprintf(&b, "writes: %d sent, %d acknowledged, errors %s\n", r.Writes, r.WritesAcked, fmtCounts(r.WriteErrors))
	fmt.Fprintf(&b, "write unavailability window: %s\n", fmtLatency(r.WriteWindow))
	fmt.Fprintf(&b, "issuance error rate in the window: %d/%d (%.4f)\n", r.WindowIssueErrors, r.WindowIssued, r.WindowIssueErrorRate())
	fmt.Fprintf(&b, "time to recover: %s\n", fmtLatency(r.Recovery))
	if r.IsolatedIssued+r.IsolatedFailClosed > 0 {
		fmt.Fprintf(&b, "isolated nodes: %d tokens after the fault, %d fail-closed answers, first after %s\n", r.IsolatedIssued, r.IsolatedFailClosed, fmtLatency(r.FailClosedAfter))
	}
	fmt.Fprintf(&b, "verified: %d acknowledged writes on %d nodes, converged %s after the load; lost %d\n", r.Verified, r.Nodes, fmtLatency(r.Converged), len(r.Lost))
	if r.Pass {
		b.WriteString("PASS\n")
	} else {
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "violation: %s\n", v)
		}
		b.WriteString("FAIL\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func fmtCounts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// ErrDrillFailed is returned by RunDrill, with the report, when an
// invariant was violated.
var ErrDrillFailed = errors.New("loadtest: drill found a violated invariant")

// drillSample is one request of the load.
type drillSample struct {
	start, end time.Time
	node       string
	write      bool
	outcome    string // OutcomeOK, an OAuth error code, http_<status>, transport
}

// drillPhase is the fault state the workers see.
type drillPhase struct {
	down, isolated map[string]bool
}

type drillRun struct {
	cfg    DrillConfig
	client *http.Client
	auth   string
	t0     time.Time

	phase atomic.Pointer[drillPhase]
	// lastAck is when (since t0) the latest acknowledged write was sent.
	lastAck atomic.Int64

	mu      sync.Mutex
	samples []drillSample
	acked   []string // access tokens whose revocation was acknowledged
	events  []DrillEvent
}

// RunDrill runs the load for cfg.Before, injects the fault cfg.Plan
// returns, heals it cfg.FaultFor later, keeps the load for cfg.After (and
// until a write sent after the heal is acknowledged, for at most
// cfg.VerifyTimeout more), then checks on every node that every acknowledged revocation is there. The
// invariants judged: no acknowledged write is lost; serving nodes issue
// without error; no answer is a server error other than 503
// temporarily_unavailable; isolated nodes fail closed after the staleness
// bound; writes are acknowledged again after the heal. A violation makes
// the report's Pass false and the error ErrDrillFailed; other errors (bad
// config, a fault that could not be injected) come with a partial report.
func RunDrill(ctx context.Context, cfg DrillConfig) (DrillReport, error) {
	if err := cfg.Validate(); err != nil {
		return DrillReport{}, err
	}
	d := &drillRun{cfg: cfg, client: cfg.HTTPClient}
	if d.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = cfg.IssueWorkers + cfg.WriteWorkers + 8
		d.client = &http.Client{Transport: tr, Timeout: cfg.Timeout}
		defer tr.CloseIdleConnections()
	}
	// RFC 6749 section 2.3.1: form-encode each part, then Basic.
	d.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(cfg.ClientID)+":"+url.QueryEscape(cfg.ClientSecret)))
	d.phase.Store(&drillPhase{})
	rep := DrillReport{Name: cfg.Name, Started: time.Now()}
	d.t0 = rep.Started

	control, err := d.controlToken(ctx)
	if err != nil {
		return rep, err
	}
	d.event("load started")

	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan Result, 1)
	go func() { loadDone <- d.runLoad(lctx) }()
	faults, runErr := d.runFaults(ctx, &rep)
	stopLoad()
	load := <-loadDone
	d.event("load stopped")
	if runErr != nil {
		rep.Events = d.events
		return rep, runErr
	}

	d.judge(&rep, faults)
	d.verify(ctx, &rep, control)
	rep.Events = d.events
	rep.Load = d.loadResult(load)
	rep.Pass = len(rep.Violations) == 0
	if !rep.Pass {
		return rep, ErrDrillFailed
	}
	return rep, nil
}

// controlToken waits until every node issues a token to the drill's client
// (one created just now may not have reached every replica yet) and
// returns the first node's. That token is the control: issued before
// anything and never revoked, the verifier must see it active on every
// node, or it cannot tell a revoked token from a verifier that sees
// nothing.
func (d *drillRun) controlToken(ctx context.Context) (string, error) {
	var control string
	for i, n := range d.cfg.Nodes {
		deadline := time.Now().Add(d.cfg.VerifyTimeout)
		for {
			tok, err := d.token(ctx, n)
			if err == nil {
				if i == 0 {
					control = tok
				}
				break
			}
			if time.Now().After(deadline) || wait(ctx, 20*time.Millisecond) != nil {
				return "", fmt.Errorf("loadtest: drill: no token from %s before the load: %w", n.Issuer, err)
			}
		}
	}
	return control, nil
}

// runFaults waits cfg.Before, applies the planned faults one after
// another (cfg.Steps), each followed by cfg.After, and then waits until a
// write sent after the last heal is acknowledged (a healed node may need
// seconds to catch up). The load runs meanwhile.
func (d *drillRun) runFaults(ctx context.Context, rep *DrillReport) ([]appliedFault, error) {
	var faults []appliedFault
	if err := wait(ctx, d.cfg.Before); err != nil {
		return faults, err
	}
	for range max(d.cfg.Steps, 1) {
		af, err := d.applyFault(ctx, rep)
		if err != nil {
			return faults, err
		}
		faults = append(faults, af)
		if err := wait(ctx, d.cfg.After); err != nil {
			return faults, err
		}
	}
	return faults, d.waitAckSince(ctx, faults[len(faults)-1].healAt, d.cfg.VerifyTimeout)
}

// applyFault plans one fault, injects it, heals it cfg.FaultFor after it
// took effect and waits until the faulted nodes serve again (Settle).
func (d *drillRun) applyFault(ctx context.Context, rep *DrillReport) (appliedFault, error) {
	f, err := d.cfg.Plan(ctx)
	if err != nil {
		return appliedFault{}, fmt.Errorf("loadtest: drill: planning the fault: %w", err)
	}
	if rep.Fault == "" {
		rep.Fault = f.Event
	} else {
		rep.Fault += "; " + f.Event
	}
	af := appliedFault{Fault: f, at: time.Now()}
	af.injected = af.at
	d.phase.Store(&drillPhase{down: setOf(f.Down), isolated: setOf(f.Isolated)})
	if err := f.Inject(ctx); err != nil {
		return af, fmt.Errorf("loadtest: drill: %s: %w", f.Event, err)
	}
	if f.EffectiveOnReturn {
		af.at = time.Now()
	}
	d.eventAt(af.at, f.Event)
	if err := wait(ctx, d.cfg.FaultFor-time.Since(af.at)); err != nil {
		return af, err
	}
	af.healing = time.Now()
	if f.Heal != nil {
		if err := f.Heal(ctx); err != nil {
			return af, fmt.Errorf("loadtest: drill: %s: %w", f.HealEvent, err)
		}
	}
	af.healAt = time.Now()
	if f.Heal != nil {
		d.eventAt(af.healAt, f.HealEvent)
	}
	af.settled = af.healAt
	if f.Settle != nil {
		if err := f.Settle(ctx); err != nil {
			return af, fmt.Errorf("loadtest: drill: after %s: %w", f.HealEvent, err)
		}
		af.settled = time.Now()
		d.eventAt(af.settled, strings.Join(append(slices.Clone(f.Down), f.Isolated...), ",")+" serving again")
	}
	d.phase.Store(&drillPhase{})
	return af, nil
}

// appliedFault is a fault with the times it was injected and healed.
type appliedFault struct {
	Fault
	// injected is when Inject was called, at when the fault took effect
	// (the same unless EffectiveOnReturn), healing when Heal was called,
	// healAt when it returned, settled when the faulted nodes served again
	// (healAt without Settle). The staleness bound runs from injected to
	// healing (the strict reading: the fault may bite as soon as its
	// command starts, and end as soon as the heal starts); the write
	// window from at.
	injected, at, healing, healAt, settled time.Time
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func setOf(ids []string) map[string]bool {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// wait waits d or until ctx ends.
func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// waitAckSince waits until a write sent at or after since was acknowledged,
// for at most limit: after a heal, writes through a node that was cut off
// wait until it has caught up, which hashicorp/raft's replication backoff
// can delay by seconds, longer than a short After on a loaded machine.
func (d *drillRun) waitAckSince(ctx context.Context, since time.Time, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for d.lastAck.Load() < int64(since.Sub(d.t0)) && time.Now().Before(deadline) {
		if err := wait(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func (d *drillRun) event(name string) { d.eventAt(time.Now(), name) }

func (d *drillRun) eventAt(at time.Time, name string) {
	e := DrillEvent{At: at.Sub(d.t0), Name: name}
	d.mu.Lock()
	d.events = append(d.events, e)
	d.mu.Unlock()
	if d.cfg.Event != nil {
		d.cfg.Event(e)
	}
}

// pick returns the i-th node (round robin) among those the phase allows.
func (d *drillRun) pick(i int, serving bool) DrillNode {
	p := d.phase.Load()
	var ok []DrillNode
	for _, n := range d.cfg.Nodes {
		if p.down[n.ID] || (serving && p.isolated[n.ID]) {
			continue
		}
		ok = append(ok, n)
	}
	if len(ok) == 0 {
		return d.cfg.Nodes[i%len(d.cfg.Nodes)]
	}
	return ok[i%len(ok)]
}

func (d *drillRun) record(s []drillSample, acked []string) {
	d.mu.Lock()
	d.samples = append(d.samples, s...)
	d.acked = append(d.acked, acked...)
	d.mu.Unlock()
}

// post sends a form with the client's Basic credentials.
func (d *drillRun) post(ctx context.Context, endpoint string, form url.Values) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", d.auth)
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, maxResponseBytes)); err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, buf.Bytes(), nil
}

// token obtains an access token from n.
func (d *drillRun) token(ctx context.Context, n DrillNode) (string, error) {
	status, body, err := d.post(ctx, n.Issuer+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}})
	if err != nil {
		return "", err
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &tr) != nil || tr.AccessToken == "" {
		return "", fmt.Errorf("token endpoint answered %d (%s)", status, classify(status, body))
	}
	return tr.AccessToken, nil
}

// judge computes the figures and the load's invariants from the samples,
// for the faults applied one after another.
func (d *drillRun) judge(rep *DrillReport, faults []appliedFault) {
	rep.IssueErrors = map[string]int64{}
	rep.IssueErrorNodes = map[string]int64{}
	rep.WriteErrors = map[string]int64{}
	if len(faults) == 0 {
		return
	}
	j := &drillJudge{d: d, rep: rep, grace: d.cfg.StaleGrace}
	for _, f := range faults {
		j.fs = append(j.fs, j.faultState(f))
	}
	sort.Slice(d.samples, func(i, j int) bool { return d.samples[i].start.Before(d.samples[j].start) })
	for _, s := range d.samples {
		j.count(s)
	}
	noAck := j.writeWindow()
	j.recovery()
	j.windowIssued()
	j.violations(noAck)
}

// drillFault is one applied fault as judge sees it.
type drillFault struct {
	appliedFault
	down, isolated    map[string]bool
	firstAck          time.Time
	failClosedMissing bool
}

// drillJudge is judge's work: the faults, the report it fills and what it
// collects over the samples.
type drillJudge struct {
	d     *drillRun
	rep   *DrillReport
	grace time.Duration
	fs    []*drillFault

	ackAfterHeal time.Time
	stillIssuing []string
}

func (j *drillJudge) faultState(f appliedFault) *drillFault {
	if f.healing.IsZero() {
		f.healing = f.healAt
	}
	if f.injected.IsZero() {
		f.injected = f.at
	}
	s := &drillFault{appliedFault: f, down: setOf(f.Down), isolated: setOf(f.Isolated)}
	s.failClosedMissing = len(f.Isolated) > 0 && f.healing.Sub(f.injected) > j.d.cfg.MaxStale+j.grace
	return s
}

// faulted is the fault during which the sample's node was down or isolated
// (an isolated node needs a moment after the heal to hear the leader), or
// nil.
func (j *drillJudge) faulted(s drillSample) *drillFault {
	for _, f := range j.fs {
		switch {
		// From the start of the injection: a command's fault may bite
		// before the command returns.
		case f.down[s.node] && s.end.After(f.injected) && s.start.Before(later(f.healAt, f.settled)):
			return f
		case f.isolated[s.node] && s.end.After(f.injected) && s.start.Before(later(f.healAt.Add(j.grace), f.settled)):
			return f
		}
	}
	return nil
}

// count adds one sample to the report's counts.
func (j *drillJudge) count(s drillSample) {
	rep := j.rep
	if f := j.faulted(s); f != nil {
		j.countFaulted(f, s)
		return
	}
	if !s.write {
		rep.Issued++
		if s.outcome != OutcomeOK {
			rep.IssueErrors[s.outcome]++
			rep.IssueErrorNodes[s.node]++
		}
		return
	}
	rep.Writes++
	if s.outcome != OutcomeOK {
		rep.WriteErrors[s.outcome]++
		if s.outcome != "temporarily_unavailable" {
			rep.Violations = append(rep.Violations, fmt.Sprintf("write through %s answered %s, want 200 or 503 temporarily_unavailable", s.node, s.outcome))
		}
		return
	}
	rep.WritesAcked++
	for _, f := range j.fs {
		if !s.start.Before(f.at) && f.firstAck.IsZero() {
			f.firstAck = s.end
		}
	}
	if last := j.fs[len(j.fs)-1]; !s.start.Before(later(last.healAt, last.settled)) {
		j.ackAfterHeal = s.end
	}
}

// countFaulted counts a sample of a node that fault f took down or
// isolated.
func (j *drillJudge) countFaulted(f *drillFault, s drillSample) {
	rep, cfg := j.rep, j.d.cfg
	if f.down[s.node] {
		rep.ToDownNodes++
		return
	}
	// Isolated node (RFC-independent tally contract: fail closed after
	// max-stale with 503 temporarily_unavailable).
	switch s.outcome {
	case OutcomeOK:
		if s.start.After(f.injected) {
			rep.IsolatedIssued++
		}
		if s.start.After(f.injected.Add(cfg.MaxStale+j.grace)) && s.end.Before(f.healing) {
			j.stillIssuing = append(j.stillIssuing, fmt.Sprintf("%s at %.3fs", s.node, s.start.Sub(j.d.t0).Seconds()))
		}
	case "temporarily_unavailable":
		if rep.IsolatedFailClosed == 0 || s.end.Sub(f.injected) < rep.FailClosedAfter {
			rep.FailClosedAfter = s.end.Sub(f.injected)
		}
		rep.IsolatedFailClosed++
		f.failClosedMissing = false
	case OutcomeTransport:
		// A write or token request cut when the partition closed a
		// connection is not an answer.
	default:
		if !s.write {
			rep.Violations = append(rep.Violations, fmt.Sprintf("isolated %s answered %s, want a token or 503 temporarily_unavailable", s.node, s.outcome))
		}
	}
}

// writeWindow sets the write window, the longest of the faults', and
// returns how many faults saw no acknowledged write.
func (j *drillJudge) writeWindow() (noAck int) {
	for _, f := range j.fs {
		if f.firstAck.IsZero() {
			noAck++
			continue
		}
		j.rep.WriteWindow = max(j.rep.WriteWindow, f.firstAck.Sub(f.at))
	}
	return noAck
}

// recovery sets the recovery time: from the first fault to the first write
// acknowledged after the last failure of a serving node (the write window
// if there was none).
func (j *drillJudge) recovery() {
	first := j.fs[0]
	var lastFail time.Time
	for _, s := range j.d.samples {
		if j.faulted(s) == nil && s.outcome != OutcomeOK && s.end.After(first.at) && s.end.After(lastFail) {
			lastFail = s.end
		}
	}
	j.rep.Recovery = j.rep.WriteWindow
	if lastFail.IsZero() {
		return
	}
	for _, s := range j.d.samples {
		if s.write && s.outcome == OutcomeOK && j.faulted(s) == nil && !s.start.Before(lastFail) {
			j.rep.Recovery = s.end.Sub(first.at)
			return
		}
	}
}

// windowIssued counts the token requests to serving nodes during a fault's
// write window, and those that failed.
func (j *drillJudge) windowIssued() {
	for _, s := range j.d.samples {
		if s.write || j.faulted(s) != nil {
			continue
		}
		for _, f := range j.fs {
			end := f.at.Add(f.firstAck.Sub(f.at))
			if f.firstAck.IsZero() {
				end = f.at
			}
			if s.end.Before(f.at) || s.start.After(end) {
				continue
			}
			j.rep.WindowIssued++
			if s.outcome != OutcomeOK {
				j.rep.WindowIssueErrors++
			}
			break
		}
	}
}

// violations adds the invariants the counts break to the report.
func (j *drillJudge) violations(noAck int) {
	rep, cfg := j.rep, j.d.cfg
	if n := int64(len(rep.IssueErrors)); n > 0 {
		var total int64
		for _, c := range rep.IssueErrors {
			total += c
		}
		rep.Violations = append(rep.Violations, fmt.Sprintf("%d client-credentials requests to serving nodes failed (%s; by node %s); want none", total, fmtCounts(rep.IssueErrors), fmtCounts(rep.IssueErrorNodes)))
	}
	if noAck > 0 {
		rep.Violations = append(rep.Violations, fmt.Sprintf("no write sent after the fault was acknowledged (%d of %d faults)", noAck, len(j.fs)))
	}
	if j.ackAfterHeal.IsZero() {
		rep.Violations = append(rep.Violations, "no write sent after the heal was acknowledged: the cluster did not recover")
	}
	if len(j.stillIssuing) > 0 {
		rep.Violations = append(rep.Violations, fmt.Sprintf("isolated node issued %d tokens after the staleness bound %v (+%v): %s", len(j.stillIssuing), cfg.MaxStale, j.grace, strings.Join(j.stillIssuing[:min(3, len(j.stillIssuing))], ", ")))
	}
	for _, f := range j.fs {
		if f.failClosedMissing {
			rep.Violations = append(rep.Violations, fmt.Sprintf("isolated nodes never failed closed in %v of isolation (bound %v)", f.healing.Sub(f.injected).Round(time.Millisecond), cfg.MaxStale))
		}
	}
}

// verify checks that every node reports every acknowledged revocation
// (introspection, RFC 7662 section 2.2: a revoked token is inactive),
// polling until cfg.VerifyTimeout, and that the control token is active
// everywhere.
func (d *drillRun) verify(ctx context.Context, rep *DrillReport, control string) {
	acked := slices.Clone(d.acked)
	if d.cfg.loseWrite {
		// The "lost" write: a token nobody revoked, counted as revoked.
		if tok, err := d.token(ctx, d.cfg.Nodes[0]); err == nil {
			acked = append(acked, tok)
		}
	}
	rep.Verified = int64(len(acked))
	rep.Nodes = len(d.cfg.Nodes)
	start := time.Now()
	deadline := start.Add(d.cfg.VerifyTimeout)
	lost := map[string]bool{}
	for _, n := range d.cfg.Nodes {
		pending := acked
		for len(pending) > 0 {
			pending = d.stillActive(ctx, n, pending)
			if len(pending) == 0 || time.Now().After(deadline) || wait(ctx, 50*time.Millisecond) != nil {
				break
			}
		}
		for _, tok := range pending {
			lost[fmt.Sprintf("%s: %s", n.ID, tokenLabel(tok))] = true
		}
	}
	rep.Converged = time.Since(start)
	for k := range lost {
		rep.Lost = append(rep.Lost, k)
	}
	sort.Strings(rep.Lost)
	if len(rep.Lost) > 0 {
		rep.Violations = append(rep.Violations, fmt.Sprintf("%d acknowledged revocations missing on some node after %v (first: %s)", len(rep.Lost), d.cfg.VerifyTimeout, rep.Lost[0]))
	}
	for _, n := range d.cfg.Nodes {
		active, err := d.introspect(ctx, n, control)
		if err != nil || !active {
			rep.Violations = append(rep.Violations, fmt.Sprintf("verifier control: the unrevoked token is not active on %s (%v)", n.ID, err))
		}
	}
}

// tokenLabel names a token in a report without printing a usable
// credential.
func tokenLabel(tok string) string {
	if len(tok) > 12 {
		return "…" + tok[len(tok)-12:]
	}
	return tok
}

// stillActive introspects tokens on n (a few at a time) and returns those
// not yet shown inactive (active, or no answer).
func (d *drillRun) stillActive(ctx context.Context, n DrillNode, tokens []string) []string {
	const parallel = 8
	out := make([]bool, len(tokens))
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range min(parallel, len(tokens)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(tokens) || ctx.Err() != nil {
					return
				}
				active, err := d.introspect(ctx, n, tokens[i])
				out[i] = active || err != nil
			}
		}()
	}
	wg.Wait()
	var pending []string
	for i, still := range out {
		if still {
			pending = append(pending, tokens[i])
		}
	}
	return pending
}

// introspect asks n whether token is active (RFC 7662 section 2.1).
func (d *drillRun) introspect(ctx context.Context, n DrillNode, token string) (bool, error) {
	status, body, err := d.post(ctx, n.Issuer+"/oauth2/introspect", url.Values{"token": {token}})
	if err != nil {
		return false, err
	}
	var ir struct {
		Active *bool `json:"active"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &ir) != nil || ir.Active == nil {
		return false, fmt.Errorf("introspection answered %d (%s)", status, classify(status, body))
	}
	return *ir.Active, nil
}
