package node_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node/nodetest"
)

var userCodeShape = regexp.MustCompile(`^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$`)

// pollOnce makes one device access token request and returns the error
// code ("" on success) and status.
func pollOnce(t *testing.T, e *flowEnv, deviceCode string) (string, int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(e.conf.Endpoint.TokenURL, url.Values{
		"grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {deviceCode}, "client_id": {e.conf.ClientID}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	code, _ := body["error"].(string)
	return code, resp.StatusCode, body
}

// approveDevice signs in at the verification page and approves (or denies)
// the user code.
func approveDevice(t *testing.T, e *flowEnv, b *browser, userCode string, approve bool) page {
	t.Helper()
	vu := e.issuer + "/device"
	p := b.get(vu + "?user_code=" + url.QueryEscape(userCode))
	if p.isLogin() {
		p = b.post(vu, url.Values{"req": {p.req(t)}, "action": {"login"}, "username": {"alice"}, "password": {alicePassword}})
	}
	if !p.isConsent() || !strings.Contains(p.body, "Web App") {
		t.Fatalf("device confirmation page: %d %s", p.status, p.body)
	}
	// The page shows the code so the user can compare it with the device's.
	if norm, ok := issuance.NormalizeUserCode(userCode); !ok || !strings.Contains(p.body, `id="device_user_code">`+norm[:4]+"-"+norm[4:]+"<") {
		t.Fatalf("device confirmation page does not show the user code %s: %s", userCode, p.body)
	}
	action := "deny"
	if approve {
		action = "approve"
	}
	return b.post(vu, url.Values{"req": {p.req(t)}, "action": {action}})
}

func TestDeviceFlowEndToEnd(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	ctx := context.Background()

	da, err := e.conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !userCodeShape.MatchString(da.UserCode) || da.VerificationURI != e.issuer+"/device" ||
		!strings.HasPrefix(da.VerificationURIComplete, da.VerificationURI+"?user_code=") || da.Interval != 5 || da.DeviceCode == "" {
		t.Fatalf("device authorization response %+v", da)
	}

	// The user types the code in lower case without the dash.
	b := newBrowser(t)
	typed := strings.ToLower(strings.ReplaceAll(da.UserCode, "-", ""))
	if p := approveDevice(t, e, b, typed, true); p.status != http.StatusOK || !strings.Contains(p.body, "Device approved") {
		t.Fatalf("approve: %d %s", p.status, p.body)
	}
	// The library waits the interval, then redeems.
	tok, err := e.conf.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("device tokens: %+v", tok)
	}
	if s := userinfoStatus(t, e.issuer, tok.AccessToken); s != http.StatusOK {
		t.Fatalf("userinfo with the device token: %d", s)
	}
	// The code is single use.
	if c, s, _ := pollOnce(t, e, da.DeviceCode); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("second redemption: %s %d", c, s)
	}

	// Denied: access_denied.
	da2, err := e.conf.DeviceAuth(ctx, oauth2.SetAuthURLParam("scope", "openid"))
	if err != nil {
		t.Fatal(err)
	}
	// Pending, then polling again at once: slow_down (the interval is
	// enforced by the replicated record, whichever node is polled).
	if c, s, _ := pollOnce(t, e, da2.DeviceCode); c != "authorization_pending" || s != http.StatusBadRequest {
		t.Fatalf("first poll: %s %d", c, s)
	}
	if c, s, _ := pollOnce(t, e, da2.DeviceCode); c != "slow_down" || s != http.StatusBadRequest {
		t.Fatalf("fast poll: %s %d", c, s)
	}
	approveDevice(t, e, b, da2.UserCode, false)
	// Polling too fast still answers slow_down; at the interval, access_denied.
	if c, s, _ := pollOnce(t, e, da2.DeviceCode); c != "slow_down" || s != http.StatusBadRequest {
		t.Fatalf("fast poll after deny: %s %d", c, s)
	}
	// Unknown device code, bad scope, unknown client.
	if c, s, _ := pollOnce(t, e, "tlyd1.nope"); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("unknown device code: %s %d", c, s)
	}
	for _, tc := range []struct {
		form   url.Values
		code   string
		status int
	}{
		{url.Values{"client_id": {e.conf.ClientID}, "scope": {"admin"}}, "invalid_scope", 400},
		{url.Values{"client_id": {"nope"}}, "invalid_client", 401},
		{url.Values{}, "invalid_client", 401},
	} {
		resp, err := http.PostForm(e.conf.Endpoint.DeviceAuthURL, tc.form)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if body["error"] != tc.code || resp.StatusCode != tc.status {
			t.Errorf("device authorization %v: %v %d", tc.form, body, resp.StatusCode)
		}
	}
	// A wrong user code is refused on the page, and entry is rate limited.
	p := b.get(e.issuer + "/device")
	for i := 0; i < 12; i++ {
		p = b.post(e.issuer+"/device", url.Values{"req": {p.req(t)}, "action": {"lookup"}, "user_code": {"BBBB-BBBB"}})
		if p.status == http.StatusTooManyRequests {
			break
		}
		if p.status != http.StatusBadRequest || !strings.Contains(p.body, "Unknown or expired code") {
			t.Fatalf("wrong code %d: %d %s", i, p.status, p.body)
		}
	}
	if p.status != http.StatusTooManyRequests {
		t.Fatalf("user code entry is not rate limited: %d", p.status)
	}
}

func decodeJSON(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
