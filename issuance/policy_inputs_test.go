package issuance_test

import (
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/policy"
)

// TestPolicyDeviceAndRisk (issue 12): at the token endpoint the policy
// sees the device posture a trusted proxy asserted in X-Device-* headers
// (and nothing from any other peer) and the risk the Config.Risk hook
// scored.
func TestPolicyDeviceAndRisk(t *testing.T) {
	src := `risk >= 0.5 && "token_guessing" in alerts && tenant_alerts.size() == 0 ? dyn({"allow": false, "reason": "risky"}) : dyn({"allow": "managed" in device && device["managed"] == "true", "reason": "unmanaged device"})`
	engine := policy.NewEngine(func(string) (uint64, []policy.Spec) { return 1, []policy.Spec{{Source: src}} }, nil)
	run := func(trusted bool) {
		e := newEnv(t, func(c *issuance.Config) {
			c.Policy = engine
			if trusted {
				c.RateLimits.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
			}
			c.Risk = func(_ context.Context, in issuance.PolicyInput) issuance.RiskSignal {
				if in.ClientID == "risky" {
					return issuance.RiskSignal{Score: 0.9, Alerts: []string{"token_guessing"}}
				}
				return issuance.RiskSignal{Score: 0.1}
			}
		})
		e.addTenant("acme", issuance.AlgES256)
		secret := e.addClient("acme", "app")
		riskySecret := e.addClient("acme", "risky")
		post := func(id, secret string, managed bool) response {
			req, _ := http.NewRequest(http.MethodPost, e.url("/t/acme/oauth2/token"), strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basic(id, secret))
			if managed {
				req.Header.Set("X-Device-Managed", "true")
			}
			return e.do(req)
		}
		if res := post("app", secret, true); (res.status == http.StatusOK) != trusted {
			t.Errorf("trusted proxy %v, managed device: %d %s", trusted, res.status, res.body)
		}
		if res := post("app", secret, false); res.status != http.StatusBadRequest || !strings.Contains(string(res.body), "unmanaged device") {
			t.Errorf("trusted proxy %v, no device header: %d %s", trusted, res.status, res.body)
		}
		if res := post("risky", riskySecret, true); res.status != http.StatusBadRequest || !strings.Contains(string(res.body), "risky") {
			t.Errorf("trusted proxy %v, risky client: %d %s", trusted, res.status, res.body)
		}
	}
	run(true)
	run(false)
}
