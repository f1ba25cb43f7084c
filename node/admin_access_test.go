package node_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestAdminUserConsentsAndSessions: an admin lists the consents a user
// gave, revokes them (one client's, then all), and ends the user's sign-in
// sessions: the user's browser, signed in before, is asked for the
// password again.
func TestAdminUserConsentsAndSessions(t *testing.T) {
	ctx := context.Background()
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	b := newBrowser(t)
	ch := oauth2.S256ChallengeOption(oauth2.GenerateVerifier())
	e.signIn(t, b, e.conf.AuthCodeURL("s", ch))

	list := func() *adminv1.ListUserConsentsResponse {
		t.Helper()
		res, err := n.Admin.ListUserConsents(ctx, connect.NewRequest(&adminv1.ListUserConsentsRequest{Tenant: "default", User: "alice"}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	got := list()
	if len(got.Consents) != 1 || got.Consents[0].ClientId != e.conf.ClientID || len(got.Consents[0].Scopes) == 0 || got.UserId == "" {
		t.Fatalf("consents after sign-in: %v", got)
	}
	if _, err := n.Admin.RevokeUserConsents(ctx, connect.NewRequest(&adminv1.RevokeUserConsentsRequest{Tenant: "default", User: "alice", ClientId: "c_nope"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("revoking a consent never given: %v", err)
	}
	r, err := n.Admin.RevokeUserConsents(ctx, connect.NewRequest(&adminv1.RevokeUserConsentsRequest{Tenant: "default", User: got.UserId}))
	if err != nil || r.Msg.Revoked != 1 {
		t.Fatalf("revoke consents: %v %v", r, err)
	}
	if got := list(); len(got.Consents) != 0 {
		t.Fatalf("consents after revoking: %v", got)
	}

	// Signed in: the next request goes to the consent page, not the login.
	if p := b.get(e.conf.AuthCodeURL("s2", ch)); !p.isConsent() {
		t.Fatalf("signed-in browser: %d %s", p.status, p.body)
	}
	s, err := n.Admin.RevokeUserSessions(ctx, connect.NewRequest(&adminv1.RevokeUserSessionsRequest{Tenant: "default", User: "alice"}))
	if err != nil || s.Msg.SessionsRevokedAt == nil {
		t.Fatalf("revoke sessions: %v %v", s, err)
	}
	if p := b.get(e.conf.AuthCodeURL("s3", ch)); !p.isLogin() {
		t.Fatalf("after the sessions were revoked: %d %s", p.status, p.body)
	}
	if _, err := n.Admin.RevokeUserSessions(ctx, connect.NewRequest(&adminv1.RevokeUserSessionsRequest{Tenant: "default", User: "nobody"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("unknown user: %v", err)
	}
}
