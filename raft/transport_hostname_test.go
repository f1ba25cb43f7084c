package raft_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
)

// TestAdvertiseHostName keeps an advertised host name as a name (peers
// resolve it when they dial, as a Kubernetes StatefulSet's pods need: their
// IP changes, their DNS name does not), and a peer dialling the name
// verifies it against the node certificate's DNS names.
func TestAdvertiseHostName(t *testing.T) {
	ca := newTestCA(t)
	out := filepath.Join(t.TempDir(), "a")
	if err := raft.IssueNodeCertDir(ca.dir, out, raft.CertOptions{NodeID: "a", DNSNames: []string{"localhost"}}); err != nil {
		t.Fatal(err)
	}
	nt, err := raft.LoadNodeTLSDir(out)
	if err != nil {
		t.Fatal(err)
	}
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(probe.Addr().String())
	probe.Close()
	l, err := raft.ListenCluster("127.0.0.1:"+port, "localhost:"+port, nt, rafttest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := l.Addr().String(); got != "localhost:"+port {
		t.Fatalf("advertised %q, want localhost:%s", got, port)
	}
	accepted := acceptOne(l)
	ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
	defer cancel()
	c, err := ca.node("b").DialContext(ctx, l.Addr().String(), raft.ALPNRaft)
	if err != nil {
		t.Fatalf("dialling the advertised name: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	if sc := <-accepted; sc == nil {
		t.Fatal("no connection accepted")
	} else {
		sc.Close()
	}
	if _, err := raft.ListenCluster("127.0.0.1:0", "localhost:0", nt, rafttest.Logger(t)); err == nil {
		t.Fatal("advertising port 0 by name was accepted")
	}
}
