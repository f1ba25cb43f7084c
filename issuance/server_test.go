package issuance_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/issuancetest"
)

func TestConfigValidate(t *testing.T) {
	good := issuance.DefaultConfig()
	good.BaseURL = "https://auth.example.com"
	good.KEK = newKEK(t)
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mod := range map[string]func(*issuance.Config){
		"no BaseURL":       func(c *issuance.Config) { c.BaseURL = "" },
		"relative BaseURL": func(c *issuance.Config) { c.BaseURL = "/auth" },
		"ftp BaseURL":      func(c *issuance.Config) { c.BaseURL = "ftp://x" },
		"BaseURL query":    func(c *issuance.Config) { c.BaseURL = "https://x/?a=b" },
		"BaseURL quote":    func(c *issuance.Config) { c.BaseURL = `https://x/"` },
		"no KEK":           func(c *issuance.Config) { c.KEK = nil },
		"zero body":        func(c *issuance.Config) { c.MaxBodyBytes = 0 },
		"negative max-age": func(c *issuance.Config) { c.JWKSMaxAge = -time.Second },
		"negative leeway":  func(c *issuance.Config) { c.Leeway = -time.Second },
		"huge leeway":      func(c *issuance.Config) { c.Leeway = time.Hour },
		"zero TTL":         func(c *issuance.Config) { c.AccessTokenTTL = 0 },
	} {
		c := good
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
		if _, err := issuance.NewServer(c, issuancetest.NewState(), issuancetest.NewRevoker(issuancetest.NewState())); err == nil {
			t.Errorf("%s: NewServer accepted it", name)
		}
	}
	if _, err := issuance.NewServer(good, nil, nil); err == nil {
		t.Error("NewServer without State accepted")
	}
}

func TestDiscovery(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	iss := e.srv.Issuer("acme")
	if iss != e.base+"/t/acme" {
		t.Fatalf("issuer %q", iss)
	}
	var first []byte
	for _, path := range []string{
		"/t/acme/.well-known/openid-configuration",
		"/.well-known/oauth-authorization-server/t/acme",
		"/t/acme/.well-known/oauth-authorization-server",
	} {
		res := e.get(path)
		if res.status != http.StatusOK {
			t.Fatalf("%s: %d %s", path, res.status, res.body)
		}
		if cc := res.header.Get("Cache-Control"); cc != "public, max-age=300" {
			t.Errorf("%s: Cache-Control %q", path, cc)
		}
		if first == nil {
			first = res.body
		} else if string(first) != string(res.body) {
			t.Errorf("%s differs: %s", path, res.body)
		}
	}
	var doc map[string]any
	if err := json.Unmarshal(first, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"issuer":                                iss,
		"token_endpoint":                        iss + "/oauth2/token",
		"jwks_uri":                              iss + "/jwks.json",
		"introspection_endpoint":                iss + "/oauth2/introspect",
		"revocation_endpoint":                   iss + "/oauth2/revoke",
		"response_types_supported":              []any{},
		"grant_types_supported":                 []any{"client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"},
		"token_endpoint_auth_methods_supported": []any{"client_secret_basic", "client_secret_post", "private_key_jwt"},
		"introspection_endpoint_auth_methods_supported": []any{"client_secret_basic", "client_secret_post", "private_key_jwt"},
		"revocation_endpoint_auth_methods_supported":    []any{"client_secret_basic", "client_secret_post", "private_key_jwt"},
		// issue 11: private_key_jwt's algorithms (clientauth_zt.go)
		"token_endpoint_auth_signing_alg_values_supported": []any{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"},
		"dpop_signing_alg_values_supported":                []any{"ES256", "ES384", "ES512", "PS256", "RS256", "EdDSA"},
	}
	for k, v := range want {
		if mustJSON(doc[k]) != mustJSON(v) {
			t.Errorf("%s = %v, want %v", k, doc[k], v)
		}
	}
	for k := range doc {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected field %s: the document must list only what exists", k)
		}
	}
	// Every advertised endpoint answers.
	for _, k := range []string{"jwks_uri"} {
		u, _ := url.Parse(doc[k].(string))
		if res := e.get(u.Path); res.status != 200 {
			t.Errorf("%s %s: %d", k, u.Path, res.status)
		}
	}
	for _, k := range []string{"token_endpoint", "introspection_endpoint", "revocation_endpoint"} {
		u, _ := url.Parse(doc[k].(string))
		if res := e.postForm(u.Path, url.Values{}, "", ""); res.status == http.StatusNotFound || res.status == http.StatusMethodNotAllowed {
			t.Errorf("%s %s: %d", k, u.Path, res.status)
		}
	}

	checkProtocolResponse(t, e, e.get("/t/nope/.well-known/openid-configuration"), 404, "invalid_request")
	e.st.PutTenant(issuance.Tenant{ID: "off", Disabled: true})
	checkProtocolResponse(t, e, e.get("/.well-known/oauth-authorization-server/t/off"), 404, "invalid_request")
	res := e.postForm("/t/acme/.well-known/openid-configuration", url.Values{}, "", "")
	checkProtocolResponse(t, e, res, 405, "invalid_request")
	if res.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("Allow %q", res.header.Get("Allow"))
	}
	checkProtocolResponse(t, e, e.get("/nowhere"), 404, "invalid_request")
	checkProtocolResponse(t, e, e.get("/t/acme/oauth2/unknown"), 404, "invalid_request")
}

func TestJWKS(t *testing.T) {
	e := newEnv(t, func(c *issuance.Config) { c.JWKSMaxAge = 90 * time.Second })
	sig, seal := e.addTenant("acme", issuance.AlgES256)
	ed := e.addKey("acme", issuance.AlgEdDSA, issuance.UseSign, e.clock.Now())
	rs := e.addKey("acme", issuance.AlgRS256, issuance.UseSign, e.clock.Now())

	res := e.get("/t/acme/jwks.json")
	if res.status != 200 {
		t.Fatalf("%d %s", res.status, res.body)
	}
	if cc := res.header.Get("Cache-Control"); cc != "public, max-age=90" {
		t.Errorf("Cache-Control %q", cc)
	}
	etag := res.header.Get("ETag")
	if !strings.HasPrefix(etag, `"`) || len(etag) < 10 {
		t.Errorf("ETag %q", etag)
	}
	if strings.Contains(string(res.body), seal.ID) || strings.Contains(string(res.body), `"d"`) {
		t.Fatalf("JWKS leaks the sealing key or a private part: %s", res.body)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(res.body, &set); err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Keys []map[string]any `json:"keys"`
	}
	_ = json.Unmarshal(res.body, &raw)
	wantKty := map[string]string{sig.ID: "EC", ed.ID: "OKP", rs.ID: "RSA"}
	if len(set.Keys) != 3 {
		t.Fatalf("%d keys", len(set.Keys))
	}
	for i, k := range set.Keys {
		if !k.IsPublic() || !k.Valid() || k.Use != "sig" {
			t.Errorf("key %s: public=%v valid=%v use=%q", k.KeyID, k.IsPublic(), k.Valid(), k.Use)
		}
		if raw.Keys[i]["kty"] != wantKty[k.KeyID] {
			t.Errorf("key %s: kty %v", k.KeyID, raw.Keys[i]["kty"])
		}
	}
	if set.Keys[0].Algorithm != "ES256" || set.Keys[1].Algorithm != "EdDSA" || set.Keys[2].Algorithm != "RS256" {
		t.Errorf("algs/order: %s %s %s", set.Keys[0].Algorithm, set.Keys[1].Algorithm, set.Keys[2].Algorithm)
	}

	req, _ := http.NewRequest(http.MethodGet, e.url("/t/acme/jwks.json"), nil)
	req.Header.Set("If-None-Match", `"nope", `+etag)
	if res := e.do(req); res.status != http.StatusNotModified || len(res.body) != 0 {
		t.Errorf("If-None-Match: %d", res.status)
	}
	// A key change changes the ETag.
	e.addKey("acme", issuance.AlgES256, issuance.UseSign, e.clock.Now().Add(time.Hour))
	if res := e.do(req); res.status != http.StatusOK || res.header.Get("ETag") == etag {
		t.Errorf("after a new key: %d, ETag %q", res.status, res.header.Get("ETag"))
	}
	checkProtocolResponse(t, e, e.get("/t/nope/jwks.json"), 404, "invalid_request")
}

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	e := newEnv(t, func(c *issuance.Config) { c.Meter = mp.Meter("test") })
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	tok := e.token("acme", "svc", secret, nil)
	e.token("acme", "svc", secret, nil)
	e.postForm("/t/acme/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", "wrong")
	e.postForm("/t/acme/oauth2/token", url.Values{"grant_type": {"x-attacker-chosen"}}, "svc", secret)
	e.introspect("acme", "svc", secret, tok)
	e.introspect("acme", "svc", secret, "junk")
	e.postForm("/t/acme/oauth2/revoke", url.Values{"token": {tok}}, "svc", secret)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	var durations uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					counts[m.Name+" "+attrString(p.Attributes)] += p.Value
				}
			case metricdata.Histogram[float64]:
				if m.Name == "tally.token.duration" {
					for _, p := range d.DataPoints {
						durations += p.Count
					}
				}
			}
		}
	}
	want := map[string]int64{
		"tally.token.requests grant_type=client_credentials,outcome=ok":             2,
		"tally.token.requests grant_type=client_credentials,outcome=invalid_client": 1,
		"tally.token.requests grant_type=unknown,outcome=unsupported_grant_type":    1,
		"tally.introspection.requests outcome=active":                               1,
		"tally.introspection.requests outcome=inactive":                             1,
		"tally.revocation.requests outcome=ok":                                      1,
	}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, counts[k], v, counts)
		}
	}
	if durations != 4 {
		t.Errorf("tally.token.duration has %d observations, want 4", durations)
	}
}

func attrString(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.String())
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// panickyState panics on Tenant, to exercise the last-resort recovery.
type panickyState struct{ *issuancetest.State }

func (panickyState) Tenant(context.Context, string) (issuance.Tenant, error) {
	panic("boom")
}

func TestPanicRecovered(t *testing.T) {
	st := issuancetest.NewState()
	cfg := issuance.DefaultConfig()
	cfg.BaseURL = "http://127.0.0.1:1"
	cfg.KEK = newKEK(t)
	srv, err := issuance.NewServer(cfg, panickyState{st}, issuancetest.NewRevoker(st))
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	res, err := ts.Client().Get(ts.URL + "/t/acme/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body map[string]string
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 500 || body["error"] != "server_error" || strings.Contains(body["error_description"], "boom") {
		t.Errorf("%d %v", res.StatusCode, body)
	}
}

var errSentinel = errors.New("sentinel")

func TestErrorType(t *testing.T) {
	e := &issuance.Error{Code: issuance.CodeInvalidClient, Description: "client authentication failed", Status: 401, Debug: errSentinel}
	var err error = e
	if !errors.Is(err, errSentinel) {
		t.Error("Error does not unwrap Debug")
	}
	var pe *issuance.Error
	if !errors.As(err, &pe) || pe.Code != "invalid_client" {
		t.Error("errors.As")
	}
	if !strings.Contains(e.Error(), "sentinel") {
		t.Error("Error() omits the debug detail for logs")
	}
}
