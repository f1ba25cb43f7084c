package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// exchangeAt performs an RFC 8693 exchange of subject for ordersAPI at n.
func exchangeAt(t *testing.T, n *nodetest.Node, id, secret, subject string) (int, map[string]any) {
	t.Helper()
	status, body, _ := postForm(t, n.BaseURL()+"/t/default/oauth2/token", id, secret, url.Values{
		"grant_type":         {issuance.GrantTokenExchange},
		"subject_token":      {subject},
		"subject_token_type": {issuance.TokenTypeAccessToken},
		"audience":           {ordersAPI},
	})
	return status, body
}

// TestExchangeCascadeRevocation (issue 12): a phantom JWT derived from an
// opaque token by exchange is accepted by the SDK; revoking the opaque
// parent through one node makes every node refuse to exchange it, makes the
// derived JWT inactive at every node's introspection, and makes an SDK
// following another node reject the derived JWT as revoked (the parent's
// TOKEN_REVOKED event revokes its derived tokens).
func TestExchangeCascadeRevocation(t *testing.T) {
	addr0 := freeAddr(t)
	issuerBase := "http://" + addr0
	c := nodetest.StartCluster(t, 3,
		nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) { cfg.Issuer = issuerBase })),
		nodetest.WithNode(0, nodetest.WithConfig(func(cfg *node.Config) { cfg.Listen = addr0 })))
	ctx := context.Background()
	n0 := c.Node(0)
	f := newRSFixture(t, n0)
	appID, appSecret := n0.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "app", Scopes: []string{"read:orders"}, Audiences: []string{ordersAPI}, TokenFormat: "opaque",
	})
	gwID, gwSecret := n0.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "gateway", GrantTypes: []string{issuance.GrantTokenExchange}, Audiences: []string{ordersAPI},
	})
	c.WaitConverged()
	nodes := []*nodetest.Node{c.Node(0), c.Node(1), c.Node(2)}

	status, body, _ := postForm(t, c.Node(1).BaseURL()+"/t/default/oauth2/token", appID, appSecret, url.Values{"grant_type": {"client_credentials"}})
	if status != http.StatusOK {
		t.Fatalf("client credentials: %d %v", status, body)
	}
	opaque := body["access_token"].(string)
	status, body = exchangeAt(t, c.Node(1), gwID, gwSecret, opaque)
	if status != http.StatusOK {
		t.Fatalf("exchange: %d %v", status, body)
	}
	derived := body["access_token"].(string)

	wc := f.watcherConfig
	wc.ServerURL = c.Node(2).BaseURL()
	sdk := startSDK(t, "node2", wc, f.verifierConfig)
	claims, err := sdk.v.Verify(ctx, derived)
	if err != nil {
		t.Fatalf("SDK rejects a fresh phantom token: %v", err)
	}
	if claims.Subject != appID || claims.ClientID != appID || len(claims.Parents) != 1 {
		t.Fatalf("claims %+v", claims)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, n := range nodes {
			if introspect(t, n.BaseURL()+"/t/default", f.clientID, f.sec, derived)["active"] != true {
				return fmt.Errorf("node %d: derived token inactive", i)
			}
		}
		return nil
	})

	if _, err := c.Node(0).Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Token: opaque})); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, n := range nodes {
			if introspect(t, n.BaseURL()+"/t/default", f.clientID, f.sec, derived)["active"] != false {
				return fmt.Errorf("node %d: derived token of a revoked parent is active", i)
			}
			if st, b := exchangeAt(t, n, gwID, gwSecret, opaque); st != http.StatusBadRequest || b["error"] != "invalid_request" {
				return fmt.Errorf("node %d: exchange of a revoked token: %d %v", i, st, b)
			}
		}
		if _, err := sdk.v.Verify(ctx, derived); !errors.Is(err, revocation.ErrRevoked) {
			return fmt.Errorf("SDK following node 2: %v, want ErrRevoked", err)
		}
		return nil
	})
}
