package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestUserDisableAtEveryNode (issue 9): in a three-node cluster with one
// issuer, disabling a user through one node makes the user's tokens
// inactive at every node's introspection, its refresh family unusable at
// every node, and an SDK following another node rejects them.
func TestUserDisableAtEveryNode(t *testing.T) {
	addr0 := freeAddr(t)
	issuerBase := "http://" + addr0
	c := nodetest.StartCluster(t, 3,
		nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) { cfg.Issuer = issuerBase })),
		nodetest.WithNode(0, nodetest.WithConfig(func(cfg *node.Config) { cfg.Listen = addr0 })))
	ctx := context.Background()
	n0 := c.Node(0)
	e := newFlowEnv(t, n0)
	f := newRSFixture(t, n0)
	c.WaitConverged()

	tok := e.codeTokens(t)
	nodes := []*nodetest.Node{c.Node(0), c.Node(1), c.Node(2)}
	activeAt := func(n *nodetest.Node, token string) bool {
		return introspect(t, n.BaseURL()+"/t/default", f.clientID, f.sec, token)["active"] == true
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, n := range nodes {
			if !activeAt(n, tok.AccessToken) {
				return fmt.Errorf("node %d: a fresh token is inactive", i)
			}
		}
		return nil
	})
	wc := f.watcherConfig
	wc.ServerURL = c.Node(2).BaseURL()
	sdk := startSDK(t, "node2", wc, revocation.Config{Issuer: e.issuer, Audience: e.issuer})
	if err := sdk.accepted(tok.AccessToken); err != nil {
		t.Fatal(err)
	}

	// Refresh works at another node before the user is disabled.
	refreshAt := func(n *nodetest.Node, rt string) (*oauth2.Token, error) {
		conf := *e.conf
		conf.Endpoint.TokenURL = n.BaseURL() + "/t/default/oauth2/token"
		return conf.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	}
	tok, err := refreshAt(c.Node(2), tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh at node 2: %v", err)
	}

	if _, err := c.Node(1).Admin.DisableUser(ctx, connect.NewRequest(&adminv1.DisableUserRequest{Tenant: "default", User: e.userID})); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, n := range nodes {
			if activeAt(n, tok.AccessToken) {
				return fmt.Errorf("node %d: the disabled user's token is active", i)
			}
		}
		if _, err := sdk.v.Verify(ctx, tok.AccessToken); !errors.Is(err, revocation.ErrRevoked) {
			return fmt.Errorf("SDK following node 2: %v, want ErrRevoked", err)
		}
		return nil
	})
	for i, n := range nodes {
		if _, err := refreshAt(n, tok.RefreshToken); err == nil {
			t.Fatalf("node %d: the disabled user's refresh token still works", i)
		}
	}
}
