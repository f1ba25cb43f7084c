package node_test

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node/nodetest"
)

// TestConcurrentRefreshAcrossNodes: 50 concurrent uses of one refresh
// token spread over 3 nodes. The family's rotation is one compare-and-swap
// in the replicated FSM, so exactly one use succeeds; every other one is
// invalid_grant, and the reuse revokes the family — including the one
// successor that was handed out.
//
// On a loaded machine a node may answer 503 temporarily_unavailable (a
// write that did not commit in time, a node behind its leader); a client
// retries those, and so does the test, for up to a minute. A retried use
// whose first attempt did commit meets its own rotation as a reuse, so the
// invariant is "at most one success", and exactly one when no use was
// retried.
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
	var retried atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range uses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			nd := c.Node(i % 3)
			deadline := time.Now().Add(time.Minute)
			for {
				resp, err := http.PostForm(nd.Issuer("default")+"/oauth2/token", url.Values{
					"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}, "client_id": {e.conf.ClientID}})
				if err != nil {
					results[i] = outcome{code: err.Error()}
					return
				}
				var body struct {
					Error        string `json:"error"`
					RefreshToken string `json:"refresh_token"`
				}
				_ = decodeJSON(resp, &body)
				resp.Body.Close()
				results[i] = outcome{status: resp.StatusCode, code: body.Error, refresh: body.RefreshToken}
				if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
					return
				}
				retried.Add(1)
				time.Sleep(100 * time.Millisecond)
			}
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
	switch {
	case ok > 1:
		t.Fatalf("%d successes: one refresh token redeemed more than once", ok)
	case ok+invalid != uses:
		t.Fatalf("%d successes and %d invalid_grant of %d uses", ok, invalid, uses)
	case ok == 0 && retried.Load() == 0:
		t.Fatalf("no use succeeded and none was retried")
	case ok == 0:
		t.Logf("no success: the winning use was answered 503 and its retry met its own rotation (%d retries)", retried.Load())
		return
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
