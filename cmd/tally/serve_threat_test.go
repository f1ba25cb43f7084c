package main

import (
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node"
)

// TestTenantRateLimitsFlag: --tenant-rate-limits sets only the budgets it
// names for each tenant; the others come from the global flags; bad items
// are usage errors.
func TestTenantRateLimitsFlag(t *testing.T) {
	cfg := node.DefaultConfig()
	level, check := "info", false
	fs := serveFlagSet(&cfg, &level, &check)
	if err := fs.Parse([]string{"--rate-limit-username", "40", "--tenant-rate-limits", "acme.client=6000,acme.username=10",
		"--tenant-rate-limits", "globex.alert-failures=500,globex.ip=-1,globex.alert-travel-window=30m",
		"--tenant-rate-limits", "initech.alert-travel-window=-1s"}); err != nil {
		t.Fatal(err)
	}
	tenantRateLimitDefaults(&cfg.RateLimits)
	d := issuance.DefaultRateLimits()
	acme, globex := cfg.RateLimits.Tenants["acme"], cfg.RateLimits.Tenants["globex"]
	if acme.PerClient != 6000 || acme.PerUsername != 10 || acme.PerIP != d.PerIP || acme.AlertFailures != d.AlertFailures {
		t.Fatalf("acme: %+v", acme)
	}
	if globex.AlertFailures != 500 || globex.PerIP != -1 || globex.PerUsername != 40 || globex.PerClient != d.PerClient {
		t.Fatalf("globex: %+v", globex)
	}
	// The travel window is the tenant's own or 0 (the node's flag when the
	// rotation is proposed), never filled from the flags.
	if globex.AlertTravelWindow != 30*time.Minute || acme.AlertTravelWindow != 0 || cfg.RateLimits.Tenants["initech"].AlertTravelWindow != -time.Second {
		t.Fatalf("travel windows: acme %v, globex %v, initech %v", acme.AlertTravelWindow, globex.AlertTravelWindow, cfg.RateLimits.Tenants["initech"].AlertTravelWindow)
	}
	for _, bad := range []string{"acme", "acme.client", "client=5", ".client=5", "acme.nope=5", "acme.client=0", "acme.client=x", "acme.client=-2", "acme.alert-travel-window=10", "acme.alert-travel-window=soon"} {
		var c issuance.RateLimits
		if err := parseTenantRateLimits(bad, &c); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
