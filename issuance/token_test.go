package issuance_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tallyauth/tally/issuance"
)

// atClaims are the RFC 9068 claims as a third-party verifier sees them.
type atClaims struct {
	josejwt.Claims
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
}

// verifyWithJWKS verifies tok with go-jose against the JWKS the server
// publishes for tenant, as a resource server would.
func (e *env) verifyWithJWKS(tenant, tok string) (atClaims, *josejwt.JSONWebToken, error) {
	e.t.Helper()
	res := e.get("/t/" + tenant + "/jwks.json")
	if res.status != http.StatusOK {
		e.t.Fatalf("jwks: %d %s", res.status, res.body)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(res.body, &set); err != nil {
		e.t.Fatalf("jwks: %v", err)
	}
	parsed, err := josejwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256})
	if err != nil {
		return atClaims{}, nil, err
	}
	var c atClaims
	if err := parsed.Claims(set, &c); err != nil {
		return atClaims{}, parsed, err
	}
	return c, parsed, nil
}

func TestClientCredentialsWithOAuth2Client(t *testing.T) {
	e := newEnv(t)
	for _, alg := range []string{issuance.AlgES256, issuance.AlgEdDSA, issuance.AlgRS256} {
		tenant := "t-" + strings.ToLower(alg)
		sig, _ := e.addTenant(tenant, alg)
		secret := e.addClient(tenant, "svc", func(c *issuance.Client) {
			c.Audiences = []string{"https://api.example.com"}
		})
		for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
			t.Run(fmt.Sprintf("%s/style%d", alg, style), func(t *testing.T) {
				cfg := clientcredentials.Config{
					ClientID:     "svc",
					ClientSecret: secret,
					TokenURL:     e.url("/t/" + tenant + "/oauth2/token"),
					Scopes:       []string{"read"},
					AuthStyle:    style,
				}
				ctx := context.WithValue(bg, oauth2.HTTPClient, e.ts.Client())
				tok, err := cfg.Token(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if tok.TokenType != "Bearer" {
					t.Errorf("token_type %q", tok.TokenType)
				}
				if tok.RefreshToken != "" {
					t.Error("client credentials grant issued a refresh token (RFC 6749 §4.4.3)")
				}
				if got := tok.Extra("scope"); got != "read" {
					t.Errorf("scope %v", got)
				}
				if ttl := time.Until(tok.Expiry); ttl < issuance.DefaultAccessTokenTTL-time.Minute || ttl > issuance.DefaultAccessTokenTTL+time.Minute {
					t.Errorf("expires in %v, want about %v", ttl, issuance.DefaultAccessTokenTTL)
				}

				claims, parsed, err := e.verifyWithJWKS(tenant, tok.AccessToken)
				if err != nil {
					t.Fatalf("go-jose verification: %v", err)
				}
				h := parsed.Headers[0]
				if h.KeyID != sig.ID || h.Algorithm != alg || h.ExtraHeaders[jose.HeaderType] != "at+jwt" {
					t.Errorf("header kid=%q alg=%q typ=%v", h.KeyID, h.Algorithm, h.ExtraHeaders[jose.HeaderType])
				}
				err = claims.Validate(josejwt.Expected{
					Issuer:      e.srv.Issuer(tenant),
					Subject:     "svc",
					AnyAudience: josejwt.Audience{"https://api.example.com"},
					Time:        e.clock.Now(),
				})
				if err != nil {
					t.Error(err)
				}
				if claims.ClientID != "svc" || claims.Scope != "read" || len(claims.ID) < 22 || claims.IssuedAt == nil {
					t.Errorf("claims %+v", claims)
				}
			})
		}
	}
	if calls := e.rv.Calls(); len(calls) != 0 {
		t.Errorf("issuing tokens wrote %d revocations", len(calls))
	}
}

func TestTokenResponse(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	aud2 := e.addClient("acme", "two", func(c *issuance.Client) {
		c.Audiences = []string{"https://a.example", "https://b.example"}
		c.AccessTokenTTL = 5 * time.Minute
	})

	res := e.postForm("/t/acme/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", secret)
	if res.status != http.StatusOK {
		t.Fatalf("%d %s", res.status, res.body)
	}
	for k, want := range map[string]string{"Cache-Control": "no-store", "Pragma": "no-cache", "Content-Type": "application/json"} {
		if got := res.header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	m := res.json(t)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"access_token", "expires_in", "scope", "token_type"}) {
		t.Errorf("response fields %v", keys)
	}
	if m["token_type"] != "Bearer" || m["expires_in"] != issuance.DefaultAccessTokenTTL.Seconds() || m["scope"] != "read write" {
		t.Errorf("response %s", res.body)
	}

	// No audience configured: the tenant issuer is the audience.
	claims, _, err := e.verifyWithJWKS("acme", m["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(claims.Audience, josejwt.Audience{e.srv.Issuer("acme")}) {
		t.Errorf("aud %v, want the issuer", claims.Audience)
	}

	// Several audiences: an array; the client's own TTL.
	tok := e.token("acme", "two", aud2, nil)
	claims, _, err = e.verifyWithJWKS("acme", tok)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(claims.Audience, josejwt.Audience{"https://a.example", "https://b.example"}) {
		t.Errorf("aud %v", claims.Audience)
	}
	if got := claims.Expiry.Time().Sub(claims.IssuedAt.Time()); got != 5*time.Minute {
		t.Errorf("lifetime %v, want 5m", got)
	}
	// One resource narrows the audience, and "aud" becomes a string.
	tok = e.token("acme", "two", aud2, url.Values{"resource": {"https://b.example", "https://b.example"}})
	payload := decodeSegment(t, strings.Split(tok, ".")[1])
	if !strings.Contains(payload, `"aud":"https://b.example"`) {
		t.Errorf("single audience is not a string: %s", payload)
	}
	// Requested scope narrows; duplicates collapse.
	tok = e.token("acme", "svc", secret, url.Values{"scope": {"write write"}})
	claims, _, _ = e.verifyWithJWKS("acme", tok)
	if claims.Scope != "write" {
		t.Errorf("scope %q", claims.Scope)
	}
	// An empty scope parameter is an omitted one (RFC 6749 §3.1).
	tok = e.token("acme", "svc", secret, url.Values{"scope": {""}})
	claims, _, _ = e.verifyWithJWKS("acme", tok)
	if claims.Scope != "read write" {
		t.Errorf("scope %q", claims.Scope)
	}
	if n := len(e.rv.Calls()); n != 0 {
		t.Errorf("issuance wrote %d revocations", n)
	}
}

func decodeSegment(t *testing.T, seg string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestOpaqueToken(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgEdDSA)
	secret := e.addClient("acme", "svc", func(c *issuance.Client) { c.TokenFormat = issuance.FormatOpaque })
	tok := e.token("acme", "svc", secret, url.Values{"scope": {"read"}})
	if !strings.HasPrefix(tok, "tly1.") || strings.Count(tok, ".") != 2 {
		t.Fatalf("opaque token %q", tok)
	}
	if _, _, err := e.verifyWithJWKS("acme", tok); err == nil {
		t.Fatal("opaque token parsed as a JWT")
	}
	m := e.introspect("acme", "svc", secret, tok)
	if m["active"] != true || m["scope"] != "read" || m["client_id"] != "svc" || m["sub"] != "svc" ||
		m["iss"] != e.srv.Issuer("acme") || m["aud"] != e.srv.Issuer("acme") || m["token_type"] != "Bearer" {
		t.Errorf("introspection %v", m)
	}
	info, err := e.srv.Inspect(bg, "acme", tok)
	if err != nil || info.ClientID != "svc" || info.Format != issuance.FormatOpaque || info.JTI != m["jti"] {
		t.Errorf("Inspect = %+v, %v", info, err)
	}
	if n := len(e.rv.Calls()); n != 0 {
		t.Errorf("issuance wrote %d revocations", n)
	}
}

// tokenCase is one request to the token endpoint and the error it must get.
type tokenCase struct {
	name    string
	method  string
	path    string // default /t/acme/oauth2/token
	ctype   []string
	body    string
	chunked bool
	header  map[string][]string
	status  int
	code    string
}

func TestTokenErrors(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	e.st.PutTenant(issuance.Tenant{ID: "off", Disabled: true})
	e.st.PutTenant(issuance.Tenant{ID: "nokeys"})
	secret := e.addClient("acme", "svc", func(c *issuance.Client) {
		c.Audiences = []string{"https://api.example.com"}
	})
	e.addClient("nokeys", "svc", func(c *issuance.Client) { c.Secrets[0].Hash = e.kek.HashSecret(secret) })
	e.addClient("acme", "off", func(c *issuance.Client) { c.Disabled = true; c.Secrets[0].Hash = e.kek.HashSecret(secret) })
	e.addClient("acme", "pub", func(c *issuance.Client) { c.Public = true; c.Secrets[0].Hash = e.kek.HashSecret(secret) })
	e.addClient("acme", "codeonly", func(c *issuance.Client) {
		c.GrantTypes = []string{issuance.GrantAuthorizationCode}
		c.Secrets[0].Hash = e.kek.HashSecret(secret)
	})
	e.addClient("acme", "stale", func(c *issuance.Client) {
		c.Secrets = []issuance.SecretHash{{Hash: e.kek.HashSecret(secret), ExpiresAt: e.clock.Now().Add(-time.Second)}}
	})
	auth := map[string][]string{"Authorization": {basic("svc", secret)}}
	withAuth := func(id string) map[string][]string { return map[string][]string{"Authorization": {basic(id, secret)}} }
	form := "application/x-www-form-urlencoded"
	cc := "grant_type=client_credentials"

	cases := []tokenCase{
		{name: "ok basic", body: cc, header: auth, status: 200},
		{name: "ok post", body: cc + "&client_id=svc&client_secret=" + secret, status: 200},
		{name: "ok charset parameter", ctype: []string{form + "; charset=UTF-8"}, body: cc, header: auth, status: 200},
		{name: "ok basic with same client_id", body: cc + "&client_id=svc", header: auth, status: 200},
		{name: "ok repeated resource", body: cc + "&resource=https://api.example.com&resource=https://api.example.com", header: auth, status: 200},
		{name: "ok unknown parameter ignored", body: cc + "&foo=bar", header: auth, status: 200},
		{name: "ok scheme case-insensitive", body: cc, header: map[string][]string{"Authorization": {"basic " + basic("svc", secret)[6:]}}, status: 200},

		{name: "unknown tenant", path: "/t/nope/oauth2/token", body: cc, header: auth, status: 404, code: "invalid_request"},
		{name: "disabled tenant", path: "/t/off/oauth2/token", body: cc, header: auth, status: 404, code: "invalid_request"},
		{name: "GET", method: "GET", body: cc, header: auth, status: 405, code: "invalid_request"},
		{name: "json body", ctype: []string{"application/json"}, body: `{"grant_type":"client_credentials"}`, header: auth, status: 400, code: "invalid_request"},
		{name: "no content type", ctype: []string{}, body: cc, header: auth, status: 400, code: "invalid_request"},
		{name: "two content types", ctype: []string{form, form}, body: cc, header: auth, status: 400, code: "invalid_request"},
		{name: "multipart", ctype: []string{"multipart/form-data; boundary=x"}, body: cc, header: auth, status: 400, code: "invalid_request"},
		{name: "body too large", body: cc + "&pad=" + strings.Repeat("a", 16<<10), header: auth, status: 400, code: "invalid_request"},
		{name: "body too large chunked", body: cc + "&pad=" + strings.Repeat("a", 16<<10), chunked: true, header: auth, status: 400, code: "invalid_request"},
		{name: "repeated grant_type", body: cc + "&" + cc, header: auth, status: 400, code: "invalid_request"},
		{name: "repeated scope", body: cc + "&scope=read&scope=write", header: auth, status: 400, code: "invalid_request"},
		{name: "repeated client_id", body: cc + "&client_id=svc&client_id=svc&client_secret=" + secret, status: 400, code: "invalid_request"},
		{name: "repeated unknown parameter", body: cc + "&x=1&x=2", header: auth, status: 400, code: "invalid_request"},
		{name: "semicolon separator", body: cc + ";scope=read", header: auth, status: 400, code: "invalid_request"},
		{name: "bad percent encoding", body: cc + "&scope=%zz", header: auth, status: 400, code: "invalid_request"},
		{name: "missing grant_type", body: "scope=read", header: auth, status: 400, code: "invalid_request"},
		{name: "empty grant_type", body: "grant_type=", header: auth, status: 400, code: "invalid_request"},
		{name: "unknown grant_type", body: "grant_type=password", header: auth, status: 400, code: "unsupported_grant_type"},
		{name: "not yet supported grant_type", body: "grant_type=authorization_code&code=x", header: auth, status: 400, code: "unsupported_grant_type"},
		{name: "basic and post at once", body: cc + "&client_secret=" + secret, header: auth, status: 400, code: "invalid_request"},
		{name: "basic and other client_id", body: cc + "&client_id=other", header: auth, status: 400, code: "invalid_request"},
		{name: "two Authorization headers", body: cc, header: map[string][]string{"Authorization": {basic("svc", secret), basic("svc", secret)}}, status: 400, code: "invalid_request"},
		{name: "secret in query", path: "/t/acme/oauth2/token?client_id=svc&client_secret=" + secret, body: cc, status: 400, code: "invalid_request"},
		{name: "no credentials", body: cc, status: 401, code: "invalid_client"},
		{name: "client_id only", body: cc + "&client_id=svc", status: 401, code: "invalid_client"},
		{name: "unknown client", body: cc, header: withAuth("ghost"), status: 401, code: "invalid_client"},
		{name: "wrong secret basic", body: cc, header: map[string][]string{"Authorization": {basic("svc", "wrong")}}, status: 401, code: "invalid_client"},
		{name: "wrong secret post", body: cc + "&client_id=svc&client_secret=wrong", status: 401, code: "invalid_client"},
		{name: "empty secret basic", body: cc, header: map[string][]string{"Authorization": {basic("svc", "")}}, status: 401, code: "invalid_client"},
		{name: "disabled client", body: cc, header: withAuth("off"), status: 401, code: "invalid_client"},
		{name: "public client", body: cc, header: withAuth("pub"), status: 401, code: "invalid_client"},
		{name: "expired secret", body: cc, header: withAuth("stale"), status: 401, code: "invalid_client"},
		{name: "client of another tenant", path: "/t/nokeys/oauth2/token", body: cc, header: withAuth("off"), status: 401, code: "invalid_client"},
		{name: "bearer scheme", body: cc, header: map[string][]string{"Authorization": {"Bearer abc"}}, status: 401, code: "invalid_client"},
		{name: "basic not base64", body: cc, header: map[string][]string{"Authorization": {"Basic !!!"}}, status: 401, code: "invalid_client"},
		{name: "basic without colon", body: cc, header: map[string][]string{"Authorization": {"Basic c3Zj"}}, status: 401, code: "invalid_client"},
		{name: "basic bad escape", body: cc, header: map[string][]string{"Authorization": {"Basic JXp6OnNlY3JldA=="}}, status: 401, code: "invalid_client"},
		{name: "grant not allowed", body: cc, header: withAuth("codeonly"), status: 400, code: "unauthorized_client"},
		{name: "scope not allowed", body: cc + "&scope=read+admin", header: auth, status: 400, code: "invalid_scope"},
		{name: "malformed scope", body: cc + "&scope=read++write", header: auth, status: 400, code: "invalid_scope"},
		{name: "scope with quote", body: cc + "&scope=re%22ad", header: auth, status: 400, code: "invalid_scope"},
		{name: "resource not an audience", body: cc + "&resource=https://evil.example", header: auth, status: 400, code: "invalid_target"},
		{name: "resource relative", body: cc + "&resource=/api", header: auth, status: 400, code: "invalid_target"},
		{name: "resource with fragment", body: cc + "&resource=https://api.example.com%23x", header: auth, status: 400, code: "invalid_target"},
		{name: "tenant without keys", path: "/t/nokeys/oauth2/token", body: cc, header: auth, status: 503, code: "temporarily_unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := e.doTokenCase(tc)
			checkProtocolResponse(t, e, res, tc.status, tc.code)
			if tc.status == 405 && res.header.Get("Allow") != "POST" {
				t.Errorf("Allow %q, want POST", res.header.Get("Allow"))
			}
		})
	}
	if n := len(e.rv.Calls()); n != 0 {
		t.Errorf("token endpoint wrote %d revocations", n)
	}
}

func (e *env) doTokenCase(tc tokenCase) response {
	e.t.Helper()
	method := tc.method
	if method == "" {
		method = http.MethodPost
	}
	path := tc.path
	if path == "" {
		path = "/t/acme/oauth2/token"
	}
	var body io.Reader = strings.NewReader(tc.body)
	if tc.chunked {
		body = io.MultiReader(strings.NewReader(tc.body)) // unknown length: chunked
	}
	req, err := http.NewRequest(method, e.url(path), body)
	if err != nil {
		e.t.Fatal(err)
	}
	if tc.chunked && req.ContentLength != 0 {
		e.t.Fatal("request is not chunked")
	}
	if tc.ctype == nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		for _, v := range tc.ctype {
			req.Header.Add("Content-Type", v)
		}
	}
	for k, vs := range tc.header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	return e.do(req)
}

// checkProtocolResponse asserts status and, for errors, the RFC 6749 §5.2
// error shape: JSON with the code, a description of allowed characters,
// Cache-Control: no-store, and on 401 a Basic challenge naming the issuer.
func checkProtocolResponse(t *testing.T, e *env, res response, status int, code string) {
	t.Helper()
	if res.status != status {
		t.Fatalf("status %d, want %d: %s", res.status, status, res.body)
	}
	if status == http.StatusOK {
		return
	}
	if got := res.header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", got)
	}
	if got := res.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	var body struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.Unmarshal(res.body, &body); err != nil {
		t.Fatalf("error body %q: %v", res.body, err)
	}
	if body.Error != code {
		t.Errorf("error %q, want %q (%s)", body.Error, code, body.Description)
	}
	for _, c := range []byte(body.Description) {
		if c < 0x20 || c == 0x22 || c == 0x5c || c > 0x7e {
			t.Errorf("error_description %q has a character RFC 6749 §5.2 forbids", body.Description)
			break
		}
	}
	challenge := res.header.Get("WWW-Authenticate")
	if status == http.StatusUnauthorized {
		if !strings.HasPrefix(challenge, `Basic realm="`+e.base+"/t/") {
			t.Errorf("WWW-Authenticate %q", challenge)
		}
	} else if challenge != "" {
		t.Errorf("WWW-Authenticate %q on a %d", challenge, status)
	}
}

func TestNoStateErrorsLeakAs500(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	e.st.FailWith(errors.New("replica unavailable"))
	for _, path := range []string{"/t/acme/oauth2/token", "/t/acme/oauth2/introspect", "/t/acme/oauth2/revoke"} {
		res := e.postForm(path, url.Values{"grant_type": {"client_credentials"}, "token": {"x"}}, "svc", secret)
		checkProtocolResponse(t, e, res, http.StatusServiceUnavailable, "temporarily_unavailable")
		if strings.Contains(string(res.body), "replica") {
			t.Errorf("%s: debug detail reached the wire: %s", path, res.body)
		}
	}
	res := e.get("/t/acme/jwks.json")
	checkProtocolResponse(t, e, res, http.StatusServiceUnavailable, "temporarily_unavailable")
}

// TestSpecialCharacterCredentials: client_secret_basic form-urlencodes id and
// secret inside Basic (RFC 6749 §2.3.1); both styles of x/oauth2 work with
// characters that need it.
func TestSpecialCharacterCredentials(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgEdDSA)
	const id, secret = "svc:1 x+y%", "p@ss:w+rd %x/é"
	e.addClient("acme", id, func(c *issuance.Client) { c.Secrets[0].Hash = e.kek.HashSecret(secret) })
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		cfg := clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: e.url("/t/acme/oauth2/token"), AuthStyle: style}
		tok, err := cfg.Token(context.WithValue(bg, oauth2.HTTPClient, e.ts.Client()))
		if err != nil {
			t.Fatalf("style %d: %v", style, err)
		}
		claims, _, err := e.verifyWithJWKS("acme", tok.AccessToken)
		if err != nil || claims.ClientID != id || claims.Subject != id {
			t.Errorf("style %d: claims %+v, %v", style, claims, err)
		}
	}
}

func TestClientCredentialsRedacted(t *testing.T) {
	cc := issuance.ClientCredentials{Method: issuance.AuthMethodClientSecretBasic, ID: "svc", Secret: "hunter2"}
	var buf strings.Builder
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "cc", cc)
	for _, s := range []string{fmt.Sprint(cc), fmt.Sprintf("%v %+v %s %#v", cc, cc, cc, cc), buf.String()} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("secret printed: %s", s)
		}
		if !strings.Contains(s, "svc") {
			t.Errorf("client id not printed: %s", s)
		}
	}
}
