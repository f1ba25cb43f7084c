package issuance_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tallyauth/tally/issuance"
)

// TestCrossSiteFormPostRefused: a form post to the sign-in page from
// another site (Sec-Fetch-Site or Origin) is 403; same-origin and
// header-less posts reach the page.
func TestCrossSiteFormPostRefused(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", "ES256")
	h := e.srv.Handler()
	for _, c := range []struct {
		name, header, value string
		refused             bool
	}{
		{"cross-site fetch", "Sec-Fetch-Site", "cross-site", true},
		{"foreign origin", "Origin", "https://evil.example", true},
		{"same origin", "Origin", e.base, false},
		{"same-origin fetch", "Sec-Fetch-Site", "same-origin", false},
		{"no headers", "", "", false},
	} {
		req := httptest.NewRequest(http.MethodPost, "/t/acme/oauth2/authorize", strings.NewReader("action=login"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if c.header != "" {
			req.Header.Set(c.header, c.value)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if (rec.Code == http.StatusForbidden) != c.refused {
			t.Errorf("%s: status %d, refused want %v", c.name, rec.Code, c.refused)
		}
	}
}

// TestRateLimitedAnswerPerGrant: a refused device-code poll gets the
// grant's own error, slow_down (RFC 8628 §3.5), also when the client
// authenticates in the header (the guard then reads the body only to
// name the grant of a refusal); other grants get rate_limited. Both are
// 429 with Retry-After.
func TestRateLimitedAnswerPerGrant(t *testing.T) {
	e := newEnv(t, func(cfg *issuance.Config) { cfg.RateLimits = issuance.RateLimits{PerClient: 1} })
	e.addTenant("acme", "ES256")
	secret := e.addClient("acme", "svc")
	e.addClient("acme", "tv", func(c *issuance.Client) { c.Public = true })
	h := e.srv.Handler()
	post := func(body, authz string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/t/acme/oauth2/token", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	const poll = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=nothing"
	for _, c := range []struct {
		name, body, authz, want string
	}{
		{"device poll, Basic", poll, basic("svc", secret), "slow_down"},
		{"client credentials, Basic", "grant_type=client_credentials", basic("svc", secret), "rate_limited"},
		{"device poll, public client in the body", poll + "&client_id=tv", "", "slow_down"},
	} {
		// The budget is one a minute (burst 1) and the clock stands
		// still: the first request of a client spends it.
		rec := post(c.body, c.authz)
		if rec.Code != http.StatusTooManyRequests {
			rec = post(c.body, c.authz)
		}
		var got struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("%s: %d %s", c.name, rec.Code, rec.Body)
		}
		if rec.Code != http.StatusTooManyRequests || got.Error != c.want || rec.Header().Get("Retry-After") == "" {
			t.Errorf("%s: %d %q (Retry-After %q), want 429 %q with Retry-After", c.name, rec.Code, got.Error, rec.Header().Get("Retry-After"), c.want)
		}
	}
}
