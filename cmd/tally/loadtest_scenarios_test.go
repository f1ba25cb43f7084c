package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

func runLoadtestCmd(t *testing.T, getenv func(string) string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"loadtest"}, args...), env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: getenv})
	return code, out.String(), errb.String()
}

// TestLoadtestScenarioCommands runs the scenario commands against a real
// node: a mixed load set up through the admin API (users, a public client,
// an opaque-token client), with JSON output, an HTML report and a
// comparison with the previous run; and client-credentials with pre-made
// credentials, the form scripts use against any issuer.
func TestLoadtestScenarioCommands(t *testing.T) {
	n := nodetest.Start(t)
	dir := t.TempDir()
	getenv := func(k string) string {
		if k == "TALLY_ADMIN_TOKEN" {
			return n.AdminToken
		}
		return ""
	}
	issuer := n.Issuer("default")
	common := []string{"--target", issuer, "--concurrency", "2", "--requests", "40", "--duration", "0", "--warmup", "0"}

	base := filepath.Join(dir, "base.json")
	code, out, errs := runLoadtestCmd(t, getenv, append([]string{"mixed", "--mix", "client-credentials=5,introspect=3,refresh=1,authcode=1",
		"--admin-server", n.BaseURL(), "--users", "2", "--pool", "8", "--output", "json"}, common...)...)
	if code != 0 {
		t.Fatalf("mixed: exit %d: %s", code, errs)
	}
	if err := os.WriteFile(base, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := loadtest.ReadResult(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if res.Report.Scenario != "mixed" || res.Report.OK != 40 || len(res.Scenarios) < 2 {
		t.Fatalf("mixed result: %+v", res)
	}

	report := filepath.Join(dir, "r.html")
	code, out, errs = runLoadtestCmd(t, getenv, append([]string{"mixed", "--mix", "client-credentials=5,introspect=3,refresh=1,authcode=1",
		"--admin-server", n.BaseURL(), "--users", "2", "--pool", "8", "--report", report, "--compare", base}, common...)...)
	if code != 0 {
		t.Fatalf("mixed with report: exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "against the base report") || !strings.Contains(out, "×") {
		t.Fatalf("no comparison in:\n%s", out)
	}
	page, err := os.ReadFile(report)
	if err != nil || !bytes.Contains(page, []byte("<svg")) {
		t.Fatalf("report: %v", err)
	}

	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "cc", GrantTypes: []string{"client_credentials"}})
	code, out, errs = runLoadtestCmd(t, getenv, append([]string{"client-credentials", "--client-id", id, "--client-secret", secret, "--output", "json"}, common...)...)
	if code != 0 {
		t.Fatalf("client-credentials: exit %d: %s", code, errs)
	}
	var got struct {
		Report struct {
			Scenario string           `json:"scenario"`
			OK       int64            `json:"ok"`
			Errors   map[string]int64 `json:"errors"`
			P99MS    float64          `json:"p99_ms"`
		} `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Report.OK != 40 || got.Report.P99MS <= 0 {
		t.Fatalf("client-credentials json: %v %s", err, out)
	}

	// revoke-propagation against the running node, as a scenario.
	code, out, errs = runLoadtestCmd(t, getenv, append([]string{"revoke-propagation", "--admin-server", n.BaseURL(),
		"--client-id", id, "--client-secret", secret, "--output", "json"}, common...)...)
	if code != 0 {
		t.Fatalf("revoke-propagation: exit %d: %s", code, errs)
	}
	if res, err := loadtest.ReadResult(strings.NewReader(out)); err != nil || res.Report.Scenario != "revoke-propagation" || res.Report.OK != 40 {
		t.Fatalf("revoke-propagation: %v %s", err, out)
	}

	// A wrong secret: the run completes, errors are counted by code, and
	// the exit status says nothing succeeded. After 20 failures from this
	// network the client's failure budget answers rate_limited (issue 13).
	code, out, _ = runLoadtestCmd(t, getenv, append([]string{"client-credentials", "--client-id", id, "--client-secret", "nope", "--output", "json"}, common...)...)
	var wrong struct {
		Report struct {
			Errors map[string]int64 `json:"errors"`
		} `json:"report"`
	}
	_ = json.Unmarshal([]byte(out), &wrong)
	if errs := wrong.Report.Errors; code != 1 || errs["invalid_client"] < 20 || errs["invalid_client"]+errs["rate_limited"] != 40 {
		t.Fatalf("wrong secret: exit %d: %s", code, out)
	}
}

func TestLoadtestScenarioUsage(t *testing.T) {
	noEnv := func(string) string { return "" }
	for _, args := range [][]string{
		{"introspect"}, // no target
		{"mixed", "--target", "http://127.0.0.1:1/t/x"},                              // no mix
		{"mixed", "--target", "http://127.0.0.1:1/t/x", "--mix", "mixed=1"},          // nested
		{"mixed", "--target", "http://127.0.0.1:1/t/x", "--mix", "nope=1"},           // unknown
		{"refresh", "--target", "http://127.0.0.1:1/t/x", "--user", "bob"},           // not NAME:PASSWORD
		{"refresh", "--target", "http://127.0.0.1:1/t/x", "--user", "bob:pw"},        // no public client
		{"client-credentials", "--target", "http://127.0.0.1:1/t/x", "--rate", "-1"}, // bad rate
		{"introspect", "--target", "http://127.0.0.1:1/t/x", "--output", "yaml"},     // bad output
		{"authcode", "--token-url", "http://127.0.0.1:1/token"},                      // token-url is client-credentials only
		{"compare", "--sides", "both"},                                               // unknown sides
	} {
		if code, _, errs := runLoadtestCmd(t, noEnv, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errs)
		}
	}
}

// TestLoadtestCompareRateLimits: "tally loadtest compare --sides rate-limits"
// runs the same load against two real nodes, rate limits off and on, and
// every request of both succeeds (the budgets are far above the load);
// --cpuprofile writes a profile of the rounds.
func TestLoadtestCompareRateLimits(t *testing.T) {
	noEnv := func(string) string { return "" }
	prof := filepath.Join(t.TempDir(), "cpu.pprof")
	code, out, errs := runLoadtestCmd(t, noEnv, "compare", "--sides", "rate-limits", "--concurrency", "4",
		"--duration", "300ms", "--warmup", "0s", "--rounds", "1", "--output", "json", "--cpuprofile", prof)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	// A pprof profile is a gzipped protocol buffer.
	if b, err := os.ReadFile(prof); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("--cpuprofile %s: %d bytes, %v; want a gzipped profile", prof, len(b), err)
	}
	var res struct {
		Baseline, Candidate struct {
			Target   string `json:"target"`
			Requests int64  `json:"requests"`
			OK       int64  `json:"ok"`
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		got  string
		want string
		ok   int64
		reqs int64
	}{{res.Baseline.Target, "tally rate limits off", res.Baseline.OK, res.Baseline.Requests},
		{res.Candidate.Target, "tally rate limits on", res.Candidate.OK, res.Candidate.Requests}} {
		if side.got != side.want || side.ok == 0 || side.ok != side.reqs {
			t.Errorf("side %q (want %q): %d of %d ok", side.got, side.want, side.ok, side.reqs)
		}
	}
}
