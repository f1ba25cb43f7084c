package issuance_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
)

// fakeUsers is an in-memory issuance.Users.
type fakeUsers struct {
	mu    sync.Mutex
	users map[string]issuance.User
}

func (f *fakeUsers) User(_ context.Context, tenant, id string) (issuance.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.users[id]; ok && u.Tenant == tenant {
		return u, nil
	}
	return issuance.User{}, issuance.ErrNotFound
}

func (f *fakeUsers) UserByUsername(ctx context.Context, tenant, name string) (issuance.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.users {
		if u.Tenant == tenant && strings.EqualFold(u.Username, name) {
			return u, nil
		}
	}
	return issuance.User{}, issuance.ErrNotFound
}

func (f *fakeUsers) Consent(context.Context, string, string, string) (issuance.Consent, error) {
	return issuance.Consent{}, issuance.ErrNotFound
}

func (f *fakeUsers) DeviceCode(context.Context, string, string) (issuance.DeviceCode, error) {
	return issuance.DeviceCode{}, issuance.ErrNotFound
}

// scriptedGrants answers every write with err (nil: a fixed success).
type scriptedGrants struct {
	mu     sync.Mutex
	err    error
	replay bool   // RotateRefresh answers as within the reuse interval
	sealed []byte // the successor sealed by the last rotation
}

func (g *scriptedGrants) fail() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

func (g *scriptedGrants) RememberConsent(context.Context, string, string, string, []string, time.Time) error {
	return g.fail()
}

func (g *scriptedGrants) RedeemCode(context.Context, issuance.CodeRedemption) (*issuance.Family, error) {
	return nil, g.fail()
}

func (g *scriptedGrants) RotateRefresh(_ context.Context, r issuance.Rotation) (issuance.RotationResult, error) {
	if err := g.fail(); err != nil {
		return issuance.RotationResult{}, err
	}
	fam := issuance.Family{ID: r.FamilyID, ClientID: r.ClientID, UserID: "u1", Scopes: []string{"openid"}}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.replay {
		return issuance.RotationResult{Family: fam, Replayed: true, SealedSuccessor: g.sealed}, nil
	}
	g.sealed = r.SealedSuccessor
	return issuance.RotationResult{Family: fam}, nil
}

func (g *scriptedGrants) RevokeFamily(context.Context, string, string, string, string) error {
	return g.fail()
}

func (g *scriptedGrants) CreateDeviceCode(context.Context, issuance.DeviceCode, []byte, time.Duration) error {
	return g.fail()
}

func (g *scriptedGrants) DecideDeviceCode(context.Context, string, string, bool, string, time.Time) error {
	return g.fail()
}

func (g *scriptedGrants) PollDeviceCode(context.Context, issuance.DevicePoll) (issuance.DeviceGrant, error) {
	if err := g.fail(); err != nil {
		return issuance.DeviceGrant{}, err
	}
	return issuance.DeviceGrant{UserID: "u1", Scopes: []string{"openid"}}, nil
}

// flowTestEnv is an env with the end-user flows over fakes.
type flowTestEnv struct {
	*env
	srvUsers *fakeUsers
}

func newFlowTestEnv(t testing.TB) (*flowTestEnv, *scriptedGrants) {
	t.Helper()
	g := &scriptedGrants{}
	users := &fakeUsers{users: map[string]issuance.User{"u1": {Tenant: "t", ID: "u1", Username: "alice"}}}
	e := &flowTestEnv{env: newEnv(t, func(c *issuance.Config) { c.Users, c.Grants = users, g }), srvUsers: users}
	e.addTenant("t", issuance.AlgES256)
	e.addClient("t", "pub", func(c *issuance.Client) {
		c.Public, c.Secrets = true, nil
		c.GrantTypes = []string{issuance.GrantDeviceCode, issuance.GrantRefreshToken, issuance.GrantAuthorizationCode}
		c.Scopes = []string{"openid", "offline_access"}
		c.RedirectURIs = []string{"http://127.0.0.1:5999/cb"}
	})
	return e, g
}

// TestGrantOutcomesOnTheWire maps every outcome of the replicated grant
// commands to its RFC error code and status.
func TestGrantOutcomesOnTheWire(t *testing.T) {
	e, g := newFlowTestEnv(t)
	rt, err := e.srv.NewRefreshTokenForTest("t", "AAAAAAAAAAAAAAAAAAAAAA", 1)
	if err != nil {
		t.Fatal(err)
	}
	device := url.Values{"grant_type": {issuance.GrantDeviceCode}, "device_code": {"tlyd1.abc"}, "client_id": {"pub"}}
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"pub"}}
	for _, tc := range []struct {
		name   string
		form   url.Values
		err    error
		code   string
		status int
	}{
		{"device pending", device, issuance.ErrAuthorizationPending, "authorization_pending", 400},
		{"device slow down", device, issuance.ErrSlowDown, "slow_down", 400},
		{"device denied", device, issuance.ErrAccessDenied, "access_denied", 400},
		{"device expired", device, issuance.ErrExpiredToken, "expired_token", 400},
		{"device invalid", device, issuance.ErrGrantInvalid, "invalid_grant", 400},
		{"device no quorum", device, errors.New("no leader"), "temporarily_unavailable", 503},
		{"device ok", device, nil, "", 200},
		{"refresh reused", refresh, issuance.ErrRefreshReused, "invalid_grant", 400},
		{"refresh invalid", refresh, issuance.ErrGrantInvalid, "invalid_grant", 400},
		{"refresh no quorum", refresh, errors.New("no leader"), "temporarily_unavailable", 503},
		{"refresh ok", refresh, nil, "", 200},
		{"device without code", url.Values{"grant_type": {issuance.GrantDeviceCode}, "client_id": {"pub"}}, nil, "invalid_request", 400},
		{"refresh without token", url.Values{"grant_type": {"refresh_token"}, "client_id": {"pub"}}, nil, "invalid_request", 400},
		{"forged refresh token", url.Values{"grant_type": {"refresh_token"}, "client_id": {"pub"}, "refresh_token": {flipLast(rt)}}, nil, "invalid_grant", 400},
		{"code without code", url.Values{"grant_type": {"authorization_code"}, "client_id": {"pub"}}, nil, "invalid_request", 400},
		{"public client unknown", url.Values{"grant_type": {"refresh_token"}, "client_id": {"nope"}, "refresh_token": {rt}}, nil, "invalid_client", 401},
		// x/oauth2's default: Basic with the client id and an empty password.
		{"public client basic no password", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, nil, "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g.mu.Lock()
			g.err = tc.err
			g.mu.Unlock()
			id := ""
			if tc.form.Get("client_id") == "" {
				id = "pub"
			}
			r := e.postForm("/t/t/oauth2/token", tc.form, id, "")
			body := r.json(t)
			if r.status != tc.status || (tc.code != "" && body["error"] != tc.code) {
				t.Fatalf("got %d %v, want %d %s", r.status, body, tc.status, tc.code)
			}
		})
	}
}

func TestNormalizeUserCode(t *testing.T) {
	for in, want := range map[string]string{
		"BCDF-GHJK": "BCDFGHJK", "bcdfghjk": "BCDFGHJK", "bcdf ghjk": "BCDFGHJK", "B-C-D-F-G-H-J-K": "BCDFGHJK",
		"BCDF-GHJA": "", "BCDFGHJ": "", "BCDFGHJKL": "", "": "", "ÄCDFGHJK": "", strings.Repeat("B", 40): "",
	} {
		got, ok := issuance.NormalizeUserCode(in)
		if got != want || ok != (want != "") {
			t.Errorf("NormalizeUserCode(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

// TestPKCE uses the example of RFC 7636 Appendix B.
func TestPKCE(t *testing.T) {
	const verifier, challenge = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
	if !issuance.VerifyPKCEForTest(verifier, challenge) {
		t.Fatal("RFC 7636 Appendix B example fails")
	}
	for _, v := range []string{verifier[:42], verifier + "x", strings.Repeat("a", 129), verifier[:42] + "+"} {
		if issuance.VerifyPKCEForTest(v, challenge) {
			t.Errorf("verifier %q accepted", v)
		}
	}
}

func TestMatchRedirect(t *testing.T) {
	c := issuance.Client{RedirectURIs: []string{"http://127.0.0.1:5999/cb", "https://app.example/cb?x=1", "http://[::1]/native"}}
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"http://127.0.0.1:5999/cb", true},
		{"http://127.0.0.1:1/cb", true},    // RFC 8252 §7.3: any port
		{"http://127.0.0.1/cb", true},      // no port
		{"http://[::1]:8080/native", true}, // IPv6 loopback
		{"https://app.example/cb?x=1", true},
		{"https://app.example/cb?x=2", false},
		{"https://app.example/cb", false},
		{"https://app.example:444/cb?x=1", false},
		{"http://localhost:5999/cb", false},
		{"http://127.0.0.1:5999/cb/", false},
		{"http://127.0.0.1:5999/cb#f", false},
		{"http://u@127.0.0.1:5999/cb", false},
		{"", false}, // more than one registered: redirect_uri is required
	} {
		if _, ok := issuance.MatchRedirectForTest(c, tc.in); ok != tc.want {
			t.Errorf("matchRedirect(%q) = %v, want %v", tc.in, ok, tc.want)
		}
	}
	one := issuance.Client{RedirectURIs: []string{"https://only.example/cb"}}
	if got, ok := issuance.MatchRedirectForTest(one, ""); !ok || got != "https://only.example/cb" {
		t.Errorf("single registered URI: %q %v", got, ok)
	}
}

func TestRefreshTokenMAC(t *testing.T) {
	e, _ := newFlowTestEnv(t)
	tok, err := e.srv.NewRefreshTokenForTest("t", "AAAAAAAAAAAAAAAAAAAAAA", 7)
	if err != nil {
		t.Fatal(err)
	}
	if f, g, ok := e.srv.ParseRefreshTokenForTest("t", tok); !ok || f != "AAAAAAAAAAAAAAAAAAAAAA" || g != 7 {
		t.Fatalf("parse = %q %d %v", f, g, ok)
	}
	for _, bad := range []string{
		flipLast(tok), strings.Replace(tok, ".7.", ".8.", 1), strings.Replace(tok, ".7.", ".07.", 1), "tlyr1.", "x" + tok,
	} {
		if _, _, ok := e.srv.ParseRefreshTokenForTest("t", bad); ok {
			t.Errorf("accepted %q", bad)
		}
	}
	if _, _, ok := e.srv.ParseRefreshTokenForTest("other", tok); ok {
		t.Error("token of tenant t accepted for another tenant")
	}
}

// TestAuthorizeNeverFails500 sends malformed authorization requests: every
// answer is a page or a redirect, never a server error.
func TestAuthorizeNeverFails500(t *testing.T) {
	e, _ := newFlowTestEnv(t)
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, q := range []string{"", "%zz", "client_id=pub&client_id=pub", "client_id=pub&redirect_uri=%00",
		"client_id=pub&response_type=code&code_challenge=x&code_challenge_method=S256", "client_id=" + strings.Repeat("a", 5000),
		"client_id=pub&response_type=code&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&max_age=99999999999999999999"} {
		resp, err := hc.Get(e.url("/t/t/oauth2/authorize?" + q))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Errorf("query %q: %d", q, resp.StatusCode)
		}
	}
	r := e.postForm("/t/t/oauth2/authorize", url.Values{"req": {"garbage"}, "action": {"login"}}, "", "")
	if r.status != http.StatusBadRequest {
		t.Errorf("garbage form: %d", r.status)
	}
}

// flipLast changes the last character of s.
func flipLast(s string) string {
	if s[len(s)-1] == 'A' {
		return s[:len(s)-1] + "B"
	}
	return s[:len(s)-1] + "A"
}

// TestRefreshReuseIntervalReturnsSameSuccessor: when the command answers
// that the presented token was just superseded within the reuse interval,
// the client gets the very successor of the first rotation, unsealed from
// the family record.
func TestRefreshReuseIntervalReturnsSameSuccessor(t *testing.T) {
	e, g := newFlowTestEnv(t)
	rt, err := e.srv.NewRefreshTokenForTest("t", "AAAAAAAAAAAAAAAAAAAAAA", 1)
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"pub"}}
	first := e.postForm("/t/t/oauth2/token", form, "", "").json(t)
	g.mu.Lock()
	g.replay = true
	g.mu.Unlock()
	again := e.postForm("/t/t/oauth2/token", form, "", "").json(t)
	if first["refresh_token"] == nil || first["refresh_token"] != again["refresh_token"] {
		t.Fatalf("successors differ: %v / %v", first["refresh_token"], again["refresh_token"])
	}
	if first["access_token"] == again["access_token"] {
		t.Error("the replay got the same access token, want a fresh one")
	}
	if f, gen, ok := e.srv.ParseRefreshTokenForTest("t", first["refresh_token"].(string)); !ok || f != "AAAAAAAAAAAAAAAAAAAAAA" || gen != 2 {
		t.Errorf("successor = %q %d %v", f, gen, ok)
	}
}

// TestBrowserCookies: outside dev the CSRF and session cookies are Secure,
// HttpOnly, SameSite=Lax, scoped to the tenant and bounded in time.
func TestBrowserCookies(t *testing.T) {
	e, _ := newFlowTestEnv(t)
	pw, err := issuance.HashPassword(issuance.PasswordParams{Time: 1, MemoryKiB: 64, Threads: 1}, "pw-123", strings.NewReader(strings.Repeat("s", 16)))
	if err != nil {
		t.Fatal(err)
	}
	users := e.srvUsers
	users.mu.Lock()
	users.users["u1"] = issuance.User{Tenant: "t", ID: "u1", Username: "alice", Password: pw}
	users.mu.Unlock()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	q := url.Values{"client_id": {"pub"}, "response_type": {"code"}, "code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"},
		"code_challenge_method": {"S256"}, "scope": {"openid"}}
	resp, err := hc.Get(e.url("/t/t/oauth2/authorize?" + q.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	check := func(c *http.Cookie) {
		t.Helper()
		if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/t/t/" || c.MaxAge <= 0 || c.MaxAge > 8*3600 {
			t.Errorf("cookie %s: %+v", c.Name, c)
		}
	}
	var csrf *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "tally_csrf" {
			csrf = c
		}
	}
	if csrf == nil {
		t.Fatal("no CSRF cookie")
	}
	check(csrf)
	req := reqFieldOf(t, body)
	form := url.Values{"req": {req}, "action": {"login"}, "username": {"ALICE"}, "password": {"pw-123"}}
	r, _ := http.NewRequest(http.MethodPost, e.url("/t/t/oauth2/authorize"), strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.AddCookie(&http.Cookie{Name: csrf.Name, Value: csrf.Value})
	resp, err = hc.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	var sess *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "tally_session" {
			sess = c
		}
	}
	if sess == nil {
		t.Fatalf("no session cookie after login (%d)", resp.StatusCode)
	}
	check(sess)
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func reqFieldOf(t *testing.T, body string) string {
	t.Helper()
	_, rest, ok := strings.Cut(body, `name="req" value="`)
	if !ok {
		t.Fatalf("no form: %s", body)
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}
