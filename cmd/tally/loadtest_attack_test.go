package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// attackExtend is how far the tests let a drill's 2 s phases run on
// (--extend) until the attack was throttled and detected: a bound against
// a hang, not a speed target. How many attempts fit in 2 s depends on how
// fast the machine hashes passwords, and on a loaded machine 2 s of spray
// do not reach the throttle; the phases therefore end on what they are
// there to show, not on the clock.
const attackExtend = "60s"

// TestLoadtestAttack runs two attack scenarios against a 3-node cluster
// the command starts: the password spray gets nothing and is throttled,
// the account's owner and the tenant's other users are never refused for
// the attack's rate, the runaway client's flood is throttled and raises
// its alert in the SIEM feed, and the other client behind the same address
// is never refused. Each phase runs until the real users finished an
// attempt and the attack was throttled (and the flood's alert seen)
// (--extend; attackExtend bounds it), so the test does not depend on the
// machine's speed. (Speeds and detection
// times are figures for loadtest/BENCHMARKS.md, not asserted here.)
func TestLoadtestAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	code, out, errs := runLoadtestCmd(t, func(string) string { return "" }, "attack", "--nodes", "3", "--duration", "2s", "--extend", attackExtend,
		"--scenarios", "spray,token-flood", "--attackers", "4", "--sources", "16", "--real-users", "2", "--flood-limit", "600", "--output", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var res attackOutput
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(res.Results) != 2 || res.Nodes != 3 {
		t.Fatalf("results: %s", out)
	}
	for _, r := range res.Results {
		t.Logf("%s: %.1f s, %d attempts, %d throttled (first after %.2f s), alert after %.2f s", r.Scenario, r.DurationSeconds, r.Attempts, r.Throttled, r.FirstThrottleSeconds, r.AlertSeconds)
		if r.Attempts == 0 || r.Throttled == 0 {
			t.Fatalf("%s: the attack was never throttled: %+v", r.Scenario, r)
		}
		for _, f := range []loadtest.UserFigures{r.Baseline, r.Users} {
			if f.Attempts == 0 || f.Failures["rate_limited"] > 0 || f.Failures["slow_down"] > 0 {
				t.Fatalf("%s: real users refused for the attack's rate: %+v", r.Scenario, f)
			}
		}
		switch r.Scenario {
		case loadtest.AttackSpray:
			if r.Succeeded != 0 {
				t.Fatalf("spray: %d sign-ins with a wrong password succeeded", r.Succeeded)
			}
			if r.Victim == nil || r.Victim.Failures["rate_limited"] > 0 || r.Victim.Failures["login_failed"] > 0 {
				t.Fatalf("spray: the owner was locked out: %+v", r.Victim)
			}
		case loadtest.AttackTokenFlood:
			if r.AlertSeconds < 0 || r.AlertKind != loadtest.AlertKinds[r.Scenario] || r.LimitPerMinute != 600 {
				t.Fatalf("token-flood: alert %v s (%s), limit %d", r.AlertSeconds, r.AlertKind, r.LimitPerMinute)
			}
		}
	}
	if !strings.Contains(out, `"overshoot"`) {
		t.Fatalf("no overshoot figure: %s", out)
	}
}

// TestLoadtestAttackRemote drills a 3-node cluster started separately
// (node/nodetest; the nodes trust loopback as their proxy and give every
// client a budget of 600 tokens a minute): the command only talks HTTP to
// it, creates a tenant of its own with its users and clients, reports the
// same figures for the same scenarios (the spray got no sign-in, the real
// users and the bystander client were never refused for the attack's
// rate), and deletes the tenant afterwards. The admin token given on the
// command line appears nowhere in the report. Each phase runs until the
// real users finished an attempt and the attack was throttled and (the
// flood) detected (--extend, bounded by attackExtend): how many attempts
// fit in 2 s depends on the machine's speed and load. Both attacks are
// throttled; the alert times are logged.
func TestLoadtestAttackRemote(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) {
		cfg.RateLimits = issuance.RateLimits{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, PerClient: 600}
	})))
	args := []string{"attack", "--admin-token", c.AdminToken(), "--duration", "2s", "--extend", attackExtend, "--scenarios", "spray,token-flood",
		"--attackers", "4", "--sources", "16", "--real-users", "2", "--flood-limit", "600", "--tenant", "drill", "--output", "json"}
	for i := range 3 {
		args = append(args, "--target", c.Node(i).URL())
	}
	code, out, errs := runLoadtestCmd(t, func(string) string { return "" }, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.Contains(out, c.AdminToken()) || strings.Contains(errs, c.AdminToken()) {
		t.Fatal("the admin token is in the report")
	}
	var res attackOutput
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(res.Results) != 2 || res.Nodes != 3 || res.Tenant != "drill" {
		t.Fatalf("results: %s", out)
	}
	for _, r := range res.Results {
		t.Logf("%s: %.1f s, %d attempts, %d throttled (first after %.2f s), alert after %.2f s", r.Scenario, r.DurationSeconds, r.Attempts, r.Throttled, r.FirstThrottleSeconds, r.AlertSeconds)
		if r.Attempts == 0 || r.Throttled == 0 || r.Targets != 3 {
			t.Fatalf("%s: no throttled attack on 3 targets: %+v", r.Scenario, r)
		}
		for _, f := range []loadtest.UserFigures{r.Baseline, r.Users} {
			if f.Failures["rate_limited"] > 0 || f.Failures["slow_down"] > 0 {
				t.Fatalf("%s: real users refused for the attack's rate: %+v", r.Scenario, f)
			}
		}
		if r.Baseline.Attempts == 0 {
			t.Fatalf("%s: no real user's attempt: %+v", r.Scenario, r.Baseline)
		}
		switch r.Scenario {
		case loadtest.AttackSpray:
			if r.Succeeded != 0 || r.Victim == nil || r.Victim.Failures["rate_limited"] > 0 {
				t.Fatalf("spray: %d successes, owner %+v", r.Succeeded, r.Victim)
			}
		case loadtest.AttackTokenFlood:
			if r.LimitPerMinute != 600 {
				t.Fatalf("token-flood: limit %d", r.LimitPerMinute)
			}
		}
	}
	// The drill's tenant is gone.
	if _, err := c.Node(0).Admin.GetTenant(context.Background(), connect.NewRequest(&adminv1.GetTenantRequest{Id: "drill"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("the drill's tenant after the run: %v", err)
	}
}

func TestRedactArgs(t *testing.T) {
	got := strings.Join(redactArgs([]string{"--admin-token", "s3cret", "-admin-token=s3cret", "--duration", "2s", "--admin-token-file", "f"}), " ")
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "--admin-token-file f") {
		t.Fatal(got)
	}
}
