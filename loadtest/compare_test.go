package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestCompareAlternates(t *testing.T) {
	base, _ := startBaseline(t, AlgES256, nil)
	cand, _ := startBaseline(t, AlgEdDSA, nil)
	cfg := DefaultCompareConfig()
	cfg.Load.Concurrency = 2
	cfg.Load.Warmup = 0
	cfg.Load.Duration = 0
	cfg.Load.Requests = 25
	cfg.Baseline = Endpoint{Name: "baseline", TokenURL: base + "/oauth2/token", ClientID: testClientID, ClientSecret: testClientSecret, Scope: "read:orders"}
	cfg.Candidate = Endpoint{Name: "candidate", TokenURL: cand + "/oauth2/token", ClientID: testClientID, ClientSecret: testClientSecret}
	var order []string
	cfg.OnRun = func(round int, e Endpoint) { order = append(order, e.Name) }

	cmp, err := Compare(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(order, ","); got != "baseline,candidate,baseline,candidate" {
		t.Errorf("run order %s", got)
	}
	if len(cmp.Runs) != 4 {
		t.Fatalf("%d runs", len(cmp.Runs))
	}
	for i, r := range cmp.Runs {
		if r.Target != order[i] || r.OK != 25 || len(r.Errors) != 0 {
			t.Errorf("run %d = %+v", i, r)
		}
	}
	for _, r := range []Report{cmp.Baseline, cmp.Candidate} {
		if r.OK != 50 || r.Requests != 50 || r.Throughput <= 0 || r.P99 <= 0 || r.Concurrency != 2 {
			t.Errorf("merged %+v", r)
		}
	}
	if cmp.Baseline.Target != "baseline" || cmp.Candidate.Target != "candidate" {
		t.Errorf("merged targets %q %q", cmp.Baseline.Target, cmp.Candidate.Target)
	}
	wantRatio := cmp.Candidate.Throughput / cmp.Baseline.Throughput
	if cmp.ThroughputRatio != wantRatio || cmp.P99Ratio <= 0 {
		t.Errorf("ratios %v (want %v), %v", cmp.ThroughputRatio, wantRatio, cmp.P99Ratio)
	}

	if len(cmp.RoundRatios) != 2 {
		t.Fatalf("round ratios %v, want one per round", cmp.RoundRatios)
	}
	for i, r := range cmp.RoundRatios {
		if want := cmp.Runs[2*i+1].Throughput / cmp.Runs[2*i].Throughput; r != want {
			t.Errorf("round %d ratio %v, want %v", i+1, r, want)
		}
	}
	if want := (cmp.RoundRatios[0] + cmp.RoundRatios[1]) / 2; cmp.MedianRoundRatio != want {
		t.Errorf("median round ratio %v, want %v", cmp.MedianRoundRatio, want)
	}

	var buf bytes.Buffer
	if err := cmp.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "candidate/baseline: throughput ratio") || !strings.Contains(buf.String(), "throughput ratio per round: ") {
		t.Errorf("text:\n%s", buf.String())
	}
	b, err := json.Marshal(cmp)
	if err != nil {
		t.Fatal(err)
	}
	var back Comparison
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.ThroughputRatio != cmp.ThroughputRatio || len(back.Runs) != 4 || back.Candidate.P99 != cmp.Candidate.P99 {
		t.Errorf("json round trip: %s", b)
	}
}

func TestMedianRatio(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{0.9}, 0.9}, {[]float64{1.2, 0.8, 1.0}, 1.0}, {[]float64{1.0, 0.9, 1.3, 0.7}, 0.95}} {
		if got := medianRatio(c.in); got != c.want {
			t.Errorf("medianRatio(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestCompareValidate(t *testing.T) {
	cfg := DefaultCompareConfig()
	cfg.Baseline = Endpoint{Name: "b", TokenURL: "http://127.0.0.1:1/token", ClientID: "c"}
	cfg.Candidate = cfg.Baseline
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*CompareConfig){
		"no rounds":    func(c *CompareConfig) { c.Rounds = 0 },
		"no name":      func(c *CompareConfig) { c.Candidate.Name = "" },
		"bad url":      func(c *CompareConfig) { c.Baseline.TokenURL = "x" },
		"bad load":     func(c *CompareConfig) { c.Load.Concurrency = 0 },
		"no client id": func(c *CompareConfig) { c.Candidate.ClientID = "" },
	} {
		c := cfg
		mutate(&c)
		if _, err := Compare(context.Background(), c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWaitForToken(t *testing.T) {
	s := newTokenServer(t, func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n < 4 {
			writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "")
			return
		}
		writeToken(w)
	})
	e := Endpoint{Name: "fresh", TokenURL: s.URL + "/token", ClientID: testClientID, ClientSecret: testClientSecret, Scope: "read:orders"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := WaitForToken(ctx, e); err != nil {
		t.Fatal(err)
	}
	if got := s.hits.Load(); got != 4 {
		t.Errorf("%d requests, want 4", got)
	}

	// The caller gives up while the third attempt is in flight: the first
	// two were answered, so the error names their outcome however slowly
	// they came.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	never := newTokenServer(t, func(n int64, w http.ResponseWriter, _ *http.Request) {
		if n == 3 {
			cancel()
		}
		writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "")
	})
	e.TokenURL = never.URL + "/token"
	err := WaitForToken(ctx, e)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "invalid_client") {
		t.Errorf("err = %v", err)
	}
	if err := WaitForToken(context.Background(), Endpoint{Name: "bad", TokenURL: "x"}); err == nil {
		t.Error("accepted an invalid endpoint")
	}
}
