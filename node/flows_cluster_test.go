package node_test

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node/nodetest"
)

// TestConcurrentRefreshAcrossNodes: 50 concurrent uses of one refresh
// token spread over 3 nodes. The family's rotation is one compare-and-swap
// in the replicated FSM, so exactly one use succeeds; every other one is
// invalid_grant, and the reuse revokes the family — including the one
// successor that was handed out.
func TestConcurrentRefreshAcrossNodes(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(nodetest.FastRaft))
	n0 := c.Node(0)
	e := newFlowEnv(t, n0)
	c.WaitConverged()
	ctx := context.Background()
	verifier := oauth2.GenerateVerifier()
	loc := e.signIn(t, newBrowser(t), e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	tok, err := e.conf.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}

	const uses = 50
	type outcome struct {
		status  int
		code    string
		refresh string
	}
	results := make([]outcome, uses)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range uses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			nd := c.Node(i % 3)
			resp, err := http.PostForm(nd.Issuer("default")+"/oauth2/token", url.Values{
				"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}, "client_id": {e.conf.ClientID}})
			if err != nil {
				results[i] = outcome{code: err.Error()}
				return
			}
			defer resp.Body.Close()
			var body struct {
				Error        string `json:"error"`
				RefreshToken string `json:"refresh_token"`
			}
			_ = decodeJSON(resp, &body)
			results[i] = outcome{status: resp.StatusCode, code: body.Error, refresh: body.RefreshToken}
		}()
	}
	close(start)
	wg.Wait()

	ok, invalid := 0, 0
	var successor string
	for i, r := range results {
		switch {
		case r.status == http.StatusOK && r.refresh != "":
			ok++
			successor = r.refresh
		case r.status == http.StatusBadRequest && r.code == "invalid_grant":
			invalid++
		default:
			t.Errorf("use %d: %d %q", i, r.status, r.code)
		}
	}
	if ok != 1 || invalid != uses-1 {
		t.Fatalf("%d successes and %d invalid_grant, want 1 and %d", ok, invalid, uses-1)
	}
	// The family ends revoked: the successor is refused on every node.
	for i := range 3 {
		resp, err := http.PostForm(c.Node(i).Issuer("default")+"/oauth2/token", url.Values{
			"grant_type": {"refresh_token"}, "refresh_token": {successor}, "client_id": {e.conf.ClientID}})
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Error string `json:"error"`
		}
		_ = decodeJSON(resp, &body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || body.Error != "invalid_grant" {
			t.Errorf("successor on node %d: %d %q", i, resp.StatusCode, body.Error)
		}
	}
}
