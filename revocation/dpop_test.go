package revocation

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tallyauth/tally/dpop/dpoptest"
)

// TestDPoPMiddleware checks the binding from the resource server's side:
// proofs built with go-jose, every failure a 401 with a DPoP challenge.
func TestDPoPMiddleware(t *testing.T) {
	ti := newTestIssuer(t)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", ClientID: "rs", ClientSecret: "rs-secret"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(v.Middleware("read:orders")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := ClaimsFromContext(r.Context())
		io.WriteString(w, c.Subject+" "+c.JKT)
	})))
	defer srv.Close()
	htu := srv.URL + "/orders"
	k, other := dpoptest.NewKey("ES256"), dpoptest.NewKey("EdDSA")
	bound := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["cnf"] = map[string]any{"jkt": k.JKT()} }))
	bearer := ti.sign("k1", "at+jwt", ti.accessClaims(nil))
	// An opaque token the issuer vouches for, bound to k.
	opaque := "tly1.k9.opaque-bound"
	ti.mu.Lock()
	ti.opaque[opaque] = map[string]any{"active": true, "iss": ti.issuer, "sub": "bob", "client_id": "c1", "aud": "https://orders",
		"scope": "read:orders", "exp": time.Now().Add(time.Hour).Unix(), "jti": "o1", "token_type": "DPoP", "cnf": map[string]any{"jkt": k.JKT()}}
	ti.mu.Unlock()

	do := func(method, authz string, proofs ...string) (*http.Response, string) {
		req, _ := http.NewRequest(method, htu, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		for _, p := range proofs {
			req.Header.Add("DPoP", p)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	proof := func(key *dpoptest.Key, c dpoptest.Claims) string {
		if c.HTM == "" {
			c.HTM = "GET"
		}
		if c.HTU == "" {
			c.HTU = htu
		}
		return key.Proof(c)
	}
	replayed := proof(k, dpoptest.Claims{AccessToken: bound})
	if resp, body := do("GET", "DPoP "+bound, replayed); resp.StatusCode != 200 || body != "alice "+k.JKT() {
		t.Fatalf("bound token with proof: %d %q %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	if resp, body := do("GET", "DPoP "+opaque, proof(k, dpoptest.Claims{AccessToken: opaque})); resp.StatusCode != 200 || body != "bob "+k.JKT() {
		t.Fatalf("bound opaque token with proof: %d %q", resp.StatusCode, body)
	}
	if resp, _ := do("GET", "Bearer "+bearer); resp.StatusCode != 200 {
		t.Fatalf("bearer token: %d", resp.StatusCode)
	}
	for _, tc := range []struct {
		name, method, authz string
		proofs              []string
		www                 string
	}{
		{"bound token as bearer", "GET", "Bearer " + bound, nil, `error="invalid_token"`},
		{"bound opaque token as bearer", "GET", "Bearer " + opaque, nil, `error="invalid_token"`},
		{"bearer token as DPoP", "GET", "DPoP " + bearer, []string{proof(k, dpoptest.Claims{AccessToken: bearer})}, `error="invalid_token"`},
		{"no proof", "GET", "DPoP " + bound, nil, `error="invalid_dpop_proof"`},
		{"two proofs", "GET", "DPoP " + bound, []string{proof(k, dpoptest.Claims{AccessToken: bound}), proof(k, dpoptest.Claims{AccessToken: bound})}, `error="invalid_dpop_proof"`},
		{"missing ath", "GET", "DPoP " + bound, []string{proof(k, dpoptest.Claims{})}, `error="invalid_dpop_proof"`},
		{"ath of another token", "GET", "DPoP " + bound, []string{proof(k, dpoptest.Claims{AccessToken: bearer})}, `error="invalid_dpop_proof"`},
		{"token presented with a different key", "GET", "DPoP " + bound, []string{proof(other, dpoptest.Claims{AccessToken: bound})}, `error="invalid_dpop_proof"`},
		{"wrong htm", "GET", "DPoP " + bound, []string{proof(k, dpoptest.Claims{HTM: "POST", AccessToken: bound})}, `error="invalid_dpop_proof"`},
		{"wrong htu", "GET", "DPoP " + bound, []string{proof(k, dpoptest.Claims{HTU: srv.URL + "/admin", AccessToken: bound})}, `error="invalid_dpop_proof"`},
		{"stale iat", "GET", "DPoP " + bound, []string{proof(k, dpoptest.Claims{IAT: time.Now().Add(-10 * time.Minute), AccessToken: bound})}, `error="invalid_dpop_proof"`},
		{"replayed jti", "GET", "DPoP " + bound, []string{replayed}, `error="invalid_dpop_proof"`},
	} {
		resp, body := do(tc.method, tc.authz, tc.proofs...)
		www := resp.Header.Get("WWW-Authenticate")
		if resp.StatusCode != 401 || !strings.HasPrefix(www, "DPoP ") || !strings.Contains(www, tc.www) {
			t.Errorf("%s: %d %q %q", tc.name, resp.StatusCode, www, body)
		}
	}
	// No token at all: both challenges.
	resp, _ := do("GET", "")
	if got := resp.Header.Values("WWW-Authenticate"); resp.StatusCode != 401 || len(got) != 2 || !strings.HasPrefix(got[1], "DPoP algs=") {
		t.Fatalf("no token: %d %q", resp.StatusCode, got)
	}
	if ReasonOf(v.dpop.check(httptest.NewRequest("GET", htu, nil), bound, &Claims{JKT: k.JKT()}, false)) != ReasonDPoPBinding {
		t.Error("reason of a bound token as bearer")
	}
}

// BenchmarkRSVerify compares, in one run, verifying a plain JWT bearer
// token with verifying a DPoP-bound token and its proof (a second
// signature check, a JWK parse, a SHA-256 and a replay-cache insert).
func BenchmarkRSVerify(b *testing.B) {
	ti := newTestIssuer(b)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", DPoP: DPoPConfig{ReplayCapacity: 1 << 22}})
	if err != nil {
		b.Fatal(err)
	}
	k := dpoptest.NewKey("ES256")
	bearer := ti.sign("k1", "at+jwt", ti.accessClaims(nil))
	bound := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["cnf"] = map[string]any{"jkt": k.JKT()} }))
	const htu = "http://rs.example/orders"
	if _, err := v.Verify(context.Background(), bearer); err != nil {
		b.Fatal(err)
	}
	b.Run("jwt-bearer", func(b *testing.B) {
		req := httptest.NewRequest("GET", htu, nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		for b.Loop() {
			if _, err := v.VerifyRequest(req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jwt-dpop", func(b *testing.B) {
		// Proofs are made before the timer: the client's cost is not the
		// resource server's.
		proofs := make([]string, 0, 4096)
		for range cap(proofs) {
			proofs = append(proofs, k.Proof(dpoptest.Claims{HTM: "GET", HTU: htu, AccessToken: bound}))
		}
		reqs := make([]*http.Request, len(proofs))
		for i, p := range proofs {
			reqs[i] = httptest.NewRequest("GET", htu, nil)
			reqs[i].Header.Set("Authorization", "DPoP "+bound)
			reqs[i].Header.Set("DPoP", p)
		}
		i := 0
		for b.Loop() {
			if i == len(reqs) {
				// Fresh proofs (new jti) for the next round.
				b.StopTimer()
				for j := range reqs {
					reqs[j].Header.Set("DPoP", k.Proof(dpoptest.Claims{HTM: "GET", HTU: htu, AccessToken: bound}))
				}
				i = 0
				b.StartTimer()
			}
			if _, err := v.VerifyRequest(reqs[i]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
