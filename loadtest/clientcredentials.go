package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
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
// warm-up or cfg.Requests were recorded, and reports the outcome. It is Run
// (the one load engine, closed or open loop) with a
// ClientCredentialsScenario against the one endpoint.
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
	sc, err := NewClientCredentialsScenario([]Target{{Issuer: cfg.TokenURL, TokenURL: cfg.TokenURL}}, cfg.ClientID, cfg.ClientSecret, cfg.Scope, cfg.Timeout)
	if err != nil {
		return Report{}, nil, err
	}
	target := cfg.Target
	if target == "" {
		target = cfg.TokenURL
	}
	rc := RunConfig{
		Target:           target,
		Concurrency:      cfg.Concurrency,
		Rate:             cfg.Rate,
		Duration:         cfg.Duration,
		Requests:         cfg.Requests,
		Warmup:           cfg.Warmup,
		Progress:         cfg.Progress,
		ProgressInterval: cfg.ProgressInterval,
		now:              cfg.now,
	}
	res, h, err := run(ctx, rc, sc)
	if h == nil {
		return Report{}, nil, err
	}
	return res.Report, h, err
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
