package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestRefreshReuseReachesSDK: reuse of a rotated refresh token revokes the
// family; a resource server following the event log learns it as a
// reuse-detected and a family-revoked event, and rejects the family's access
// tokens.
func TestRefreshReuseReachesSDK(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	f := newRSFixture(t, n)
	ctx := context.Background()

	wc := f.watcherConfig
	wc.NATS = f.connectNATS(t)
	w, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]revocation.EventDetails{}
	w.OnEvent(func(typ string, d revocation.EventDetails) {
		mu.Lock()
		defer mu.Unlock()
		seen[typ] = d
	})
	v, err := revocation.NewVerifier(revocation.Config{Issuer: e.issuer, Audience: e.issuer, Watcher: w})
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	t.Cleanup(w.Stop)
	sctx, cancel := context.WithTimeout(ctx, nodetest.Timeout)
	defer cancel()
	if err := w.WaitSynced(sctx); err != nil {
		t.Fatal(err)
	}

	tok := e.codeTokens(t)
	refresh := e.refresh
	t2, err := refresh(tok.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, t2.AccessToken); err != nil {
		t.Fatalf("the SDK rejects a fresh access token of the family: %v", err)
	}
	if _, err := refresh(tok.RefreshToken); err == nil {
		t.Fatal("reuse of a superseded refresh token succeeded")
	} else if c, s := tokenError(t, err); c != "invalid_grant" || s != http.StatusBadRequest {
		t.Fatalf("reuse: %s %d", c, s)
	}

	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if _, err := v.Verify(ctx, t2.AccessToken); !errors.Is(err, revocation.ErrRevoked) {
			return fmt.Errorf("the family's access token after reuse: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, typ := range []string{revocation.EventReuseDetected, revocation.EventFamilyRevoked} {
			d, ok := seen[typ]
			if !ok {
				return fmt.Errorf("no %s event yet", typ)
			}
			if d.FamilyID == "" || d.ClientID != e.conf.ClientID || d.Subject != e.userID {
				return fmt.Errorf("%s details %+v, want the family, client %s and user %s", typ, d, e.conf.ClientID, e.userID)
			}
		}
		return nil
	})
}

// TestRefreshReuseIntervalFromConfig: with node.Config.RefreshReuseInterval
// set, a client that lost the response presents the just-superseded refresh
// token again and gets the same successor instead of a family revocation.
func TestRefreshReuseIntervalFromConfig(t *testing.T) {
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) { c.RefreshReuseInterval = time.Minute }))
	e := newFlowEnv(t, n)
	tok := e.codeTokens(t)
	refresh := e.refresh
	first, err := refresh(tok.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	again, err := refresh(tok.RefreshToken)
	if err != nil {
		t.Fatalf("within the reuse interval: %v", err)
	}
	if again.RefreshToken != first.RefreshToken {
		t.Fatal("within the reuse interval the successor differs")
	}
	if _, err := refresh(first.RefreshToken); err != nil {
		t.Fatalf("the successor no longer works: %v", err)
	}
}
