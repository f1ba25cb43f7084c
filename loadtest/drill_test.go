package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// drillOnNode is a short drill on one real node whose fault does nothing.
func drillOnNode(t *testing.T, loseWrite bool) (DrillReport, error) {
	t.Helper()
	n := nodetest.Start(t)
	resp, err := n.Admin.CreateClient(context.Background(), connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "drill", AccessTokenTtlSeconds: 600}))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultDrillConfig()
	cfg.Name = "noop"
	cfg.Nodes = []DrillNode{{ID: "node1", Issuer: n.Issuer("default")}}
	cfg.ClientID, cfg.ClientSecret = resp.Msg.Client.ClientId, resp.Msg.ClientSecret
	cfg.Before, cfg.FaultFor, cfg.After = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
	cfg.IssueWorkers, cfg.WriteWorkers = 1, 1
	cfg.VerifyTimeout = time.Second
	// A loaded machine may take longer than a phase for one write, and the
	// drill wants a write sent after the fault and one sent after the heal
	// acknowledged. So the fault lasts, and the load goes on after the
	// heal, until three more writes were acknowledged: the only write
	// worker sent the second of them after the phase began and recorded
	// it before sending the third.
	var acks atomic.Int64
	cfg.HTTPClient = &http.Client{Timeout: cfg.Timeout, Transport: revokeAcks{&acks}}
	threeMore := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for from := acks.Load(); acks.Load() < from+3; {
			if err := wait(ctx, 5*time.Millisecond); err != nil {
				return fmt.Errorf("no writes acknowledged: %w", err)
			}
		}
		return nil
	}
	cfg.Plan = func(context.Context) (Fault, error) {
		return Fault{Event: "nothing", Inject: func(context.Context) error { return nil }, Heal: threeMore, HealEvent: "healed"}, nil
	}
	cfg.Event = func(e DrillEvent) {
		if e.Name == "healed" { // called before the after phase begins
			_ = threeMore(context.Background())
		}
	}
	cfg.loseWrite = loseWrite
	return RunDrill(context.Background(), cfg)
}

// revokeAcks counts the revocations answered 200.
type revokeAcks struct{ n *atomic.Int64 }

func (r revokeAcks) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusOK && strings.HasSuffix(req.URL.Path, "/oauth2/revoke") {
		r.n.Add(1)
	}
	return resp, err
}

func TestDrillPassesOnAHealthyNode(t *testing.T) {
	rep, err := drillOnNode(t, false)
	if err != nil || !rep.Pass || rep.WritesAcked == 0 || rep.Verified != rep.WritesAcked || len(rep.Lost) != 0 {
		t.Fatalf("err %v, report %+v", err, rep)
	}
}

// TestDrillFailsOnALostWrite: the verifier is handed an acknowledged write
// the node never saw (a token nobody revoked); the drill must fail.
func TestDrillFailsOnALostWrite(t *testing.T) {
	rep, err := drillOnNode(t, true)
	if !errors.Is(err, ErrDrillFailed) || rep.Pass || len(rep.Lost) != 1 {
		t.Fatalf("err %v, report %+v", err, rep)
	}
	if !strings.Contains(strings.Join(rep.Violations, "\n"), "acknowledged revocations missing") {
		t.Fatalf("violations: %q", rep.Violations)
	}
}

// TestDrillJudge feeds the judge made-up timelines: a fault at 1 s healed
// at 4 s, a staleness bound of 1 s with 0.5 s of grace.
func TestDrillJudge(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	issue := func(node string, s float64, outcome string) drillSample {
		return drillSample{start: at(s), end: at(s + 0.001), node: node, outcome: outcome}
	}
	write := func(node string, s, e float64, outcome string) drillSample {
		return drillSample{start: at(s), end: at(e), node: node, write: true, outcome: outcome}
	}
	healthy := []drillSample{
		issue("a", 0.5, OutcomeOK), write("b", 0.5, 0.51, OutcomeOK),
		write("b", 1.1, 1.8, OutcomeOK), // the window: 0.8 s
		issue("b", 1.5, OutcomeOK),
		write("c", 4.2, 4.21, OutcomeOK), issue("a", 4.3, OutcomeOK),
	}
	tests := []struct {
		name     string
		fault    Fault
		extra    []drillSample
		violates string // "" for none
	}{
		{"clean", Fault{}, nil, ""},
		{"down node answers are not judged", Fault{Down: []string{"a"}}, []drillSample{issue("a", 2, OutcomeTransport)}, ""},
		{"serving node error", Fault{}, []drillSample{issue("b", 2, "temporarily_unavailable")}, "client-credentials requests to serving nodes failed"},
		{"server error on a write", Fault{}, []drillSample{write("b", 2, 2.1, "server_error")}, "want 200 or 503"},
		{"isolated fails closed", Fault{Isolated: []string{"a"}}, []drillSample{issue("a", 1.5, OutcomeOK), issue("a", 2.2, "temporarily_unavailable")}, ""},
		{"isolated keeps issuing", Fault{Isolated: []string{"a"}}, []drillSample{issue("a", 2.2, "temporarily_unavailable"), issue("a", 3, OutcomeOK)}, "issued 1 tokens after the staleness bound"},
		{"isolated never fails closed", Fault{Isolated: []string{"a"}}, []drillSample{issue("a", 1.2, OutcomeOK)}, "never failed closed"},
		{"isolated 500", Fault{Isolated: []string{"a"}}, []drillSample{issue("a", 2.2, "temporarily_unavailable"), issue("a", 1.2, "http_500")}, "want a token or 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &drillRun{cfg: DrillConfig{MaxStale: time.Second, StaleGrace: 500 * time.Millisecond}, t0: t0}
			d.samples = append(append([]drillSample(nil), healthy...), tt.extra...)
			var rep DrillReport
			d.judge(&rep, []appliedFault{{Fault: tt.fault, at: at(1), healAt: at(4)}})
			got := strings.Join(rep.Violations, "\n")
			if (tt.violates == "") != (got == "") || !strings.Contains(got, tt.violates) {
				t.Fatalf("violations %q, want %q", got, tt.violates)
			}
			if rep.WriteWindow != 800*time.Millisecond {
				t.Fatalf("write window %v, want 800ms", rep.WriteWindow)
			}
		})
	}
}

// TestDrillJudgeSteps judges a rolling restart: node a down from 1 s to
// 2 s, node b from 3 s to 4 s (settled at 4.5 s); requests to each while it
// is down or settling are not judged, the write window is the longest.
func TestDrillJudgeSteps(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	issue := func(node string, s float64, outcome string) drillSample {
		return drillSample{start: at(s), end: at(s + 0.001), node: node, outcome: outcome}
	}
	write := func(node string, s, e float64, outcome string) drillSample {
		return drillSample{start: at(s), end: at(e), node: node, write: true, outcome: outcome}
	}
	faults := []appliedFault{
		{Fault: Fault{Down: []string{"a"}}, injected: at(1), at: at(1), healing: at(2), healAt: at(2), settled: at(2)},
		{Fault: Fault{Down: []string{"b"}}, injected: at(3), at: at(3), healing: at(4), healAt: at(4), settled: at(4.5)},
	}
	base := []drillSample{
		write("b", 1.1, 1.3, OutcomeOK),                                      // window of the first: 0.3 s
		write("a", 3.2, 3.9, OutcomeOK),                                      // window of the second: 0.9 s
		issue("a", 1.5, OutcomeTransport), issue("b", 4.2, OutcomeTransport), // down or settling
		write("c", 4.6, 4.61, OutcomeOK), issue("c", 4.7, OutcomeOK),
	}
	d := &drillRun{cfg: DrillConfig{MaxStale: time.Second, StaleGrace: 500 * time.Millisecond}, t0: t0, samples: base}
	var rep DrillReport
	d.judge(&rep, faults)
	if len(rep.Violations) > 0 || rep.WriteWindow != 900*time.Millisecond || rep.ToDownNodes != 2 {
		t.Fatalf("violations %q, window %v, to down nodes %d; want none, 900ms, 2", rep.Violations, rep.WriteWindow, rep.ToDownNodes)
	}
	// b answering an error after it settled is judged.
	d = &drillRun{cfg: d.cfg, t0: t0, samples: append(append([]drillSample(nil), base...), issue("b", 4.8, OutcomeTransport))}
	rep = DrillReport{}
	d.judge(&rep, faults)
	if got := strings.Join(rep.Violations, "\n"); !strings.Contains(got, "client-credentials requests to serving nodes failed") {
		t.Fatalf("violations %q, want the serving-node error", got)
	}
}
