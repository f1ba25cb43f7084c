package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// sharedIssuer is the one issuer of the in-process clusters below; nothing
// listens there (the tests call each node at its own address).
const sharedIssuer = "http://127.0.0.1:9"

func withIssuer(iss string) nodetest.Option {
	return func(cfg *node.Config) { cfg.Issuer = iss }
}

// own is a tenant's endpoints at node n's own address.
func own(n *nodetest.Node, tenant string) string { return n.URL() + "/t/" + tenant }

// waitClusterIssuer waits until every running node has replicated iss as
// the cluster's issuer.
func waitClusterIssuer(t *testing.T, c *nodetest.Cluster, iss string) {
	t.Helper()
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		for _, i := range c.Running() {
			if got := c.Node(i).Raft().State().ClusterIssuer(); got != iss {
				return fmt.Errorf("node%d: cluster issuer %q", i, got)
			}
		}
		return nil
	})
}

// TestOneIssuerAcrossNodes: nodes configured with one issuer record it as
// the cluster's; a token issued by one node (JWT and opaque) is active at
// another, revoked at a third it is inactive everywhere.
func TestOneIssuerAcrossNodes(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(withIssuer(sharedIssuer)))
	waitClusterIssuer(t, c, sharedIssuer)
	// Every member says it applies the cluster identity operations (the
	// leader records the issuer only then).
	st, err := c.Node(1).ClusterAdmin.Status(context.Background(), connect.NewRequest(&clusterv1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Msg.Members {
		if !slices.Contains(m.Features, "cluster_identity") {
			t.Fatalf("member %s features %v", m.Id, m.Features)
		}
	}
	for _, format := range []string{"jwt", "opaque"} {
		id, secret := c.Node(0).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc-" + format, TokenFormat: format, AccessTokenTtlSeconds: 300})
		c.WaitApplied(c.Node(0).Raft().State().AppliedIndex())
		tok := token(t, own(c.Node(0), "default"), id, secret, oauth2.AuthStyleInHeader).AccessToken
		got := introspect(t, own(c.Node(2), "default"), id, secret, tok)
		if got["active"] != true || got["iss"] != sharedIssuer+"/t/default" {
			t.Fatalf("%s: token of node0 at node2: %v", format, got)
		}
		if status, body, _ := postForm(t, own(c.Node(1), "default")+"/oauth2/revoke", id, secret, url.Values{"token": {tok}}); status != 200 {
			t.Fatalf("%s: revoke at node1: %d %v", format, status, body)
		}
		c.WaitApplied(c.Node(1).Raft().State().AppliedIndex())
		for _, i := range c.Running() {
			if got := introspect(t, own(c.Node(i), "default"), id, secret, tok); got["active"] != false {
				t.Fatalf("%s: node%d honours a token revoked at node1: %v", format, i, got)
			}
		}
	}
	// Discovery names the one issuer on every node.
	for _, i := range c.Running() {
		resp, err := http.Get(own(c.Node(i), "default") + "/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `"issuer":"`+sharedIssuer+`/t/default"`) {
			t.Fatalf("node%d discovery: %s", i, b)
		}
	}
}

// nodeConfig is the configuration of a node with its own data directory
// and a certificate of c's CA.
func nodeConfig(t *testing.T, c *nodetest.Cluster, id, dir string) node.Config {
	t.Helper()
	tlsDir := filepath.Join(dir, "tls")
	if err := raft.IssueNodeCertDir(c.CADir(), tlsDir, raft.CertOptions{NodeID: id, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.TLSDir = id, dir, tlsDir
	cfg.Listen, cfg.RaftBind, cfg.NATSListen = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.KEK, cfg.AdminToken = c.KEK(), c.AdminToken()
	nodetest.FastRaft(&cfg)
	return cfg
}

// TestIssuerMismatchRefused: a node configured with another issuer cannot
// join (the member it asks refuses, the node stops with a message naming
// both), and a member restarted with another issuer refuses to start.
func TestIssuerMismatchRefused(t *testing.T) {
	c := nodetest.StartCluster(t, 2, nodetest.WithNodeOptions(withIssuer(sharedIssuer)))
	waitClusterIssuer(t, c, sharedIssuer)
	const other = "https://other.example"

	// Joining with another issuer.
	cfg := nodeConfig(t, c, "node9", t.TempDir())
	cfg.Issuer, cfg.Join = other, c.Node(0).ClusterAddr()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	n, err := node.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	err = n.Run(ctx)
	if !errors.Is(err, node.ErrIssuerMismatch) && !strings.Contains(fmt.Sprint(err), "issuer") {
		t.Fatalf("joining with another issuer: Run = %v, want an issuer mismatch", err)
	}
	for _, want := range []string{other, sharedIssuer} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	ms, _ := c.Node(0).Raft().Members(ctx)
	if len(ms) != 2 {
		t.Fatalf("members after a refused join: %v", ms)
	}

	// A member restarted with another issuer.
	dir := c.Node(1).DataDir
	c.Stop(1)
	cfg = node.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.TLSDir = "node1", dir, filepath.Join(dir, "tls")
	cfg.Listen, cfg.RaftBind, cfg.NATSListen = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.KEK, cfg.AdminToken, cfg.Issuer = c.KEK(), c.AdminToken(), other
	if _, err := node.New(ctx, cfg, slog.New(slog.DiscardHandler)); !errors.Is(err, node.ErrIssuerMismatch) ||
		!strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), sharedIssuer) {
		t.Fatalf("restart with another issuer: %v, want ErrIssuerMismatch naming both", err)
	}
}

// internal is a client of a node's internal cluster service that presents
// the node certificate in tlsDir.
func internal(t *testing.T, tlsDir, addr string) clusterv1connect.ClusterServiceClient {
	t.Helper()
	nt, err := raft.LoadNodeTLSDir(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	tr := nt.HTTPTransport()
	t.Cleanup(tr.CloseIdleConnections)
	return clusterv1connect.NewClusterServiceClient(&http.Client{Transport: tr}, "https://"+addr)
}

func applyRequest(t *testing.T) *connect.Request[clusterv1.ApplyRequest] {
	t.Helper()
	cmd := &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: time.Now().UnixNano(), RequestId: "rogue-1",
		Op: &raftpb.Command_SetClientDisabled{SetClientDisabled: &raftpb.SetClientDisabled{Tenant: "default", ClientId: "nope", Disabled: true}}}
	data, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return connect.NewRequest(&clusterv1.ApplyRequest{Command: data})
}

// TestClusterPortAuthorisesByRole: a certificate of the cluster CA whose
// node is not a member cannot forward writes or change the membership; a
// member cannot forward the cluster identity commands.
func TestClusterPortAuthorisesByRole(t *testing.T) {
	c := nodetest.StartCluster(t, 2)
	leader := c.Leader()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()

	outsider := filepath.Join(t.TempDir(), "tls")
	if err := raft.IssueNodeCertDir(c.CADir(), outsider, raft.CertOptions{NodeID: "node9", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	cl := internal(t, outsider, leader.ClusterAddr())
	if _, err := cl.Apply(ctx, applyRequest(t)); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "not a member") {
		t.Fatalf("Apply from a non-member: %v, want PermissionDenied", err)
	}
	_, err := cl.ChangeMembership(ctx, connect.NewRequest(&clusterv1.ChangeMembershipRequest{
		Change: clusterv1.MembershipChange_MEMBERSHIP_CHANGE_ADD_VOTER, Id: "node9", Address: "127.0.0.1:1"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("ChangeMembership from a non-member: %v, want PermissionDenied", err)
	}
	if _, err := cl.LocalStatus(ctx, connect.NewRequest(&clusterv1.LocalStatusRequest{})); err != nil {
		t.Fatalf("LocalStatus from a valid certificate: %v", err)
	}
	if ms, _ := leader.Raft().Members(ctx); len(ms) != 2 {
		t.Fatalf("members = %v", ms)
	}

	// A member forwards ordinary writes, not cluster identity commands.
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		// From a follower to whichever node leads now (leadership may move
		// on a busy machine).
		li := c.LeaderIndex()
		f := c.Node(1 - li)
		_, err := internal(t, filepath.Join(f.DataDir, "tls"), c.Node(li).ClusterAddr()).Apply(ctx, applyRequest(t))
		return err
	})
	f := c.Follower()
	mc := internal(t, filepath.Join(f.DataDir, "tls"), c.Leader().ClusterAddr())
	deny := &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: time.Now().UnixNano(),
		Op: &raftpb.Command_DenyNode{DenyNode: &raftpb.DenyNode{NodeId: leader.NodeID()}}}
	data, _ := proto.Marshal(deny)
	if _, err := mc.Apply(ctx, connect.NewRequest(&clusterv1.ApplyRequest{Command: data})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("forwarding DenyNode: %v, want PermissionDenied", err)
	}
}

// TestRemovedNodeIsRefused: removal is final. The removed node's
// certificate is refused by the internal service (every method, Join
// included) and by Raft's transport, and its id cannot be added again.
func TestRemovedNodeIsRefused(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	li := c.LeaderIndex()
	vi := (li + 1) % 3
	victim := c.Node(vi)
	id, tlsDir, addr := victim.NodeID(), filepath.Join(victim.DataDir, "tls"), victim.ClusterAddr()
	// Removed through the other follower.
	via := c.Node((li + 2) % 3)
	if _, err := via.ClusterAdmin.RemoveServer(ctx, connect.NewRequest(&clusterv1.RemoveServerRequest{Id: id})); err != nil {
		t.Fatal(err)
	}
	c.Stop(vi)
	for _, i := range c.Running() {
		nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
			if !c.Node(i).Raft().State().NodeDenied(id) {
				return fmt.Errorf("node%d does not deny %s", i, id)
			}
			return nil
		})
	}
	leader := c.Leader()
	cl := internal(t, tlsDir, leader.ClusterAddr())
	for name, call := range map[string]func() error{
		"LocalStatus": func() error {
			_, err := cl.LocalStatus(ctx, connect.NewRequest(&clusterv1.LocalStatusRequest{}))
			return err
		},
		"Apply": func() error { _, err := cl.Apply(ctx, applyRequest(t)); return err },
		"Join": func() error {
			_, err := cl.Join(ctx, connect.NewRequest(&clusterv1.JoinRequest{Id: id, Address: addr}))
			return err
		},
	} {
		if err := call(); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "removed") {
			t.Errorf("%s with a removed node's certificate: %v, want PermissionDenied saying it was removed", name, err)
		}
	}

	// Raft's transport closes the connection after the handshake.
	nt, err := raft.LoadNodeTLSDir(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := nt.DialContext(ctx, leader.ClusterAddr(), raft.ALPNRaft); err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("raft connection of a removed node: read %v, want it closed", err)
		}
	}

	// The id cannot come back.
	_, err = leader.ClusterAdmin.AddVoter(ctx, connect.NewRequest(&clusterv1.AddVoterRequest{Id: id, Address: addr}))
	if err == nil || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("re-adding a removed id: %v, want a refusal", err)
	}
	if ms, _ := leader.Raft().Members(ctx); len(ms) != 2 {
		t.Fatalf("members = %v", ms)
	}
}
