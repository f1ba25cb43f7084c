package loadtest

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// drillScenario is a drill's load on the one load engine (Run, closed
// loop): virtual clients [0, IssueWorkers) request client-credentials
// tokens round-robin from every node that is not down; the others obtain a
// token from one serving node and revoke it through the next (the write).
// Each op also records its requests as drill samples, which the drill's
// invariants are judged on.
type drillScenario struct{ d *drillRun }

func (s drillScenario) Name() string { return "drill " + s.d.cfg.Name }

func (s drillScenario) NewOp(_ context.Context, i int) (Op, error) {
	if i < s.d.cfg.IssueWorkers {
		return &drillIssueOp{d: s.d, i: i}, nil
	}
	return &drillWriteOp{d: s.d, i: i - s.d.cfg.IssueWorkers}, nil
}

// ScenarioDrillWrite names a drill's writes (a token revoked) in its load
// report; its token requests are ScenarioClientCredentials.
const ScenarioDrillWrite = "revoke"

// drillBackoff is the pause after a failed request: a refused connection
// answers at once, and a worker must not spin on it.
const drillBackoff = 5 * time.Millisecond

type drillIssueOp struct {
	d *drillRun
	i int
}

func (o *drillIssueOp) Do(ctx context.Context) (Outcome, bool) {
	n := o.d.pick(o.i, false)
	o.i++
	start := time.Now()
	status, body, err := o.d.post(ctx, n.Issuer+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}})
	if ctx.Err() != nil {
		return Outcome{}, false
	}
	outcome := OutcomeTransport
	if err == nil {
		outcome = classify(status, body)
	}
	o.d.record([]drillSample{{start: start, end: time.Now(), node: n.ID, outcome: outcome}}, nil)
	return Outcome{Scenario: ScenarioClientCredentials, Code: outcome}, true
}

// Recover pauses after a failure (the engine calls it untimed).
func (o *drillIssueOp) Recover(ctx context.Context) error { return wait(ctx, drillBackoff) }

type drillWriteOp struct {
	d *drillRun
	i int
}

// Do obtains a token (retrying; issuance failures are the issue workers'
// to count) and revokes it through the next serving node. The engine's
// latency of a write covers both; the drill's samples only the revocation.
func (o *drillWriteOp) Do(ctx context.Context) (Outcome, bool) {
	var token string
	for {
		tok, err := o.d.token(ctx, o.d.pick(o.i, true))
		if err == nil {
			token = tok
			break
		}
		o.i++
		if wait(ctx, drillBackoff) != nil {
			return Outcome{}, false
		}
	}
	n := o.d.pick(o.i+1, true)
	o.i++
	start := time.Now()
	status, body, err := o.d.post(ctx, n.Issuer+"/oauth2/revoke", url.Values{"token": {token}})
	if ctx.Err() != nil {
		return Outcome{}, false
	}
	outcome := OutcomeTransport
	if err == nil {
		outcome = classify(status, body)
		if status == http.StatusOK {
			outcome = OutcomeOK
		}
	}
	var acked []string
	if outcome == OutcomeOK {
		acked = []string{token}
		for sent := int64(start.Sub(o.d.t0)); ; {
			last := o.d.lastAck.Load()
			if sent <= last || o.d.lastAck.CompareAndSwap(last, sent) {
				break
			}
		}
	}
	o.d.record([]drillSample{{start: start, end: time.Now(), node: n.ID, write: true, outcome: outcome}}, acked)
	return Outcome{Scenario: ScenarioDrillWrite, Code: outcome}, true
}

// Recover pauses after a failure (the engine calls it untimed).
func (o *drillWriteOp) Recover(ctx context.Context) error { return wait(ctx, drillBackoff) }

// runLoad runs the drill's load on the engine until ctx ends.
func (d *drillRun) runLoad(ctx context.Context) Result {
	res, _ := Run(ctx, RunConfig{
		Target:      d.cfg.Name,
		Concurrency: d.cfg.IssueWorkers + d.cfg.WriteWorkers,
		Duration:    maxRunDuration, // until ctx ends
	}, drillScenario{d})
	return res
}

// loadResult is the engine's result of the load with the drill's events
// as markers, for WriteHTML.
func (d *drillRun) loadResult(res Result) Result {
	offset := res.Started.Sub(d.t0)
	res.Events = []Event{}
	for _, e := range d.events {
		res.Events = append(res.Events, Event{AtMS: ms(e.At - offset), Label: e.Name})
	}
	return res
}
