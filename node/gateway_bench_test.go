package node_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/issuance"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// Issue 12 figures (loadtest/BENCHMARKS.md):
//
//	go test ./node/ -run XXX -bench 'Gateway|Exchange' -benchtime 3s
//
// BenchmarkGatewayCheck/gateway is the forward-auth endpoint deciding a
// GET with an ES256 JWT; BenchmarkGatewayCheck/bare is a bare handler
// verifying the same JWT with the SDK (revocation.Verifier.Middleware) in
// the same run. Both are served over loopback HTTP with keep-alive.
// BenchmarkGatewayCheck/gateway_dpop decides the same request with a
// DPoP-bound ES256 JWT and a fresh ES256 proof each (signed before the
// timer): one more signature verification, the ath hash and a jti in the
// checker's replay cache.

type gwLatencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *gwLatencies) add(d []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

func (l *gwLatencies) p99() time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	slices.Sort(l.d)
	return l.d[len(l.d)*99/100]
}

func benchGet(b *testing.B, mk func() *http.Request) {
	var lat gwLatencies
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			t0 := time.Now()
			resp, err := client.Do(mk())
			if err != nil {
				b.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		lat.add(mine)
	})
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "decisions/s")
	b.ReportMetric(float64(lat.p99().Microseconds())/1000, "p99-ms")
}

func BenchmarkGatewayCheck(b *testing.B) {
	n := nodetest.Start(b)
	ctx := context.Background()
	appID, appSecret := n.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "app", Scopes: []string{"read:orders"}, Audiences: []string{ordersAPI}})
	if _, err := n.Admin.SetGatewayRoute(ctx, connect.NewRequest(&adminv1.SetGatewayRouteRequest{Tenant: "default",
		Route: &adminv1.GatewayRoute{PathPrefix: "/orders", Method: "GET", Scopes: []string{"read:orders"}}})); err != nil {
		b.Fatal(err)
	}
	tok := benchToken(b, n, appID, appSecret, url.Values{"grant_type": {"client_credentials"}})
	b.Run("gateway", func(b *testing.B) {
		benchGet(b, func() *http.Request {
			req, _ := http.NewRequest(http.MethodGet, n.Issuer("default")+"/gateway/check", nil)
			req.Header.Set("X-Original-Method", "GET")
			req.Header.Set("X-Original-URI", "/orders/1")
			req.Header.Set("Authorization", "Bearer "+tok)
			return req
		})
	})
	k := dpoptest.NewKey("ES256")
	tokenURL := n.Issuer("default") + "/oauth2/token"
	dreq, _ := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader("grant_type=client_credentials"))
	dreq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	dreq.SetBasicAuth(url.QueryEscape(appID), url.QueryEscape(appSecret))
	dreq.Header.Set("DPoP", k.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL}))
	dresp, err := http.DefaultClient.Do(dreq)
	if err != nil {
		b.Fatal(err)
	}
	var dtok struct {
		AccessToken string `json:"access_token"`
	}
	json.NewDecoder(dresp.Body).Decode(&dtok)
	dresp.Body.Close()
	b.Run("gateway_dpop", func(b *testing.B) {
		proofs := make([]string, b.N+64)
		for i := range proofs {
			proofs[i] = k.Proof(dpoptest.Claims{HTM: "GET", HTU: "https://api.example/orders/1", AccessToken: dtok.AccessToken})
		}
		var next atomic.Int64
		benchGet(b, func() *http.Request {
			req, _ := http.NewRequest(http.MethodGet, n.Issuer("default")+"/gateway/check", nil)
			req.Header.Set("X-Original-Method", "GET")
			req.Header.Set("X-Original-URI", "/orders/1")
			req.Header.Set("X-Original-URL", "https://api.example/orders/1")
			req.Header.Set("Authorization", "DPoP "+dtok.AccessToken)
			req.Header.Set("DPoP", proofs[next.Add(1)-1])
			return req
		})
	})
	b.Run("bare", func(b *testing.B) {
		rsID, rsSecret := n.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "rs"})
		sdk := startSDKB(b, n, rsID, rsSecret)
		ts := httptest.NewServer(sdk.Middleware("read:orders")(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})))
		defer ts.Close()
		benchGet(b, func() *http.Request {
			req, _ := http.NewRequest(http.MethodGet, ts.URL+"/orders/1", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			return req
		})
	})
}

// BenchmarkExchange compares token exchange (opaque subject → phantom
// JWT) with client credentials, both at the token endpoint of one node.
func BenchmarkExchange(b *testing.B) {
	n := nodetest.Start(b)
	appID, appSecret := n.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "app", Scopes: []string{"read:orders"}, TokenFormat: "opaque"})
	gwID, gwSecret := n.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "gw", GrantTypes: []string{issuance.GrantTokenExchange}, Audiences: []string{ordersAPI}})
	subject := benchToken(b, n, appID, appSecret, url.Values{"grant_type": {"client_credentials"}})
	for _, tc := range []struct {
		name       string
		id, secret string
		form       url.Values
	}{
		{"client_credentials", appID, appSecret, url.Values{"grant_type": {"client_credentials"}}},
		{"token_exchange", gwID, gwSecret, url.Values{"grant_type": {issuance.GrantTokenExchange}, "subject_token": {subject},
			"subject_token_type": {issuance.TokenTypeAccessToken}, "audience": {ordersAPI}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			body := tc.form.Encode()
			benchPost(b, n.Issuer("default")+"/oauth2/token", tc.id, tc.secret, body)
		})
	}
}

func startSDKB(b *testing.B, n *nodetest.Node, id, secret string) *revocation.Verifier {
	b.Helper()
	w, err := revocation.NewWatcher(revocation.WatcherConfig{Issuer: n.Issuer("default"), Tenant: "default", ServerURL: n.BaseURL(),
		ClientID: id, ClientSecret: secret, MaxDisconnect: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	v, err := revocation.NewVerifier(revocation.Config{Issuer: n.Issuer("default"), Audience: ordersAPI, Watcher: w})
	if err != nil {
		b.Fatal(err)
	}
	w.Start()
	b.Cleanup(w.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	return v
}

func benchToken(b *testing.B, n *nodetest.Node, id, secret string, form url.Values) string {
	b.Helper()
	req, _ := http.NewRequest(http.MethodPost, n.Issuer("default")+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.AccessToken == "" {
		b.Fatalf("token: %d %v", resp.StatusCode, err)
	}
	return out.AccessToken
}

func benchPost(b *testing.B, u, id, secret, body string) {
	benchGet(b, func() *http.Request {
		req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
		return req
	})
}
