package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestDeleteAtEveryNode (issue 16): in a three-node cluster, deleting a
// client and a user through one node makes their tokens inactive at every
// node's introspection and rejected by SDKs following another node over
// NATS and over Connect, and by an SDK that starts later (resync); the
// user's refresh token stops working everywhere and its personal data is
// absent from every node's state file and newest snapshot. Bad input is a
// NOT_FOUND or FAILED_PRECONDITION, never INTERNAL.
func TestDeleteAtEveryNode(t *testing.T) {
	addr0 := freeAddr(t)
	issuerBase := "http://" + addr0
	c := nodetest.StartCluster(t, 3,
		nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) { cfg.Issuer = issuerBase })),
		nodetest.WithNode(0, nodetest.WithConfig(func(cfg *node.Config) { cfg.Listen = addr0 })))
	ctx := context.Background()
	n0 := c.Node(0)
	e := newFlowEnv(t, n0)
	f := newRSFixture(t, n0)
	nodes := []*nodetest.Node{c.Node(0), c.Node(1), c.Node(2)}

	// The doomed client issues a JWT and the opaque one an opaque token;
	// both carry the tenant issuer as audience, as alice's tokens do.
	jwtID, jwtSecret := n0.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "doomed",
		Scopes: []string{"read:orders"}, Audiences: []string{e.issuer}})
	opqID, opqSecret := n0.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "doomed-opaque",
		Scopes: []string{"read:orders"}, Audiences: []string{e.issuer}, TokenFormat: "opaque"})
	c.WaitConverged()
	jwtTok := token(t, e.issuer, jwtID, jwtSecret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
	opqTok := token(t, e.issuer, opqID, opqSecret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
	user := e.codeTokens(t)

	activeAt := func(n *nodetest.Node, tok string) bool {
		return introspect(t, n.BaseURL()+"/t/default", f.clientID, f.sec, tok)["active"] == true
	}
	vc := revocation.Config{Issuer: e.issuer, Audience: e.issuer, ClientID: f.rsID, ClientSecret: f.rsSecret}
	wc := f.watcherConfig
	wc.ServerURL = c.Node(2).BaseURL()
	sdks := []*sdkPair{startSDK(t, "connect@node2", wc, vc)}
	wcNATS := wc
	wcNATS.NATS = f.connectNATS(t)
	sdks = append(sdks, startSDK(t, "nats@node0", wcNATS, vc))
	all := func(what string, tok string, want bool) func() error {
		return func() error {
			for i, n := range nodes {
				if activeAt(n, tok) != want {
					return fmt.Errorf("%s: node %d: active %v, want %v", what, i, !want, want)
				}
			}
			for _, p := range sdks {
				var err error
				if want {
					err = p.accepted(tok)
				} else {
					err = p.rejected(tok)
				}
				if err != nil {
					return fmt.Errorf("%s: %w", what, err)
				}
			}
			return nil
		}
	}
	for what, tok := range map[string]string{"client JWT": jwtTok, "opaque": opqTok, "user": user.AccessToken} {
		checkFor(t, 10*time.Second, 10*time.Millisecond, all(what, tok, true))
	}

	// Bad input: unknown ids, the default tenant.
	for _, call := range []struct {
		name string
		err  error
		want connect.Code
	}{
		{"unknown client", deleteClient(ctx, c.Node(1), "default", "nope"), connect.CodeNotFound},
		{"client of unknown tenant", deleteClient(ctx, c.Node(1), "nope", jwtID), connect.CodeNotFound},
		{"unknown user", deleteUser(ctx, c.Node(1), "default", "nobody"), connect.CodeNotFound},
		{"unknown tenant", deleteTenant(ctx, c.Node(1), "nope"), connect.CodeNotFound},
		{"default tenant", deleteTenant(ctx, c.Node(1), "default"), connect.CodeFailedPrecondition},
	} {
		if got := connect.CodeOf(call.err); got != call.want {
			t.Errorf("%s: %v, want %v", call.name, call.err, call.want)
		}
	}

	// Delete the clients through node 1: every node and every SDK.
	for _, id := range []string{jwtID, opqID} {
		if err := deleteClient(ctx, c.Node(1), "default", id); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, all("deleted client JWT", jwtTok, false))
	checkFor(t, 10*time.Second, 10*time.Millisecond, all("deleted client opaque", opqTok, false))
	for _, p := range sdks {
		if _, err := p.v.Verify(ctx, jwtTok); !errors.Is(err, revocation.ErrRevoked) {
			t.Fatalf("%s: deleted client's JWT: %v, want ErrRevoked", p.name, err)
		}
	}
	if code, _, _ := postForm(t, e.issuer+"/oauth2/token", jwtID, jwtSecret, map[string][]string{"grant_type": {"client_credentials"}}); code != http.StatusUnauthorized {
		t.Fatalf("token for a deleted client: status %d, want 401", code)
	}

	if raw, err := os.ReadFile(stateFile(t, n0.DataDir)); err != nil || !bytes.Contains(raw, []byte("alice@example.com")) {
		t.Fatalf("test is blind: the e-mail is not in the state file before the delete (%v)", err)
	}
	// Delete alice through node 2, by username.
	res, err := c.Node(2).Admin.DeleteUser(ctx, connect.NewRequest(&adminv1.DeleteUserRequest{Tenant: "default", User: "alice"}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.UserId != e.userID {
		t.Fatalf("deleted %q, want %q", res.Msg.UserId, e.userID)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, all("deleted user", user.AccessToken, false))
	for i, n := range nodes {
		conf := *e.conf
		conf.Endpoint.TokenURL = n.BaseURL() + "/t/default/oauth2/token"
		if _, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: user.RefreshToken}).Token(); err == nil {
			t.Fatalf("node %d: the deleted user's refresh token still works", i)
		}
	}
	// A resource server that starts now learns both from the resync.
	fresh := startSDK(t, "resynced", wc, vc)
	for _, tok := range []string{jwtTok, user.AccessToken} {
		if _, err := fresh.v.Verify(ctx, tok); !errors.Is(err, revocation.ErrRevoked) {
			t.Fatalf("after a resync: %v, want ErrRevoked", err)
		}
	}
	fresh.w.Stop()

	// Erasure: no node's state file, nor its newest snapshot, holds the
	// user's username, e-mail or name.
	c.WaitApplied(uint64(res.Msg.RaftIndex))
	for i, n := range nodes {
		if err := n.Raft().Snapshot(); err != nil {
			t.Logf("node %d: snapshot: %v", i, err)
		}
		files := []string{stateFile(t, n.DataDir)}
		if s := newestSnapshot(n.DataDir); s != "" {
			files = append(files, s)
		}
		for _, p := range files {
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, pii := range []string{"alice@example.com", "Alice A"} {
				if bytes.Contains(raw, []byte(pii)) {
					t.Errorf("node %d: %s still holds %q", i, p, pii)
				}
			}
		}
	}
	// The username is free again.
	if _, err := n0.Admin.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{Tenant: "default", Username: "alice"})); err != nil {
		t.Fatalf("re-create the username: %v", err)
	}
	for _, p := range sdks {
		if r := p.w.Rejected(); r != 0 {
			t.Errorf("%s: the watcher dropped %d events", p.name, r)
		}
	}
}

// TestDeleteTenant (issue 16): deleting a tenant removes it at every node
// (its token endpoint and JWKS answer 404, introspection of its tokens is
// impossible), and the event publisher goes on: a revocation in another
// tenant after it still reaches the SDK over NATS.
func TestDeleteTenant(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	f := newRSFixture(t, n)
	if _, err := n.Admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: "doomed"})); err != nil {
		t.Fatal(err)
	}
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "doomed", Name: "svc", Scopes: []string{"read:orders"}})
	doomedIss := n.Issuer("doomed")
	tok := token(t, doomedIss, id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
	// Revoke it, so the tenant has an event in the outbox too.
	if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "doomed", Token: tok})); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Admin.DeleteTenant(ctx, connect.NewRequest(&adminv1.DeleteTenantRequest{Id: "doomed"})); err != nil {
		t.Fatal(err)
	}
	if err := deleteTenant(ctx, n, "doomed"); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("delete again: %v", err)
	}
	if _, err := n.Admin.GetTenant(ctx, connect.NewRequest(&adminv1.GetTenantRequest{Id: "doomed"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("get deleted tenant: %v", err)
	}
	for _, path := range []string{"/.well-known/jwks.json", "/.well-known/openid-configuration"} {
		resp, err := http.Get(doomedIss + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s of a deleted tenant: %d", path, resp.StatusCode)
		}
	}
	if code, _, _ := postForm(t, doomedIss+"/oauth2/introspect", id, secret, map[string][]string{"token": {tok}}); code == http.StatusOK || code >= 500 {
		t.Fatalf("introspection at a deleted tenant: %d", code)
	}

	// The publisher is not stuck on the deleted tenant's events.
	wc := f.watcherConfig
	wc.NATS = f.connectNATS(t)
	sdk := startSDK(t, "nats", wc, f.verifierConfig)
	other := token(t, f.issuer, f.clientID, f.sec, oauth2.AuthStyleInHeader, "read:orders").AccessToken
	if err := sdk.accepted(other); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Token: other})); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error { return sdk.rejected(other) })
}

func deleteClient(ctx context.Context, n *nodetest.Node, tenant, id string) error {
	_, err := n.Admin.DeleteClient(ctx, connect.NewRequest(&adminv1.DeleteClientRequest{Tenant: tenant, ClientId: id}))
	return err
}

func deleteUser(ctx context.Context, n *nodetest.Node, tenant, user string) error {
	_, err := n.Admin.DeleteUser(ctx, connect.NewRequest(&adminv1.DeleteUserRequest{Tenant: tenant, User: user}))
	return err
}

func deleteTenant(ctx context.Context, n *nodetest.Node, id string) error {
	_, err := n.Admin.DeleteTenant(ctx, connect.NewRequest(&adminv1.DeleteTenantRequest{Id: id}))
	return err
}

// stateFile finds a node's state database under its data directory.
func stateFile(t *testing.T, dir string) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "state.db" {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no state.db under %s", dir)
	}
	return found
}

// newestSnapshot is the state file of a node's newest Raft snapshot ("" if
// none).
func newestSnapshot(dir string) string {
	var newest string
	var at time.Time
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "state.bin" {
			if fi, err := d.Info(); err == nil && fi.ModTime().After(at) {
				newest, at = p, fi.ModTime()
			}
		}
		return nil
	})
	return newest
}
