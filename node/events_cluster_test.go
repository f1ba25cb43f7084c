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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/replication"
	"github.com/tallyauth/tally/revocation"
)

// TestClusterEventLog: three nodes publish to one NATS server. A
// revocation made on one node reaches an SDK that follows another node's
// Connect stream; then the leader is killed while revocations go on through
// the others, and every revocation acknowledged to a caller is in the
// stream exactly once (each node published it; the stream kept one).
func TestClusterEventLog(t *testing.T) {
	ncfg := replication.DefaultEmbeddedConfig()
	ncfg.Listen, ncfg.StoreDir = "127.0.0.1:0", t.TempDir()
	ncfg.AllowAnonymous = true // an external NATS server without auth
	ext, err := replication.StartEmbedded(ncfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Shutdown()
	url := ext.ClientURL()
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) {
		cfg.NATSListen = ""
		cfg.Events.NATSURL = url
		cfg.Events.Audience = []string{"tally-events"}
	})))
	ctx := context.Background()
	leader := c.LeaderIndex()
	follower := c.Follower()
	id, secret := follower.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "orders", Scopes: []string{"read:orders"}, Audiences: []string{ordersAPI},
	})

	// The SDK follows a follower's Connect stream. The harness's nodes have
	// their own base URLs, so SETs of other nodes carry their issuer.
	var issuers []string
	for _, i := range c.Running() {
		issuers = append(issuers, c.Node(i).Issuer("default"))
	}
	w, err := revocation.NewWatcher(revocation.WatcherConfig{
		Issuer: follower.Issuer("default"), Tenant: "default", ServerURL: follower.BaseURL(), ClientID: id, ClientSecret: secret,
		SETIssuers: issuers, SETAudience: "tally-events",
	})
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	defer w.Stop()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := w.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	revoke := func(n *nodetest.Node, jti string) error {
		rctx, cancel := context.WithTimeout(ctx, nodetest.Timeout)
		defer cancel()
		_, err := n.Admin.RevokeToken(rctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
			Tenant: "default", Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		}))
		return err
	}
	if err := revoke(c.Node(leader), "on-leader"); err != nil {
		t.Fatal(err)
	}
	nodetest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !w.Set().Revoked("on-leader") {
			return errors.New("revocation made on the leader not seen through the follower's stream")
		}
		return nil
	})

	// Revoke through the two other nodes while the leader is killed.
	var mu sync.Mutex
	acked := []string{"on-leader"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, i := range c.Running() {
		if i == leader {
			continue
		}
		n := c.Node(i)
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				jti := fmt.Sprintf("n%d-%d", i, k)
				if err := revoke(n, jti); err == nil {
					mu.Lock()
					acked = append(acked, jti)
					mu.Unlock()
				}
			}
		})
	}
	nodetest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 20 {
			return errors.New("few revocations yet")
		}
		return nil
	})
	c.Stop(leader)
	nodetest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 60 {
			return fmt.Errorf("%d revocations acknowledged; the cluster must keep going without the old leader", len(acked))
		}
		return nil
	})
	close(stop)
	wg.Wait()

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	nodetest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		got, err := streamJTIs(ctx, js)
		if err != nil {
			return err
		}
		var missing []string
		for _, j := range acked {
			switch got[j] {
			case 0:
				missing = append(missing, j)
			case 1:
			default:
				return fmt.Errorf("%s is in the stream %d times", j, got[j])
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d acknowledged revocations missing from the stream: %s", len(missing), strings.Join(missing[:min(5, len(missing))], " "))
		}
		return nil
	})
	nodetest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, j := range acked {
			if !w.Set().Revoked(j) {
				return fmt.Errorf("SDK misses %s", j)
			}
		}
		return nil
	})
}
