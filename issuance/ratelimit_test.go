package issuance_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
