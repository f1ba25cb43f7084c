package loadtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// scenarioNode is a real node with a confidential client issuing opaque
// tokens, a user flow (users and a public client) and the node's
// discovered endpoints.
type scenarioNode struct {
	n       *nodetest.Node
	target  loadtest.Target
	id, sec string
	flow    loadtest.UserFlow
}

// testRequestTimeout bounds each request of the scenarios run here: a hung
// request, not a slow one. A sign-in hashes a password (argon2id) and
// queues for one of GOMAXPROCS/2 password-check slots; on a loaded machine
// (two cores, the race detector, another CPU-heavy process) preparing
// three refresh clients took over the flow's default 10 s.
const testRequestTimeout = nodetest.Timeout

// cheapPasswords makes the users' password hashes cheap: the scenarios
// here test the load engine's bookkeeping, not argon2id, and a default
// hash under the race detector on a loaded machine takes seconds, so the
// sign-ins of a few virtual clients queued past the node's password-check
// wait (5 s) and were refused as "too many attempts" (login_failed).
func cheapPasswords(c *node.Config) {
	c.PasswordParams = &issuance.PasswordParams{Time: 1, MemoryKiB: 64, Threads: 1}
}

func startScenarioNode(t *testing.T, users int) *scenarioNode {
	t.Helper()
	ctx := context.Background()
	n := nodetest.Start(t, nodetest.WithConfig(cheapPasswords))
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "load", GrantTypes: []string{"client_credentials"},
		Scopes: []string{"read:orders"}, TokenFormat: "opaque",
	})
	target, err := loadtest.DiscoverTarget(ctx, n.Issuer("default"))
	if err != nil {
		t.Fatal(err)
	}
	if target.IntrospectURL == "" || target.AuthorizeURL == "" {
		t.Fatalf("discovery missed endpoints: %+v", target)
	}
	s := &scenarioNode{n: n, target: target, id: id, sec: secret}
	if users > 0 {
		s.flow, err = loadtest.SetupUserFlow(ctx, n.Admin, "default", users)
		if err != nil {
			t.Fatal(err)
		}
		s.flow.Timeout = testRequestTimeout
	}
	return s
}

func shortRun(concurrency int, requests int64) loadtest.RunConfig {
	cfg := loadtest.DefaultRunConfig()
	cfg.Concurrency, cfg.Requests, cfg.Duration, cfg.Warmup = concurrency, requests, 0, 0
	cfg.Target = "node"
	return cfg
}

// checkClean fails t unless every recorded iteration succeeded and the
// timeline and per-scenario reports add up to the totals.
func checkClean(t *testing.T, res loadtest.Result, want int64) {
	t.Helper()
	r := res.Report
	if r.Requests != want || r.OK != want || len(r.Errors) != 0 {
		t.Fatalf("%s: requests %d ok %d errors %v, want %d clean", r.Scenario, r.Requests, r.OK, r.Errors, want)
	}
	if r.Throughput <= 0 || r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.Max {
		t.Fatalf("%s: implausible figures %+v", r.Scenario, r)
	}
	var tl, sc int64
	for _, s := range res.Timeline {
		tl += s.Requests
		if s.OK+s.Errors != s.Requests {
			t.Fatalf("second %d does not add up: %+v", s.T, s)
		}
	}
	for _, s := range res.Scenarios {
		sc += s.Requests
	}
	if tl != want || sc != want {
		t.Fatalf("%s: timeline has %d and scenarios %d of %d requests", r.Scenario, tl, sc, want)
	}
	if len(res.Distribution) == 0 {
		t.Fatal("no distribution")
	}
}

func TestScenariosAgainstNode(t *testing.T) {
	s := startScenarioNode(t, 2)
	ctx := context.Background()
	targets := []loadtest.Target{s.target}

	cc, err := loadtest.NewClientCredentialsScenario(targets, s.id, s.sec, "read:orders", testRequestTimeout)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := loadtest.MintTokens(ctx, targets, s.id, s.sec, "read:orders", 16)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pool[0], "tly1.") {
		t.Fatalf("expected opaque tokens, got %.20s…", pool[0])
	}
	in, err := loadtest.NewIntrospectScenario(targets, s.id, s.sec, pool, testRequestTimeout)
	if err != nil {
		t.Fatal(err)
	}
	rf, err := loadtest.NewRefreshScenario(targets, s.flow)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := loadtest.NewAuthCodeScenario(targets, s.flow)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		sc          loadtest.Scenario
		concurrency int
		requests    int64
	}{
		{cc, 4, 80},
		{in, 4, 80},
		// Each virtual client rotates its own chain; presenting a
		// superseded token would revoke the family and show as
		// invalid_grant.
		{rf, 3, 45},
		{ac, 2, 16},
	} {
		t.Run(tc.sc.Name(), func(t *testing.T) {
			res, err := loadtest.Run(ctx, shortRun(tc.concurrency, tc.requests), tc.sc)
			if err != nil {
				t.Fatal(err)
			}
			if res.Report.Scenario != tc.sc.Name() {
				t.Fatalf("scenario %q", res.Report.Scenario)
			}
			checkClean(t, res, tc.requests)
		})
	}

	t.Run("revoke-propagation", func(t *testing.T) {
		rp, err := loadtest.NewRevokePropagationScenario(ctx, s.n.Admin, "default", revocation.WatcherConfig{
			Issuer: s.n.Issuer("default"), Tenant: "default", ServerURL: s.n.BaseURL(), ClientID: s.id, ClientSecret: s.sec,
		}, testRequestTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer rp.Close()
		res, err := loadtest.Run(ctx, shortRun(3, 30), rp)
		if err != nil {
			t.Fatal(err)
		}
		checkClean(t, res, 30)
	})

	t.Run("open loop", func(t *testing.T) {
		cfg := shortRun(4, 0)
		cfg.Rate, cfg.Duration = 200, 400*time.Millisecond
		res, err := loadtest.Run(ctx, cfg, in)
		if err != nil {
			t.Fatal(err)
		}
		// 200/s for 0.4 s schedules 80 iterations. On a loaded machine the
		// last few may find every virtual client busy at the end and
		// count as not sent; every one sent must succeed.
		notSent := res.Report.Errors[loadtest.OutcomeNotSent]
		if res.Report.Requests < 78 || res.Report.Requests > 81 || res.Report.OK == 0 ||
			res.Report.OK+notSent != res.Report.Requests || len(res.Report.Errors) > 1 {
			t.Fatalf("open loop: %+v", res.Report)
		}
		if res.Report.Rate != 200 {
			t.Fatalf("rate %v", res.Report.Rate)
		}
	})

	t.Run("mixed", func(t *testing.T) {
		mix, err := loadtest.NewMixedScenario([]loadtest.WeightedScenario{{cc, 70}, {in, 20}, {rf, 10}})
		if err != nil {
			t.Fatal(err)
		}
		m := loadtest.NewMarkers()
		cfg := shortRun(3, 300)
		cfg.Markers = m
		m.Mark("before the run")
		res, err := loadtest.Run(ctx, cfg, mix)
		if err != nil {
			t.Fatal(err)
		}
		checkClean(t, res, 300)
		got := map[string]int64{}
		for _, r := range res.Scenarios {
			got[r.Scenario] = r.Requests
		}
		if len(got) != 3 || got["client-credentials"] < got["introspect"] || got["introspect"] < got["refresh"] || got["refresh"] == 0 {
			t.Fatalf("mix not by weight: %v", got)
		}
		if len(res.Events) != 1 || res.Events[0].Label != "before the run" || res.Events[0].AtMS > 0 {
			t.Fatalf("events %+v", res.Events)
		}
	})

	t.Run("errors by code", func(t *testing.T) {
		bad, err := loadtest.NewClientCredentialsScenario(targets, s.id, "wrong", "", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		res, err := loadtest.Run(ctx, shortRun(2, 10), bad)
		if err != nil {
			t.Fatal(err)
		}
		if res.Report.OK != 0 || res.Report.Errors["invalid_client"] != 10 {
			t.Fatalf("want 10 invalid_client, got %+v", res.Report)
		}
		// A revoked pool is inactive, not an error of the endpoint.
		inactive, err := loadtest.NewIntrospectScenario(targets, s.id, s.sec, []string{"not-a-token"}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		res, err = loadtest.Run(ctx, shortRun(1, 5), inactive)
		if err != nil {
			t.Fatal(err)
		}
		if res.Report.Errors[loadtest.OutcomeInactive] != 5 {
			t.Fatalf("want 5 inactive, got %+v", res.Report)
		}
		// A wrong password stops the preparation with a clear outcome.
		flow := s.flow
		flow.Users = []loadtest.User{{Username: s.flow.Users[0].Username, Password: "wrong"}}
		ac, err := loadtest.NewAuthCodeScenario(targets, flow)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := loadtest.Run(ctx, shortRun(1, 1), ac); err == nil || !strings.Contains(err.Error(), loadtest.OutcomeLoginFailed) {
			t.Fatalf("wrong password: %v", err)
		}
	})
}

// TestRefreshOnCluster spreads refresh rotations over three real nodes:
// the chains move between nodes (each rotation is one Raft write, forwarded
// by followers) without a single superseded token being presented.
func TestRefreshOnCluster(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(cheapPasswords))
	ctx := context.Background()
	var targets []loadtest.Target
	for i := range 3 {
		tg, err := loadtest.DiscoverTarget(ctx, c.Node(i).Issuer("default"))
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, tg)
	}
	flow, err := loadtest.SetupUserFlow(ctx, c.Node(0).Admin, "default", 2)
	if err != nil {
		t.Fatal(err)
	}
	flow.Timeout = testRequestTimeout
	c.WaitConverged()
	rf, err := loadtest.NewRefreshScenario(targets, flow)
	if err != nil {
		t.Fatal(err)
	}
	res, err := loadtest.Run(ctx, shortRun(3, 30), rf)
	if err != nil {
		t.Fatal(err)
	}
	checkClean(t, res, 30)
}

// TestRoundRobinTargets checks that the iterations spread evenly over the
// targets.
func TestRoundRobinTargets(t *testing.T) {
	var hits [3]atomic.Int64
	var targets []loadtest.Target
	for i := range hits {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"access_token":"x","token_type":"Bearer"}`)
		}))
		t.Cleanup(srv.Close)
		targets = append(targets, loadtest.Target{Issuer: srv.URL, TokenURL: srv.URL + "/token"})
	}
	cc, err := loadtest.NewClientCredentialsScenario(targets, "id", "secret", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	res, err := loadtest.Run(context.Background(), shortRun(4, 300), cc)
	if err != nil {
		t.Fatal(err)
	}
	checkClean(t, res, 300)
	for i := range hits {
		if n := hits[i].Load(); n < 80 || n > 120 {
			t.Fatalf("target %d got %d of 300", i, n)
		}
	}
}

func TestParseMix(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []loadtest.MixEntry
		ok   bool
	}{
		{"client-credentials=70,introspect=20,refresh=10", []loadtest.MixEntry{{"client-credentials", 70}, {"introspect", 20}, {"refresh", 10}}, true},
		{" a = 1 ", []loadtest.MixEntry{{"a", 1}}, true},
		{"", nil, false},
		{"a", nil, false},
		{"a=0", nil, false},
		{"a=-1", nil, false},
		{"a=x", nil, false},
		{"a=1,a=2", nil, false},
		{"=3", nil, false},
		{"a=99999999999", nil, false},
	} {
		got, err := loadtest.ParseMix(tc.in)
		if (err == nil) != tc.ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseMix(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestRunConfigValidate(t *testing.T) {
	for _, mod := range []func(*loadtest.RunConfig){
		func(c *loadtest.RunConfig) { c.Concurrency = 0 },
		func(c *loadtest.RunConfig) { c.Rate = -1 },
		func(c *loadtest.RunConfig) { c.Duration, c.Requests = 0, 0 },
		func(c *loadtest.RunConfig) { c.Duration = 48 * time.Hour },
		func(c *loadtest.RunConfig) { c.Progress, c.ProgressInterval = func(loadtest.Progress) {}, 0 },
	} {
		c := loadtest.DefaultRunConfig()
		mod(&c)
		if c.Validate() == nil {
			t.Errorf("accepted %+v", c)
		}
	}
	if err := loadtest.DefaultRunConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// sampleResult is a fixed result with two scenarios, a timeline and an
// event.
func sampleResult() loadtest.Result {
	rep := func(name string, ok, fail int64, tp float64, p99 time.Duration) loadtest.Report {
		r := loadtest.Report{Scenario: name, Target: "http://127.0.0.1:1/t/default", Concurrency: 8, Duration: 2 * time.Second,
			Requests: ok + fail, OK: ok, Errors: map[string]int64{}, Throughput: tp,
			P50: p99 / 4, P90: p99 / 2, P99: p99, P999: 2 * p99, Max: 3 * p99}
		if fail > 0 {
			r.Errors["temporarily_unavailable"] = fail
		}
		return r
	}
	return loadtest.Result{
		Report:    rep("mixed", 1500, 10, 750, 8*time.Millisecond),
		Scenarios: []loadtest.Report{rep("client-credentials", 1000, 0, 500, 4*time.Millisecond), rep("refresh", 500, 10, 250, 16*time.Millisecond)},
		Started:   time.Date(2026, 11, 28, 21, 0, 0, 0, time.UTC),
		Timeline: []loadtest.Second{
			{T: 0, Requests: 700, OK: 700, P50MS: 1.5, P90MS: 3, P99MS: 7, MaxMS: 12},
			{T: 1, Requests: 810, OK: 800, Errors: 10, P50MS: 2, P90MS: 4, P99MS: 9, MaxMS: 30},
		},
		Distribution: []loadtest.Point{{Percentile: 0, MS: 0.2}, {Percentile: 50, MS: 2}, {Percentile: 99, MS: 8}, {Percentile: 100, MS: 30}},
		Events:       []loadtest.Event{{AtMS: 1200, Label: "leader killed <node0>"}, {AtMS: 1500, Label: "new leader"}},
	}
}

func TestResultJSONRoundTrip(t *testing.T) {
	want := sampleResult()
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"report"`, `"scenarios"`, `"timeline"`, `"distribution"`, `"events"`, `"p99_ms"`, `"at_ms"`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Fatalf("no %s in %s", key, b)
		}
	}
	got, err := loadtest.ReadResult(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Started.Equal(want.Started) {
		t.Fatalf("started %v", got.Started)
	}
	got.Started = want.Started
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}

	// A bare Report, as client-credentials --output json writes it.
	b, _ = json.Marshal(want.Scenarios[0])
	got, err = loadtest.ReadResult(bytes.NewReader(b))
	if err != nil || !reflect.DeepEqual(got.Report, want.Scenarios[0]) || len(got.Scenarios) != 1 {
		t.Fatalf("bare report: %+v %v", got, err)
	}
	for _, bad := range []string{``, `[]`, `{}`, `{"report": 3}`, `nonsense`} {
		if _, err := loadtest.ReadResult(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadResult(%q) accepted", bad)
		}
	}
}

func TestCompareResults(t *testing.T) {
	base := sampleResult()
	cur := sampleResult()
	cur.Report.Throughput = 1500 // twice
	cur.Report.P99 = 2 * time.Millisecond
	cur.Scenarios[1].P50 = 0 // no latency data: ratio 0, not a division by zero
	cur.Scenarios = append(cur.Scenarios, loadtest.Report{Scenario: "only-in-current"})
	rs := loadtest.CompareResults(base, cur)
	if len(rs) != 3 {
		t.Fatalf("want totals and two shared scenarios, got %d", len(rs))
	}
	if rs[0].Throughput != 2 || rs[0].P99 != 0.25 || rs[0].P50 != 1 {
		t.Fatalf("totals %+v", rs[0])
	}
	if rs[2].Scenario != "refresh" || rs[2].P50 != 0 || rs[2].ErrorRate != 10.0/510 {
		t.Fatalf("refresh %+v", rs[2])
	}
	zero := loadtest.RatioOf(loadtest.Report{}, cur.Report)
	if zero.Throughput != 0 || zero.P99 != 0 {
		t.Fatalf("ratios over zero: %+v", zero)
	}
	var buf bytes.Buffer
	if err := loadtest.WriteRatios(&buf, rs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "×2.000") || !strings.Contains(buf.String(), "×0.250") {
		t.Fatalf("table:\n%s", buf.String())
	}
}

func TestHTMLReportSelfContained(t *testing.T) {
	res := sampleResult()
	var buf bytes.Buffer
	if err := loadtest.WriteHTML(&buf, "tally loadtest mixed --target <x> & co", res); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	// Well-formed: it parses as strict XML (after the doctype).
	dec := xml.NewDecoder(strings.NewReader(page))
	dec.Strict = true
	depth, elems := 0, map[string]int{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, page)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			depth++
			elems[e.Name.Local]++
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 || elems["html"] != 1 || elems["svg"] != 3 || elems["polyline"] < 6 {
		t.Fatalf("structure: depth %d, elements %v", depth, elems)
	}
	// Self-contained: nothing loads from anywhere.
	low := strings.ToLower(page)
	for _, ref := range []string{"src=", "href=", "url(", "@import", "<script", "<link", "<img", "<iframe", "xlink"} {
		if strings.Contains(low, ref) {
			t.Errorf("page contains %q", ref)
		}
	}
	if n := strings.Count(low, "http"); n != strings.Count(low, "http://127.0.0.1:1/t/default") {
		t.Errorf("page names %d http URLs beyond the target", n)
	}
	// The events are on the timelines, escaped.
	if strings.Count(page, "leader killed &lt;node0&gt;") < 3 || strings.Contains(page, "<node0>") {
		t.Errorf("event markers missing or unescaped")
	}
	if !strings.Contains(page, "&lt;x&gt; &amp; co") {
		t.Errorf("title not escaped")
	}

	// An empty result renders too.
	buf.Reset()
	if err := loadtest.WriteHTML(&buf, "empty", loadtest.Result{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "No recorded iterations") {
		t.Fatal("empty result not said")
	}
}
