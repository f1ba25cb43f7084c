package issuance_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
)

// BenchmarkTokenRateLimits is the token endpoint (client credentials, ES256
// JWT) with the rate limiter off and on, in one run (issue 13's figure:
// on/off ≥ 0.95). The budgets are far above b.N, so every request passes
// every bucket and the figure is the limiter's own cost.
func BenchmarkTokenRateLimits(b *testing.B) {
	huge := issuance.RateLimits{PerClient: 1e9, PerUnknownClient: 1e9, PerUsername: 1e9, PerIP: 1e9, PerSubnet: 1e9, PerTenant: 1e9}
	for _, c := range []struct {
		name   string
		limits issuance.RateLimits
	}{{"off", issuance.RateLimits{Off: true}}, {"on", huge}} {
		b.Run("limits="+c.name, func(b *testing.B) {
			e := newEnv(b, func(cfg *issuance.Config) { cfg.RateLimits = c.limits })
			e.addTenant("acme", issuance.AlgES256)
			secret := e.addClient("acme", "svc", func(cl *issuance.Client) { cl.TokenFormat = issuance.FormatJWT })
			var h http.Handler = e.srv.Handler()
			authz := basic("svc", secret)
			body := "grant_type=client_credentials&scope=read"
			b.ReportAllocs()
			for b.Loop() {
				serveForm(b, h, "/t/acme/oauth2/token", body, authz)
			}
		})
	}
}

// BenchmarkTokenRateLimitsRatio alternates rounds of 100 token requests
// with the limiter off and on (interleaved, so that a noisy machine slows
// both alike) and reports the median per-round throughput ratio on/off.
func BenchmarkTokenRateLimitsRatio(b *testing.B) {
	huge := issuance.RateLimits{PerClient: 1e9, PerUnknownClient: 1e9, PerUsername: 1e9, PerIP: 1e9, PerSubnet: 1e9, PerTenant: 1e9}
	setup := func(l issuance.RateLimits) (http.Handler, string) {
		e := newEnv(b, func(cfg *issuance.Config) { cfg.RateLimits = l })
		e.addTenant("acme", issuance.AlgES256)
		secret := e.addClient("acme", "svc", func(cl *issuance.Client) { cl.TokenFormat = issuance.FormatJWT })
		return e.srv.Handler(), basic("svc", secret)
	}
	offH, offA := setup(issuance.RateLimits{Off: true})
	onH, onA := setup(huge)
	body := "grant_type=client_credentials&scope=read"
	round := func(h http.Handler, authz string) float64 {
		start := time.Now()
		for range 100 {
			serveForm(b, h, "/t/acme/oauth2/token", body, authz)
		}
		return time.Since(start).Seconds()
	}
	var ratios []float64
	for i := 0; b.Loop(); i++ {
		// Alternate which side goes first, so that what one round leaves
		// behind (garbage to collect, a warm cache) does not always fall
		// on the same side.
		var off, on float64
		if i%2 == 0 {
			off = round(offH, offA)
			on = round(onH, onA)
		} else {
			on = round(onH, onA)
			off = round(offH, offA)
		}
		ratios = append(ratios, off/on) // throughput on / throughput off
	}
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "on/off")
}
