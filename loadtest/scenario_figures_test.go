package loadtest_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestScenarioFigures measures the figures of BENCHMARKS.md's "Scenarios"
// section: introspection of opaque tokens and refresh rotations on one node
// and on three, each group between runs of the bare baseline token endpoint
// in the same process. It runs only with TALLY_FIGURES=1:
//
//	TALLY_FIGURES=1 go test -run '^TestScenarioFigures$' -v -timeout 10m ./loadtest/
func TestScenarioFigures(t *testing.T) {
	if os.Getenv("TALLY_FIGURES") == "" {
		t.Skip("set TALLY_FIGURES=1 to measure")
	}
	d := 5 * time.Second
	if v := os.Getenv("TALLY_FIGURES_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("machine: %d cores (GOMAXPROCS %d), %s; load average before: %s", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), strings.TrimSpace(string(load)))
	var rows []string
	measure := func(setup string, conc int, sc loadtest.Scenario) {
		t.Helper()
		cfg := loadtest.DefaultRunConfig()
		cfg.Concurrency, cfg.Duration, cfg.Warmup = conc, d, time.Second
		res, err := loadtest.Run(ctx, cfg, sc)
		if err != nil {
			t.Fatal(err)
		}
		r := res.Report
		rows = append(rows, fmt.Sprintf("| %s | %s | %d | %d | %.0f | %.3f ms | %.3f ms | %.3f ms | %s |",
			setup, r.Scenario, conc, r.OK, r.Throughput, float64(r.P50)/1e6, float64(r.P99)/1e6, float64(r.Max)/1e6, r.ErrorSummary()))
		t.Log(rows[len(rows)-1])
	}

	// The bare baseline: form parsing, Basic authentication, an ES256
	// RFC 9068 JWT, the JSON answer.
	key, err := loadtest.NewSigningKey(loadtest.AlgES256)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	bc := loadtest.DefaultBaselineConfig()
	bc.Issuer = srv.URL + "/t/default"
	bc.ClientID, bc.ClientSecret, bc.Scopes, bc.Key = "baseline", "baseline-secret", []string{"read:orders"}, key
	if h, err = loadtest.NewBaseline(bc); err != nil {
		t.Fatal(err)
	}
	baseline, err := loadtest.NewClientCredentialsScenario([]loadtest.Target{{Issuer: bc.Issuer, TokenURL: bc.Issuer + "/oauth2/token"}}, "baseline", "baseline-secret", "read:orders", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	group := func(setup string, nodes []*nodetest.Node) {
		var targets []loadtest.Target
		for _, n := range nodes {
			tg, err := loadtest.DiscoverTarget(ctx, n.Issuer("default"))
			if err != nil {
				t.Fatal(err)
			}
			targets = append(targets, tg)
		}
		id, secret := nodes[0].CreateClient(t, &adminv1.CreateClientRequest{
			Tenant: "default", Name: "figures", GrantTypes: []string{"client_credentials"},
			Scopes: []string{"read:orders"}, TokenFormat: "opaque",
		})
		flow, err := loadtest.SetupUserFlow(ctx, nodes[0].Admin, "default", 16)
		if err != nil {
			t.Fatal(err)
		}
		// Let every node's replica hold the new client and users.
		nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			_, err := loadtest.MintTokens(ctx, targets, id, secret, "read:orders", len(targets))
			return err
		})
		pool, err := loadtest.MintTokens(ctx, targets, id, secret, "read:orders", 1000)
		if err != nil {
			t.Fatal(err)
		}
		in, err := loadtest.NewIntrospectScenario(targets, id, secret, pool, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rf, err := loadtest.NewRefreshScenario(targets, flow)
		if err != nil {
			t.Fatal(err)
		}
		measure("bare baseline (client_credentials)", 32, baseline)
		measure(setup, 32, in)
		measure(setup, 16, rf)
	}

	group("1 node", []*nodetest.Node{nodetest.Start(t)})
	c := nodetest.StartCluster(t, 3)
	group("3 nodes (round-robin)", []*nodetest.Node{c.Node(0), c.Node(1), c.Node(2)})
	measure("bare baseline (client_credentials)", 32, baseline)

	load, _ = os.ReadFile("/proc/loadavg")
	t.Logf("load average after: %s", strings.TrimSpace(string(load)))
	fmt.Println("| setup | scenario | virtual clients | ok | ok/s | p50 | p99 | max | errors |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}
