package loadtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// ScenarioClientCredentials is the Report.Scenario of RunClientCredentials.
const ScenarioClientCredentials = "client-credentials"

const (
	// maxResponseBytes is how much of a response body is read and kept for
	// classification; the rest is discarded.
	maxResponseBytes = 64 << 10
	// maxOutcomes bounds the distinct outcomes a worker counts, so that a
	// server inventing error codes cannot grow memory; further ones count
	// as OutcomeOther.
	maxOutcomes = 32
	// maxErrorCodeLen bounds an error code taken from a response.
	maxErrorCodeLen = 64
	// maxConcurrency bounds workers (or requests in flight).
	maxConcurrency = 10000
)

// ClientCredentialsConfig configures RunClientCredentials.
type ClientCredentialsConfig struct {
	// TokenURL is the token endpoint (see Discover).
	TokenURL string
	// Target labels the Report; empty means TokenURL.
	Target string
	// ClientID and ClientSecret authenticate with HTTP Basic (RFC 6749
	// section 2.3.1).
	ClientID     string
	ClientSecret string
	// Scope is sent as the scope parameter when not empty.
	Scope string
	// Concurrency is the number of closed-loop workers, each sending its
	// next request when the previous one is answered. In an open-loop run
	// (Rate > 0) it bounds the requests in flight.
	Concurrency int
	// Rate > 0 selects an open-loop run: requests are scheduled at this
	// many per second whatever the answers, and each latency is measured
	// from the request's scheduled start.
	Rate float64
	// Duration is the recorded time after Warmup; Requests, if positive,
	// stops the run after that many recorded requests. At least one of the
	// two must be set; the run ends at whichever comes first.
	Duration time.Duration
	Requests int64
	// Warmup is sent before recording starts, and not recorded.
	Warmup time.Duration
	// Timeout bounds each request.
	Timeout time.Duration
	// Progress, if set, is called every ProgressInterval from one
	// goroutine while the run lasts.
	Progress         func(Progress)
	ProgressInterval time.Duration

	// now, if set, replaces time.Now for a closed loop's warm-up, end and
	// latencies (tests drive it; an open loop's timers need the real
	// clock).
	now func() time.Time
}

// Progress is a snapshot of a running load.
type Progress struct {
	// Elapsed is the time since the end of the warm-up; negative during it.
	Elapsed time.Duration
	// Requests and OK count recorded requests so far; Failed is the rest.
	Requests, OK, Failed int64
}

// DefaultClientCredentialsConfig returns a closed-loop configuration with 32
// workers for ten seconds after a one-second warm-up. TokenURL, ClientID and
// ClientSecret must still be set.
func DefaultClientCredentialsConfig() ClientCredentialsConfig {
	return ClientCredentialsConfig{
		Concurrency:      32,
		Duration:         10 * time.Second,
		Warmup:           time.Second,
		Timeout:          10 * time.Second,
		ProgressInterval: time.Second,
	}
}

// Validate reports the first problem with c, or nil.
func (c ClientCredentialsConfig) Validate() error {
	u, err := url.Parse(c.TokenURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("loadtest: token url %q is not an absolute http(s) URL", c.TokenURL)
	}
	if c.ClientID == "" {
		return errors.New("loadtest: client id is required")
	}
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
	if c.Timeout <= 0 {
		return errors.New("loadtest: timeout must be positive")
	}
	if c.Progress != nil && c.ProgressInterval <= 0 {
		return errors.New("loadtest: progress interval must be positive")
	}
	return nil
}

// RunClientCredentials sends client_credentials token requests (RFC 6749
// section 4.4.2) to cfg.TokenURL until cfg.Duration has passed after the
// warm-up or cfg.Requests were recorded, and reports the outcome.
//
// If ctx ends early, the run stops, requests cut short are not counted,
// and RunClientCredentials returns the report of what was recorded with
// ctx's error. Requests in flight when the duration ends are waited for and
// counted. The error is otherwise non-nil only for an invalid cfg.
func RunClientCredentials(ctx context.Context, cfg ClientCredentialsConfig) (Report, error) {
	r, _, err := runClientCredentials(ctx, cfg)
	return r, err
}

// runClientCredentials is RunClientCredentials that also returns the merged
// latency histogram, for Compare.
func runClientCredentials(ctx context.Context, cfg ClientCredentialsConfig) (Report, *hdrhistogram.Histogram, error) {
	if err := cfg.Validate(); err != nil {
		return Report{}, nil, err
	}
	g := newGenerator(cfg)
	defer g.transport.CloseIdleConnections()

	var stopProgress func()
	if cfg.Progress != nil {
		stopProgress = g.startProgress()
	}
	elapsed := time.Duration(0)
	if cfg.Rate > 0 {
		scheduledToEnd := g.openLoop(ctx)
		elapsed = time.Since(g.recordFrom)
		if scheduledToEnd {
			// The schedule spanned the whole duration even if its last
			// request was answered before the end.
			elapsed = max(elapsed, cfg.Duration)
		}
	} else {
		g.closedLoop(ctx)
		elapsed = g.now().Sub(g.recordFrom)
	}
	elapsed = max(elapsed, 0)
	if stopProgress != nil {
		stopProgress()
	}

	rep := Report{
		Scenario:    ScenarioClientCredentials,
		Target:      cfg.Target,
		Concurrency: cfg.Concurrency,
		Rate:        cfg.Rate,
		Duration:    elapsed,
		Errors:      map[string]int64{},
	}
	if rep.Target == "" {
		rep.Target = cfg.TokenURL
	}
	h := newHistogram()
	for _, w := range g.workers {
		h.Merge(w.hist)
		for code, n := range w.outcomes {
			rep.Requests += n
			if code == OutcomeOK {
				rep.OK += n
			} else {
				rep.Errors[code] += n
			}
		}
	}
	if g.notSent > 0 {
		rep.Requests += g.notSent
		rep.Errors[OutcomeNotSent] += g.notSent
	}
	rep.fillLatencies(h)
	rep.fillThroughput()
	return rep, h, ctx.Err()
}

// generator is one run's shared, read-only-after-start state.
type generator struct {
	cfg        ClientCredentialsConfig
	transport  *http.Transport
	body       []byte
	header     http.Header
	start      time.Time
	recordFrom time.Time
	end        time.Time // zero: no time limit
	now        func() time.Time
	claimed    atomic.Int64
	workers    []*worker
	notSent    int64 // written by the open-loop scheduler before workers are merged
}

// worker holds one goroutine's results. hist and outcomes are touched only
// by its goroutine until the run ends; the atomics feed Progress.
type worker struct {
	client   *http.Client
	hist     *hdrhistogram.Histogram
	outcomes map[string]int64
	buf      bytes.Buffer
	requests atomic.Int64
	ok       atomic.Int64
}

func newGenerator(cfg ClientCredentialsConfig) *generator {
	n := cfg.Concurrency
	g := &generator{
		cfg: cfg,
		transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          n,
			MaxIdleConnsPerHost:   n,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   5 * time.Second,
			ExpectContinueTimeout: time.Second,
			DisableCompression:    true,
		},
	}
	// RFC 6749 section 4.4.2 request; section 2.3.1: id and secret are
	// form-urlencoded before Basic encoding.
	form := url.Values{"grant_type": {"client_credentials"}}
	if cfg.Scope != "" {
		form.Set("scope", cfg.Scope)
	}
	g.body = []byte(form.Encode())
	cred := url.QueryEscape(cfg.ClientID) + ":" + url.QueryEscape(cfg.ClientSecret)
	g.header = http.Header{
		"Content-Type":  {"application/x-www-form-urlencoded"},
		"Accept":        {"application/json"},
		"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(cred))},
	}
	g.workers = make([]*worker, n)
	for i := range g.workers {
		g.workers[i] = &worker{
			client: &http.Client{
				Transport: g.transport,
				Timeout:   cfg.Timeout,
				// A redirect is an answer to classify, not to follow.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			},
			hist:     newHistogram(),
			outcomes: make(map[string]int64, 4),
		}
	}
	g.now = cfg.now
	if g.now == nil {
		g.now = time.Now
	}
	g.start = g.now()
	g.recordFrom = g.start.Add(cfg.Warmup)
	if cfg.Duration > 0 {
		g.end = g.recordFrom.Add(cfg.Duration)
	}
	return g
}

// pastEnd reports whether t is at or after the end of the run.
func (g *generator) pastEnd(t time.Time) bool { return !g.end.IsZero() && !t.Before(g.end) }

// claim reserves one recorded request under the Requests limit.
func (g *generator) claim() bool {
	return g.cfg.Requests <= 0 || g.claimed.Add(1) <= g.cfg.Requests
}

func (g *generator) closedLoop(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range g.workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				start := g.now()
				if g.pastEnd(start) {
					return
				}
				record := !start.Before(g.recordFrom)
				if record && !g.claim() {
					return
				}
				outcome, answered := g.send(ctx, w)
				if !answered {
					return
				}
				if record {
					w.record(outcome, g.now().Sub(start))
				}
			}
		})
	}
	wg.Wait()
}

// openLoop schedules request i at start + i/Rate, hands it to one of
// Concurrency senders, and measures its latency from that scheduled time.
// A request whose time falls in the run but that no sender could take
// before the run ended counts as OutcomeNotSent. It reports whether the
// schedule ran to the end of the duration.
func (g *generator) openLoop(ctx context.Context) (scheduledToEnd bool) {
	slots := make(chan time.Time, len(g.workers))
	var wg sync.WaitGroup
	for _, w := range g.workers {
		wg.Go(func() {
			for intended := range slots {
				if ctx.Err() != nil {
					continue
				}
				outcome, answered := g.send(ctx, w)
				if answered && !intended.Before(g.recordFrom) {
					w.record(outcome, time.Since(intended))
				}
			}
		})
	}

	var endC <-chan time.Time
	if !g.end.IsZero() {
		endTimer := time.NewTimer(time.Until(g.end))
		defer endTimer.Stop()
		endC = endTimer.C
	}
	wait := time.NewTimer(time.Hour)
	wait.Stop()
	defer wait.Stop()
	perReq := float64(time.Second) / g.cfg.Rate
	intendedAt := func(i int64) time.Time { return g.start.Add(time.Duration(float64(i) * perReq)) }

	var i int64
schedule:
	for ; ; i++ {
		intended := intendedAt(i)
		if g.pastEnd(intended) {
			scheduledToEnd = true
			break
		}
		if !intended.Before(g.recordFrom) && !g.claim() {
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
				g.countNotSent(i, intendedAt)
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
			g.countNotSent(i, intendedAt)
			scheduledToEnd = true
			break schedule
		}
	}
	close(slots)
	wg.Wait()
	return scheduledToEnd
}

// countNotSent counts the recorded requests scheduled from index i up to the
// end of the run, within the Requests limit. The request at i has already
// taken its claim.
func (g *generator) countNotSent(i int64, intendedAt func(int64) time.Time) {
	for first := true; ; i, first = i+1, false {
		t := intendedAt(i)
		if g.pastEnd(t) {
			return
		}
		if t.Before(g.recordFrom) {
			continue
		}
		if !first && !g.claim() {
			return
		}
		g.notSent++
	}
}

// send posts one token request and classifies the answer. answered is false
// when the run's context ended the request, which is then not counted.
func (g *generator) send(ctx context.Context, w *worker) (outcome string, answered bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.cfg.TokenURL, bytes.NewReader(g.body))
	if err != nil {
		return OutcomeTransport, ctx.Err() == nil
	}
	req.Header = http.Header{
		"Content-Type":  g.header["Content-Type"],
		"Accept":        g.header["Accept"],
		"Authorization": g.header["Authorization"],
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return OutcomeTransport, ctx.Err() == nil
	}
	w.buf.Reset()
	_, err = w.buf.ReadFrom(io.LimitReader(resp.Body, maxResponseBytes))
	resp.Body.Close()
	if err != nil {
		return OutcomeTransport, ctx.Err() == nil
	}
	return classify(resp.StatusCode, w.buf.Bytes()), true
}

// classify names the outcome of an answered token request: OutcomeOK for a
// 2xx with an access token (RFC 6749 section 5.1), the error code of an
// error body (section 5.2), or http_<status>.
func classify(status int, body []byte) string {
	if status >= 200 && status < 300 {
		if bytes.Contains(body, []byte(`"access_token"`)) {
			return OutcomeOK
		}
		return OutcomeBadResponse
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && validErrorCode(e.Error) {
		return e.Error
	}
	return "http_" + strconv.Itoa(status)
}

// validErrorCode reports whether s is a plausible error code: 1*NQSCHAR
// without space (RFC 6749 section 5.2, appendix A.7), of bounded length.
func validErrorCode(s string) bool {
	if s == "" || len(s) > maxErrorCodeLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// record counts one recorded request.
func (w *worker) record(outcome string, latency time.Duration) {
	recordLatency(w.hist, latency)
	if _, seen := w.outcomes[outcome]; !seen && len(w.outcomes) >= maxOutcomes {
		outcome = OutcomeOther
	}
	w.outcomes[outcome]++
	w.requests.Add(1)
	if outcome == OutcomeOK {
		w.ok.Add(1)
	}
}

// startProgress calls cfg.Progress every interval until the returned stop
// function is called; stop returns after the last call.
func (g *generator) startProgress() (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(g.cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				var p Progress
				p.Elapsed = now.Sub(g.recordFrom)
				for _, w := range g.workers {
					p.Requests += w.requests.Load()
					p.OK += w.ok.Load()
				}
				p.Failed = p.Requests - p.OK
				g.cfg.Progress(p)
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
