package node_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestPolicyEveryNode (issue 12): a policy set through one node of a
// three-node cluster is in force on every node once that node has applied
// the index of the leader at the time (WaitApplied): the version is Raft
// state, so each node switches at the same index.
func TestPolicyEveryNode(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	ctx := context.Background()
	n0 := c.Node(0)
	appID, appSecret := n0.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "app", Scopes: []string{"read", "write"}})
	c.WaitConverged()
	src := `client == "` + appID + `" ? {"scopes": ["read"]} : dyn({"allow": true})`
	res, err := c.Node(1).Admin.SetPolicy(ctx, connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: src}}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Config.Revision != 1 {
		t.Errorf("revision %d", res.Msg.Config.Revision)
	}
	c.WaitConverged()
	nodetest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for i := range 3 {
			n := c.Node(i)
			status, body, _ := postForm(t, n.Issuer("default")+"/oauth2/token", appID, appSecret, url.Values{"grant_type": {"client_credentials"}})
			if status != http.StatusOK || body["scope"] != "read" {
				return fmt.Errorf("node %d: %d %v, want the scope narrowed to read", i, status, body)
			}
		}
		return nil
	})
}

// TestPolicyUserGrants (issue 12): the policy also decides the end-user
// grants: a refresh is denied by a policy naming its grant type, and an
// authorization code grant is narrowed.
func TestPolicyUserGrants(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	e := newFlowEnv(t, n)
	src := `grant_type == "refresh_token" ? dyn({"allow": false, "reason": "no refresh for " + user.username}) : dyn({"scopes": granted_scopes.filter(s, s != "email")})`
	if _, err := n.Admin.SetPolicy(ctx, connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: src}})); err != nil {
		t.Fatal(err)
	}
	tok := e.codeTokens(t)
	if sc, _ := tok.Extra("scope").(string); sc == "" || strings.Contains(sc, "email") {
		t.Errorf("authorization code grant scope %q, want it without email", sc)
	}
	if _, err := e.refresh(tok.RefreshToken); err == nil || !strings.Contains(err.Error(), "no refresh for alice") {
		t.Errorf("refresh under a deny policy: %v", err)
	}
}

// TestPolicyAtTheAuthorizationEndpoint (issue 12): the policy decides at
// the authorization endpoint too, before a code is issued (grant_type
// authorization_code, path the authorization endpoint's): a deny sends the
// browser back to the client with access_denied and the policy's reason
// and no code; a narrowing is what the code, and so the token, carries.
func TestPolicyAtTheAuthorizationEndpoint(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	e := newFlowEnv(t, n)
	set := func(src string) {
		t.Helper()
		if _, err := n.Admin.SetPolicy(ctx, connect.NewRequest(&adminv1.SetPolicyRequest{Tenant: "default", Policy: &adminv1.PolicyInfo{Source: src}})); err != nil {
			t.Fatal(err)
		}
	}
	set(`grant_type == "authorization_code" && path.endsWith("/oauth2/authorize") && user.username == "alice" ? dyn({"allow": false, "reason": "alice is on leave"}) : dyn({"allow": true})`)
	loc := e.signIn(t, newBrowser(t), e.conf.AuthCodeURL("st-deny", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
	q := loc.Query()
	if q.Get("error") != "access_denied" || !strings.Contains(q.Get("error_description"), "alice is on leave") || q.Get("code") != "" || q.Get("state") != "st-deny" {
		t.Fatalf("denied at the authorization endpoint: %s", loc)
	}
	// Narrowing at the authorization endpoint only (the token endpoint's
	// path is another): the token has what the code carried.
	set(`path.endsWith("/oauth2/authorize") ? dyn({"scopes": granted_scopes.filter(s, s != "profile")}) : dyn({"allow": true})`)
	tok := e.codeTokens(t)
	if sc, _ := tok.Extra("scope").(string); sc == "" || strings.Contains(sc, "profile") || !strings.Contains(sc, "openid") {
		t.Errorf("scope %q, want it narrowed at the authorization endpoint (no profile)", sc)
	}
}
