package issuance_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/issuance"
)

// postDPoP posts a form with Basic credentials (id non-empty) and the
// given DPoP headers.
func (e *env) postDPoP(path string, form url.Values, id, secret string, proofs ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url(path), strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if id != "" {
		req.Header.Set("Authorization", basic(id, secret))
	}
	for _, p := range proofs {
		req.Header.Add("DPoP", p)
	}
	return e.do(req)
}

func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func cnfJKT(m map[string]any) string {
	cnf, _ := m["cnf"].(map[string]any)
	s, _ := cnf["jkt"].(string)
	return s
}

// TestDPoPClientCredentials: a proof at the token endpoint binds the JWT and
// the opaque token to the key: token_type DPoP, cnf.jkt in the JWT and in
// introspection. Without a proof nothing changes (Bearer, no cnf).
func TestDPoPClientCredentials(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	opaqueSecret := e.addClient("acme", "opq", func(c *issuance.Client) { c.TokenFormat = issuance.FormatOpaque })
	htu := e.url("/t/acme/oauth2/token")
	form := url.Values{"grant_type": {"client_credentials"}}
	for _, alg := range []string{"ES256", "EdDSA", "PS256"} {
		k := dpoptest.NewKey(alg)
		for _, c := range []struct{ id, secret string }{{"svc", secret}, {"opq", opaqueSecret}} {
			res := e.postDPoP("/t/acme/oauth2/token", form, c.id, c.secret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: e.clock.Now()}))
			if res.status != 200 {
				t.Fatalf("%s %s: %d %s", alg, c.id, res.status, res.body)
			}
			body := res.json(t)
			if body["token_type"] != "DPoP" {
				t.Fatalf("token_type %v", body["token_type"])
			}
			tok := body["access_token"].(string)
			if c.id == "svc" {
				if got := cnfJKT(jwtClaims(t, tok)); got != k.JKT() {
					t.Fatalf("JWT cnf.jkt %q, want %q", got, k.JKT())
				}
			}
			in := e.introspect("acme", "svc", secret, tok)
			if in["active"] != true || in["token_type"] != "DPoP" || cnfJKT(in) != k.JKT() {
				t.Fatalf("introspection %v", in)
			}
		}
	}
	// Bearer stays bearer.
	tok := e.token("acme", "svc", secret, nil)
	if _, ok := jwtClaims(t, tok)["cnf"]; ok {
		t.Fatal("bearer token has cnf")
	}
	if in := e.introspect("acme", "svc", secret, tok); in["token_type"] != "Bearer" || in["cnf"] != nil {
		t.Fatalf("bearer introspection %v", in)
	}
}

// TestDPoPBadProofs: each bad proof from issue 11 is 400 invalid_dpop_proof.
func TestDPoPBadProofs(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	htu := e.url("/t/acme/oauth2/token")
	k := dpoptest.NewKey("ES256")
	now := e.clock.Now()
	form := url.Values{"grant_type": {"client_credentials"}}
	replayed := k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now})
	if res := e.postDPoP("/t/acme/oauth2/token", form, "svc", secret, replayed); res.status != 200 {
		t.Fatalf("first use: %d %s", res.status, res.body)
	}
	for name, proofs := range map[string][]string{
		"wrong htm":      {k.Proof(dpoptest.Claims{HTM: "GET", HTU: htu, IAT: now})},
		"wrong htu":      {k.Proof(dpoptest.Claims{HTM: "POST", HTU: e.url("/t/acme/oauth2/introspect"), IAT: now})},
		"other host htu": {k.Proof(dpoptest.Claims{HTM: "POST", HTU: "https://evil.example/t/acme/oauth2/token", IAT: now})},
		"stale iat":      {k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now.Add(-10 * time.Minute)})},
		"future iat":     {k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now.Add(10 * time.Minute)})},
		"replayed jti":   {replayed},
		"wrong typ":      {k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now, Typ: "JWT"})},
		"two proofs":     {k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now}), k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now})},
		"garbage":        {"not.a.proof"},
	} {
		t.Run(name, func(t *testing.T) {
			res := e.postDPoP("/t/acme/oauth2/token", form, "svc", secret, proofs...)
			if body := res.json(t); res.status != 400 || body["error"] != issuance.CodeInvalidDPoPProof {
				t.Fatalf("%d %s", res.status, res.body)
			}
		})
	}
}

// TestDPoPBoundClient: a client registered dpop_bound gets no token
// without a proof.
func TestDPoPBoundClient(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc", func(c *issuance.Client) { c.DPoPBound = true })
	form := url.Values{"grant_type": {"client_credentials"}}
	res := e.postDPoP("/t/acme/oauth2/token", form, "svc", secret)
	if body := res.json(t); res.status != 400 || body["error"] != issuance.CodeInvalidDPoPProof {
		t.Fatalf("without proof: %d %s", res.status, res.body)
	}
	k := dpoptest.NewKey("ES256")
	res = e.postDPoP("/t/acme/oauth2/token", form, "svc", secret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: e.url("/t/acme/oauth2/token"), IAT: e.clock.Now()}))
	if res.status != 200 || res.json(t)["token_type"] != "DPoP" {
		t.Fatalf("with proof: %d %s", res.status, res.body)
	}
}

// TestDPoPNonce: with RequireNonce a proof without nonce gets
// use_dpop_nonce and a DPoP-Nonce header; the nonce works on another server
// sharing the key-encryption key (another node), and expires.
func TestDPoPNonce(t *testing.T) {
	withNonce := func(c *issuance.Config) { c.DPoP.RequireNonce = true; c.DPoP.NonceWindow = time.Minute }
	a := newEnv(t, withNonce)
	b := newEnv(t, withNonce, func(c *issuance.Config) { c.KEK = a.kek; c.Now = a.clock.Now })
	b.kek = a.kek // one cluster: one key-encryption key
	for _, e := range []*env{a, b} {
		e.addTenant("acme", issuance.AlgES256)
	}
	secret := a.addClient("acme", "svc")
	b.st.PutClient(mustClient(t, a, "acme", "svc"))
	k := dpoptest.NewKey("ES256")
	form := url.Values{"grant_type": {"client_credentials"}}
	res := a.postDPoP("/t/acme/oauth2/token", form, "svc", secret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: a.url("/t/acme/oauth2/token"), IAT: a.clock.Now()}))
	nonce := res.header.Get("DPoP-Nonce")
	if body := res.json(t); res.status != 400 || body["error"] != issuance.CodeUseDPoPNonce || nonce == "" {
		t.Fatalf("no nonce: %d %s %q", res.status, res.body, nonce)
	}
	res = b.postDPoP("/t/acme/oauth2/token", form, "svc", secret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: b.url("/t/acme/oauth2/token"), IAT: a.clock.Now(), Nonce: nonce}))
	if res.status != 200 {
		t.Fatalf("nonce from node a at node b: %d %s", res.status, res.body)
	}
	a.clock.Advance(5 * time.Minute)
	res = a.postDPoP("/t/acme/oauth2/token", form, "svc", secret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: a.url("/t/acme/oauth2/token"), IAT: a.clock.Now(), Nonce: nonce}))
	if res.status != 400 || res.json(t)["error"] != issuance.CodeUseDPoPNonce || res.header.Get("DPoP-Nonce") == nonce {
		t.Fatalf("expired nonce: %d %s", res.status, res.body)
	}
}

func mustClient(t *testing.T, e *env, tenant, id string) issuance.Client {
	t.Helper()
	c, err := e.st.Client(bg, tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDPoPRefreshBinding: a public client's refresh token bound to a DPoP
// key refreshes only with a proof of that key (RFC 9449 §5); the
// successor stays bound; the access token works at userinfo only with the
// DPoP scheme and a proof with the right ath and key.
func TestDPoPRefreshBinding(t *testing.T) {
	e, _ := newFlowTestEnv(t)
	k, other := dpoptest.NewKey("ES256"), dpoptest.NewKey("ES256")
	rt, err := e.srv.NewBoundRefreshTokenForTest("t", "AAAAAAAAAAAAAAAAAAAAAA", 1, k.JKT())
	if err != nil {
		t.Fatal(err)
	}
	htu := e.url("/t/t/oauth2/token")
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"pub"}}
	for name, proofs := range map[string][]string{
		"no proof":  nil,
		"other key": {other.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: e.clock.Now()})},
	} {
		res := e.postDPoP("/t/t/oauth2/token", form, "", "", proofs...)
		if res.status != 400 || res.json(t)["error"] != "invalid_grant" {
			t.Fatalf("%s: %d %s", name, res.status, res.body)
		}
	}
	res := e.postDPoP("/t/t/oauth2/token", form, "", "", k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: e.clock.Now()}))
	if res.status != 200 {
		t.Fatalf("right key: %d %s", res.status, res.body)
	}
	body := res.json(t)
	if body["token_type"] != "DPoP" {
		t.Fatalf("token_type %v", body["token_type"])
	}
	if jkt, ok := e.srv.RefreshTokenJKTForTest("t", body["refresh_token"].(string)); !ok || jkt != k.JKT() {
		t.Fatalf("successor bound to %q %v", jkt, ok)
	}
	at := body["access_token"].(string)

	// Userinfo (RFC 9449 §7).
	ui := e.url("/t/t/oauth2/userinfo")
	get := func(scheme string, proofs ...string) response {
		req, _ := http.NewRequest(http.MethodGet, ui, nil)
		req.Header.Set("Authorization", scheme+" "+at)
		for _, p := range proofs {
			req.Header.Add("DPoP", p)
		}
		return e.do(req)
	}
	now := e.clock.Now()
	if r := get("DPoP", k.Proof(dpoptest.Claims{HTM: "GET", HTU: ui, IAT: now, AccessToken: at})); r.status != 200 {
		t.Fatalf("userinfo with proof: %d %s", r.status, r.body)
	}
	for name, r := range map[string]response{
		"bearer scheme": get("Bearer"),
		"no proof":      get("DPoP"),
		"missing ath":   get("DPoP", k.Proof(dpoptest.Claims{HTM: "GET", HTU: ui, IAT: now})),
		"other key":     get("DPoP", other.Proof(dpoptest.Claims{HTM: "GET", HTU: ui, IAT: now, AccessToken: at})),
		"wrong htm":     get("DPoP", k.Proof(dpoptest.Claims{HTM: "POST", HTU: ui, IAT: now, AccessToken: at})),
	} {
		if r.status != 401 || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "DPoP ") {
			t.Errorf("%s: %d %q %s", name, r.status, r.header.Get("WWW-Authenticate"), r.body)
		}
	}
	// Revoking the bound refresh token needs no proof (RFC 7009).
	if r := e.postForm("/t/t/oauth2/revoke", url.Values{"token": {rt}, "client_id": {"pub"}}, "", ""); r.status != 200 {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
}
