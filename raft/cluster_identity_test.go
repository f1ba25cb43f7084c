package raft_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

// TestPeerCheckRefusesRaftConnections: a peer the check refuses cannot open
// a Raft connection, and one it refuses later loses the connection it has.
func TestPeerCheckRefusesRaftConnections(t *testing.T) {
	ca := newTestCA(t)
	server, peer := ca.node("n1"), ca.node("n2")
	l := listen(t, server)
	denied := make(chan struct{})
	l.SetPeerCheck(func(id string) error {
		select {
		case <-denied:
			if id == "n2" {
				return errors.New("removed")
			}
		default:
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
	defer cancel()

	// Allowed: the connection is handed to Raft and carries data.
	accepted := acceptOne(l)
	c, err := peer.DialContext(ctx, l.Addr().String(), raft.ALPNRaft)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-accepted
	if sc == nil {
		t.Fatal("no connection accepted")
	}
	defer sc.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(sc, buf); err != nil {
		t.Fatal(err)
	}

	// Refused from now on: the open connection fails on its next read.
	close(denied)
	if _, err := c.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Read(buf); err == nil || err.Error() != "removed" {
		t.Fatalf("read on a refused peer's connection: %v, want the check's error", err)
	}
	// A new connection is closed right after the handshake.
	c2, err := peer.DialContext(ctx, l.Addr().String(), raft.ALPNRaft)
	if err != nil {
		return // refused during the handshake: fine too
	}
	defer c2.Close()
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c2.Read(buf)
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("read on a refused new connection: %v, want it closed", err)
	}
}

// TestRemoveServerDeniesTheID: removal records the id in the replicated
// deny list on every node, and the id cannot be added again.
func TestRemoveServerDeniesTheID(t *testing.T) {
	c := rafttest.NewCluster(t, 3)
	leader := c.LeaderIndex()
	victim := (leader + 1) % 3
	id, addr := c.ID(victim), c.Addr(victim)
	c.Remove(victim)
	rafttest.CheckFor(t, rafttest.Timeout, 10*time.Millisecond, func() error {
		for _, n := range c.Running() {
			if !n.State().NodeDenied(id) {
				return fmt.Errorf("%s does not deny %s yet", n.ID(), id)
			}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, add := range []func(context.Context, string, string) error{c.Leader().AddVoter, c.Leader().AddNonvoter} {
		if err := add(ctx, id, addr); !errors.Is(err, raft.ErrNodeDenied) || !errors.Is(err, raft.ErrInvalid) {
			t.Fatalf("re-adding a removed id: %v, want ErrNodeDenied", err)
		}
	}
	if got := c.Leader().State().DeniedNodes(); len(got) != 1 || got[0] != id {
		t.Fatalf("denied = %v", got)
	}
}

// TestClusterIssuerIsSetOnce: the first SetClusterIssuer wins, the same
// value again is a no-op, another one is a conflict; the value survives a
// restart.
func TestClusterIssuerIsSetOnce(t *testing.T) {
	c := rafttest.NewCluster(t, 1)
	set := func(iss string) error {
		cmd := &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: time.Now().UnixNano(),
			Op: &raftpb.Command_SetClusterIssuer{SetClusterIssuer: &raftpb.SetClusterIssuer{Issuer: iss}}}
		return c.Propose(cmd).Err
	}
	for _, bad := range []string{"", "ftp://x", "http://", "https://a.example/", "https://a.example?x=1", "https://u@a.example"} {
		if err := set(bad); !errors.Is(err, raft.ErrInvalid) {
			t.Errorf("issuer %q: %v, want ErrInvalid", bad, err)
		}
	}
	if err := set("https://auth.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := set("https://auth.example.com"); err != nil {
		t.Fatalf("same issuer again: %v", err)
	}
	if err := set("https://other.example.com"); !errors.Is(err, raft.ErrConflict) {
		t.Fatalf("another issuer: %v, want ErrConflict", err)
	}
	c.Restart(0)
	if got := c.Leader().State().ClusterIssuer(); got != "https://auth.example.com" {
		t.Fatalf("after restart: issuer %q", got)
	}
}
