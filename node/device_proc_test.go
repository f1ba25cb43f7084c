package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/node/proctest"
)

// The issue 9 device-flow livelock, on real `tally serve` processes: the
// device code is created at node 1; node 2 answers one poll and then an
// early one with slow_down; the user approves at node 3; x/oauth2's
// DeviceAccessToken (advertised interval, +5 s per slow_down it receives)
// then polls node 2 and gets its tokens.
func TestDeviceFlowConvergesProcesses(t *testing.T) {
	c := proctest.Start(t, proctest.Options{})
	n1, n2, n3 := c.Node(0), c.Node(1), c.Node(2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error { // the default tenant is created once a leader is elected
		return c.Call(ctx, n1, "/tally.admin.v1.AdminService/CreateUser", map[string]any{
			"tenant": "default", "username": "alice", "password": alicePassword, "email": "alice@example.com", "emailVerified": true,
		}, nil)
	})
	var cc struct {
		Client struct {
			ClientID string `json:"clientId"`
		} `json:"client"`
	}
	if err := c.Call(ctx, n1, "/tally.admin.v1.AdminService/CreateClient", map[string]any{
		"tenant": "default", "name": "Web App", "public": true, "grantTypes": []string{"device_code", "refresh_token"},
		"scopes": []string{"openid", "offline_access"}, "redirectUris": []string{callback},
	}, &cc); err != nil {
		t.Fatal(err)
	}
	conf := func(p *proctest.Proc) *oauth2.Config {
		base := p.URL() + "/t/default"
		return &oauth2.Config{ClientID: cc.Client.ClientID, Scopes: []string{"openid", "offline_access"},
			Endpoint: oauth2.Endpoint{TokenURL: base + "/oauth2/token", DeviceAuthURL: base + "/oauth2/device_authorization",
				AuthStyle: oauth2.AuthStyleInParams}}
	}
	var da *oauth2.DeviceAuthResponse
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error { // the client reaches node 1 once it has the client
		var err error
		da, err = conf(n1).DeviceAuth(ctx)
		return err
	})
	poll := func(p *proctest.Proc) string {
		resp, err := http.PostForm(conf(p).Endpoint.TokenURL, url.Values{"client_id": {cc.Client.ClientID},
			"grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {da.DeviceCode}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return body.Error
	}
	// Node 2 learns the code (replication), answers pending, then slow_down.
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if e := poll(n2); e != "authorization_pending" {
			return errors.New("node 2: " + e)
		}
		return nil
	})
	if e := poll(n2); e != "slow_down" {
		t.Fatalf("early poll at node 2: %s", e)
	}

	// Approve at node 3.
	b := newBrowser(t)
	vu := n3.URL() + "/t/default/device"
	p := b.get(vu + "?user_code=" + url.QueryEscape(da.UserCode))
	if p.isLogin() {
		p = b.post(vu, url.Values{"req": {p.req(t)}, "action": {"login"}, "username": {"alice"}, "password": {alicePassword}})
	}
	if !p.isConsent() || !strings.Contains(p.body, "Web App") {
		t.Fatalf("device confirmation page at node 3: %d %s", p.status, p.body)
	}
	if p = b.post(vu, url.Values{"req": {p.req(t)}, "action": {"approve"}}); p.status != http.StatusOK {
		t.Fatalf("approve at node 3: %d %s", p.status, p.body)
	}

	tok, err := conf(n2).DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatalf("x/oauth2 DeviceAccessToken at node 2 after an early slow_down: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("tokens: %+v", tok)
	}
}
