package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

const (
	alicePassword = "correct horse battery staple"
	callback      = "http://127.0.0.1:5999/callback"
)

// flowEnv is a node with a user and a public client for the end-user flows.
type flowEnv struct {
	n      *nodetest.Node
	issuer string
	conf   *oauth2.Config
	userID string
}

func newFlowEnv(t testing.TB, n *nodetest.Node, grants ...string) *flowEnv {
	t.Helper()
	ctx := context.Background()
	u, err := n.Admin.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{
		Tenant: "default", Username: "alice", Email: "alice@example.com", Name: "Alice A", Password: alicePassword, EmailVerified: true}))
	if err != nil && connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatal(err)
	}
	if len(grants) == 0 {
		grants = []string{"authorization_code", "refresh_token", "device_code"}
	}
	c, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "Web App", Public: true, GrantTypes: grants,
		Scopes: []string{"openid", "profile", "email", "offline_access"}, RedirectUris: []string{callback}}))
	if err != nil {
		t.Fatal(err)
	}
	iss := n.Issuer("default")
	e := &flowEnv{n: n, issuer: iss, conf: &oauth2.Config{
		ClientID: c.Msg.Client.ClientId,
		Endpoint: oauth2.Endpoint{AuthURL: iss + "/oauth2/authorize", TokenURL: iss + "/oauth2/token",
			DeviceAuthURL: iss + "/oauth2/device_authorization", AuthStyle: oauth2.AuthStyleInParams},
		RedirectURL: callback,
		Scopes:      []string{"openid", "profile", "email", "offline_access"},
	}}
	if u != nil {
		e.userID = u.Msg.User.UserId
	}
	return e
}

// codeTokens signs alice in through the authorization-code flow with PKCE
// and redeems the code.
func (e *flowEnv) codeTokens(t testing.TB) *oauth2.Token {
	t.Helper()
	verifier := oauth2.GenerateVerifier()
	loc := e.signIn(t, newBrowser(t), e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	tok, err := e.conf.Exchange(context.Background(), loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// refresh redeems a refresh token.
func (e *flowEnv) refresh(rt string) (*oauth2.Token, error) {
	return e.conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt}).Token()
}

// browser is a cookie-keeping HTTP client that does not follow redirects.
type browser struct {
	t  testing.TB
	hc *http.Client
}

func newBrowser(t testing.TB) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, hc: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type page struct {
	status   int
	body     string
	location *url.URL
}

func (b *browser) do(req *http.Request) page {
	b.t.Helper()
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	p := page{status: resp.StatusCode, body: string(body)}
	if loc := resp.Header.Get("Location"); loc != "" {
		p.location, _ = url.Parse(loc)
	}
	return p
}

func (b *browser) get(u string) page {
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	return b.do(req)
}

func (b *browser) post(u string, form url.Values) page {
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

var reqField = regexp.MustCompile(`name="req" value="([^"]+)"`)

func (p page) req(t testing.TB) string {
	t.Helper()
	m := reqField.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no form in page (status %d): %s", p.status, p.body)
	}
	return m[1]
}

func (p page) isLogin() bool   { return strings.Contains(p.body, `name="password"`) }
func (p page) isConsent() bool { return strings.Contains(p.body, `value="approve"`) }

// signIn goes through login and consent as needed and returns the
// authorization response.
func (e *flowEnv) signIn(t testing.TB, b *browser, authURL string) *url.URL {
	t.Helper()
	p := b.get(authURL)
	for range 4 {
		switch {
		case p.location != nil:
			return p.location
		case p.isLogin():
			p = b.post(e.conf.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"login"}, "username": {"alice"}, "password": {alicePassword}})
		case p.isConsent():
			p = b.post(e.conf.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"approve"}})
		default:
			t.Fatalf("unexpected page %d: %s", p.status, p.body)
		}
	}
	t.Fatal("no redirect after login and consent")
	return nil
}

func tokenError(t *testing.T, err error) (string, int) {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("error %v is not a RetrieveError", err)
	}
	return re.ErrorCode, re.Response.StatusCode
}

func userinfoStatus(t *testing.T, issuer, accessToken string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, issuer+"/oauth2/userinfo", nil)
	req.Header.Set("Authorization", "Bearer "+accessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestAuthorizationCodeFlowEndToEnd(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	ctx := context.Background()
	b := newBrowser(t)

	verifier := oauth2.GenerateVerifier()
	authURL := e.conf.AuthCodeURL("st-1", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", "n-1"))
	p := b.get(authURL)
	if p.status != http.StatusOK || !p.isLogin() {
		t.Fatalf("first visit: %d %s", p.status, p.body)
	}
	// A wrong password shows the login page again, 401.
	bad := b.post(e.conf.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"login"}, "username": {"alice"}, "password": {"nope"}})
	if bad.status != http.StatusUnauthorized || !bad.isLogin() || !strings.Contains(bad.body, "Invalid username or password") {
		t.Fatalf("wrong password: %d %s", bad.status, bad.body)
	}
	loc := e.signIn(t, b, authURL)
	q := loc.Query()
	if loc.Host != "127.0.0.1:5999" || q.Get("state") != "st-1" || q.Get("iss") != e.issuer || q.Get("code") == "" {
		t.Fatalf("authorization response %s", loc)
	}
	code := q.Get("code")

	tok, err := e.conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	rawID, _ := tok.Extra("id_token").(string)
	if tok.AccessToken == "" || tok.RefreshToken == "" || rawID == "" {
		t.Fatalf("token response lacks tokens: %+v", tok)
	}

	provider, err := oidc.NewProvider(ctx, e.issuer)
	if err != nil {
		t.Fatal(err)
	}
	idt, err := provider.Verifier(&oidc.Config{ClientID: e.conf.ClientID}).Verify(ctx, rawID)
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		AuthTime int64  `json:"auth_time"`
		AZP      string `json:"azp"`
	}
	if err := idt.Claims(&claims); err != nil {
		t.Fatal(err)
	}
	if idt.Nonce != "n-1" || idt.Subject != e.userID || claims.AZP != e.conf.ClientID || claims.AuthTime == 0 || idt.AccessTokenHash == "" {
		t.Errorf("id token: nonce %q sub %q azp %q auth_time %d at_hash %q", idt.Nonce, idt.Subject, claims.AZP, claims.AuthTime, idt.AccessTokenHash)
	}
	if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
		t.Errorf("at_hash: %v", err)
	}
	ui, err := provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		t.Fatal(err)
	}
	var profile struct {
		Name string `json:"name"`
	}
	_ = ui.Claims(&profile)
	if ui.Subject != e.userID || ui.Email != "alice@example.com" || !ui.EmailVerified || profile.Name != "Alice A" {
		t.Errorf("userinfo = %+v %+v", ui, profile)
	}
	// POST userinfo works too.
	req, _ := http.NewRequest(http.MethodPost, e.issuer+"/oauth2/userinfo", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST userinfo: %v %v", resp, err)
	}

	// Refresh via the library's TokenSource: the token rotates.
	old := *tok
	old.Expiry = time.Now().Add(-time.Minute)
	next, err := e.conf.TokenSource(ctx, &old).Token()
	if err != nil {
		t.Fatal(err)
	}
	if next.RefreshToken == "" || next.RefreshToken == tok.RefreshToken || next.AccessToken == tok.AccessToken {
		t.Fatal("refresh did not rotate")
	}
	if userinfoStatus(t, e.issuer, next.AccessToken) != http.StatusOK {
		t.Fatal("refreshed access token refused by userinfo")
	}

	// Replaying the code: invalid_grant, and every token issued from it is
	// revoked (the family with its access tokens).
	_, err = e.conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if c, s := tokenError(t, err); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("code replay: %s %d", c, s)
	}
	for _, at := range []string{tok.AccessToken, next.AccessToken} {
		if s := userinfoStatus(t, e.issuer, at); s != http.StatusUnauthorized {
			t.Errorf("access token after code replay: userinfo %d", s)
		}
	}
	_, err = e.conf.TokenSource(ctx, &oauth2.Token{RefreshToken: next.RefreshToken}).Token()
	if c, s := tokenError(t, err); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("refresh after code replay: %s %d", c, s)
	}

	// Discovery lists what is supported.
	var md map[string]any
	resp, err := http.Get(e.issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&md)
	resp.Body.Close()
	for k, want := range map[string]string{
		"authorization_endpoint":                         e.issuer + "/oauth2/authorize",
		"userinfo_endpoint":                              e.issuer + "/oauth2/userinfo",
		"device_authorization_endpoint":                  e.issuer + "/oauth2/device_authorization",
		"response_types_supported":                       "[code]",
		"code_challenge_methods_supported":               "[S256]",
		"subject_types_supported":                        "[public]",
		"authorization_response_iss_parameter_supported": "true",
	} {
		if got := strings.Trim(strings.ReplaceAll(jsonString(md[k]), `"`, ""), " "); got != want {
			t.Errorf("discovery %s = %s, want %s", k, got, want)
		}
	}
}

func jsonString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		if x {
			return "true"
		}
		return "false"
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = jsonString(p)
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return ""
}

func TestRefreshReuseRevokesFamily(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	tok := e.codeTokens(t)
	refresh := e.refresh
	t2, err := refresh(tok.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	// The superseded token again: reuse, the family is revoked.
	_, err = refresh(tok.RefreshToken)
	if c, s := tokenError(t, err); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("reuse: %s %d", c, s)
	}
	_, err = refresh(t2.RefreshToken)
	if c, _ := tokenError(t, err); c != "invalid_grant" {
		t.Fatalf("current token after reuse: %s", c)
	}
	if s := userinfoStatus(t, e.issuer, t2.AccessToken); s != http.StatusUnauthorized {
		t.Errorf("access token of a revoked family: userinfo %d", s)
	}
	// Malformed and forged refresh tokens: invalid_grant without a write.
	for _, rt := range []string{"garbage", forge(t2.RefreshToken)} {
		_, err = refresh(rt)
		if c, s := tokenError(t, err); c != "invalid_grant" || s != http.StatusBadRequest {
			t.Errorf("refresh %q: %s %d", rt, c, s)
		}
	}
}

func TestAuthorizeSessionAndPrompt(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	b := newBrowser(t)
	ch := oauth2.S256ChallengeOption(oauth2.GenerateVerifier())
	e.signIn(t, b, e.conf.AuthCodeURL("s", ch))

	// RFC 8252 §8.6: the client is public with a loopback redirect (a
	// native app, whose identity nothing proves): its remembered consent
	// does not authorise it silently. The user is asked again, and
	// prompt=none gets consent_required.
	if p := b.get(e.conf.AuthCodeURL("s2", ch)); !p.isConsent() {
		t.Fatalf("native client with a remembered consent: %d %s", p.status, p.body)
	}
	if p := b.get(e.conf.AuthCodeURL("s2", ch, oauth2.SetAuthURLParam("prompt", "none"))); p.location == nil || p.location.Query().Get("error") != "consent_required" {
		t.Fatalf("native client, prompt=none: %d %v", p.status, p.location)
	}
	// A public web client (https redirect URI): once consented, straight
	// back with a code, also with prompt=none.
	wc, err := n.Admin.CreateClient(context.Background(), connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "SPA", Public: true, GrantTypes: []string{"authorization_code"},
		Scopes: []string{"openid"}, RedirectUris: []string{"https://spa.example/callback"}}))
	if err != nil {
		t.Fatal(err)
	}
	web := *e.conf
	web.ClientID, web.RedirectURL, web.Scopes = wc.Msg.Client.ClientId, "https://spa.example/callback", []string{"openid"}
	p := b.get(web.AuthCodeURL("w1", ch))
	if !p.isConsent() {
		t.Fatalf("web client, first time: %d %s", p.status, p.body)
	}
	if q := b.post(web.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"approve"}}); q.location == nil || q.location.Query().Get("code") == "" {
		t.Fatalf("web client approve: %d %v", q.status, q.location)
	}
	for _, extra := range [][]oauth2.AuthCodeOption{nil, {oauth2.SetAuthURLParam("prompt", "none")}} {
		p := b.get(web.AuthCodeURL("s2", append([]oauth2.AuthCodeOption{ch}, extra...)...))
		if p.status != http.StatusFound || p.location == nil || p.location.Query().Get("code") == "" {
			t.Fatalf("remembered session (%v): %d %s", extra, p.status, p.body)
		}
	}
	// prompt=login and max_age=0 ask for the password again; prompt=consent
	// shows the consent page.
	for _, tc := range []struct {
		param, value string
		login        bool
	}{{"prompt", "login", true}, {"max_age", "0", true}, {"prompt", "consent", false}} {
		p := b.get(e.conf.AuthCodeURL("s3", ch, oauth2.SetAuthURLParam(tc.param, tc.value)))
		if tc.login && !p.isLogin() || !tc.login && !p.isConsent() {
			t.Errorf("%s=%s: %d %s", tc.param, tc.value, p.status, p.body)
		}
	}
	// login_hint prefills the username of a fresh browser.
	p = newBrowser(t).get(e.conf.AuthCodeURL("s", ch, oauth2.SetAuthURLParam("login_hint", "alice")))
	if !strings.Contains(p.body, `value="alice"`) {
		t.Errorf("login_hint not shown: %s", p.body)
	}
	// A consent form replayed from another browser (no CSRF cookie) is refused.
	fresh := newBrowser(t)
	p = b.get(e.conf.AuthCodeURL("s4", ch, oauth2.SetAuthURLParam("prompt", "consent")))
	q := fresh.post(e.conf.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"approve"}})
	if q.status != http.StatusBadRequest || q.location != nil {
		t.Errorf("cross-browser form: %d %v", q.status, q.location)
	}
	// Deny: access_denied at the redirect URI, with iss.
	p = b.get(e.conf.AuthCodeURL("s5", ch, oauth2.SetAuthURLParam("prompt", "consent")))
	q = b.post(e.conf.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"deny"}})
	if q.location == nil || q.location.Query().Get("error") != "access_denied" || q.location.Query().Get("state") != "s5" || q.location.Query().Get("iss") != e.issuer {
		t.Errorf("deny: %d %v", q.status, q.location)
	}
}

func TestAuthorizeErrors(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	noCode := newFlowEnv(t, n, "refresh_token").conf // may not use the authorization code grant
	chal := "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
	base := url.Values{"response_type": {"code"}, "client_id": {e.conf.ClientID}, "redirect_uri": {callback},
		"scope": {"openid"}, "state": {"xyz"}, "code_challenge": {chal}, "code_challenge_method": {"S256"}}
	with := func(k, v string) url.Values {
		q := url.Values{}
		for kk, vv := range base {
			q[kk] = vv
		}
		if v == "" {
			q.Del(k)
		} else {
			q.Set(k, v)
		}
		return q
	}
	for _, tc := range []struct {
		name  string
		query url.Values
		page  bool   // shown, not redirected
		code  string // redirected error
	}{
		{"unknown client", with("client_id", "nope"), true, ""},
		{"no client", with("client_id", ""), true, ""},
		{"unregistered redirect", with("redirect_uri", "https://evil.example/cb"), true, ""},
		{"redirect on another path", with("redirect_uri", "http://127.0.0.1:5999/other"), true, ""},
		{"token response type", with("response_type", "token"), false, "unsupported_response_type"},
		{"hybrid", with("response_type", "code id_token"), false, "unsupported_response_type"},
		{"no response type", with("response_type", ""), false, "invalid_request"},
		{"no PKCE", with("code_challenge", ""), false, "invalid_request"},
		{"plain PKCE", with("code_challenge_method", "plain"), false, "invalid_request"},
		{"no challenge method", with("code_challenge_method", ""), false, "invalid_request"},
		{"scope not allowed", with("scope", "openid admin"), false, "invalid_scope"},
		{"prompt none without session", with("prompt", "none"), false, "login_required"},
		{"bad prompt", with("prompt", "select_account"), false, "invalid_request"},
		{"bad max_age", with("max_age", "-1"), false, "invalid_request"},
		{"client without the grant", with("client_id", noCode.ClientID), false, "unauthorized_client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBrowser(t).get(e.conf.Endpoint.AuthURL + "?" + tc.query.Encode())
			if tc.page {
				if p.status != http.StatusBadRequest || p.location != nil || !strings.Contains(p.body, "<html") {
					t.Fatalf("want an error page, got %d %v", p.status, p.location)
				}
				return
			}
			if p.status != http.StatusFound || p.location == nil {
				t.Fatalf("want a redirect, got %d %s", p.status, p.body)
			}
			q := p.location.Query()
			if q.Get("error") != tc.code || q.Get("state") != "xyz" || q.Get("iss") != e.issuer || q.Get("code") != "" {
				t.Fatalf("redirect %s", p.location)
			}
		})
	}
	// A repeated parameter is shown, not redirected.
	p := newBrowser(t).get(e.conf.Endpoint.AuthURL + "?" + base.Encode() + "&scope=email")
	if p.status != http.StatusBadRequest || p.location != nil {
		t.Errorf("repeated parameter: %d %v", p.status, p.location)
	}
	// Loopback redirect: any port (RFC 8252 §7.3).
	p = newBrowser(t).get(e.conf.Endpoint.AuthURL + "?" + with("redirect_uri", "http://127.0.0.1:41234/callback").Encode())
	if p.status != http.StatusOK || !p.isLogin() {
		t.Errorf("loopback with another port: %d", p.status)
	}
}

func TestTokenEndpointCodeErrors(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	ctx := context.Background()
	b := newBrowser(t)
	verifier := oauth2.GenerateVerifier()
	newCode := func() string {
		return e.signIn(t, b, e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier))).Query().Get("code")
	}
	other := newFlowEnv(t, n)
	for _, tc := range []struct {
		name   string
		run    func(code string) error
		code   string
		status int
	}{
		{"wrong verifier", func(c string) error {
			_, err := e.conf.Exchange(ctx, c, oauth2.VerifierOption(oauth2.GenerateVerifier()))
			return err
		}, "invalid_grant", 400},
		{"no verifier", func(c string) error { _, err := e.conf.Exchange(ctx, c); return err }, "invalid_grant", 400},
		{"other redirect uri", func(c string) error {
			conf := *e.conf
			conf.RedirectURL = "http://127.0.0.1:5999/other"
			_, err := conf.Exchange(ctx, c, oauth2.VerifierOption(verifier))
			return err
		}, "invalid_grant", 400},
		{"other client", func(c string) error {
			_, err := other.conf.Exchange(ctx, c, oauth2.VerifierOption(verifier))
			return err
		}, "invalid_grant", 400},
		{"garbage code", func(string) error {
			_, err := e.conf.Exchange(ctx, "tlyc1.garbage", oauth2.VerifierOption(verifier))
			return err
		}, "invalid_grant", 400},
		{"unknown public client", func(c string) error {
			conf := *e.conf
			conf.ClientID = "nope"
			_, err := conf.Exchange(ctx, c, oauth2.VerifierOption(verifier))
			return err
		}, "invalid_client", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run(newCode())
			if c, s := tokenError(t, err); c != tc.code || s != tc.status {
				t.Fatalf("got %s %d, want %s %d", c, s, tc.code, tc.status)
			}
		})
	}
	// A failed redemption does not burn the code: the right verifier still works.
	c := newCode()
	_, _ = e.conf.Exchange(ctx, c, oauth2.VerifierOption(oauth2.GenerateVerifier()))
	if _, err := e.conf.Exchange(ctx, c, oauth2.VerifierOption(verifier)); err != nil {
		t.Fatalf("code after a wrong verifier: %v", err)
	}
}

// forge changes the last character of a token.
func forge(s string) string {
	if strings.HasSuffix(s, "A") {
		return s[:len(s)-1] + "B"
	}
	return s[:len(s)-1] + "A"
}

// TestRevokeRefreshToken: RFC 7009 for a refresh token revokes its family
// and the access tokens issued from it; a public client revokes by
// client_id, another client is refused.
func TestRevokeRefreshToken(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	other := newFlowEnv(t, n)
	ctx := context.Background()
	verifier := oauth2.GenerateVerifier()
	loc := e.signIn(t, newBrowser(t), e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	tok, err := e.conf.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	revoke := func(clientID, token string) (int, string) {
		resp, err := http.PostForm(e.issuer+"/oauth2/revoke", url.Values{"token": {token}, "client_id": {clientID}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error
	}
	if s, c := revoke(other.conf.ClientID, tok.RefreshToken); s != http.StatusBadRequest || c != "unauthorized_client" {
		t.Fatalf("revocation by another client: %d %s", s, c)
	}
	if s, c := revoke(e.conf.ClientID, tok.RefreshToken); s != http.StatusOK {
		t.Fatalf("revocation: %d %s", s, c)
	}
	if s, _ := revoke(e.conf.ClientID, tok.RefreshToken); s != http.StatusOK {
		t.Fatalf("second revocation: %d", s)
	}
	if s, _ := revoke(e.conf.ClientID, "tlyr1.garbage"); s != http.StatusOK {
		t.Fatalf("revoking garbage: %d", s)
	}
	_, err = e.conf.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	if c, s := tokenError(t, err); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("refresh after revocation: %s %d", c, s)
	}
	if s := userinfoStatus(t, e.issuer, tok.AccessToken); s != http.StatusUnauthorized {
		t.Fatalf("access token after family revocation: %d", s)
	}
}

// TestUserinfoErrors: RFC 6750 §3 errors of the userinfo endpoint.
func TestUserinfoErrors(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	ctx := context.Background()
	verifier := oauth2.GenerateVerifier()
	b := newBrowser(t)
	// A token without the openid scope.
	loc := e.signIn(t, b, e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("scope", "profile")))
	tok, err := e.conf.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken != "" || tok.Extra("id_token") != nil {
		t.Errorf("no offline_access and no openid, yet got refresh %q id_token %v", tok.RefreshToken, tok.Extra("id_token"))
	}
	for _, tc := range []struct {
		name, authz string
		status      int
		code        string
	}{
		{"no token", "", 401, ""},
		{"garbage", "Bearer garbage", 401, "invalid_token"},
		{"basic", "Basic YTpi", 400, "invalid_request"},
		{"no openid scope", "Bearer " + tok.AccessToken, 403, "insufficient_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.issuer+"/oauth2/userinfo", nil)
			if tc.authz != "" {
				req.Header.Set("Authorization", tc.authz)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			ch := resp.Header.Get("WWW-Authenticate")
			if resp.StatusCode != tc.status || !strings.HasPrefix(ch, "Bearer ") || !strings.Contains(ch, tc.code) {
				t.Fatalf("%d %q", resp.StatusCode, ch)
			}
		})
	}
	// prompt=none for a client the user never approved: consent_required.
	other := newFlowEnv(t, n)
	p := b.get(other.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("prompt", "none")))
	if p.location == nil || p.location.Query().Get("error") != "consent_required" {
		t.Fatalf("prompt=none without consent: %d %v", p.status, p.location)
	}
	// A disabled user: sign-in, refresh and userinfo are refused.
	loc = e.signIn(t, b, e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	full, err := e.conf.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Admin.DisableUser(ctx, connect.NewRequest(&adminv1.DisableUserRequest{Tenant: "default", User: "alice"})); err != nil {
		t.Fatal(err)
	}
	fresh := newBrowser(t)
	p = fresh.get(e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	p = fresh.post(e.conf.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"login"}, "username": {"alice"}, "password": {alicePassword}})
	if p.status != http.StatusUnauthorized || !p.isLogin() {
		t.Fatalf("login of a disabled user: %d", p.status)
	}
	_, err = e.conf.TokenSource(ctx, &oauth2.Token{RefreshToken: full.RefreshToken}).Token()
	if c, s := tokenError(t, err); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("refresh of a disabled user: %s %d", c, s)
	}
	if s := userinfoStatus(t, e.issuer, full.AccessToken); s != http.StatusUnauthorized {
		t.Fatalf("userinfo of a disabled user: %d", s)
	}
	// The old browser session no longer signs anyone in.
	p = b.get(e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	if !p.isLogin() {
		t.Fatalf("session of a disabled user: %d %v", p.status, p.location)
	}
}
