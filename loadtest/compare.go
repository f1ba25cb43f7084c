package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Endpoint is one side of a Compare: a token endpoint and the client to
// load it with.
type Endpoint struct {
	// Name labels the side's reports (Report.Target), e.g. "baseline".
	Name         string
	TokenURL     string
	ClientID     string
	ClientSecret string
	Scope        string
}

// CompareConfig configures Compare.
type CompareConfig struct {
	// Load is the load sent to each side; its TokenURL, Target, ClientID,
	// ClientSecret and Scope are taken from the Endpoint.
	Load ClientCredentialsConfig
	// Baseline and Candidate are the two sides.
	Baseline, Candidate Endpoint
	// Rounds is how often each side is run, alternately: baseline,
	// candidate, baseline, candidate, … so that drift of a noisy machine
	// shows in the runs of both.
	Rounds int
	// OnRun, if set, is called before each run.
	OnRun func(round int, e Endpoint)
}

// DefaultCompareConfig returns two rounds of the default closed-loop load.
func DefaultCompareConfig() CompareConfig {
	return CompareConfig{Load: DefaultClientCredentialsConfig(), Rounds: 2}
}

// Validate reports the first problem with c, or nil.
func (c CompareConfig) Validate() error {
	if c.Rounds < 1 {
		return errors.New("loadtest: compare needs at least one round")
	}
	for _, e := range []Endpoint{c.Baseline, c.Candidate} {
		if e.Name == "" {
			return errors.New("loadtest: compare endpoints need names")
		}
		if err := c.Load.forEndpoint(e).Validate(); err != nil {
			return fmt.Errorf("%s: %w", e.Name, err)
		}
	}
	return nil
}

func (c ClientCredentialsConfig) forEndpoint(e Endpoint) ClientCredentialsConfig {
	c.TokenURL, c.Target = e.TokenURL, e.Name
	c.ClientID, c.ClientSecret, c.Scope = e.ClientID, e.ClientSecret, e.Scope
	return c
}

// Comparison is the result of Compare.
type Comparison struct {
	// Runs are the reports in the order they ran.
	Runs []Report `json:"runs"`
	// Baseline and Candidate merge all rounds of each side: counts and
	// durations add up, percentiles come from the merged histograms.
	Baseline  Report `json:"baseline"`
	Candidate Report `json:"candidate"`
	// ThroughputRatio is Candidate.Throughput / Baseline.Throughput, and
	// P99Ratio Candidate.P99 / Baseline.P99; 0 when the divisor is.
	ThroughputRatio float64 `json:"throughput_ratio"`
	P99Ratio        float64 `json:"p99_ratio"`
	// RoundRatios are the throughput ratios candidate/baseline of each
	// round, in order (a round whose baseline run got nothing through is
	// left out), and MedianRoundRatio their median: less moved by one
	// disturbed round than the merged ratio, when the sides share a
	// machine.
	RoundRatios      []float64 `json:"round_throughput_ratios"`
	MedianRoundRatio float64   `json:"median_round_throughput_ratio"`
}

// Compare runs cfg.Load against the baseline and the candidate alternately,
// cfg.Rounds times each, and reports every run, each side's merged result
// and their ratios. If ctx ends, it returns what ran so far with ctx's
// error.
func Compare(ctx context.Context, cfg CompareConfig) (Comparison, error) {
	if err := cfg.Validate(); err != nil {
		return Comparison{}, err
	}
	var cmp Comparison
	sides := []Endpoint{cfg.Baseline, cfg.Candidate}
	merged := []*merger{newMerger(cfg.Baseline.Name), newMerger(cfg.Candidate.Name)}
	var err error
runs:
	for round := 1; round <= cfg.Rounds; round++ {
		for i, e := range sides {
			if cfg.OnRun != nil {
				cfg.OnRun(round, e)
			}
			var rep Report
			var h *hdrhistogram.Histogram
			rep, h, err = runClientCredentials(ctx, cfg.Load.forEndpoint(e))
			if h != nil {
				cmp.Runs = append(cmp.Runs, rep)
				merged[i].add(rep, h)
				if i == 1 && len(cmp.Runs) >= 2 {
					if b := cmp.Runs[len(cmp.Runs)-2]; b.Target == cfg.Baseline.Name && b.Throughput > 0 {
						cmp.RoundRatios = append(cmp.RoundRatios, rep.Throughput/b.Throughput)
					}
				}
			}
			if err != nil {
				break runs
			}
		}
	}
	cmp.MedianRoundRatio = medianRatio(cmp.RoundRatios)
	cmp.Baseline, cmp.Candidate = merged[0].report(), merged[1].report()
	if cmp.Baseline.Throughput > 0 {
		cmp.ThroughputRatio = cmp.Candidate.Throughput / cmp.Baseline.Throughput
	}
	if cmp.Baseline.P99 > 0 {
		cmp.P99Ratio = float64(cmp.Candidate.P99) / float64(cmp.Baseline.P99)
	}
	return cmp, err
}

// medianRatio is the median of v (the mean of the middle two for an even
// count), 0 for none.
func medianRatio(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// merger adds up the runs of one side.
type merger struct {
	rep  Report
	hist *hdrhistogram.Histogram
}

func newMerger(name string) *merger {
	return &merger{rep: Report{Target: name, Errors: map[string]int64{}}, hist: newHistogram()}
}

func (m *merger) add(r Report, h *hdrhistogram.Histogram) {
	m.rep.Scenario, m.rep.Concurrency, m.rep.Rate = r.Scenario, r.Concurrency, r.Rate
	m.rep.Duration += r.Duration
	m.rep.Requests += r.Requests
	m.rep.OK += r.OK
	for code, n := range r.Errors {
		m.rep.Errors[code] += n
	}
	m.hist.Merge(h)
}

func (m *merger) report() Report {
	r := m.rep
	r.fillLatencies(m.hist)
	r.fillThroughput()
	return r
}

// WriteText writes the runs, the merged results and the ratios as text.
func (c Comparison) WriteText(w io.Writer) error {
	if _, err := fmt.Fprintln(w, "runs, in order:"); err != nil {
		return err
	}
	if err := WriteTable(w, c.Runs...); err != nil {
		return err
	}
	if _, err := fmt.Fprintln(w, "\nall rounds merged:"); err != nil {
		return err
	}
	if err := WriteTable(w, c.Baseline, c.Candidate); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s/%s: throughput ratio %.3f (%.0f vs %.0f req/s), p99 ratio %.3f (%s vs %s)\n",
		c.Candidate.Target, c.Baseline.Target,
		c.ThroughputRatio, c.Candidate.Throughput, c.Baseline.Throughput,
		c.P99Ratio, c.Candidate.P99.Round(time.Microsecond), c.Baseline.P99.Round(time.Microsecond))
	if err != nil || len(c.RoundRatios) == 0 {
		return err
	}
	ratios := make([]string, len(c.RoundRatios))
	for i, r := range c.RoundRatios {
		ratios[i] = fmt.Sprintf("%.2f", r)
	}
	_, err = fmt.Fprintf(w, "throughput ratio per round: %s; median %.3f\n", strings.Join(ratios, " "), c.MedianRoundRatio)
	return err
}

// WaitForToken sends one client_credentials request to e every 50 ms until
// one is answered with a token, and returns nil then; or, when ctx ends, an
// error naming the last outcome. It lets a caller start measuring only once
// a freshly started issuer issues tokens.
func WaitForToken(ctx context.Context, e Endpoint) error {
	cfg := DefaultClientCredentialsConfig().forEndpoint(e)
	cfg.Concurrency, cfg.Warmup, cfg.Duration, cfg.Requests = 1, 0, 0, 1
	if err := cfg.Validate(); err != nil {
		return err
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	last := "none"
	for {
		r, err := RunClientCredentials(ctx, cfg)
		if err == nil && r.OK == 1 {
			return nil
		}
		if r.Requests > 0 {
			last = r.ErrorSummary()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("loadtest: %s issued no token (last outcome %s): %w", e.Name, last, ctx.Err())
		case <-tick.C:
		}
	}
}
