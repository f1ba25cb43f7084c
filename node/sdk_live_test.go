package node_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestLiveRevocationsWhileTheStreamConnectionIsDown: a watcher follows the
// stream on a connection held to one node's NATS server, and the live
// subjects on a connection to every server (revocation.ConnectNATSEach).
// With that node stopped, the stream cannot deliver anything to the
// watcher, yet a revocation acknowledged by the other nodes reaches its
// set (live); once the node is back the stream delivers it too, once.
// Before the live subjects were followed for the watcher's whole run and
// on more than one connection, a resource server learnt nothing while its
// NATS connection moved to another server or the stream had no leader.
func TestLiveRevocationsWhileTheStreamConnectionIsDown(t *testing.T) {
	c, urls := natsCluster(t, 3)
	ctx := context.Background()
	const pinned = 2 // the node the stream connection is held to
	rsID, rsSecret := c.Node(0).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "orders-api"})
	var issuers []string
	for _, i := range c.Running() {
		issuers = append(issuers, c.Node(i).Issuer("default"))
	}
	nc := revocation.NATSConfig{URLs: urls[pinned], Tenant: "default", ClientID: rsID, ClientSecret: rsSecret}
	main, err := revocation.ConnectNATSEach(nc) // one connection, to urls[pinned] only
	if err != nil {
		t.Fatal(err)
	}
	defer main[0].Close()
	nc.URLs = strings.Join(urls, ",")
	live, err := revocation.ConnectNATSEach(nc)
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 3 {
		t.Fatalf("ConnectNATSEach: %d connections for 3 URLs", len(live))
	}
	for _, l := range live {
		defer l.Close()
	}
	w, err := revocation.NewWatcher(revocation.WatcherConfig{
		Issuer: c.Node(0).Issuer("default"), Tenant: "default", ServerURL: c.Node(0).BaseURL(),
		ServerURLs: []string{c.Node(1).BaseURL()}, ClientID: rsID, ClientSecret: rsSecret,
		NATS: main[0], LiveNATS: live, SETIssuers: issuers, SETAudience: "tally-events",
	})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	fromStream := map[string]int{}
	w.OnEvent(func(typ string, d revocation.EventDetails) {
		if typ == revocation.EventTokenRevoked {
			mu.Lock()
			fromStream[d.JTI]++
			mu.Unlock()
		}
	})
	w.Start()
	defer w.Stop()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	streamCount := func(jti string) int {
		mu.Lock()
		defer mu.Unlock()
		return fromStream[jti]
	}
	revoke := func(jti string) {
		t.Helper()
		// Through a survivor; retried while a new Raft leader is elected.
		nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			for _, i := range c.Running() {
				rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				_, err := c.Node(i).Admin.RevokeToken(rctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
					Tenant: "default", Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
				}))
				cancel()
				if err == nil {
					return nil
				}
			}
			return errors.New("no node acknowledged the revocation")
		})
	}

	revoke("before")
	nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if streamCount("before") != 1 {
			return errors.New("the stream has not delivered the first revocation")
		}
		return nil
	})

	c.Stop(pinned)
	revoke("during")
	nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if !w.Set().Revoked("during") {
			return errors.New("a revocation made while the stream connection is down has not reached the set")
		}
		return nil
	})
	if n := streamCount("during"); n != 0 {
		t.Fatalf("the stream delivered %d times over a connection to a stopped server", n)
	}
	if w.LiveApplied() < 1 {
		t.Fatalf("LiveApplied %d after a live revocation", w.LiveApplied())
	}

	c.Restart(pinned)
	nodetest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if n := streamCount("during"); n != 1 {
			return fmt.Errorf("the stream delivered the revocation %d times after the node came back", n)
		}
		return nil
	})
	if n := streamCount("before"); n != 1 {
		t.Fatalf("the first revocation came from the stream %d times", n)
	}
}
