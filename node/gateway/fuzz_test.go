package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzForwardAuth feeds arbitrary original-request headers to the
// forward-auth endpoint: it must answer 200, 401, 403 or 429, never panic
// or 5xx (the verifier here accepts only the token "good").
func FuzzForwardAuth(f *testing.F) {
	c := &Checker{
		Rules: func(string) (Rules, bool) {
			return Rules{Version: 1, Routes: []Route{{PathPrefix: "/orders", Method: "GET", Scopes: []string{"read"}}, {PathPrefix: "/", Scopes: []string{"x"}}},
				RateLimits: []RateLimit{{PerSecond: 1e6, Burst: 1000}}}, true
		},
		Verify: func(_ context.Context, _, token string) (*Identity, error) {
			if token == "good" {
				return &Identity{Subject: "s", ClientID: "c", Scopes: []string{"read"}}, nil
			}
			return nil, ErrInvalidToken
		},
	}
	h := c.ForwardAuth(func(*http.Request) string { return "t" }, DefaultTrusted)
	f.Add("GET", "/orders/1?x=1", "Bearer good", "X-Original")
	f.Add("post", "//evil/../orders", "bearer  ", "X-Forwarded")
	f.Add("GET", "%zz", "Basic abc", "X-Original")
	f.Fuzz(func(t *testing.T, method, uri, authz, style string) {
		req := httptest.NewRequest(http.MethodGet, "/check", nil)
		for _, s := range []string{"X-Original", "X-Forwarded"} {
			if style == s {
				req.Header[s+"-Method"] = []string{method}
				if s == "X-Original" {
					req.Header["X-Original-Uri"] = []string{uri}
				} else {
					req.Header["X-Forwarded-Uri"] = []string{uri}
				}
			}
		}
		req.Header["Authorization"] = []string{authz}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 401, 403, 429:
		default:
			t.Fatalf("status %d for %q %q %q", rec.Code, method, uri, authz)
		}
	})
}

func TestMatch(t *testing.T) {
	routes := []Route{{PathPrefix: "/orders", Scopes: []string{"a"}}, {PathPrefix: "/orders", Method: "GET", Scopes: []string{"b"}}, {PathPrefix: "/orders/admin", Scopes: []string{"c"}}}
	for _, tc := range []struct {
		method, path, want string
		ok                 bool
	}{
		{"GET", "/orders", "b", true}, {"POST", "/orders/1", "a", true}, {"GET", "/orders/admin/x", "c", true},
		{"GET", "/ordersX", "", false}, {"GET", "/", "", false},
	} {
		r, ok := match(routes, tc.method, tc.path)
		if ok != tc.ok || (ok && r.Scopes[0] != tc.want) {
			t.Errorf("%s %s: %v %v", tc.method, tc.path, r, ok)
		}
	}
}
