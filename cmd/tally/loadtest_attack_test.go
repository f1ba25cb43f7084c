package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tallyauth/tally/loadtest"
)

// TestLoadtestAttack runs two attack scenarios against a 3-node cluster
// the command starts: the password spray gets nothing and is throttled,
// the account's owner and the tenant's other users are never refused for
// the attack's rate, the runaway client's flood is throttled and raises
// its alert in the SIEM feed, and the other client behind the same address
// is never refused. (Speeds and detection times are figures for
// loadtest/BENCHMARKS.md, not asserted here.)
func TestLoadtestAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	code, out, errs := runLoadtestCmd(t, func(string) string { return "" }, "attack", "--nodes", "3", "--duration", "2s",
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
			if r.AlertSeconds < 0 || r.LimitPerMinute != 600 {
				t.Fatalf("token-flood: alert %v s, limit %d", r.AlertSeconds, r.LimitPerMinute)
			}
		}
	}
	if !strings.Contains(out, `"overshoot"`) {
		t.Fatalf("no overshoot figure: %s", out)
	}
}
