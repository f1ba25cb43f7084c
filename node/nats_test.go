package node_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
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
	"github.com/tallyauth/tally/revocation"
)

// freeAddrs reserves n loopback addresses (listen, then close).
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// natsCluster starts n nodes whose embedded NATS servers form one NATS
// cluster, as make cluster runs them, and returns the servers' client URLs.
func natsCluster(t testing.TB, n int) (*nodetest.Cluster, []string) {
	c := nodetest.StartCluster(t, n, nodetest.WithNATSCluster(), nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) {
		cfg.Events.Audience = []string{"tally-events"}
	})))
	urls := make([]string, n)
	for i := range n {
		urls[i] = "nats://" + c.Node(i).NATSClientAddr()
	}
	return c, urls
}

// streamInfo reads the event stream's info with a node's credentials.
func streamInfo(ctx context.Context, nc *nats.Conn) (*jetstream.StreamInfo, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, "TALLY_EVENTS")
	if err != nil {
		return nil, err
	}
	return s.Info(ctx)
}

// TestEmbeddedNATSCluster: the nodes' embedded NATS servers form one
// cluster, the stream has three replicas, anonymous clients are refused
// everywhere, and stopping the node that holds the stream leader loses no
// revocation: every one acknowledged through a survivor reaches an SDK
// following NATS (failing over between the nodes' URLs) and one following
// a survivor's Connect stream, exactly once.
func TestEmbeddedNATSCluster(t *testing.T) {
	c, urls := natsCluster(t, 3)
	ctx := context.Background()
	for _, u := range urls {
		if nc, err := nats.Connect(u); err == nil {
			nc.Close()
			t.Fatalf("anonymous connection to %s accepted", u)
		}
	}
	node0 := c.Node(0)
	nc, err := nats.Connect(node0.NATSURL(), append(node0.NATSOptions(), nats.ReconnectWait(20*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var leader string
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := streamInfo(ctx, nc)
		if err != nil {
			return err
		}
		if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
			return fmt.Errorf("stream replicas %d, cluster %+v", info.Config.Replicas, info.Cluster)
		}
		if !info.Config.DenyDelete || !info.Config.DenyPurge {
			return errors.New("stream allows delete or purge")
		}
		leader = info.Cluster.Leader
		return nil
	})
	li := -1
	for i := range c.Len() {
		if c.Node(i).NodeID() == leader {
			li = i
		}
	}
	if li < 0 {
		t.Fatalf("stream leader %q is no node", leader)
	}
	survivors := slices.DeleteFunc(c.Running(), func(i int) bool { return i == li })

	rsID, rsSecret := c.Node(survivors[0]).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "orders-api"})
	var issuers []string
	for _, i := range c.Running() {
		issuers = append(issuers, c.Node(i).Issuer("default"))
	}
	// The NATS watcher starts on the leader's node and must fail over.
	order := append([]string{urls[li]}, urls[survivors[0]], urls[survivors[1]])
	rsc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: strings.Join(order, ","), Tenant: "default", ClientID: rsID, ClientSecret: rsSecret})
	if err != nil {
		t.Fatal(err)
	}
	defer rsc.Close()
	type seen struct {
		mu    sync.Mutex
		count map[string]int
		at    map[string]time.Time
	}
	watch := func(name string, natsConn *nats.Conn, via *nodetest.Node) (*revocation.Watcher, *seen) {
		s := &seen{count: map[string]int{}, at: map[string]time.Time{}}
		w, err := revocation.NewWatcher(revocation.WatcherConfig{
			Issuer: via.Issuer("default"), Tenant: "default", ServerURL: via.BaseURL(), ClientID: rsID, ClientSecret: rsSecret,
			NATS: natsConn, SETIssuers: issuers, SETAudience: "tally-events",
		})
		if err != nil {
			t.Fatal(err)
		}
		w.OnEvent(func(typ string, d revocation.EventDetails) {
			if typ != revocation.EventTokenRevoked {
				return
			}
			s.mu.Lock()
			s.count[d.JTI]++
			if _, ok := s.at[d.JTI]; !ok {
				s.at[d.JTI] = time.Now()
			}
			s.mu.Unlock()
		})
		w.Start()
		t.Cleanup(w.Stop)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := w.WaitSynced(wctx); err != nil {
			t.Fatalf("%s watcher: %v", name, err)
		}
		return w, s
	}
	wNATS, sNATS := watch("nats", rsc, c.Node(survivors[1]))
	wConn, sConn := watch("connect", nil, c.Node(survivors[1]))

	var mu sync.Mutex
	ackedAt := map[string]time.Time{}
	var down time.Time
	revoke := func(n *nodetest.Node, jti string) {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := n.Admin.RevokeToken(rctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
			Tenant: "default", Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		}))
		if err == nil {
			mu.Lock()
			ackedAt[jti] = time.Now()
			mu.Unlock()
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, i := range survivors {
		n := c.Node(i)
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				revoke(n, fmt.Sprintf("n%d-%d", i, k))
			}
		})
	}
	acked := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(ackedAt)
	}
	nodetest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if acked() < 30 {
			return errors.New("few revocations yet")
		}
		return nil
	})
	c.Stop(li)
	mu.Lock()
	down = time.Now()
	mu.Unlock()
	before := acked()
	nodetest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := acked(); n < before+60 {
			return fmt.Errorf("%d revocations since the stream leader's node stopped", n-before)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	c.Restart(li)
	revoke(c.Node(li), "after-restart")

	check := func(name string, w *revocation.Watcher, s *seen) {
		nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			s.mu.Lock()
			defer s.mu.Unlock()
			for j := range ackedAt {
				if !w.Set().Revoked(j) {
					return fmt.Errorf("%s SDK misses %s", name, j)
				}
				if s.count[j] != 1 { // the stream path, exactly once
					return fmt.Errorf("%s SDK applied %s %d times from the stream", name, j, s.count[j])
				}
			}
			return nil
		})
		// Delivery latency (acknowledgement to SDK) of revocations made
		// while the stream leader's node was down: a figure, not a test.
		mu.Lock()
		s.mu.Lock()
		var lat []time.Duration
		for j, a := range ackedAt {
			if a.After(down) && j != "after-restart" {
				if r, ok := s.at[j]; ok && !r.Before(a) {
					lat = append(lat, r.Sub(a))
				} else if ok {
					lat = append(lat, 0) // seen before the ack returned
				}
			}
		}
		s.mu.Unlock()
		mu.Unlock()
		slices.Sort(lat)
		t.Logf("%s watcher: applied %d, position %d, resyncs %d", name, w.Applied(), w.Position(), w.Resyncs())
		if len(lat) > 0 {
			t.Logf("%s: %d revocations while a node was down: ack→SDK p50 %s p99 %s max %s", name, len(lat),
				lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
		}
	}
	check("nats", wNATS, sNATS)
	check("connect", wConn, sConn)

	// The stream holds each exactly once.
	js, _ := jetstream.New(nc)
	nodetest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		got, err := streamJTIs(ctx, js)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for j := range ackedAt {
			if got[j] != 1 {
				return fmt.Errorf("%s is in the stream %d times", j, got[j])
			}
		}
		return nil
	})
}

// TestEmbeddedNATSTLSBeyondLoopback: an embedded server listening beyond
// loopback requires TLS with the node certificate; a resource server that
// trusts the cluster CA connects with its client credentials, a plain
// connection is refused, and the node's own publisher works over TLS.
func TestEmbeddedNATSTLSBeyondLoopback(t *testing.T) {
	listen := freeAddrs(t, 1)[0]
	n := nodetest.Start(t, nodetest.WithConfig(func(cfg *node.Config) {
		cfg.Dev = false // --dev keeps everything on loopback
		cfg.KEK = make([]byte, 32)
		cfg.AdminToken = "admin-token-for-tests-0123456789"
		cfg.Listen = listen
		cfg.Issuer = "http://" + listen
		cfg.NATSListen = "0.0.0.0:0"
	}))
	f := newRSFixture(t, n)
	_, port, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(n.NATSURL(), "tls://"), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(n.NATSURL(), "tls://") {
		t.Fatalf("NATS URL %s: want tls://", n.NATSURL())
	}
	addr := "127.0.0.1:" + port
	if nc, err := nats.Connect("nats://"+addr, nats.UserInfo(f.rsID, f.rsSecret), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("plain-text connection accepted beyond loopback")
	}
	rsc, err := revocation.ConnectNATS(revocation.NATSConfig{
		URLs: "tls://" + addr, Tenant: "default", ClientID: f.rsID, ClientSecret: f.rsSecret,
		CAFile: filepath.Join(n.DataDir, "tls", "ca.pem"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rsc.Close()
	wc := f.watcherConfig
	wc.NATS = rsc
	w, _ := f.start(t, wc)
	if err := f.revokeJTI(context.Background(), "over-tls"); err != nil {
		t.Fatal(err)
	}
	nodetest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !w.Set().Revoked("over-tls") {
			return errors.New("revocation not seen over TLS")
		}
		return nil
	})
}

// TestNATSClientCredentialsApplyAtOnce: a resource server's NATS
// connection is checked against the replicated client: disabling the
// client or rotating its secret (without overlap) closes the connection
// and keeps the old credentials out; the new secret connects.
func TestNATSClientCredentialsApplyAtOnce(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "orders-api"})
	dial := func(secret string) (*nats.Conn, error) {
		return revocation.ConnectNATS(revocation.NATSConfig{URLs: n.NATSURL(), Tenant: "default", ClientID: id, ClientSecret: secret})
	}
	closedSoon := func(nc *nats.Conn) {
		t.Helper()
		nodetest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if nc.IsConnected() {
				return errors.New("still connected")
			}
			return nil
		})
	}
	if _, err := dial("wrong"); err == nil {
		t.Fatal("wrong secret accepted")
	}
	nc, err := dial(secret)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := n.Admin.DisableClient(ctx, connect.NewRequest(&adminv1.DisableClientRequest{Tenant: "default", ClientId: id})); err != nil {
		t.Fatal(err)
	}
	closedSoon(nc)
	if c, err := dial(secret); err == nil {
		c.Close()
		t.Fatal("disabled client connected")
	}
	if _, err := n.Admin.EnableClient(ctx, connect.NewRequest(&adminv1.EnableClientRequest{Tenant: "default", ClientId: id})); err != nil {
		t.Fatal(err)
	}
	nc2, err := dial(secret)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	rot, err := n.Admin.RotateClientSecret(ctx, connect.NewRequest(&adminv1.RotateClientSecretRequest{Tenant: "default", ClientId: id}))
	if err != nil {
		t.Fatal(err)
	}
	closedSoon(nc2)
	if c, err := dial(secret); err == nil {
		c.Close()
		t.Fatal("rotated-out secret connected")
	}
	nc3, err := dial(rot.Msg.ClientSecret)
	if err != nil {
		t.Fatalf("new secret: %v", err)
	}
	nc3.Close()
}
