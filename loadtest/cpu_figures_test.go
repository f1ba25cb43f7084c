package loadtest_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestCPUPerTokenFigures measures process CPU time (user + system, from
// getrusage) per issued client-credentials token, for one tally node and
// for the bare baseline, alternately, in one process: the load generator's
// share is in both, so the difference is tally's own extra cost. Not part
// of make test:
//
//	TALLY_FIGURES=1 go test -run '^TestCPUPerTokenFigures$' -v ./loadtest/
func TestCPUPerTokenFigures(t *testing.T) {
	if os.Getenv("TALLY_FIGURES") == "" {
		t.Skip("set TALLY_FIGURES=1 to measure")
	}
	n := nodetest.Start(t)
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "load", GrantTypes: []string{"client_credentials"},
		Scopes: []string{"read:orders"}, TokenFormat: "jwt", AccessTokenTtlSeconds: 300,
	})
	key, err := loadtest.NewSigningKey(loadtest.AlgES256)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	bcfg := loadtest.DefaultBaselineConfig()
	bcfg.Issuer = srv.URL + "/t/default"
	bcfg.ClientID, bcfg.ClientSecret, bcfg.Scopes, bcfg.Key = id, secret, []string{"read:orders"}, key
	if h, err = loadtest.NewBaseline(bcfg); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := loadtest.WaitForToken(wctx, loadtest.Endpoint{Name: "tally", TokenURL: n.TokenURL("default"), ClientID: id, ClientSecret: secret}); err != nil {
		t.Fatal(err)
	}
	for _, run := range []struct{ name, url string }{
		{"tally", n.TokenURL("default")}, {"baseline", bcfg.Issuer + "/oauth2/token"},
		{"tally", n.TokenURL("default")}, {"baseline", bcfg.Issuer + "/oauth2/token"},
	} {
		cfg := loadtest.DefaultClientCredentialsConfig()
		cfg.TokenURL, cfg.ClientID, cfg.ClientSecret, cfg.Scope = run.url, id, secret, "read:orders"
		cfg.Concurrency, cfg.Warmup, cfg.Duration = 32, time.Second, 5*time.Second
		// The warm-up is inside the measured CPU time but its tokens are
		// not counted: measure after it by running it separately.
		warm := cfg
		warm.Duration, warm.Warmup = time.Second, 0
		if _, err := loadtest.RunClientCredentials(context.Background(), warm); err != nil {
			t.Fatal(err)
		}
		cfg.Warmup = 0
		before := cpuTime(t)
		rep, err := loadtest.RunClientCredentials(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		used := cpuTime(t) - before
		if rep.OK == 0 {
			t.Fatalf("%s: no tokens (%s)", run.name, rep.ErrorSummary())
		}
		t.Logf("%-8s %7d tokens in %v: %.1f tokens/s, process CPU %v = %.1f µs per token (server + load generator), errors %s",
			run.name, rep.OK, cfg.Duration, float64(rep.OK)/cfg.Duration.Seconds(), used.Round(time.Millisecond),
			float64(used.Microseconds())/float64(rep.OK), rep.ErrorSummary())
	}
}

// cpuTime is the process's user plus system CPU time so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
