package issuance_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/policy"
)

const ordersAud = "https://orders.example/"

// exchangeEnv: tenant "acme" with an API client "app" (opaque tokens, for
// ordersAud) and a gateway client "gw" allowed to exchange for ordersAud.
func exchangeEnv(t *testing.T, opts ...func(*issuance.Config)) (e *env, sig issuance.Key, appSecret, gwSecret string) {
	e = newEnv(t, opts...)
	sig, _ = e.addTenant("acme", issuance.AlgES256)
	appSecret = e.addClient("acme", "app", func(c *issuance.Client) {
		c.TokenFormat = issuance.FormatOpaque
		c.Scopes = []string{"read:orders", "write:orders", "admin"}
		c.Audiences = []string{ordersAud}
	})
	gwSecret = e.addClient("acme", "gw", func(c *issuance.Client) {
		c.GrantTypes = []string{issuance.GrantTokenExchange}
		c.Scopes = []string{"read:orders", "write:orders"}
		c.Audiences = []string{ordersAud, "https://billing.example/"}
	})
	return e, sig, appSecret, gwSecret
}

func (e *env) exchange(form url.Values, id, secret string) response {
	e.t.Helper()
	form.Set("grant_type", issuance.GrantTokenExchange)
	return e.postForm("/t/acme/oauth2/token", form, id, secret)
}

// verifyES256 checks the JWT's signature with go-jose (independent of the
// server's own verification) and returns its claims.
func verifyES256(t *testing.T, tok string, k issuance.Key) map[string]any {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if typ, _ := jws.Signatures[0].Header.ExtraHeaders["typ"].(string); typ != "at+jwt" {
		t.Errorf("typ %q", typ)
	}
	payload, err := jws.Verify(pub.(*ecdsa.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestExchangePhantomToken(t *testing.T) {
	e, sig, appSecret, gwSecret := exchangeEnv(t)
	// The subject token comes from x/oauth2's client credentials flow.
	cc := clientcredentials.Config{ClientID: "app", ClientSecret: appSecret, TokenURL: e.url("/t/acme/oauth2/token"),
		Scopes: []string{"read:orders", "admin"}, AuthStyle: oauth2.AuthStyleInHeader}
	st, err := cc.Token(context.WithValue(bg, oauth2.HTTPClient, e.ts.Client()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.AccessToken, "tly1.") {
		t.Fatalf("subject token is not opaque: %.10s…", st.AccessToken)
	}
	res := e.exchange(url.Values{"subject_token": {st.AccessToken}, "subject_token_type": {issuance.TokenTypeAccessToken},
		"audience": {ordersAud}}, "gw", gwSecret)
	if res.status != http.StatusOK {
		t.Fatalf("exchange: %d %s", res.status, res.body)
	}
	m := res.json(t)
	if m["issued_token_type"] != issuance.TokenTypeAccessToken || m["token_type"] != "Bearer" {
		t.Errorf("response %s", res.body)
	}
	if _, ok := m["refresh_token"]; ok {
		t.Error("exchange issued a refresh token")
	}
	claims := verifyES256(t, m["access_token"].(string), sig)
	if claims["aud"] != ordersAud || claims["sub"] != "app" || claims["client_id"] != "app" {
		t.Errorf("claims %v", claims)
	}
	// admin is outside the gateway client's scopes: narrowed away.
	if claims["scope"] != "read:orders" {
		t.Errorf("scope %v, want read:orders", claims["scope"])
	}
	if exp := int64(claims["exp"].(float64)); exp > st.Expiry.Unix()+1 {
		t.Errorf("derived token outlives its subject token: %d > %d", exp, st.Expiry.Unix())
	}
	parents, _ := claims["parent_jti"].([]any)
	if len(parents) != 1 {
		t.Fatalf("parent_jti %v", claims["parent_jti"])
	}
	derived := m["access_token"].(string)
	if got := e.introspect("acme", "gw", gwSecret, derived); got["active"] != true {
		t.Fatalf("derived token inactive: %v", got)
	}

	// Revoking the parent: the derived token is inactive and the parent
	// can no longer be exchanged.
	info, err := e.srv.Inspect(bg, "acme", st.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if parents[0] != info.JTI {
		t.Errorf("parent %v, want the subject token's jti", parents[0])
	}
	e.st.AddRevocation(issuance.Revocation{Tenant: "acme", JTI: info.JTI, ClientID: "app", ExpiresAt: info.ExpiresAt})
	if got := e.introspect("acme", "gw", gwSecret, derived); got["active"] != false {
		t.Errorf("derived token of a revoked parent is active: %v", got)
	}
	res = e.exchange(url.Values{"subject_token": {st.AccessToken}, "subject_token_type": {issuance.TokenTypeAccessToken},
		"audience": {ordersAud}}, "gw", gwSecret)
	if res.status != http.StatusBadRequest || res.json(t)["error"] != "invalid_request" {
		t.Errorf("exchange of a revoked token: %d %s", res.status, res.body)
	}
	// Nor can the derived one be exchanged again.
	res = e.exchange(url.Values{"subject_token": {derived}, "subject_token_type": {issuance.TokenTypeJWT},
		"audience": {ordersAud}}, "gw", gwSecret)
	if res.status != http.StatusBadRequest {
		t.Errorf("exchange of a derived token of a revoked parent: %d %s", res.status, res.body)
	}
}

func TestExchangeDelegation(t *testing.T) {
	e, sig, appSecret, gwSecret := exchangeEnv(t)
	subject := e.token("acme", "app", appSecret, url.Values{"scope": {"read:orders"}})
	svcSecret := e.addClient("acme", "svc", func(c *issuance.Client) { c.Scopes = []string{"read:orders"} })
	actor := e.token("acme", "svc", svcSecret, nil)

	res := e.exchange(url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken},
		"actor_token": {actor}, "actor_token_type": {issuance.TokenTypeAccessToken},
		"resource": {ordersAud}, "requested_token_type": {issuance.TokenTypeJWT}}, "gw", gwSecret)
	if res.status != http.StatusOK {
		t.Fatalf("delegation: %d %s", res.status, res.body)
	}
	m := res.json(t)
	if m["issued_token_type"] != issuance.TokenTypeJWT {
		t.Errorf("issued_token_type %v", m["issued_token_type"])
	}
	first := m["access_token"].(string)
	c := verifyES256(t, first, sig)
	act, _ := c["act"].(map[string]any)
	if c["sub"] != "app" || c["client_id"] != "gw" || act["sub"] != "svc" {
		t.Fatalf("claims %v", c)
	}
	// A second hop nests the first actor (RFC 8693 §4.1).
	ops := e.addClient("acme", "ops", func(c *issuance.Client) { c.Scopes = []string{"read:orders"} })
	res = e.exchange(url.Values{"subject_token": {first}, "subject_token_type": {issuance.TokenTypeJWT},
		"actor_token": {e.token("acme", "ops", ops, nil)}, "actor_token_type": {issuance.TokenTypeAccessToken},
		"audience": {ordersAud}}, "gw", gwSecret)
	if res.status != http.StatusOK {
		t.Fatalf("second hop: %d %s", res.status, res.body)
	}
	c = verifyES256(t, res.json(t)["access_token"].(string), sig)
	act, _ = c["act"].(map[string]any)
	inner, _ := act["act"].(map[string]any)
	if act["sub"] != "ops" || inner["sub"] != "svc" || c["sub"] != "app" {
		t.Errorf("chain %v", c)
	}
	if p, _ := c["parent_jti"].([]any); len(p) != 4 {
		t.Errorf("parent_jti %v: want subject, first actor, first token, second actor", p)
	}
}

func TestExchangeErrors(t *testing.T) {
	e, _, appSecret, gwSecret := exchangeEnv(t)
	subject := e.token("acme", "app", appSecret, nil)
	for name, tc := range map[string]struct {
		form   url.Values
		id     string
		secret string
		status int
		code   string
	}{
		"no subject_token":         {url.Values{"subject_token_type": {issuance.TokenTypeAccessToken}}, "gw", gwSecret, 400, "invalid_request"},
		"no subject_token_type":    {url.Values{"subject_token": {subject}}, "gw", gwSecret, 400, "invalid_request"},
		"unknown token type":       {url.Values{"subject_token": {subject}, "subject_token_type": {"urn:x"}}, "gw", gwSecret, 400, "invalid_request"},
		"garbage token":            {url.Values{"subject_token": {"abc"}, "subject_token_type": {issuance.TokenTypeAccessToken}}, "gw", gwSecret, 400, "invalid_request"},
		"refresh token requested":  {url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken}, "requested_token_type": {issuance.TokenTypeRefreshToken}}, "gw", gwSecret, 400, "invalid_request"},
		"audience not allowed":     {url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken}, "audience": {"https://evil.example/"}}, "gw", gwSecret, 400, "invalid_target"},
		"scope beyond subject":     {url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken}, "scope": {"root"}}, "gw", gwSecret, 400, "invalid_scope"},
		"actor type without actor": {url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken}, "actor_token_type": {issuance.TokenTypeAccessToken}}, "gw", gwSecret, 400, "invalid_request"},
		"client not allowed":       {url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken}}, "app", appSecret, 400, "unauthorized_client"},
		"wrong secret":             {url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken}}, "gw", "nope", 401, "invalid_client"},
		"jwt type for opaque":      {url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeJWT}}, "gw", gwSecret, 400, "invalid_request"},
	} {
		t.Run(name, func(t *testing.T) {
			res := e.exchange(tc.form, tc.id, tc.secret)
			if res.status != tc.status || res.json(t)["error"] != tc.code {
				t.Errorf("got %d %s, want %d %s", res.status, res.body, tc.status, tc.code)
			}
		})
	}
}

func TestExchangeMayAct(t *testing.T) {
	// may_act is honoured when the subject token carries it; tally's own
	// tokens carry none, so any actor is accepted here.
	e, _, appSecret, gwSecret := exchangeEnv(t)
	subject := e.token("acme", "app", appSecret, nil)
	e.clock.Advance(time.Second)
	res := e.exchange(url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken},
		"actor_token": {e.token("acme", "app", appSecret, nil)}, "actor_token_type": {issuance.TokenTypeAccessToken}}, "gw", gwSecret)
	if res.status != http.StatusOK {
		t.Fatalf("%d %s", res.status, res.body)
	}
}

// TestExchangeImpersonationByPolicy (issue 12): a token exchange with an
// actor_token is delegation (act names the actor) unless a policy says
// "impersonate": then the token has no act claim, but the actor token
// stays a parent (its revocation revokes the token); a deny still wins.
func TestExchangeImpersonationByPolicy(t *testing.T) {
	src := `actor == "svc" ? {"impersonate": true} : dyn({"allow": actor != "evil"})`
	e, sig, appSecret, gwSecret := exchangeEnv(t, func(c *issuance.Config) {
		c.Policy = policy.NewEngine(func(string) (uint64, []policy.Spec) { return 1, []policy.Spec{{Source: src}} }, nil)
	})
	subject := e.token("acme", "app", appSecret, url.Values{"scope": {"read:orders"}})
	exchange := func(actorID string) response {
		sec := e.addClient("acme", actorID, func(c *issuance.Client) { c.Scopes = []string{"read:orders"} })
		return e.exchange(url.Values{"subject_token": {subject}, "subject_token_type": {issuance.TokenTypeAccessToken},
			"actor_token": {e.token("acme", actorID, sec, nil)}, "actor_token_type": {issuance.TokenTypeAccessToken},
			"audience": {ordersAud}}, "gw", gwSecret)
	}
	res := exchange("svc")
	if res.status != http.StatusOK {
		t.Fatalf("impersonation allowed by policy: %d %s", res.status, res.body)
	}
	c := verifyES256(t, res.json(t)["access_token"].(string), sig)
	if _, ok := c["act"]; ok || c["sub"] != "app" || c["client_id"] != "gw" {
		t.Errorf("impersonation token claims %v: want sub app, client gw, no act", c)
	}
	if p, _ := c["parent_jti"].([]any); len(p) != 2 {
		t.Errorf("parent_jti %v: want the subject and the actor token", p)
	}
	res = exchange("batch")
	if res.status != http.StatusOK {
		t.Fatalf("delegation: %d %s", res.status, res.body)
	}
	c = verifyES256(t, res.json(t)["access_token"].(string), sig)
	if act, _ := c["act"].(map[string]any); act["sub"] != "batch" {
		t.Errorf("without the policy's impersonate the actor is in act: %v", c)
	}
	if res := exchange("evil"); res.status != http.StatusBadRequest || res.json(t)["error"] != "invalid_grant" {
		t.Errorf("denied actor: %d %s", res.status, res.body)
	}
}
