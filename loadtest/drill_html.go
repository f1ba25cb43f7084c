package loadtest

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// drillResult renders a drill's load as a Result for WriteHTML: one
// Report per kind of request (client-credentials, revoke), the per-second
// timeline of both, and the drill's events as markers.
func (d *drillRun) drillResult(end time.Time) Result {
	kinds := map[bool]*Report{
		false: {Scenario: "client-credentials", Concurrency: d.cfg.IssueWorkers, Errors: map[string]int64{}},
		true:  {Scenario: "revoke", Concurrency: d.cfg.WriteWorkers, Errors: map[string]int64{}},
	}
	hists := map[bool]*hdrhistogram.Histogram{false: newHistogram(), true: newHistogram()}
	total := newHistogram()
	type second struct {
		req, ok, errs int64
		h             *hdrhistogram.Histogram
	}
	var secs []*second
	for _, s := range d.samples {
		lat := s.end.Sub(s.start)
		r := kinds[s.write]
		r.Requests++
		if s.outcome == OutcomeOK {
			r.OK++
		} else {
			r.Errors[s.outcome]++
		}
		recordLatency(hists[s.write], lat)
		recordLatency(total, lat)
		i := max(int(s.start.Sub(d.t0)/time.Second), 0)
		for len(secs) <= i {
			secs = append(secs, &second{h: newHistogram()})
		}
		sec := secs[i]
		sec.req++
		if s.outcome == OutcomeOK {
			sec.ok++
		} else {
			sec.errs++
		}
		recordLatency(sec.h, lat)
	}
	res := Result{Started: d.t0, Report: Report{Scenario: "drill " + d.cfg.Name, Concurrency: d.cfg.IssueWorkers + d.cfg.WriteWorkers, Errors: map[string]int64{}}}
	for _, write := range []bool{false, true} {
		r := kinds[write]
		r.Duration = end.Sub(d.t0)
		r.fillLatencies(hists[write])
		r.fillThroughput()
		res.Scenarios = append(res.Scenarios, *r)
		res.Report.Requests += r.Requests
		res.Report.OK += r.OK
		for k, v := range r.Errors {
			res.Report.Errors[k] += v
		}
	}
	res.Report.Duration = end.Sub(d.t0)
	res.Report.fillLatencies(total)
	res.Report.fillThroughput()
	res.Timeline = make([]Second, 0, len(secs))
	for i, s := range secs {
		res.Timeline = append(res.Timeline, Second{T: i, Requests: s.req, OK: s.ok, Errors: s.errs,
			P50MS: ms(time.Duration(s.h.ValueAtPercentile(50))), P90MS: ms(time.Duration(s.h.ValueAtPercentile(90))),
			P99MS: ms(time.Duration(s.h.ValueAtPercentile(99))), MaxMS: ms(time.Duration(s.h.Max()))})
	}
	res.Distribution = distribution(total)
	for _, e := range d.events {
		res.Events = append(res.Events, Event{AtMS: ms(e.At), Label: e.Name})
	}
	return res
}
