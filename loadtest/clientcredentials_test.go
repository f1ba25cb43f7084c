package loadtest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// tokenServer is a token endpoint on 127.0.0.1 whose answers a test
// chooses; it checks that every request is a well-formed client_credentials
// request.
type tokenServer struct {
	*httptest.Server
	hits      atomic.Int64
	malformed atomic.Int64
}

func newTokenServer(t *testing.T, answer func(n int64, w http.ResponseWriter, r *http.Request)) *tokenServer {
	t.Helper()
	s := &tokenServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.hits.Add(1)
		if !wellFormed(r) {
			s.malformed.Add(1)
		}
		answer(n, w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func wellFormed(r *http.Request) bool {
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != form || r.URL.Path != "/token" {
		return false
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	id, err1 := url.QueryUnescape(user)
	secret, err2 := url.QueryUnescape(pass)
	if err1 != nil || err2 != nil || id != testClientID || secret != testClientSecret {
		return false
	}
	if err := r.ParseForm(); err != nil {
		return false
	}
	return len(r.PostForm) == 2 && r.PostForm.Get("grant_type") == "client_credentials" && r.PostForm.Get("scope") == "read:orders"
}

func writeToken(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"access_token":"x","token_type":"Bearer","expires_in":300}`))
}

func loadConfig(tokenURL string) ClientCredentialsConfig {
	c := DefaultClientCredentialsConfig()
	c.TokenURL = tokenURL
	c.ClientID, c.ClientSecret, c.Scope = testClientID, testClientSecret, "read:orders"
	c.Concurrency = 4
	c.Warmup = 0
	c.Duration = 0
	return c
}

func TestClosedLoopCountsOutcomes(t *testing.T) {
	s := newTokenServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		switch n % 5 {
		case 0:
			writeToken(w)
		case 1:
			writeOAuthError(w, http.StatusBadRequest, "invalid_scope", "")
		case 2:
			writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "")
		case 3:
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
		case 4:
			w.WriteHeader(http.StatusOK) // no token
		}
	})
	cfg := loadConfig(s.URL + "/token")
	cfg.Requests = 200
	rep, err := RunClientCredentials(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.malformed.Load(); got != 0 {
		t.Errorf("%d malformed requests", got)
	}
	if got := s.hits.Load(); got != 200 {
		t.Errorf("server saw %d requests, want 200", got)
	}
	want := map[string]int64{"invalid_scope": 40, "invalid_client": 40, "http_503": 40, OutcomeBadResponse: 40}
	if rep.Requests != 200 || rep.OK != 40 || len(rep.Errors) != len(want) {
		t.Errorf("report = %+v", rep)
	}
	for code, n := range want {
		if rep.Errors[code] != n {
			t.Errorf("errors[%s] = %d, want %d", code, rep.Errors[code], n)
		}
	}
	if rep.Scenario != ScenarioClientCredentials || rep.Target != cfg.TokenURL || rep.Concurrency != 4 || rep.Rate != 0 {
		t.Errorf("labels = %+v", rep)
	}
	if rep.Throughput <= 0 || rep.Duration <= 0 {
		t.Errorf("throughput %v over %v", rep.Throughput, rep.Duration)
	}
	if !(0 < rep.P50 && rep.P50 <= rep.P90 && rep.P90 <= rep.P99 && rep.P99 <= rep.P999 && rep.P999 <= rep.Max) {
		t.Errorf("percentiles out of order: %v %v %v %v %v", rep.P50, rep.P90, rep.P99, rep.P999, rep.Max)
	}
}

func TestWarmupNotRecorded(t *testing.T) {
	// The run's clock moves only when the server answers, 10 ms a request,
	// so the split between warm-up and recording does not depend on the
	// machine's speed. The j-th request answered started at most at
	// (j-1)*10 ms: the first 15 are warm-up. With two workers it started
	// at least at (j-2)*10 ms: the 17th to the 35th are recorded.
	var clock atomic.Int64
	t0 := time.Unix(1_700_000_000, 0)
	s := newTokenServer(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
		clock.Add(int64(10 * time.Millisecond))
		writeToken(w)
	})
	cfg := loadConfig(s.URL + "/token")
	cfg.Concurrency = 2
	cfg.Warmup = 150 * time.Millisecond
	cfg.Duration = 200 * time.Millisecond
	cfg.now = func() time.Time { return t0.Add(time.Duration(clock.Load())) }
	rep, err := RunClientCredentials(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requests < 19 || rep.OK != rep.Requests {
		t.Fatalf("report = %+v", rep)
	}
	if hits := s.hits.Load(); hits-rep.Requests < 15 {
		t.Errorf("server saw %d requests, report recorded %d: warm-up was recorded", hits, rep.Requests)
	}
	if rep.Duration < cfg.Duration {
		t.Errorf("measured %v, shorter than the %v asked for", rep.Duration, cfg.Duration)
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("connection closed", func(t *testing.T) {
		s := newTokenServer(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		})
		cfg := loadConfig(s.URL + "/token")
		cfg.Requests = 20
		rep, err := RunClientCredentials(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Requests != 20 || rep.Errors[OutcomeTransport] != 20 {
			t.Errorf("report = %+v", rep)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		cfg := loadConfig("http://" + addr + "/token")
		cfg.Requests = 10
		rep, err := RunClientCredentials(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Requests != 10 || rep.Errors[OutcomeTransport] != 10 || rep.OK != 0 || rep.Throughput != 0 {
			t.Errorf("report = %+v", rep)
		}
	})
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		want   string
	}{
		{200, `{"access_token":"a","token_type":"Bearer"}`, OutcomeOK},
		{200, `{"token_type":"Bearer"}`, OutcomeBadResponse},
		{201, ``, OutcomeBadResponse},
		{400, `{"error":"invalid_grant","error_description":"x"}`, "invalid_grant"},
		{429, `{"error":"slow_down"}`, "slow_down"},
		{500, `{"error":"server_error"}`, "server_error"},
		{400, `{"error":"two words"}`, "http_400"},
		{400, `{"error":"` + string(make([]byte, 100)) + `"}`, "http_400"},
		{400, `{"error":42}`, "http_400"},
		{502, `<html>bad gateway</html>`, "http_502"},
		{302, ``, "http_302"},
	} {
		if got := classify(tc.status, []byte(tc.body)); got != tc.want {
			t.Errorf("classify(%d, %q) = %q, want %q", tc.status, tc.body, got, tc.want)
		}
	}
}

func TestOutcomesBounded(t *testing.T) {
	e := &engine{name: ScenarioClientCredentials, seconds: map[int]*secondAgg{}, now: time.Now}
	w := &engineWorker{e: e, hists: map[string]*hdrhistogram.Histogram{}, outcomes: map[string]map[string]int64{}, sec: -1}
	const n = 5 * maxOutcomes
	for i := range n {
		w.record(Outcome{Code: "code_" + string(rune('A'+i%26)) + string(rune('a'+i/26))}, time.Now(), time.Millisecond)
	}
	oc := w.outcomes[ScenarioClientCredentials]
	if len(oc) > 4*maxOutcomes+1 || oc[OutcomeOther] == 0 {
		t.Errorf("%d outcomes, other=%d", len(oc), oc[OutcomeOther])
	}
	if w.requests.Load() != n || w.hists[ScenarioClientCredentials].TotalCount() != n {
		t.Errorf("lost samples: %d requests, %d in histogram", w.requests.Load(), w.hists[ScenarioClientCredentials].TotalCount())
	}
}

func TestOpenLoopPacing(t *testing.T) {
	var mu sync.Mutex
	var arrivals []time.Time
	s := newTokenServer(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		mu.Lock()
		arrivals = append(arrivals, now)
		mu.Unlock()
		writeToken(w)
	})
	cfg := loadConfig(s.URL + "/token")
	cfg.Rate = 200
	cfg.Concurrency = 16
	cfg.Duration = time.Second
	before := time.Now()
	rep, err := RunClientCredentials(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// 200/s for 1 s schedules 200 requests; each is answered or counted as
	// not sent, whatever the machine's speed.
	if rep.Requests != 200 || rep.OK+rep.Errors[OutcomeNotSent] != 200 {
		t.Errorf("report = %+v", rep)
	}
	if rep.Rate != 200 || rep.Duration < cfg.Duration {
		t.Errorf("rate %v over %v", rep.Rate, rep.Duration)
	}
	// Paced, not sent in a burst: request i is handed out no earlier than
	// i/200 s after the start, so by the time k+1 requests have arrived,
	// at least k*5 ms have passed. A slow machine only delays arrivals.
	mu.Lock()
	got := slices.Clone(arrivals)
	mu.Unlock()
	slices.SortFunc(got, time.Time.Compare)
	for k, at := range got {
		if early := time.Duration(k)*5*time.Millisecond - at.Sub(before); early > 0 {
			t.Errorf("request %d arrived %v before its schedule; not paced", k, early)
			break
		}
	}
	if len(got) < 2 {
		t.Errorf("only %d of 200 requests arrived: nothing to pace", len(got))
	}

	cfg.Duration, cfg.Requests, cfg.Rate = 0, 30, 1000
	rep, err = RunClientCredentials(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requests != 30 || rep.OK != 30 {
		t.Errorf("request-limited open loop: %+v", rep)
	}
}

// TestOpenLoopMeasuresFromIntendedStart stalls one request: the requests
// scheduled behind it wait for the only in-flight slot, and their waiting
// must show in the latencies instead of being omitted.
func TestOpenLoopMeasuresFromIntendedStart(t *testing.T) {
	const stall = 300 * time.Millisecond
	s := newTokenServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if n == 5 {
			select {
			case <-time.After(stall):
			case <-r.Context().Done():
			}
		}
		writeToken(w)
	})
	cfg := loadConfig(s.URL + "/token")
	cfg.Rate = 50
	cfg.Concurrency = 1
	cfg.Duration = time.Second
	rep, err := RunClientCredentials(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requests != 50 {
		t.Errorf("report = %+v", rep)
	}
	// About 15 of the 50 requests were scheduled during the stall, with
	// waits spread from 0 to 300 ms: at least 10% waited over 50 ms.
	if rep.Max < stall || rep.P90 < 50*time.Millisecond {
		t.Errorf("stall hidden: p90 %v, max %v", rep.P90, rep.Max)
	}
}

func TestOpenLoopCountsNotSent(t *testing.T) {
	s := newTokenServer(t, func(_ int64, _ http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // stalled until the client gives up
	})
	cfg := loadConfig(s.URL + "/token")
	cfg.Rate = 100
	cfg.Concurrency = 2
	cfg.Duration = 400 * time.Millisecond
	cfg.Timeout = 500 * time.Millisecond
	rep, err := RunClientCredentials(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requests != 40 || rep.OK != 0 || rep.Errors[OutcomeTransport]+rep.Errors[OutcomeNotSent] != 40 {
		t.Errorf("report = %+v", rep)
	}
	// Two in flight and two queued can be sent; the rest could not.
	if rep.Errors[OutcomeNotSent] < 30 {
		t.Errorf("only %d not sent: %+v", rep.Errors[OutcomeNotSent], rep)
	}
}

func TestRunStopsWithContext(t *testing.T) {
	for _, rate := range []float64{0, 500} {
		t.Run(strconv.FormatFloat(rate, 'f', -1, 64), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// Only the first 20 requests are answered: the 20th cancels
			// the run, and a later one (sent by a worker before it saw
			// the cancellation, or even before the 20th handler ran)
			// waits until the client gives up. So at most 20 can be
			// counted however the goroutines are scheduled.
			s := newTokenServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				switch {
				case n == 20:
					cancel()
				case n > 20:
					<-r.Context().Done()
					return
				}
				writeToken(w)
			})
			cfg := loadConfig(s.URL + "/token")
			cfg.Rate = rate
			cfg.Duration = time.Minute
			rep, err := RunClientCredentials(ctx, cfg)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
			// Requests cut short by the cancellation are not counted; of
			// the 20 answered ones, those still in flight when the run
			// was cancelled (at most one per worker) may not be either.
			if rep.Requests < 20-int64(cfg.Concurrency) || rep.Requests > 20 || rep.OK != rep.Requests {
				t.Errorf("report = %+v", rep)
			}
		})
	}
}

func TestProgress(t *testing.T) {
	// The first requests are answered only once progress was reported,
	// so the run cannot end before a report however late the ticker's
	// goroutine is scheduled.
	reported := make(chan struct{})
	var once sync.Once
	s := newTokenServer(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		select {
		case <-reported:
		case <-r.Context().Done():
		}
		writeToken(w)
	})
	cfg := loadConfig(s.URL + "/token")
	cfg.Duration = 300 * time.Millisecond
	cfg.ProgressInterval = 20 * time.Millisecond
	var mu sync.Mutex
	var seen []Progress
	cfg.Progress = func(p Progress) {
		mu.Lock()
		seen = append(seen, p)
		mu.Unlock()
		once.Do(func() { close(reported) })
	}
	rep, err := RunClientCredentials(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("no progress reported")
	}
	for i, p := range seen {
		if p.Requests > rep.Requests || p.OK+p.Failed != p.Requests || (i > 0 && p.Requests < seen[i-1].Requests) {
			t.Errorf("progress %d = %+v (final %d requests)", i, p, rep.Requests)
		}
	}
}

func TestClientCredentialsConfigValidate(t *testing.T) {
	ok := loadConfig("http://127.0.0.1:1/token")
	ok.Duration = time.Second
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*ClientCredentialsConfig){
		"no url":          func(c *ClientCredentialsConfig) { c.TokenURL = "" },
		"relative url":    func(c *ClientCredentialsConfig) { c.TokenURL = "/token" },
		"no client":       func(c *ClientCredentialsConfig) { c.ClientID = "" },
		"zero workers":    func(c *ClientCredentialsConfig) { c.Concurrency = 0 },
		"too many":        func(c *ClientCredentialsConfig) { c.Concurrency = maxConcurrency + 1 },
		"negative rate":   func(c *ClientCredentialsConfig) { c.Rate = -1 },
		"tiny rate":       func(c *ClientCredentialsConfig) { c.Rate = 1e-9 },
		"unbounded":       func(c *ClientCredentialsConfig) { c.Duration = 0 },
		"negative warmup": func(c *ClientCredentialsConfig) { c.Warmup = -time.Second },
		"no timeout":      func(c *ClientCredentialsConfig) { c.Timeout = 0 },
		"no interval":     func(c *ClientCredentialsConfig) { c.Progress, c.ProgressInterval = func(Progress) {}, 0 },
	} {
		t.Run(name, func(t *testing.T) {
			c := ok
			mutate(&c)
			if err := c.Validate(); err == nil {
				t.Error("Validate accepted it")
			}
			if _, err := RunClientCredentials(context.Background(), c); err == nil {
				t.Error("RunClientCredentials accepted it")
			}
		})
	}
}

// FuzzClassify feeds arbitrary answers to the classifier: it must not panic
// and must return a bounded, printable outcome.
func FuzzClassify(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"a"}`))
	f.Add(400, []byte(`{"error":"invalid_request"}`))
	f.Add(500, []byte(`{"error":"\u0000"}`))
	f.Add(503, []byte(`not json`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		got := classify(status, body)
		if got == "" || len(got) > maxErrorCodeLen+len("http_")+20 {
			t.Fatalf("classify(%d, %q) = %q", status, body, got)
		}
		for i := 0; i < len(got); i++ {
			if got[i] <= 0x20 || got[i] > 0x7e {
				t.Fatalf("classify(%d, %q) = %q: unprintable", status, body, got)
			}
		}
	})
}
