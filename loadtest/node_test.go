package loadtest_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// fetchToken runs one client_credentials request and returns the decoded
// JWT header and claims of the access token, and the response's keys.
func fetchToken(t *testing.T, tokenURL, id, secret string) (header, claims, resp map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader("grant_type=client_credentials&scope=read%3Aorders"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	body, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusOK || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("%s: %d %v %s", tokenURL, r.StatusCode, r.Header, body)
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(resp["access_token"].(string), ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %v", resp["access_token"])
	}
	for i, into := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, into); err != nil {
			t.Fatal(err)
		}
	}
	return header, claims, resp
}

func keysOf(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestBaselineMatchesTally checks the premise of the comparison against a
// real node: the baseline answers the same request with the same JSON
// fields, the same JWT header fields and the same claim names and kinds of
// values as tally's token endpoint, and Compare loads both.
func TestBaselineMatchesTally(t *testing.T) {
	n := nodetest.Start(t)
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "load", GrantTypes: []string{"client_credentials"},
		Scopes: []string{"read:orders"}, TokenFormat: "jwt", AccessTokenTtlSeconds: 300,
	})

	key, err := loadtest.NewSigningKey(loadtest.AlgES256)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	cfg := loadtest.DefaultBaselineConfig()
	cfg.Issuer = srv.URL + "/t/default"
	cfg.ClientID, cfg.ClientSecret, cfg.Scopes = id, secret, []string{"read:orders"}
	cfg.Key = key
	if h, err = loadtest.NewBaseline(cfg); err != nil {
		t.Fatal(err)
	}

	// A fresh node may answer temporarily_unavailable for its first moments.
	wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := loadtest.WaitForToken(wctx, loadtest.Endpoint{Name: "tally", TokenURL: n.TokenURL("default"), ClientID: id, ClientSecret: secret}); err != nil {
		t.Fatal(err)
	}

	md, err := loadtest.Discover(context.Background(), n.Issuer("default"))
	if err != nil {
		t.Fatal(err)
	}
	if md.TokenEndpoint != n.TokenURL("default") {
		t.Errorf("discovered %s, want %s", md.TokenEndpoint, n.TokenURL("default"))
	}
	th, tc, tr := fetchToken(t, md.TokenEndpoint, id, secret)
	bh, bc, br := fetchToken(t, cfg.Issuer+"/oauth2/token", id, secret)

	for _, cmp := range []struct {
		what         string
		tally, basel map[string]any
	}{{"response", tr, br}, {"header", th, bh}, {"claims", tc, bc}} {
		if got, want := keysOf(cmp.basel), keysOf(cmp.tally); !slices.Equal(got, want) {
			t.Errorf("%s fields: baseline %v, tally %v", cmp.what, got, want)
		}
	}
	for _, k := range []string{"token_type", "expires_in", "scope"} {
		if tr[k] != br[k] {
			t.Errorf("response %s: baseline %v, tally %v", k, br[k], tr[k])
		}
	}
	for _, k := range []string{"typ", "alg"} {
		if th[k] != bh[k] {
			t.Errorf("header %s: baseline %v, tally %v", k, bh[k], th[k])
		}
	}
	for _, k := range []string{"sub", "client_id", "scope"} {
		if tc[k] != bc[k] {
			t.Errorf("claim %s: baseline %v, tally %v", k, bc[k], tc[k])
		}
	}
	if tc["exp"].(float64)-tc["iat"].(float64) != bc["exp"].(float64)-bc["iat"].(float64) {
		t.Errorf("lifetimes differ: tally %v, baseline %v", tc, bc)
	}
	if _, ok := tc["aud"].(string); ok != (func() bool { _, ok := bc["aud"].(string); return ok })() {
		t.Errorf("aud shapes differ: tally %v, baseline %v", tc["aud"], bc["aud"])
	}

	cc := loadtest.DefaultCompareConfig()
	cc.Rounds = 1
	cc.Load.Concurrency, cc.Load.Warmup, cc.Load.Duration, cc.Load.Requests = 4, 0, 0, 40
	cc.Baseline = loadtest.Endpoint{Name: "baseline", TokenURL: cfg.Issuer + "/oauth2/token", ClientID: id, ClientSecret: secret, Scope: "read:orders"}
	cc.Candidate = loadtest.Endpoint{Name: "tally", TokenURL: n.TokenURL("default"), ClientID: id, ClientSecret: secret, Scope: "read:orders"}
	res, err := loadtest.Compare(context.Background(), cc)
	if err != nil {
		t.Fatal(err)
	}
	if res.Baseline.OK != 40 || res.Candidate.OK != 40 || res.ThroughputRatio <= 0 {
		t.Errorf("comparison %+v", res)
	}
}
