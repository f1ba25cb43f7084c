package replication

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/revocation/eventwire"
)

// freePorts reserves n loopback ports (listen, then close).
func freePorts(t testing.TB, n int) []string {
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

// nodeTLSConfigs returns, per server, the TLS configuration tally's node
// wiring uses for routes and node connections: the node certificate, peers
// verified as node certificates of one CA.
func nodeTLSConfigs(t testing.TB, n int) []*tls.Config {
	t.Helper()
	caCert, caKey, err := raft.NewCA("test", 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*tls.Config
	for i := range n {
		cert, key, err := raft.NewNodeCert(caCert, caKey, raft.CertOptions{NodeID: fmt.Sprintf("n%d", i), IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
		if err != nil {
			t.Fatal(err)
		}
		nt, err := raft.NewNodeTLS(caCert, cert, key)
		if err != nil {
			t.Fatal(err)
		}
		c := nt.ServerConfig()
		c.InsecureSkipVerify = true // VerifyConnection checks the peer
		out = append(out, c)
	}
	return out
}

type natsCluster struct {
	t       testing.TB
	cfgs    []EmbeddedConfig
	servers []*Embedded
	tls     []*tls.Config
}

// startNATSCluster starts n embedded servers routed to each other, as the
// nodes of a tally cluster run them. The ports are chosen before the
// servers bind them, so another process may take one in between: then the
// cluster starts again on fresh ports.
func startNATSCluster(t testing.TB, n int, withTLS bool) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t}
	if withTLS {
		c.tls = nodeTLSConfigs(t, n)
	}
	// The test's temporary directory is removed by a cleanup registered at
	// its first use: use it before registering the shutdown, so that the
	// servers stop before their store directories are removed (cleanups
	// run last first; the other way round, a server still writing its
	// JetStream store failed the removal under load).
	_ = t.TempDir()
	t.Cleanup(c.shutdown)
	for attempt := 1; ; attempt++ {
		c.configure(n)
		err := c.start()
		if err == nil {
			return c
		}
		c.shutdown()
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == 5 {
			t.Fatal(err)
		}
	}
}

// configure sets c.cfgs for n servers on freshly chosen loopback ports.
func (c *natsCluster) configure(n int) {
	clients, routes := freePorts(c.t, n), freePorts(c.t, n)
	c.cfgs = nil
	for i := range n {
		cfg := DefaultEmbeddedConfig()
		cfg.Listen = clients[i]
		cfg.StoreDir = filepath.Join(c.t.TempDir(), "nats")
		cfg.ServerName = fmt.Sprintf("n%d", i)
		cfg.NodePassword = testNodePass
		cfg.ClusterListen = routes[i]
		cfg.RoutePassword = "route-password-for-tests"
		for j := range n {
			if j != i {
				cfg.Routes = append(cfg.Routes, routes[j])
			}
		}
		if c.tls != nil {
			cfg.RouteTLS = c.tls[i]
			cfg.ClientTLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: c.tls[i].Certificates}
		}
		c.cfgs = append(c.cfgs, cfg)
	}
}

// start starts every server of c.cfgs at once and returns the first error.
func (c *natsCluster) start() error {
	n := len(c.cfgs)
	c.servers = make([]*Embedded, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			var err error
			c.servers[i], err = StartEmbedded(c.cfgs[i])
			errs <- err
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// shutdown stops every running server.
func (c *natsCluster) shutdown() {
	for i, s := range c.servers {
		if s != nil {
			s.Shutdown()
			c.servers[i] = nil
		}
	}
}

func (c *natsCluster) url(i int) string {
	if c.tls != nil {
		return "tls://" + c.cfgs[i].Listen
	}
	return "nats://" + c.cfgs[i].Listen
}

// connectNode connects to server i with the node credential; the client
// learns the other servers from the cluster and fails over to them.
func (c *natsCluster) connectNode(t testing.TB, i int) *nats.Conn {
	t.Helper()
	opts := []nats.Option{nats.UserInfo(NodeUser, testNodePass), nats.MaxReconnects(-1),
		nats.ReconnectWait(20 * time.Millisecond), nats.RetryOnFailedConnect(true)}
	if c.tls != nil {
		opts = append(opts, nats.Secure(c.tls[i].Clone()))
	}
	nc, err := nats.Connect(c.url(i), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// streamLeader is the server name of the stream's leader.
func streamLeader(ctx context.Context, nc *nats.Conn) (string, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return "", err
	}
	s, err := js.Stream(ctx, "TALLY_EVENTS")
	if err != nil {
		return "", err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return "", err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "", errors.New("no stream leader")
	}
	if len(info.Cluster.Replicas) != info.Config.Replicas-1 {
		return "", fmt.Errorf("stream has %d peers besides the leader, want %d", len(info.Cluster.Replicas), info.Config.Replicas-1)
	}
	return info.Cluster.Leader, nil
}

// TestClusteredEventLog: three embedded servers form a NATS cluster; every
// "node" publishes the same outbox to its own server; the stream has three
// replicas. Killing the server that leads the stream loses nothing and
// publishes nothing twice.
func TestClusteredEventLog(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", withTLS), func(t *testing.T) {
			c := startNATSCluster(t, 3, withTLS)
			f := newTestFSM(t)
			signer := newTestSigner(t)
			var pubs []*Publisher
			for i := range 3 {
				cfg := DefaultPublisherConfig()
				cfg.Replicas = 3
				cfg.PositionFile = filepath.Join(t.TempDir(), "pos")
				cfg.Issuer = func(tenant string) string { return "https://issuer.test/t/" + tenant }
				cfg.PollInterval = 20 * time.Millisecond
				cfg.AckTimeout = 2 * time.Second
				p, err := NewPublisher(cfg, c.connectNode(t, i), f, signer)
				if err != nil {
					t.Fatal(err)
				}
				p.Start()
				t.Cleanup(p.Stop)
				pubs = append(pubs, p)
			}
			notify := func() {
				for _, p := range pubs {
					p.Notify()
				}
			}
			var want []uint64
			for i := range 20 {
				f.revoke(fmt.Sprintf("a%d", i))
				want = append(want, f.index)
			}
			notify()
			reader := c.connectNode(t, 0)
			checkFor(t, 30*time.Second, 50*time.Millisecond, wantExactly(t, reader, want))

			var leader string
			checkFor(t, 10*time.Second, 50*time.Millisecond, func() (err error) {
				leader, err = streamLeader(t.Context(), reader)
				return err
			})
			li := -1
			for i, cfg := range c.cfgs {
				if cfg.ServerName == leader {
					li = i
				}
			}
			if li < 0 {
				t.Fatalf("stream leader %q is not one of the servers", leader)
			}
			c.servers[li].Shutdown()
			c.servers[li] = nil
			survivor := c.connectNode(t, (li+1)%3)
			for i := range 20 {
				f.revoke(fmt.Sprintf("b%d", i))
				want = append(want, f.index)
				notify()
			}
			// Across the failover every event is in the stream exactly
			// once; a window in flight may land out of order.
			checkFor(t, 30*time.Second, 50*time.Millisecond, wantEach(t, survivor, want))

			// The leader's server comes back: it catches up, nothing twice.
			e, err := StartEmbedded(c.cfgs[li])
			if err != nil {
				t.Fatal(err)
			}
			c.servers[li] = e
			f.revoke("c")
			want = append(want, f.index)
			notify()
			back := c.connectNode(t, li)
			checkFor(t, 30*time.Second, 50*time.Millisecond, wantEach(t, back, want))
		})
	}
}

// TestClusterRoutesNeedTheRoutePassword: a server with another route
// password does not join the cluster.
func TestClusterRoutesNeedTheRoutePassword(t *testing.T) {
	c := startNATSCluster(t, 2, false)
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if c.servers[0].Server().NumRoutes() == 0 {
			return errors.New("no routes")
		}
		return nil
	})
	cfg := c.cfgs[0]
	cfg.Listen, cfg.ClusterListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.StoreDir = t.TempDir()
	cfg.ServerName = "rogue"
	cfg.Routes = []string{c.cfgs[0].ClusterListen, c.cfgs[1].ClusterListen}
	cfg.RoutePassword = "guess"
	rogue, err := StartEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Shutdown()
	// Absence cannot be polled for: give the rogue a few connect attempts.
	time.Sleep(1500 * time.Millisecond)
	if n := rogue.Server().NumRoutes(); n != 0 {
		t.Fatalf("a server with the wrong route password has %d routes", n)
	}
}

// TestLiveEventsWithoutAStreamLeader: with the stream unable to store
// (two of three servers gone), an applied event still reaches a core
// subscriber of the live subjects at once.
func TestLiveEventsWithoutAStreamLeader(t *testing.T) {
	c := startNATSCluster(t, 3, false)
	f := newTestFSM(t)
	nc := c.connectNode(t, 0)
	cfg := DefaultPublisherConfig()
	cfg.Replicas = 3
	cfg.PositionFile = filepath.Join(t.TempDir(), "pos")
	cfg.Issuer = func(tenant string) string { return "https://issuer.test/t/" + tenant }
	cfg.PollInterval = 20 * time.Millisecond
	cfg.AckTimeout = time.Second
	p, err := NewPublisher(cfg, nc, f, newTestSigner(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(p.Stop)
	f.revoke("before")
	p.Notify()
	checkFor(t, 30*time.Second, 20*time.Millisecond, wantExactly(t, nc, []uint64{f.index}))

	sub, err := c.connectNode(t, 0).SubscribeSync("tally.acme.live.>")
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		c.servers[i].Shutdown()
		c.servers[i] = nil
	}
	f.revoke("during")
	p.Notify()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "tally.acme.live.revocation.token" || m.Header.Get(eventwire.HeaderRaftIndex) != fmt.Sprint(f.index) {
		t.Fatalf("live message %s index %s, want index %d", m.Subject, m.Header.Get(eventwire.HeaderRaftIndex), f.index)
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if p.LastError() == "" || p.Position() == f.index {
			return errors.New("the stream acknowledged without a quorum")
		}
		return nil
	})
}

// wantEach checks that the stream holds each index of want exactly once,
// in any order.
func wantEach(t *testing.T, nc *nats.Conn, want []uint64) func() error {
	return func() error {
		got, err := streamIndexes(t, nc)
		if err != nil {
			return err
		}
		if len(got) != len(want) {
			return fmt.Errorf("stream has %d events, want %d", len(got), len(want))
		}
		count := map[uint64]int{}
		for _, g := range got {
			count[g]++
		}
		for _, w := range want {
			if count[w] != 1 {
				return fmt.Errorf("event %d is %d times in the stream %v", w, count[w], got)
			}
		}
		return nil
	}
}
