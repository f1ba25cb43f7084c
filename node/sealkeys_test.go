package node_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestSessionSealedWithRotatingKeyAcrossNodes (issue 11): on a cluster
// whose members all support zt_v2 the session cookie is sealed with the
// tenant's sealing key (it names the key); another node opens it, and it
// keeps working after a key rotation (the retired key stays live for a
// session's lifetime); the authorization code it leads to is sealed the
// same way and redeemed at yet another node.
func TestSessionSealedWithRotatingKeyAcrossNodes(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(nodetest.FastRaft))
	n0, n1, n2 := c.Node(0), c.Node(1), c.Node(2)
	ctx := context.Background()
	e := newFlowEnv(t, n0)
	c.WaitConverged()
	b := newBrowser(t)
	verifier := oauth2.GenerateVerifier()
	loc := e.signIn(t, b, e.conf.AuthCodeURL("s1", oauth2.S256ChallengeOption(verifier)))
	if loc.Query().Get("code") == "" {
		t.Fatalf("no code: %s", loc)
	}
	session := ""
	u, _ := url.Parse(n0.Issuer("default") + "/")
	for _, ck := range b.hc.Jar.Cookies(u) {
		if ck.Name == "tally_session" {
			session = ck.Value
		}
	}
	if !strings.HasPrefix(session, "f2.") {
		t.Fatalf("session cookie %q is not sealed with the tenant's sealing key", session)
	}
	if !strings.HasPrefix(loc.Query().Get("code"), "tlyc2.") {
		t.Errorf("code %q is not sealed with the tenant's sealing key", loc.Query().Get("code"))
	}

	if _, err := n0.Admin.RotateKeys(ctx, connect.NewRequest(&adminv1.RotateKeysRequest{Tenant: "default", PublishDelaySeconds: new(int64)})); err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()

	// Node 1 opens the session sealed by node 0 under the now retired key:
	// no sign-in. (The client is a native app, a public client with a
	// loopback redirect, so RFC 8252 section 8.6 has the user approve
	// again; the login form instead would mean the session did not open.)
	conf1 := *e.conf
	conf1.Endpoint.AuthURL = n1.Issuer("default") + "/oauth2/authorize"
	conf1.Endpoint.TokenURL = n2.Issuer("default") + "/oauth2/token"
	verifier = oauth2.GenerateVerifier()
	p := b.get(conf1.AuthCodeURL("s2", oauth2.S256ChallengeOption(verifier)))
	if !p.isConsent() {
		t.Fatalf("session of node 0 at node 1 after a rotation: %d %v %s", p.status, p.location, p.body)
	}
	p = b.post(conf1.Endpoint.AuthURL, url.Values{"req": {p.req(t)}, "action": {"approve"}})
	if p.location == nil || p.location.Query().Get("code") == "" {
		t.Fatalf("approval at node 1: %d %v %s", p.status, p.location, p.body)
	}
	code := p.location.Query().Get("code")
	if !strings.HasPrefix(code, "tlyc2.") || strings.Split(code, ".")[1] == strings.Split(loc.Query().Get("code"), ".")[1] {
		t.Errorf("code after the rotation %q: want it sealed under the new key", code)
	}
	tok, err := conf1.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("code of node 1 at node 2: %v", err)
	}
	if st := userinfoStatus(t, n2.Issuer("default"), tok.AccessToken); st != http.StatusOK {
		t.Errorf("userinfo: %d", st)
	}
}
