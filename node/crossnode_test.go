package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/nodetest"
)

// oneIssuerCluster is what crossNodeTokens needs of a cluster: the URLs
// its checks use as nodes 0, 1, 2 (each node's own http://host:port, or
// the front door), every node's own URL (replicas, to wait for
// replication), the one issuer base they share, and an admin client.
type oneIssuerCluster struct {
	nodes    []string
	replicas []string
	issuer   string
	admin    adminv1connect.AdminServiceClient
}

// appliedIndex is the applied index a node's /readyz reports.
func appliedIndex(nodeURL string) (uint64, error) {
	resp, err := http.Get(nodeURL + "/readyz")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		AppliedIndex uint64 `json:"applied_index"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	return r.AppliedIndex, nil
}

// converge waits until every node has applied everything any node had
// applied when it was called (so a write acknowledged by any node is
// visible at all).
func (c *oneIssuerCluster) converge(t *testing.T) {
	t.Helper()
	var want uint64
	for _, u := range c.replicas {
		got, err := appliedIndex(u)
		if err != nil {
			t.Fatal(err)
		}
		want = max(want, got)
	}
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		for i, u := range c.replicas {
			got, err := appliedIndex(u)
			if err != nil {
				return err
			}
			if got < want {
				return fmt.Errorf("node %d applied %d, want %d", i, got, want)
			}
		}
		return nil
	})
}

// at is a flow environment whose endpoints are node i's own.
func (c *oneIssuerCluster) at(e *flowEnv, i int) *flowEnv {
	iss := c.nodes[i] + "/t/default"
	conf := *e.conf
	conf.Endpoint = oauth2.Endpoint{AuthURL: iss + "/oauth2/authorize", TokenURL: iss + "/oauth2/token",
		DeviceAuthURL: iss + "/oauth2/device_authorization", AuthStyle: oauth2.AuthStyleInParams}
	return &flowEnv{issuer: iss, conf: &conf, userID: e.userID}
}

// crossNodeTokens checks that every kind of token, code and grant one node
// issues is honoured by the others: client-credentials tokens (JWT and
// opaque) introspected at another node and revoked at a third; an
// authorization code issued at one node and redeemed at another; a refresh
// token rotated at a third; userinfo anywhere; a device code created at one
// node, approved at another and polled at a third. Nodes are called at
// their own addresses; every token names the one issuer. It needs at least
// three nodes.
func crossNodeTokens(t *testing.T, c *oneIssuerCluster) {
	crossNodeTokensCC(t, c)
	crossNodeFlows(t, c)
}

// crossNodeTokensCC is the client-credentials part of crossNodeTokens.
func crossNodeTokensCC(t *testing.T, c *oneIssuerCluster) {
	ctx := context.Background()
	n0, n1, n2 := 0, 1, 2
	tenantIss := c.issuer + "/t/default"
	for _, format := range []string{"jwt", "opaque"} {
		cr, err := c.admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "svc-" + format, TokenFormat: format, AccessTokenTtlSeconds: 300}))
		if err != nil {
			t.Fatal(err)
		}
		id, secret := cr.Msg.Client.ClientId, cr.Msg.ClientSecret
		c.converge(t)
		tok := token(t, c.nodes[n0]+"/t/default", id, secret, oauth2.AuthStyleInHeader).AccessToken
		if got := introspect(t, c.nodes[n1]+"/t/default", id, secret, tok); got["active"] != true || got["iss"] != tenantIss {
			t.Fatalf("%s token of node %d at node %d: %v", format, n0, n1, got)
		}
		if status, body, _ := postForm(t, c.nodes[n2]+"/t/default/oauth2/revoke", id, secret, url.Values{"token": {tok}}); status != 200 {
			t.Fatalf("%s: revoke at node %d: %d %v", format, n2, status, body)
		}
		c.converge(t)
		for i, u := range c.nodes {
			if got := introspect(t, u+"/t/default", id, secret, tok); got["active"] != false {
				t.Fatalf("%s: node %d honours a token revoked at node %d: %v", format, i, n2, got)
			}
		}
	}
}

// crossNodeFlows is the end-user part of crossNodeTokens.
func crossNodeFlows(t *testing.T, c *oneIssuerCluster) {
	ctx := context.Background()
	n0, n1, n2 := 0, 1, 2
	tenantIss := c.issuer + "/t/default"

	// End-user flows: a user and a public client.
	u, err := c.admin.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{
		Tenant: "default", Username: "alice", Email: "alice@example.com", Name: "Alice A", Password: alicePassword, EmailVerified: true}))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := c.admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "Web App", Public: true, GrantTypes: []string{"authorization_code", "refresh_token", "device_code"},
		Scopes: []string{"openid", "profile", "email", "offline_access"}, RedirectUris: []string{callback}}))
	if err != nil {
		t.Fatal(err)
	}
	base := &flowEnv{userID: u.Msg.User.UserId, conf: &oauth2.Config{ClientID: pc.Msg.Client.ClientId, RedirectURL: callback,
		Scopes: []string{"openid", "profile", "email", "offline_access"}}}
	c.converge(t)

	// Authorization code: issued at node 0, redeemed at node 1.
	e0, e1, e2 := c.at(base, n0), c.at(base, n1), c.at(base, n2)
	verifier := oauth2.GenerateVerifier()
	loc := e0.signIn(t, newBrowser(t), e0.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	code := loc.Query().Get("code")
	if code == "" {
		t.Fatalf("no code in %v", loc)
	}
	tok, err := e1.conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("code of node %d redeemed at node %d: %v", n0, n1, err)
	}
	if idt, _ := tok.Extra("id_token").(string); idt == "" {
		t.Fatal("no id_token")
	}
	// Its refresh token (issued at node 1) rotated at node 2.
	c.converge(t)
	tok2, err := e2.refresh(tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh token of node %d at node %d: %v", n1, n2, err)
	}
	if tok2.AccessToken == "" || tok2.RefreshToken == "" || tok2.RefreshToken == tok.RefreshToken {
		t.Fatalf("refreshed %+v", tok2)
	}
	// Userinfo at node 0 for the access token node 2 issued.
	c.converge(t)
	if s := userinfoStatus(t, e0.issuer, tok2.AccessToken); s != http.StatusOK {
		t.Fatalf("userinfo at node %d for a token of node %d: %d", n0, n2, s)
	}

	// Device code: created at node 0, approved at node 1, polled at node 2.
	da, err := e0.conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(da.VerificationURI, tenantIss) {
		t.Fatalf("verification URI %q is not under the issuer %q", da.VerificationURI, tenantIss)
	}
	c.converge(t)
	if p := approveDevice(t, e1, newBrowser(t), da.UserCode, true); p.status != http.StatusOK || !strings.Contains(p.body, "Device approved") {
		t.Fatalf("approve at node %d: %d %s", n1, p.status, p.body)
	}
	c.converge(t)
	pctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	dt, err := e2.conf.DeviceAccessToken(pctx, da)
	if err != nil {
		t.Fatalf("device code of node %d polled at node %d: %v", n0, n2, err)
	}
	if s := userinfoStatus(t, e1.issuer, dt.AccessToken); s != http.StatusOK {
		t.Fatalf("userinfo at node %d for the device token: %d", n1, s)
	}
}

// TestCrossNodeTokensInProcess runs crossNodeTokens against in-process
// nodes configured with one issuer (the same configuration make cluster
// gives real processes; see TestCrossNodeTokensProcesses).
func TestCrossNodeTokensInProcess(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(withIssuer(sharedIssuer)))
	waitClusterIssuer(t, c, sharedIssuer)
	oc := &oneIssuerCluster{issuer: sharedIssuer, admin: c.Node(0).Admin}
	for i := range 3 {
		oc.nodes = append(oc.nodes, c.Node(i).URL())
	}
	oc.replicas = oc.nodes
	crossNodeTokens(t, oc)
}
