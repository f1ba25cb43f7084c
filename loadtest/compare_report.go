package loadtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
)

// maxResultBytes bounds a result file read by ReadResult.
const maxResultBytes = 64 << 20

// ReadResult decodes a Result written with --output json, or a bare Report
// (what earlier versions and "tally loadtest client-credentials --output
// json" wrote), which becomes a Result with that one Report.
func ReadResult(r io.Reader) (Result, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxResultBytes+1))
	if err != nil {
		return Result{}, err
	}
	if len(b) > maxResultBytes {
		return Result{}, fmt.Errorf("loadtest: result larger than %d bytes", maxResultBytes)
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return Result{}, fmt.Errorf("loadtest: not a load test result: %w", err)
	}
	if _, ok := probe["report"]; ok {
		var res Result
		dec := json.NewDecoder(bytes.NewReader(b))
		if err := dec.Decode(&res); err != nil {
			return Result{}, fmt.Errorf("loadtest: not a load test result: %w", err)
		}
		return res, nil
	}
	if _, ok := probe["scenario"]; !ok {
		return Result{}, errors.New("loadtest: not a load test result: neither a report nor a scenario")
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return Result{}, fmt.Errorf("loadtest: not a load test report: %w", err)
	}
	return Result{Report: rep, Scenarios: []Report{rep}}, nil
}

// Ratio is a current report over a base report of the same scenario:
// each field is current / base, 0 when the base is 0. Above 1 is more
// throughput, or more latency.
type Ratio struct {
	Scenario   string  `json:"scenario"`
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50"`
	P90        float64 `json:"p90"`
	P99        float64 `json:"p99"`
	P999       float64 `json:"p999"`
	Max        float64 `json:"max"`
	// BaseErrorRate and ErrorRate are the failed fractions of requests.
	BaseErrorRate float64 `json:"base_error_rate"`
	ErrorRate     float64 `json:"error_rate"`
	Base          Report  `json:"base"`
	Current       Report  `json:"current"`
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func errorRate(r Report) float64 {
	if r.Requests == 0 {
		return 0
	}
	return float64(r.Requests-r.OK) / float64(r.Requests)
}

// RatioOf compares cur with base.
func RatioOf(base, cur Report) Ratio {
	return Ratio{
		Scenario:      cur.Scenario,
		Throughput:    ratio(cur.Throughput, base.Throughput),
		P50:           ratio(float64(cur.P50), float64(base.P50)),
		P90:           ratio(float64(cur.P90), float64(base.P90)),
		P99:           ratio(float64(cur.P99), float64(base.P99)),
		P999:          ratio(float64(cur.P999), float64(base.P999)),
		Max:           ratio(float64(cur.Max), float64(base.Max)),
		BaseErrorRate: errorRate(base), ErrorRate: errorRate(cur),
		Base: base, Current: cur,
	}
}

// CompareResults returns the ratios of cur over base: first the totals
// (under cur's run name), then every scenario that both have, in cur's
// order. Scenarios in only one of them are left out.
func CompareResults(base, cur Result) []Ratio {
	out := []Ratio{RatioOf(base.Report, cur.Report)}
	if len(cur.Scenarios) < 2 && len(base.Scenarios) < 2 {
		return out
	}
	byName := map[string]Report{}
	for _, r := range base.Scenarios {
		byName[r.Scenario] = r
	}
	for _, r := range cur.Scenarios {
		if b, ok := byName[r.Scenario]; ok {
			out = append(out, RatioOf(b, r))
		}
	}
	return out
}

// WriteRatios writes ratios as a text table.
func WriteRatios(w io.Writer, ratios []Ratio) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tbase req/s\treq/s\tthroughput\tp50\tp90\tp99\tp99.9\tmax\tbase errors\terrors\t")
	for _, r := range ratios {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t×%.3f\t×%.3f\t×%.3f\t×%.3f\t×%.3f\t×%.3f\t%.2f%%\t%.2f%%\t\n",
			r.Scenario, r.Base.Throughput, r.Current.Throughput, r.Throughput, r.P50, r.P90, r.P99, r.P999, r.Max,
			100*r.BaseErrorRate, 100*r.ErrorRate)
	}
	return tw.Flush()
}
