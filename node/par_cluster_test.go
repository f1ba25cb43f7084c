package node_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// pushAuthz POSTs a pushed authorization request to issuer's PAR endpoint.
func pushAuthz(t *testing.T, issuer string, form url.Values, basicID, basicSecret string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, issuer+"/oauth2/par", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basicID != "" {
		req.SetBasicAuth(url.QueryEscape(basicID), url.QueryEscape(basicSecret))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// TestPARAcrossNodes: a request pushed at node 0 is redeemed at node 1
// (through login and consent, and the code exchanged at node 2 with the
// pushed PKCE challenge); the same request_uri is refused at node 2 and at
// node 1; another client cannot use (nor burn) a request_uri.
func TestPARAcrossNodes(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(nodetest.FastRaft))
	n0, n1, n2 := c.Node(0), c.Node(1), c.Node(2)
	e := newFlowEnv(t, n0)
	ctx := context.Background()
	other, err := n0.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "Other", Public: true, GrantTypes: []string{"authorization_code"},
		Scopes: []string{"openid"}, RedirectUris: []string{callback}}))
	if err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()

	// Discovery advertises PAR on every node.
	for _, n := range []*nodetest.Node{n0, n1, n2} {
		var md map[string]any
		resp, err := http.Get(n.Issuer("default") + "/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		_ = json.NewDecoder(resp.Body).Decode(&md)
		resp.Body.Close()
		if md["pushed_authorization_request_endpoint"] != n.Issuer("default")+"/oauth2/par" {
			t.Fatalf("metadata %v", md)
		}
	}

	verifier := oauth2.GenerateVerifier()
	authURL, _ := url.Parse(e.conf.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier)))
	pushed := authURL.Query()
	status, body := pushAuthz(t, n0.Issuer("default"), pushed, "", "")
	uri, _ := body["request_uri"].(string)
	if status != http.StatusCreated || !strings.HasPrefix(uri, "urn:ietf:params:oauth:request_uri:") || body["expires_in"] == nil {
		t.Fatalf("push: %d %v", status, body)
	}
	authorizeAt := func(n *nodetest.Node, clientID string) string {
		return n.Issuer("default") + "/oauth2/authorize?" + url.Values{"client_id": {clientID}, "request_uri": {uri}}.Encode()
	}

	// Another client: refused, and the request_uri stays usable.
	if p := newBrowser(t).get(authorizeAt(n1, other.Msg.Client.ClientId)); p.status != http.StatusBadRequest {
		t.Fatalf("another client: %d %s", p.status, p.body)
	}

	// Node 1 redeems it and the flow runs on node 1's pages.
	e1 := *e
	conf1 := *e.conf
	conf1.Endpoint.AuthURL = n1.Issuer("default") + "/oauth2/authorize"
	e1.conf = &conf1
	loc := e1.signIn(t, newBrowser(t), authorizeAt(n1, e.conf.ClientID))
	if loc.Query().Get("state") != "st" || loc.Query().Get("code") == "" {
		t.Fatalf("authorization response %s", loc)
	}
	conf2 := *e.conf
	conf2.Endpoint.TokenURL = n2.Issuer("default") + "/oauth2/token"
	if _, err := conf2.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier)); err != nil {
		t.Fatalf("exchange at node 2 with the pushed challenge: %v", err)
	}

	// Used twice: refused on every node.
	for _, n := range []*nodetest.Node{n2, n1} {
		if p := newBrowser(t).get(authorizeAt(n, e.conf.ClientID)); p.status != http.StatusBadRequest || !strings.Contains(p.body, "request_uri") {
			t.Fatalf("second use at %s: %d %s", n.Issuer("default"), p.status, p.body)
		}
	}
	// Never pushed, or not a request_uri URN.
	for _, bad := range []string{"urn:ietf:params:oauth:request_uri:nope", "https://evil.example/req"} {
		u := n1.Issuer("default") + "/oauth2/authorize?" + url.Values{"client_id": {e.conf.ClientID}, "request_uri": {bad}}.Encode()
		if p := newBrowser(t).get(u); p.status != http.StatusBadRequest {
			t.Fatalf("%s: %d", bad, p.status)
		}
	}
}

// TestPARErrors: bad pushes get the RFC 9126 §2.3 errors; a client or
// tenant that requires PAR cannot use a plain authorization request.
func TestPARErrors(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	ctx := context.Background()
	iss := n.Issuer("default")
	good, _ := url.Parse(e.conf.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
	with := func(k, v string) url.Values {
		q := good.Query()
		if v == "" {
			q.Del(k)
		} else {
			q.Set(k, v)
		}
		return q
	}
	conf, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "Confidential", GrantTypes: []string{"authorization_code"},
		Scopes: []string{"openid"}, RedirectUris: []string{callback}, RequirePushedAuthorizationRequests: true}))
	if err != nil {
		t.Fatal(err)
	}
	cid, secret := conf.Msg.Client.ClientId, conf.Msg.ClientSecret
	confForm := with("client_id", cid)
	confForm.Set("scope", "openid")
	for _, tc := range []struct {
		name         string
		form         url.Values
		id, secret   string
		status       int
		code         string
		wantResponse bool
	}{
		{"request_uri pushed", with("request_uri", "urn:ietf:params:oauth:request_uri:x"), "", "", 400, "invalid_request", false},
		{"unregistered redirect", with("redirect_uri", "https://evil.example/cb"), "", "", 400, "invalid_request", false},
		{"no PKCE", with("code_challenge", ""), "", "", 400, "invalid_request", false},
		{"unknown client", with("client_id", "nope"), "", "", 401, "invalid_client", false},
		{"confidential without secret", confForm, "", "", 401, "invalid_client", false},
		{"confidential wrong secret", confForm, cid, "wrong", 401, "invalid_client", false},
		{"confidential ok", confForm, cid, secret, 201, "", true},
	} {
		status, body := pushAuthz(t, iss, tc.form, tc.id, tc.secret)
		if status != tc.status || (tc.code != "" && body["error"] != tc.code) || (tc.wantResponse && body["request_uri"] == nil) {
			t.Errorf("%s: %d %v", tc.name, status, body)
		}
	}
	// The client requires PAR: a plain request is refused.
	plain := iss + "/oauth2/authorize?" + confForm.Encode()
	if p := newBrowser(t).get(plain); p.status != http.StatusBadRequest || !strings.Contains(p.body, "PAR") {
		t.Fatalf("plain request of a PAR client: %d %s", p.status, p.body)
	}
	// The tenant requires PAR: the public client's plain request is refused
	// too, and discovery says so.
	if _, err := n.Admin.SetTenantPAR(ctx, connect.NewRequest(&adminv1.SetTenantPARRequest{Tenant: "default", Require: true})); err != nil {
		t.Fatal(err)
	}
	if p := newBrowser(t).get(good.String()); p.status != http.StatusBadRequest {
		t.Fatalf("plain request in a PAR tenant: %d %s", p.status, p.body)
	}
	resp, err := http.Get(iss + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var md map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&md)
	resp.Body.Close()
	if md["require_pushed_authorization_requests"] != true {
		t.Fatalf("metadata %v", md)
	}
}
