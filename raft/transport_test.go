package raft_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
)

// testCA is a cluster CA in a temporary directory.
type testCA struct {
	t   *testing.T
	dir string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := raft.InitCADir(dir, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := raft.InitCADir(dir, time.Time{}); err == nil {
		t.Fatal("InitCADir overwrote an existing CA")
	}
	return &testCA{t: t, dir: dir}
}

// node issues a node certificate and loads it.
func (ca *testCA) node(id string) *raft.NodeTLS {
	ca.t.Helper()
	out := filepath.Join(ca.t.TempDir(), id)
	if err := raft.IssueNodeCertDir(ca.dir, out, raft.CertOptions{NodeID: id, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		ca.t.Fatal(err)
	}
	nt, err := raft.LoadNodeTLSDir(out)
	if err != nil {
		ca.t.Fatal(err)
	}
	if nt.NodeID() != id {
		ca.t.Fatalf("NodeID = %q, want %q", nt.NodeID(), id)
	}
	return nt
}

func listen(t *testing.T, nt *raft.NodeTLS) *raft.ClusterListener {
	t.Helper()
	l, err := raft.ListenCluster("127.0.0.1:0", "", nt, rafttest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// acceptOne returns the first Raft connection the listener hands out.
func acceptOne(l *raft.ClusterListener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.StreamLayer().Accept()
		if err == nil {
			ch <- c
		}
		close(ch)
	}()
	return ch
}

func TestClusterListenerMutualTLS(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	srv := listen(t, ca.node("a"))
	addr := srv.Addr().String()
	accepted := acceptOne(srv)

	// A certificate of the same CA without a node name.
	caCert, _ := tls.LoadX509KeyPair(filepath.Join(ca.dir, raft.CACertFile), filepath.Join(ca.dir, raft.CAKeyFile))
	caLeaf, _ := x509.ParseCertificate(caCert.Certificate[0])
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "web"}, DNSNames: []string{"web.example"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, caLeaf, &key.PublicKey, caCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caLeaf.Raw})
	if _, err := raft.NewNodeTLS(caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})); !errors.Is(err, raft.ErrPeerCertificate) {
		t.Errorf("NewNodeTLS with a non-node certificate: %v, want ErrPeerCertificate", err)
	}
	webCert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	pool := x509.NewCertPool()
	pool.AddCert(caLeaf)

	ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
	defer cancel()
	rejected := []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"certificate of another CA", func() (net.Conn, error) { return other.node("b").DialContext(ctx, addr, raft.ALPNRaft) }},
		{"no client certificate", func() (net.Conn, error) {
			return dialRaw(ctx, addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{raft.ALPNRaft}, MinVersion: tls.VersionTLS13})
		}},
		{"same CA, no node name", func() (net.Conn, error) {
			return dialRaw(ctx, addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{webCert}, NextProtos: []string{raft.ALPNRaft}, MinVersion: tls.VersionTLS13})
		}},
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial()
			if err == nil {
				// TLS 1.3: the client may finish before the server rejects
				// its certificate; the server then closes without a byte.
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("connection accepted (err %v)", err)
			}
		})
	}
	select {
	case c := <-accepted:
		t.Fatalf("a rejected peer reached Raft: %v", c.RemoteAddr())
	default:
	}

	// The server must also prove it is a node of the CA.
	rogue := listen(t, other.node("a"))
	if c, err := ca.node("b").DialContext(ctx, rogue.Addr().String(), raft.ALPNRaft); err == nil {
		c.Close()
		t.Fatal("dialled a server with a certificate of another CA")
	}

	// A node of the CA gets through.
	c, err := ca.node("b").DialContext(ctx, addr, raft.ALPNRaft)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	got := <-accepted
	if got == nil {
		t.Fatal("listener closed without handing out the connection")
	}
	defer got.Close()
	b := make([]byte, 1)
	if _, err := io.ReadFull(got, b); err != nil || b[0] != 'x' {
		t.Fatalf("read %q, %v", b, err)
	}
}

func dialRaw(ctx context.Context, addr string, conf *tls.Config) (net.Conn, error) {
	d := tls.Dialer{Config: conf}
	return d.DialContext(ctx, "tcp", addr)
}

// TestRaftOverMutualTLS runs a two-voter group on cluster listeners and
// shows that a transport with a certificate of another CA cannot ask its
// members for votes or append entries.
func TestRaftOverMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	la, lb := listen(t, ca.node("a")), listen(t, ca.node("b"))
	servers := []raft.Member{{ID: "a", Addr: la.Addr().String(), Voter: true}, {ID: "b", Addr: lb.Addr().String(), Voter: true}}
	var nodes []*raft.Node
	for _, l := range []*raft.ClusterListener{la, lb} {
		cfg := rafttest.Config(t, map[*raft.ClusterListener]string{la: "a", lb: "b"}[l])
		cfg.StreamLayer = l.StreamLayer()
		cfg.Bootstrap = true
		cfg.BootstrapServers = servers
		nodes = append(nodes, rafttest.Open(t, cfg))
	}
	// On a loaded machine the two nodes may trade leadership a few times
	// (150 ms lease): propose through whichever leads until it commits.
	var leader *raft.Node
	var res raft.Result
	cmd := withRID(newTenant("acme"), "rid-acme")
	rafttest.CheckFor(t, rafttest.Timeout, 10*time.Millisecond, func() error {
		for _, n := range nodes {
			if n.IsLeader() {
				ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
				defer cancel()
				r, err := n.Propose(ctx, cmd)
				if err != nil {
					return err
				}
				leader, res = n, r
				return nil
			}
		}
		return errors.New("no leader")
	})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
		if err := n.WaitApplied(ctx, res.Index); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, ok := n.State().Tenant("acme"); !ok {
			t.Fatalf("%s lacks the tenant", n.ID())
		}
	}

	// A rogue transport with a certificate of another CA.
	rl := listen(t, newTestCA(t).node("x"))
	trans := hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{Stream: rl.StreamLayer(), MaxPool: 1, Timeout: 5 * time.Second})
	defer trans.Close()
	st := leader.Status()
	var vresp hraft.RequestVoteResponse
	err := trans.RequestVote("a", hraft.ServerAddress(la.Addr().String()), &hraft.RequestVoteRequest{
		RPCHeader: hraft.RPCHeader{ID: []byte("x"), Addr: []byte(rl.Addr().String())}, Term: st.Term + 10, LastLogIndex: st.LastIndex + 10, LastLogTerm: st.Term + 10,
	}, &vresp)
	if err == nil {
		t.Fatalf("a rogue node's RequestVote was answered: %+v", vresp)
	}
	var aresp hraft.AppendEntriesResponse
	if err := trans.AppendEntries("b", hraft.ServerAddress(lb.Addr().String()), &hraft.AppendEntriesRequest{
		RPCHeader: hraft.RPCHeader{ID: []byte("x"), Addr: []byte(rl.Addr().String())}, Term: st.Term + 10,
	}, &aresp); err == nil {
		t.Fatalf("a rogue node's AppendEntries was answered: %+v", aresp)
	}
	// Had either RPC been served, its node would have taken the rogue
	// term. (A loaded machine may make the leader step down and hold an
	// election on its own, which raises the term by one, not by ten.)
	for _, n := range nodes {
		if got := n.Status().Term; got >= st.Term+10 {
			t.Fatalf("after the rogue RPCs: %s is at term %d (was %d): it took the rogue's term", n.ID(), got, st.Term)
		}
	}
}

// TestExpiredNodeCertificateRejected: a node certificate of the right CA
// that has expired does not get through.
func TestExpiredNodeCertificateRejected(t *testing.T) {
	ca := newTestCA(t)
	srv := listen(t, ca.node("a"))
	accepted := acceptOne(srv)
	out := filepath.Join(t.TempDir(), "old")
	if err := raft.IssueNodeCertDir(ca.dir, out, raft.CertOptions{NodeID: "old", IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Now: time.Now().Add(-48 * time.Hour), Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := raft.LoadNodeTLSDir(out); !errors.Is(err, raft.ErrPeerCertificate) {
		t.Fatalf("loading an expired certificate: %v, want ErrPeerCertificate", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
	defer cancel()
	// Present it anyway, with a hand-made client configuration.
	cert, err := tls.LoadX509KeyPair(filepath.Join(out, raft.NodeCertFile), filepath.Join(out, raft.NodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialRaw(ctx, srv.Addr().String(), &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, NextProtos: []string{raft.ALPNRaft}, MinVersion: tls.VersionTLS13})
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired certificate accepted (err %v)", err)
	}
	select {
	case c := <-accepted:
		t.Fatalf("an expired certificate reached Raft: %v", c.RemoteAddr())
	default:
	}
}
