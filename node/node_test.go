package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/nodetest"
)

var signatureAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256}

// fetchJWKS reads a tenant's JWKS with go-jose, independent of our code.
func fetchJWKS(t *testing.T, issuer string) jose.JSONWebKeySet {
	t.Helper()
	resp, err := http.Get(issuer + "/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("JWKS: status %d", resp.StatusCode)
	}
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "max-age=") {
		t.Errorf("JWKS Cache-Control = %q, want a max-age", cc)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	return set
}

// verifyJWT checks an access token against a JWKS with go-jose and returns
// its claims, or an error.
func verifyJWT(token string, set jose.JSONWebKeySet, issuer string) (map[string]any, error) {
	tok, err := josejwt.ParseSigned(token, signatureAlgs)
	if err != nil {
		return nil, err
	}
	if len(tok.Headers) != 1 {
		return nil, errors.New("want one signature")
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders["typ"].(string); typ != "at+jwt" {
		return nil, errors.New("typ is not at+jwt")
	}
	keys := set.Key(h.KeyID)
	if len(keys) != 1 {
		return nil, errors.New("kid not in JWKS")
	}
	var std josejwt.Claims
	var all map[string]any
	if err := tok.Claims(keys[0].Key, &std, &all); err != nil {
		return nil, err
	}
	if err := std.ValidateWithLeeway(josejwt.Expected{Issuer: issuer, Time: time.Now()}, time.Minute); err != nil {
		return nil, err
	}
	return all, nil
}

func introspect(t *testing.T, issuer, id, secret, token string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, issuer+"/oauth2/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("introspect: status %d: %s", resp.StatusCode, b)
	}
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func postForm(t *testing.T, u, id, secret string, form url.Values) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if id != "" {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s: non-JSON body %q", u, b)
		}
	}
	return resp.StatusCode, out, resp.Header
}

func token(t *testing.T, issuer, id, secret string, style oauth2.AuthStyle, scopes ...string) *oauth2.Token {
	t.Helper()
	cc := clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: issuer + "/oauth2/token", Scopes: scopes, AuthStyle: style}
	tok, err := cc.Token(context.Background())
	if err != nil {
		t.Fatalf("client credentials token: %v", err)
	}
	return tok
}

func TestClientCredentialsEndToEnd(t *testing.T) {
	n := nodetest.Start(t)
	issuer := n.Issuer("default")
	if want := n.BaseURL() + "/t/default"; issuer != want {
		t.Fatalf("issuer = %q, want %q", issuer, want)
	}

	// Discovery, both RFC 8414 (path insertion) and OIDC.
	for _, u := range []string{
		n.BaseURL() + "/.well-known/oauth-authorization-server/t/default",
		issuer + "/.well-known/openid-configuration",
	} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		var md map[string]any
		json.NewDecoder(resp.Body).Decode(&md)
		resp.Body.Close()
		if md["issuer"] != issuer || md["token_endpoint"] != issuer+"/oauth2/token" || md["jwks_uri"] == nil {
			t.Errorf("%s: metadata %v", u, md)
		}
	}

	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "billing", GrantTypes: []string{"client_credentials"},
		Scopes: []string{"read:orders", "write:orders"},
	})
	rs, rsSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "orders-api", Scopes: []string{"introspect"}})

	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		tok := token(t, issuer, id, secret, style, "read:orders")
		claims, err := verifyJWT(tok.AccessToken, fetchJWKS(t, issuer), issuer)
		if err != nil {
			t.Fatalf("go-jose does not verify our token: %v", err)
		}
		if claims["client_id"] != id || claims["sub"] != id || claims["scope"] != "read:orders" || claims["jti"] == "" {
			t.Errorf("claims = %v", claims)
		}
		if exp := time.Until(tok.Expiry); exp < 9*time.Minute || exp > 10*time.Minute+time.Second {
			t.Errorf("expires in %s, want the default 10m", exp)
		}
	}

	// Introspection by another client, revocation by the owner, then
	// introspection says inactive.
	tok := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	if got := introspect(t, issuer, rs, rsSecret, tok.AccessToken); got["active"] != true || got["scope"] != "read:orders write:orders" {
		t.Fatalf("introspection of a fresh token = %v", got)
	}
	if code, body, _ := postForm(t, issuer+"/oauth2/revoke", id, secret, url.Values{"token": {tok.AccessToken}}); code != http.StatusOK {
		t.Fatalf("revoke: %d %v", code, body)
	}
	if got := introspect(t, issuer, rs, rsSecret, tok.AccessToken); got["active"] != false || len(got) != 1 {
		t.Fatalf("introspection after revocation = %v, want exactly {active:false}", got)
	}

	// Bad input gets the RFC's error, never a 500.
	for _, c := range []struct {
		name            string
		id, secret      string
		form            url.Values
		status          int
		code            string
		wwwAuthenticate bool
	}{
		{"wrong secret", id, "nope", url.Values{"grant_type": {"client_credentials"}}, 401, "invalid_client", true},
		{"unknown client", "ghost", secret, url.Values{"grant_type": {"client_credentials"}}, 401, "invalid_client", true},
		{"unknown grant", id, secret, url.Values{"grant_type": {"password"}}, 400, "unsupported_grant_type", false},
		{"missing grant", id, secret, url.Values{}, 400, "invalid_request", false},
		{"repeated grant", id, secret, url.Values{"grant_type": {"client_credentials", "client_credentials"}}, 400, "invalid_request", false},
		{"scope not allowed", id, secret, url.Values{"grant_type": {"client_credentials"}, "scope": {"admin:all"}}, 400, "invalid_scope", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body, h := postForm(t, issuer+"/oauth2/token", c.id, c.secret, c.form)
			if code != c.status || body["error"] != c.code {
				t.Fatalf("got %d %v, want %d %s", code, body, c.status, c.code)
			}
			if c.wwwAuthenticate && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("WWW-Authenticate = %q", h.Get("WWW-Authenticate"))
			}
			if h.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control = %q", h.Get("Cache-Control"))
			}
		})
	}
}

func TestOpaqueTokensAndAdminRevocation(t *testing.T) {
	n := nodetest.Start(t)
	issuer := n.Issuer("default")
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "ext", Scopes: []string{"read:orders"}, TokenFormat: "opaque", AccessTokenTtlSeconds: 120})
	tok := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	if strings.Count(tok.AccessToken, ".") == 2 {
		if _, err := josejwt.ParseSigned(tok.AccessToken, signatureAlgs); err == nil {
			t.Fatal("an opaque client got a JWT")
		}
	}
	got := introspect(t, issuer, id, secret, tok.AccessToken)
	if got["active"] != true || got["client_id"] != id || got["iss"] != issuer {
		t.Fatalf("introspection = %v", got)
	}
	resp, err := n.Admin.RevokeToken(context.Background(), connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Token: tok.AccessToken, Reason: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.Revocation.ClientId != id || resp.Msg.Revocation.ExpiresAt.AsTime().Before(time.Now().Add(time.Minute)) {
		t.Errorf("revocation = %v", resp.Msg.Revocation)
	}
	if got := introspect(t, issuer, id, secret, tok.AccessToken); got["active"] != false {
		t.Fatalf("introspection after admin revocation = %v", got)
	}
	list, err := n.Admin.ListRevocations(context.Background(), connect.NewRequest(&adminv1.ListRevocationsRequest{Tenant: "default"}))
	if err != nil || len(list.Msg.Revocations) != 1 {
		t.Fatalf("revocations = %v, %v", list, err)
	}
	// By jti, with expiry.
	_, err = n.Admin.RevokeToken(context.Background(), connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Jti: "abc", ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.Admin.RevokeToken(context.Background(), connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Jti: "abc"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("revoke by jti without expiry: %v, want InvalidArgument", err)
	}
}

func TestTenantIsolation(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	if _, err := n.Admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: "acme", SigningAlg: "EdDSA"})); err != nil {
		t.Fatal(err)
	}
	a, b := n.Issuer("acme"), n.Issuer("default")
	for _, format := range []string{"jwt", "opaque"} {
		aid, asec := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "acme", Name: "a", Scopes: []string{"read:orders"}, TokenFormat: format})
		bid, bsec := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "b", Scopes: []string{"read:orders"}, TokenFormat: format})
		tok := token(t, a, aid, asec, oauth2.AuthStyleInHeader)
		if got := introspect(t, a, aid, asec, tok.AccessToken); got["active"] != true {
			t.Fatalf("%s: own tenant says %v", format, got)
		}
		if got := introspect(t, b, bid, bsec, tok.AccessToken); got["active"] != false {
			t.Fatalf("%s: tenant default says a token of acme is %v", format, got)
		}
		if format == "jwt" {
			if _, err := verifyJWT(tok.AccessToken, fetchJWKS(t, b), a); err == nil {
				t.Fatal("a token of acme verifies against default's JWKS")
			}
			if _, err := verifyJWT(tok.AccessToken, fetchJWKS(t, a), a); err != nil {
				t.Fatalf("acme's token does not verify with acme's JWKS: %v", err)
			}
		}
		// A client of acme cannot authenticate at default.
		if code, body, _ := postForm(t, b+"/oauth2/token", aid, asec, url.Values{"grant_type": {"client_credentials"}}); code != 401 {
			t.Fatalf("cross-tenant client auth: %d %v", code, body)
		}
	}
}

func TestRestartKeepsClientsKeysAndRevocations(t *testing.T) {
	n := nodetest.Start(t)
	issuer := n.Issuer("default")
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "c", Scopes: []string{"read:orders"}})
	kept := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	revoked := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	if code, _, _ := postForm(t, issuer+"/oauth2/revoke", id, secret, url.Values{"token": {revoked.AccessToken}}); code != 200 {
		t.Fatal("revoke failed")
	}
	jwksBefore := fetchJWKS(t, issuer)

	m := n.Restart(t)
	issuer2 := m.Issuer("default")
	// The base URL changes with the new port; tokens name the old issuer, so
	// check keys and state, not iss.
	jwksAfter := fetchJWKS(t, issuer2)
	if len(jwksAfter.Keys) != len(jwksBefore.Keys) || jwksAfter.Keys[0].KeyID != jwksBefore.Keys[0].KeyID {
		t.Fatalf("keys changed across restart: %v vs %v", jwksBefore.Keys, jwksAfter.Keys)
	}
	if _, err := verifyJWT(kept.AccessToken, jwksAfter, issuer); err != nil {
		t.Fatalf("a token from before the restart no longer verifies: %v", err)
	}
	// The client and its secret survived: it gets a new token.
	fresh := token(t, issuer2, id, secret, oauth2.AuthStyleInHeader)
	if got := introspect(t, issuer2, id, secret, fresh.AccessToken); got["active"] != true {
		t.Fatalf("fresh token after restart: %v", got)
	}
	list, err := m.Admin.ListRevocations(context.Background(), connect.NewRequest(&adminv1.ListRevocationsRequest{Tenant: "default"}))
	if err != nil || len(list.Msg.Revocations) != 1 {
		t.Fatalf("revocations after restart = %v, %v", list, err)
	}
}

func TestSecretRotationAndDisable(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	issuer := n.Issuer("default")
	id, old := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "c", Scopes: []string{"read:orders"}})
	ccForm := url.Values{"grant_type": {"client_credentials"}}

	rot, err := n.Admin.RotateClientSecret(ctx, connect.NewRequest(&adminv1.RotateClientSecretRequest{Tenant: "default", ClientId: id, OverlapSeconds: 3600}))
	if err != nil {
		t.Fatal(err)
	}
	if rot.Msg.Client.ActiveSecrets != 2 || rot.Msg.Client.PreviousSecretExpiresAt == nil {
		t.Errorf("after rotation with overlap: %v", rot.Msg.Client)
	}
	for _, s := range []string{old, rot.Msg.ClientSecret} {
		if code, body, _ := postForm(t, issuer+"/oauth2/token", id, s, ccForm); code != 200 {
			t.Fatalf("secret during overlap: %d %v", code, body)
		}
	}
	rot2, err := n.Admin.RotateClientSecret(ctx, connect.NewRequest(&adminv1.RotateClientSecretRequest{Tenant: "default", ClientId: id}))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{old, rot.Msg.ClientSecret} {
		if code, _, _ := postForm(t, issuer+"/oauth2/token", id, s, ccForm); code != 401 {
			t.Fatalf("rotated-out secret still works: %d", code)
		}
	}
	if code, _, _ := postForm(t, issuer+"/oauth2/token", id, rot2.Msg.ClientSecret, ccForm); code != 200 {
		t.Fatal("new secret does not work")
	}
	if _, err := n.Admin.DisableClient(ctx, connect.NewRequest(&adminv1.DisableClientRequest{Tenant: "default", ClientId: id})); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := postForm(t, issuer+"/oauth2/token", id, rot2.Msg.ClientSecret, ccForm); code != 401 || body["error"] != "invalid_client" {
		t.Fatalf("disabled client: %d %v", code, body)
	}
}

func TestKeyRotation(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	issuer := n.Issuer("default")
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "c", Scopes: []string{"read:orders"}})
	before := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)

	// Published before it signs: with a publish delay the JWKS grows but
	// tokens keep the old kid.
	delay := int64(3600)
	pending, err := n.Admin.RotateKeys(ctx, connect.NewRequest(&adminv1.RotateKeysRequest{Tenant: "default", PublishDelaySeconds: &delay}))
	if err != nil {
		t.Fatal(err)
	}
	var pendingKid string
	for _, k := range pending.Msg.Keys {
		if k.Use == "sig" {
			pendingKid = k.Kid
			if k.State != "pending" {
				t.Errorf("new key state %q, want pending", k.State)
			}
		}
	}
	set := fetchJWKS(t, issuer)
	if len(set.Key(pendingKid)) != 1 {
		t.Fatal("a pending key is not in the JWKS")
	}
	mid := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	if kidOf(t, mid.AccessToken) == pendingKid {
		t.Fatal("a pending key signed a token")
	}

	// Immediate rotation: the new key signs, old tokens still verify.
	zero := int64(0)
	now, err := n.Admin.RotateKeys(ctx, connect.NewRequest(&adminv1.RotateKeysRequest{Tenant: "default", PublishDelaySeconds: &zero}))
	if err != nil {
		t.Fatal(err)
	}
	var activeKid string
	for _, k := range now.Msg.Keys {
		if k.Use == "sig" {
			activeKid = k.Kid
		}
	}
	after := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	if got := kidOf(t, after.AccessToken); got != activeKid {
		t.Fatalf("after rotation tokens are signed by %s, want %s", got, activeKid)
	}
	set = fetchJWKS(t, issuer)
	for _, tok := range []string{before.AccessToken, mid.AccessToken, after.AccessToken} {
		if _, err := verifyJWT(tok, set, issuer); err != nil {
			t.Fatalf("token no longer verifies after rotation: %v", err)
		}
	}
	keys, err := n.Admin.ListKeys(ctx, connect.NewRequest(&adminv1.ListKeysRequest{Tenant: "default"}))
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]int{}
	for _, k := range keys.Msg.Keys {
		states[k.Use+"/"+k.State]++
	}
	if states["sig/active"] != 1 || states["sig/retired"] != 2 {
		t.Errorf("key states = %v", states)
	}
}

func kidOf(t *testing.T, token string) string {
	t.Helper()
	tok, err := josejwt.ParseSigned(token, signatureAlgs)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Headers[0].KeyID
}

func TestAdminNeedsCredential(t *testing.T) {
	n := nodetest.Start(t)
	for _, tok := range []string{"", "wrong-token-wrong-token"} {
		c := adminv1connect.NewAdminServiceClient(http.DefaultClient, n.BaseURL(), connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				if tok != "" {
					req.Header().Set("Authorization", "Bearer "+tok)
				}
				return next(ctx, req)
			}
		})))
		_, err := c.ListTenants(context.Background(), connect.NewRequest(&adminv1.ListTenantsRequest{}))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("token %q: %v, want Unauthenticated", tok, err)
		}
	}
	_, err := n.Admin.CreateClient(context.Background(), connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "x", AccessTokenTtlSeconds: 7200}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("ttl 2h: %v, want InvalidArgument", err)
	}
	_, err = n.Admin.CreateTenant(context.Background(), connect.NewRequest(&adminv1.CreateTenantRequest{Id: "default"}))
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("duplicate tenant: %v, want AlreadyExists", err)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	n := nodetest.Start(t)
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "c"})
	token(t, n.Issuer("default"), id, secret, oauth2.AuthStyleInHeader)
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": `"ready":true`, "/metrics": "tally_token_requests"} {
		resp, err := http.Get(n.BaseURL() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d, body lacks %q:\n%.500s", path, resp.StatusCode, want, b)
		}
	}
}
