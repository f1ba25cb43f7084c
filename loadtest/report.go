package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Outcomes other than OAuth error codes that a Report counts in Errors.
const (
	// OutcomeOK is a 200 answer with an access token; counted in OK, not in
	// Errors.
	OutcomeOK = "ok"
	// OutcomeTransport is a request that got no HTTP answer: refused or
	// reset connection, timeout.
	OutcomeTransport = "transport"
	// OutcomeNotSent is an open-loop request whose scheduled time fell in the
	// run but that could not be sent before the run ended, because every
	// in-flight slot stayed busy: a sign of a stalled server.
	OutcomeNotSent = "not_sent"
	// OutcomeBadResponse is a 2xx answer without an access token.
	OutcomeBadResponse = "bad_response"
	// OutcomeOther collects distinct error codes beyond maxOutcomes.
	OutcomeOther = "other"
)

// Histogram bounds: 1 µs to 60 s at 3 significant digits.
const (
	histMin     = int64(time.Microsecond / time.Nanosecond)
	histMax     = int64(60 * time.Second / time.Nanosecond)
	histSigFigs = 3
)

func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMin, histMax, histSigFigs)
}

// recordLatency records d, clamped into the histogram's range so that no
// sample is lost.
func recordLatency(h *hdrhistogram.Histogram, d time.Duration) {
	v := int64(d)
	v = max(v, histMin)
	v = min(v, histMax)
	_ = h.RecordValue(v) // in range by construction
}

// Report is the result of one load run. Latency percentiles cover every
// recorded request, whatever its outcome, except OutcomeNotSent ones, which
// were never sent.
type Report struct {
	// Scenario names the load, e.g. "client-credentials".
	Scenario string
	// Target is the URL (or name) the load was sent to.
	Target string
	// Concurrency is the number of closed-loop workers, or the bound on
	// requests in flight in an open-loop run.
	Concurrency int
	// Rate is the open-loop arrival rate in requests per second; 0 for a
	// closed-loop run.
	Rate float64
	// Duration is the measured time, from the end of the warm-up until the
	// last recorded request finished.
	Duration time.Duration
	// Requests counts recorded requests of every outcome; OK those answered
	// with a token.
	Requests, OK int64
	// Errors counts the other requests by outcome: the OAuth error code of
	// a 4xx/5xx JSON body (RFC 6749 section 5.2), "http_<status>" when there
	// is none, or one of the Outcome constants.
	Errors map[string]int64
	// Throughput is OK requests per second of Duration.
	Throughput float64
	// Latency percentiles and maximum.
	P50, P90, P99, P999, Max time.Duration
}

// reportJSON is the wire form of Report: durations in milliseconds.
type reportJSON struct {
	Scenario    string           `json:"scenario"`
	Target      string           `json:"target"`
	Concurrency int              `json:"concurrency"`
	Rate        float64          `json:"rate"`
	DurationMS  float64          `json:"duration_ms"`
	Requests    int64            `json:"requests"`
	OK          int64            `json:"ok"`
	Errors      map[string]int64 `json:"errors"`
	Throughput  float64          `json:"throughput"`
	P50MS       float64          `json:"p50_ms"`
	P90MS       float64          `json:"p90_ms"`
	P99MS       float64          `json:"p99_ms"`
	P999MS      float64          `json:"p999_ms"`
	MaxMS       float64          `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMS(v float64) time.Duration { return time.Duration(math.Round(v * float64(time.Millisecond))) }

// MarshalJSON encodes r with snake_case keys and durations as milliseconds
// (duration_ms, p50_ms, …, max_ms).
func (r Report) MarshalJSON() ([]byte, error) {
	errs := r.Errors
	if errs == nil {
		errs = map[string]int64{}
	}
	return json.Marshal(reportJSON{
		Scenario: r.Scenario, Target: r.Target, Concurrency: r.Concurrency, Rate: r.Rate,
		DurationMS: ms(r.Duration), Requests: r.Requests, OK: r.OK, Errors: errs,
		Throughput: r.Throughput,
		P50MS:      ms(r.P50), P90MS: ms(r.P90), P99MS: ms(r.P99), P999MS: ms(r.P999), MaxMS: ms(r.Max),
	})
}

// UnmarshalJSON decodes what MarshalJSON wrote.
func (r *Report) UnmarshalJSON(b []byte) error {
	var j reportJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Report{
		Scenario: j.Scenario, Target: j.Target, Concurrency: j.Concurrency, Rate: j.Rate,
		Duration: fromMS(j.DurationMS), Requests: j.Requests, OK: j.OK, Errors: j.Errors,
		Throughput: j.Throughput,
		P50:        fromMS(j.P50MS), P90: fromMS(j.P90MS), P99: fromMS(j.P99MS), P999: fromMS(j.P999MS), Max: fromMS(j.MaxMS),
	}
	return nil
}

// fillLatencies sets the percentiles of r from h.
func (r *Report) fillLatencies(h *hdrhistogram.Histogram) {
	if h.TotalCount() == 0 {
		return
	}
	r.P50 = time.Duration(h.ValueAtPercentile(50))
	r.P90 = time.Duration(h.ValueAtPercentile(90))
	r.P99 = time.Duration(h.ValueAtPercentile(99))
	r.P999 = time.Duration(h.ValueAtPercentile(99.9))
	r.Max = time.Duration(h.Max())
}

// fillThroughput sets Throughput from OK and Duration.
func (r *Report) fillThroughput() {
	if r.Duration > 0 {
		r.Throughput = float64(r.OK) / r.Duration.Seconds()
	}
}

// ErrorSummary renders Errors as "code=n, code=n" sorted by code, or "-".
func (r Report) ErrorSummary() string {
	if len(r.Errors) == 0 {
		return "-"
	}
	codes := make([]string, 0, len(r.Errors))
	for c := range r.Errors {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s=%d", c, r.Errors[c])
	}
	return strings.Join(parts, ", ")
}

// WriteTable writes reports as an aligned text table, one row each.
func WriteTable(w io.Writer, reports ...Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\tconc\trate\tduration\trequests\tok\treq/s\tp50\tp90\tp99\tp99.9\tmax\terrors\t")
	for _, r := range reports {
		rate := "-"
		if r.Rate > 0 {
			rate = fmt.Sprintf("%.0f/s", r.Rate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Scenario, r.Target, r.Concurrency, rate, r.Duration.Round(time.Millisecond),
			r.Requests, r.OK, r.Throughput,
			fmtLatency(r.P50), fmtLatency(r.P90), fmtLatency(r.P99), fmtLatency(r.P999), fmtLatency(r.Max),
			r.ErrorSummary())
	}
	return tw.Flush()
}

// WriteText writes r as a table of one row.
func (r Report) WriteText(w io.Writer) error { return WriteTable(w, r) }

// fmtLatency prints a latency in milliseconds with three decimals.
func fmtLatency(d time.Duration) string { return fmt.Sprintf("%.3fms", ms(d)) }
