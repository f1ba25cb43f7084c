package node_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/node/proctest"
	"github.com/tallyauth/tally/revocation"
)

// issuerClient dials the cluster's one issuer host at whichever node
// answers, as a load balancer in front of the nodes would.
func issuerClient(c *proctest.Cluster) *http.Client {
	u, _ := url.Parse(c.Issuer)
	var d net.Dialer
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != u.Host {
			return d.DialContext(ctx, network, addr)
		}
		var last error
		for _, p := range c.Nodes() {
			if !p.Running() {
				continue
			}
			conn, err := d.DialContext(ctx, network, strings.TrimPrefix(p.URL(), "http://"))
			if err == nil {
				return conn, nil
			}
			last = err
		}
		return nil, fmt.Errorf("no node answers: %v", last)
	}
	return &http.Client{Transport: tr}
}

// ackLatencies summarises ack→SDK delays.
func ackLatencies(ack, seen map[string]time.Time, keep func(jti string, ackAt time.Time) bool) (n int, p50, p99, worst time.Duration) {
	var lat []time.Duration
	for j, a := range ack {
		if !keep(j, a) {
			continue
		}
		if s, ok := seen[j]; ok {
			lat = append(lat, max(0, s.Sub(a)))
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(lat)
	return len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
}

// TestEventLogKill9 runs real `tally serve` processes whose embedded NATS
// servers form one cluster (as make cluster does) and kills each node in
// turn with SIGKILL, the one holding the stream leader first, under
// revocation load. One SDK follows the stream over NATS (failing over
// between the nodes' URLs), one over a node's Connect stream: every
// acknowledged revocation reaches both exactly once. Anonymous NATS
// connections, a forged event and deleting the stream are refused. It
// logs the ack→SDK delivery latency with all nodes up and with one killed
// (figures for loadtest/BENCHMARKS.md).
func TestEventLogKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes, a minute or more")
	}
	c := proctest.Start(t, proctest.Options{})
	ctx := context.Background()
	for _, p := range c.Nodes() {
		if nc, err := nats.Connect(p.NATSURL()); err == nil {
			nc.Close()
			t.Fatalf("anonymous NATS connection to %s accepted", p.ID)
		} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Fatalf("anonymous NATS connection to %s: %v, want an authorization violation", p.ID, err)
		}
	}
	var created struct {
		Client struct {
			ClientID string `json:"clientId"`
		} `json:"client"`
		ClientSecret string `json:"clientSecret"`
	}
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error { // the default tenant may not be there yet
		return c.Call(ctx, c.Node(0), "/tally.admin.v1.AdminService/CreateClient", map[string]any{"tenant": "default", "name": "orders-api"}, &created)
	})
	rsID, rsSecret := created.Client.ClientID, created.ClientSecret

	var perrMu sync.Mutex
	var perrs []string
	rsc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: c.NATSURLs(), Tenant: "default", ClientID: rsID, ClientSecret: rsSecret})
	if err != nil {
		t.Fatal(err)
	}
	defer rsc.Close()
	rsc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		perrMu.Lock()
		perrs = append(perrs, err.Error())
		perrMu.Unlock()
	})
	js, _ := jetstream.New(rsc)
	var leader string
	nodetest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		s, err := js.Stream(ctx, "TALLY_EVENTS")
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("stream replicas %d, cluster %+v", info.Config.Replicas, info.Cluster)
		}
		leader = info.Cluster.Leader
		return nil
	})

	// A resource server may not forge an event nor delete the stream.
	forged := nats.NewMsg("tally.default.revocation.token")
	forged.Header.Set("Tally-Cluster", "tally")
	forged.Header.Set("Tally-Raft-Index", "18446744073709551000")
	rsc.PublishMsg(forged)
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := js.PublishMsg(sctx, forged); err == nil {
		t.Fatal("a forged event was acknowledged")
	}
	cancel()
	sctx, cancel = context.WithTimeout(ctx, time.Second)
	if err := js.DeleteStream(sctx, "TALLY_EVENTS"); err == nil {
		t.Fatal("a resource server deleted the stream")
	}
	cancel()
	nodetest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		perrMu.Lock()
		defer perrMu.Unlock()
		all := strings.Join(perrs, "\n")
		for _, want := range []string{`Publish to "tally.default.revocation.token"`, `Publish to "$JS.API.STREAM.DELETE.TALLY_EVENTS"`} {
			if !strings.Contains(all, want) {
				return fmt.Errorf("no permissions violation for %s in %q", want, all)
			}
		}
		return nil
	})

	// Two SDKs: NATS, and the Connect stream of the last node.
	issuer := c.Issuer + "/t/default"
	hc := issuerClient(c)
	type seen struct {
		mu    sync.Mutex
		count map[string]int
		at    map[string]time.Time
	}
	watch := func(natsConn *nats.Conn, server string) (*revocation.Watcher, *seen) {
		s := &seen{count: map[string]int{}, at: map[string]time.Time{}}
		w, err := revocation.NewWatcher(revocation.WatcherConfig{
			Issuer: issuer, Tenant: "default", ServerURL: server, ClientID: rsID, ClientSecret: rsSecret,
			NATS: natsConn, HTTPClient: hc, MaxDisconnect: 5 * time.Minute,
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
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := w.WaitSynced(wctx); err != nil {
			t.Fatal(err)
		}
		return w, s
	}
	connectNode := c.Node(len(c.Nodes()) - 1)
	wNATS, sNATS := watch(rsc, connectNode.URL())
	wConn, sConn := watch(nil, connectNode.URL())
	// When each revocation is first in the NATS SDK's set (the live
	// subjects can put it there before the stream delivers it).
	var inSetMu sync.Mutex
	inSet := map[string]time.Time{}

	// Revocation load through every running node, round robin.
	var mu sync.Mutex
	ackedAt := map[string]time.Time{}
	unseen := map[string]bool{} // acknowledged, not yet in the NATS SDK's set
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			p := c.Node(k % len(c.Nodes()))
			if !p.Running() {
				continue
			}
			jti := fmt.Sprintf("%s-%d", p.ID, k)
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.Call(rctx, p, "/tally.admin.v1.AdminService/RevokeToken", map[string]any{
				"tenant": "default", "jti": jti, "expiresAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
			}, nil)
			cancel()
			if err == nil {
				mu.Lock()
				ackedAt[jti] = time.Now()
				unseen[jti] = true
				mu.Unlock()
			}
		}
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			mu.Lock()
			var pending []string
			for j := range unseen {
				pending = append(pending, j)
			}
			mu.Unlock()
			now := time.Now()
			for _, j := range pending {
				if wNATS.Set().Revoked(j) {
					inSetMu.Lock()
					inSet[j] = now
					inSetMu.Unlock()
					mu.Lock()
					delete(unseen, j)
					mu.Unlock()
				}
			}
		}
	})
	acked := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(ackedAt)
	}
	waitAcked := func(n int) {
		nodetest.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
			if got := acked(); got < n {
				return fmt.Errorf("%d revocations acknowledged, want %d", got, n)
			}
			return nil
		})
	}
	waitAcked(100)
	upUntil := time.Now()

	// Kill each node in turn, the stream leader's first.
	order := c.Nodes()
	slices.SortStableFunc(order, func(a, b *proctest.Proc) int {
		switch {
		case a.ID == leader:
			return -1
		case b.ID == leader:
			return 1
		}
		return 0
	})
	type window struct {
		id       string
		from, to time.Time
	}
	var downs []window
	for _, p := range order {
		p.Kill()
		from := time.Now()
		waitAcked(acked() + 100)
		downs = append(downs, window{p.ID, from, time.Now()})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		p.WaitReady(60 * time.Second)
		waitAcked(acked() + 20)
	}
	close(stop)
	wg.Wait()

	inSetMu.Lock()
	mu.Lock()
	n, p50, p99, worst := ackLatencies(ackedAt, inSet, func(_ string, a time.Time) bool { return a.Before(upUntil) })
	t.Logf("nats SDK set (live subjects), all nodes up: %d revocations, ack→set p50 %s p99 %s max %s", n, p50, p99, worst)
	for _, d := range downs {
		n, p50, p99, worst := ackLatencies(ackedAt, inSet, func(_ string, a time.Time) bool { return a.After(d.from) && a.Before(d.to) })
		t.Logf("nats SDK set (live subjects), %s killed: %d revocations, ack→set p50 %s p99 %s max %s", d.id, n, p50, p99, worst)
	}
	mu.Unlock()
	inSetMu.Unlock()
	for _, x := range []struct {
		name string
		w    *revocation.Watcher
		s    *seen
	}{{"nats", wNATS, sNATS}, {"connect", wConn, sConn}} {
		nodetest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			x.s.mu.Lock()
			defer x.s.mu.Unlock()
			var missing []string
			for j := range ackedAt {
				if !x.w.Set().Revoked(j) {
					missing = append(missing, j)
				}
				if x.s.count[j] != 1 { // the stream path, exactly once
					return fmt.Errorf("%s SDK applied %s %d times from the stream", x.name, j, x.s.count[j])
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("%s SDK misses %d acknowledged revocations, e.g. %s", x.name, len(missing), missing[0])
			}
			return nil
		})
		mu.Lock()
		x.s.mu.Lock()
		n, p50, p99, worst := ackLatencies(ackedAt, x.s.at, func(_ string, a time.Time) bool { return a.Before(upUntil) })
		t.Logf("%s SDK, all nodes up: %d revocations, ack→SDK p50 %s p99 %s max %s", x.name, n, p50, p99, worst)
		for _, d := range downs {
			if x.name == "connect" && d.id == connectNode.ID {
				continue // its node was the one down
			}
			n, p50, p99, worst := ackLatencies(ackedAt, x.s.at, func(_ string, a time.Time) bool { return a.After(d.from) && a.Before(d.to) })
			t.Logf("%s SDK, %s killed: %d revocations, ack→SDK p50 %s p99 %s max %s", x.name, d.id, n, p50, p99, worst)
		}
		x.s.mu.Unlock()
		mu.Unlock()
	}
}
