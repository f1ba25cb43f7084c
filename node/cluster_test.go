package node_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
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

// TestForwardedWritesReadYourWrites: writes made through followers (an admin
// call and an OAuth revocation) are visible on that follower when the call
// returns, and on every node once they apply.
func TestForwardedWritesReadYourWrites(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	f := c.Follower()
	ctx := context.Background()

	// Admin write through a follower; read it back there at once.
	id, secret := f.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", Scopes: []string{"read"}, TokenFormat: "opaque", AccessTokenTtlSeconds: 300})
	if _, ok := f.Raft().State().Client("default", id); !ok {
		t.Fatal("follower does not see the client it just created")
	}
	if _, err := f.Admin.GetClient(ctx, connect.NewRequest(&adminv1.GetClientRequest{Tenant: "default", ClientId: id})); err != nil {
		t.Fatalf("GetClient on the follower right after CreateClient: %v", err)
	}
	// Every node can issue for it once it has applied the write.
	applied := f.Raft().State().AppliedIndex()
	c.WaitApplied(applied)
	var toks []*oauth2.Token
	for _, i := range c.Running() {
		n := c.Node(i)
		toks = append(toks, token(t, n.Issuer("default"), id, secret, oauth2.AuthStyleInHeader))
	}

	// OAuth revocation (RFC 7009) through a follower: in force there when
	// the call returns.
	tok := toks[0].AccessToken
	status, body, _ := postForm(t, f.Issuer("default")+"/oauth2/revoke", id, secret, url.Values{"token": {tok}})
	if status != 200 {
		t.Fatalf("revoke via follower: %d %v", status, body)
	}
	if got := introspect(t, f.Issuer("default"), id, secret, tok); got["active"] != false {
		t.Fatalf("follower still honours the token it revoked: %v", got)
	}
	c.WaitApplied(f.Raft().State().AppliedIndex())
	for _, i := range c.Running() {
		n := c.Node(i)
		if got := introspect(t, n.Issuer("default"), id, secret, tok); got["active"] != false {
			t.Fatalf("node%d honours a revoked token: %v", i, got)
		}
	}
	// Domain errors cross the forward intact.
	_, err := f.Admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: "default"}))
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("creating an existing tenant via a follower: %v, want AlreadyExists", err)
	}
}

// TestNoQuorumAndStaleness cuts one node off from the others (by stopping
// them): writes through it fail fast with a retriable error; within the
// staleness bound it keeps issuing tokens from its replica; beyond the bound
// it fails closed and reports not ready.
func TestNoQuorumAndStaleness(t *testing.T) {
	// The fresh side below must finish within the bound after the
	// leader's last contact: generous, so that a loaded machine (-race,
	// two cores, another CPU-heavy process) still tells the sides apart.
	const bound = 10 * time.Second
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(func(cfg *node.Config) {
		cfg.MaxStale = bound
		cfg.WriteTimeout = 1500 * time.Millisecond
	}))
	l := c.LeaderIndex()
	id, secret := c.Node(l).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", AccessTokenTtlSeconds: 300})
	c.WaitApplied(c.Node(l).Raft().State().AppliedIndex())
	survivor := (l + 1) % 3
	n := c.Node(survivor)
	// The other follower first, the leader last: the bound counts from
	// the leader's last contact, so the time a node takes to stop (NATS,
	// bbolt) is not taken from it.
	c.Stop((l + 2) % 3)
	c.Stop(l)
	lastContact := n.Raft().LastLeaderContact()
	issuer := n.Issuer("default")

	// Within the bound: issuance, introspection, JWKS and discovery work.
	tok := token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	if got := introspect(t, issuer, id, secret, tok.AccessToken); got["active"] != true {
		t.Fatalf("introspection within the bound = %v", got)
	}
	for _, p := range []string{"/jwks.json", "/.well-known/openid-configuration"} {
		if code := getStatus(t, issuer+p); code != http.StatusOK {
			t.Fatalf("GET %s within the bound: %d", p, code)
		}
	}
	if elapsed := time.Since(lastContact); elapsed >= bound {
		t.Fatalf("the fresh side took %v, longer than the bound %v: the test cannot tell the sides apart", elapsed, bound)
	}

	// Writes fail with a retriable error, bounded by the write timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "x"}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("admin write without quorum: %v, want Unavailable", err)
	}
	status, body, h := postForm(t, issuer+"/oauth2/revoke", id, secret, url.Values{"token": {tok.AccessToken}})
	if status != http.StatusServiceUnavailable || body["error"] != "temporarily_unavailable" || h.Get("Retry-After") == "" {
		t.Fatalf("OAuth revocation without quorum: %d %v Retry-After=%q", status, body, h.Get("Retry-After"))
	}

	// Beyond the bound: fail closed, not ready.
	nodetest.CheckFor(t, 3*bound, 20*time.Millisecond, func() error {
		if n.Stale() == nil {
			return errors.New("not stale yet")
		}
		return nil
	})
	status, body, h = postForm(t, issuer+"/oauth2/token", id, secret, url.Values{"grant_type": {"client_credentials"}})
	if status != http.StatusServiceUnavailable || body["error"] != "temporarily_unavailable" || h.Get("Retry-After") == "" {
		t.Fatalf("token from a stale node: %d %v", status, body)
	}
	for _, p := range []string{"/jwks.json", "/.well-known/openid-configuration"} {
		if code := getStatus(t, issuer+p); code != http.StatusServiceUnavailable {
			t.Fatalf("GET %s from a stale node: %d, want 503", p, code)
		}
	}
	if code := getStatus(t, n.BaseURL()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz on a stale node: %d", code)
	}

	// The others come back: the survivor is fresh and writable again.
	for i := range 3 {
		if i != survivor {
			c.Restart(i)
		}
	}
	c.WaitConverged()
	token(t, issuer, id, secret, oauth2.AuthStyleInHeader)
	n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "after"})
}

func getStatus(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestMembershipAndStatus drives status, add-nonvoter, remove and
// transfer-leadership through followers' cluster admin API.
func TestMembershipAndStatus(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	ctx := context.Background()
	f := c.Follower()

	// The status asks every member for its own within a short budget; on a
	// loaded machine one may miss it once (state "unreachable"), so the
	// status is read until every member answered and a leader is known.
	var st *clusterv1.StatusResponse
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		st = clusterStatus(t, f)
		if len(st.Members) != 3 || st.LeaderId == "" {
			return fmt.Errorf("status = %v", st)
		}
		for _, m := range st.Members {
			if m.Health != "healthy" {
				return fmt.Errorf("member %s is %s: %v", m.Id, m.Health, st)
			}
		}
		return nil
	})
	regions := map[string]bool{}
	for _, m := range st.Members {
		if !m.Voter || m.Health != "healthy" || m.Term == 0 || m.AppliedIndex == 0 || m.HttpAddress == "" {
			t.Errorf("member %v", m)
		}
		if m.Leader != (m.Id == st.LeaderId) {
			t.Errorf("member %s: leader %v, status leader %s", m.Id, m.Leader, st.LeaderId)
		}
		regions[m.Region] = true
	}
	if len(regions) != 2 {
		t.Errorf("regions = %v, want two", regions)
	}

	// A non-voter joins (through node0) and then is removed via a follower.
	nv := c.Add(func(cfg *node.Config) { cfg.Nonvoter = true; cfg.Region = "west" })
	// The follower learns the configuration change when it applies it.
	st = waitMembers(t, f, 4)
	for _, m := range st.Members {
		if m.Id == c.Node(nv).NodeID() && (m.Voter || m.Region != "west") {
			t.Fatalf("non-voter reported as %v", m)
		}
	}
	// The non-voter serves reads and forwards writes.
	c.Node(nv).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "via-nonvoter"})
	if _, err := f.ClusterAdmin.RemoveServer(ctx, connect.NewRequest(&clusterv1.RemoveServerRequest{Id: c.Node(nv).NodeID()})); err != nil {
		t.Fatal(err)
	}
	c.Stop(nv)
	waitMembers(t, f, 3)
	_, err := f.ClusterAdmin.RemoveServer(ctx, connect.NewRequest(&clusterv1.RemoveServerRequest{Id: "nope"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("removing an unknown member: %v, want NotFound", err)
	}
	for _, bad := range []*clusterv1.AddVoterRequest{{Id: "", Address: "127.0.0.1:1"}, {Id: "n9", Address: "nohost"}, {Id: "bad id", Address: "127.0.0.1:1"}} {
		if _, err := f.ClusterAdmin.AddVoter(ctx, connect.NewRequest(bad)); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("AddVoter(%v): %v, want InvalidArgument", bad, err)
		}
	}

	// Transfer leadership to a chosen follower, asked through the other
	// follower.
	leader := c.LeaderIndex()
	to, via := (leader+1)%3, (leader+2)%3
	resp, err := c.Node(via).ClusterAdmin.TransferLeadership(ctx, connect.NewRequest(&clusterv1.TransferLeadershipRequest{To: c.Node(to).NodeID()}))
	if err != nil {
		t.Fatal(err)
	}
	// The answer names the leader once the asking node knows one (it may
	// not know the new one yet), and leadership may move on after the
	// transfer (a loaded machine, 300 ms election timeouts): the transfer
	// is shown by the answer or by the leader seen after it.
	if resp.Msg.GetLeaderId() != c.Node(to).NodeID() {
		nodetest.CheckFor(t, nodetest.Timeout, 10*time.Millisecond, func() error {
			if got := c.LeaderIndex(); got != to {
				return fmt.Errorf("leader after transfer = node%d, want node%d (response %v)", got, to, resp.Msg)
			}
			return nil
		})
	}
	// Without a target, any other voter.
	if _, err := c.Node(via).ClusterAdmin.TransferLeadership(ctx, connect.NewRequest(&clusterv1.TransferLeadershipRequest{})); err != nil {
		t.Fatal(err)
	}
	nodetest.CheckFor(t, nodetest.Timeout, 10*time.Millisecond, func() error {
		if c.LeaderIndex() == to {
			return errors.New("leadership did not move")
		}
		return nil
	})

	// A stopped member is reported unreachable, within the status timeout.
	down := (c.LeaderIndex() + 1) % 3
	c.Stop(down)
	var asker *nodetest.Node
	for _, i := range c.Running() {
		asker = c.Node(i)
	}
	st = clusterStatus(t, asker)
	for _, m := range st.Members {
		if (m.Id == fmt.Sprintf("node%d", down)) != (m.Health == "unreachable") {
			t.Errorf("member %s health %q (node%d is down)", m.Id, m.Health, down)
		}
	}
	// Writes still work with two of three voters.
	asker.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "two-of-three"})
}

// waitMembers polls n's status until it lists want members.
func waitMembers(t *testing.T, n *nodetest.Node, want int) *clusterv1.StatusResponse {
	t.Helper()
	var st *clusterv1.StatusResponse
	nodetest.CheckFor(t, nodetest.Timeout, 10*time.Millisecond, func() error {
		st = clusterStatus(t, n)
		if len(st.Members) != want {
			return fmt.Errorf("%d members, want %d: %v", len(st.Members), want, st)
		}
		return nil
	})
	return st
}

func clusterStatus(t *testing.T, n *nodetest.Node) *clusterv1.StatusResponse {
	t.Helper()
	resp, err := n.ClusterAdmin.Status(context.Background(), connect.NewRequest(&clusterv1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg
}

// TestJoinNeedsNodeCertificate: the cluster port refuses a joiner whose
// certificate is from another CA, or who has none, and a node may join only
// as the id in its certificate.
func TestJoinNeedsNodeCertificate(t *testing.T) {
	c := nodetest.StartCluster(t, 1)
	addr := c.Node(0).ClusterAddr()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()

	otherCA := filepath.Join(t.TempDir(), "other")
	if err := raft.InitCADir(otherCA, time.Time{}); err != nil {
		t.Fatal(err)
	}
	certFrom := func(caDir, id string) *raft.NodeTLS {
		dir := filepath.Join(t.TempDir(), id)
		if err := raft.IssueNodeCertDir(caDir, dir, raft.CertOptions{NodeID: id, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
			t.Fatal(err)
		}
		nt, err := raft.LoadNodeTLSDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return nt
	}
	// The joiners join as non-voters: a phantom voter (nobody listens at
	// its address) would leave the single node without a quorum, and it
	// steps down one leader lease later; removing the phantom then raced
	// the lease (and lost on a loaded machine: no raft leader, ever). They
	// report this binary's cluster version and features, as a real joiner
	// does: once the cluster records its version (shortly after it
	// starts) a joiner reporting none is refused as too old.
	join := func(hc *http.Client, id string) error {
		cl := clusterv1connect.NewClusterServiceClient(hc, "https://"+addr)
		_, err := cl.Join(ctx, connect.NewRequest(&clusterv1.JoinRequest{Id: id, Address: "127.0.0.1:1", Nonvoter: true,
			ClusterVersion: raft.ClusterVersion, Features: raft.KnownFeatures()}))
		return err
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(c.CADir(), raft.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}

	if err := join(&http.Client{Transport: certFrom(otherCA, "rogue").HTTPTransport()}, "rogue"); err == nil {
		t.Fatal("a node with a certificate of another CA joined")
	}
	if err := join(noCert, "rogue"); err == nil {
		t.Fatal("a node without a certificate joined")
	}
	if err := join(&http.Client{Transport: certFrom(c.CADir(), "node7").HTTPTransport()}, "node8"); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("joining under another node's id: %v, want PermissionDenied", err)
	}
	ms, err := c.Node(0).Raft().Members(ctx)
	if err != nil || len(ms) != 1 {
		t.Fatalf("members = %v, %v", ms, err)
	}
	// The same call with a valid certificate succeeds.
	if err := join(&http.Client{Transport: certFrom(c.CADir(), "node7").HTTPTransport()}, "node7"); err != nil {
		t.Fatalf("valid join: %v", err)
	}
	if ms, _ := c.Node(0).Raft().Members(ctx); len(ms) != 2 {
		t.Fatalf("members after a valid join = %v", ms)
	}
	// Remove the phantom member again.
	if _, err := c.Node(0).ClusterAdmin.RemoveServer(ctx, connect.NewRequest(&clusterv1.RemoveServerRequest{Id: "node7"})); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotCatchUpAndSave: a node that was down while the leader
// compacted its log past the node's position rejoins via snapshot install;
// SaveSnapshot streams a state database.
func TestSnapshotCatchUpAndSave(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(func(cfg *node.Config) {
		prev := cfg.RaftTuning
		cfg.RaftTuning = func(rc *raft.Config) {
			if prev != nil {
				prev(rc)
			}
			rc.SnapshotThreshold = 16
			rc.SnapshotInterval = 50 * time.Millisecond
			rc.TrailingLogs = 4
		}
	}))
	down := (c.LeaderIndex() + 1) % 3
	downAt := c.Node(down).Raft().Status().AppliedIndex
	c.Stop(down)
	l := c.Leader()
	var ids []string
	for i := range 40 {
		id, _ := l.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: fmt.Sprintf("c%d", i)})
		ids = append(ids, id)
	}
	// Wait until the leader's log no longer holds the entries the stopped
	// node needs.
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		if first := l.Raft().FirstLogIndex(); first <= downAt+1 {
			return fmt.Errorf("leader's first log index %d, stopped node needs %d", first, downAt+1)
		}
		return nil
	})
	n := c.Restart(down)
	c.WaitConverged()
	for _, id := range ids {
		if _, ok := n.Raft().State().Client("default", id); !ok {
			t.Fatalf("restarted node lacks client %s", id)
		}
	}
	if got := n.Raft().Stats()["last_snapshot_index"]; got == "0" || got == "" {
		t.Fatalf("restarted node caught up without a snapshot (last_snapshot_index %q)", got)
	}

	// SaveSnapshot from a follower: a state database with every client.
	stream, err := n.ClusterAdmin.SaveSnapshot(context.Background(), connect.NewRequest(&clusterv1.SaveSnapshotRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snap.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	var index uint64
	for stream.Receive() {
		if index == 0 {
			index = stream.Msg().AppliedIndex
		}
		f.Write(stream.Msg().Chunk)
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if index == 0 {
		t.Fatal("no applied index in the snapshot stream")
	}
	fsm, err := raft.OpenFSM(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fsm.AppliedIndex() != index {
		t.Errorf("snapshot holds index %d, stream said %d", fsm.AppliedIndex(), index)
	}
	for _, id := range ids {
		if _, ok := fsm.State().Client("default", id); !ok {
			t.Fatalf("snapshot lacks client %s", id)
		}
	}
	fsm.Close()

	// Restore it into a fresh cluster: sent to a follower it is refused;
	// on the leader it replaces the state on every member, and writes
	// continue after it.
	b := nodetest.StartCluster(t, 2)
	restore := func(n *nodetest.Node) (*connect.Response[clusterv1.RestoreSnapshotResponse], error) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		st := n.ClusterAdmin.RestoreSnapshot(context.Background())
		for len(data) > 0 {
			k := min(len(data), 64<<10)
			if err := st.Send(&clusterv1.RestoreSnapshotRequest{Chunk: data[:k]}); err != nil {
				break
			}
			data = data[k:]
		}
		return st.CloseAndReceive()
	}
	if _, err := restore(b.Follower()); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("restore on a follower: %v, want FailedPrecondition", err)
	}
	// The two nodes may trade leadership between finding the leader and
	// the restore reaching it (a loaded machine, a 150 ms lease): a
	// refusal as not the leader goes again to whichever leads.
	var res *connect.Response[clusterv1.RestoreSnapshotResponse]
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		var err error
		res, err = restore(b.Leader())
		if connect.CodeOf(err) == connect.CodeFailedPrecondition {
			return err
		}
		if err != nil {
			t.Fatal(err)
		}
		return nil
	})
	if res.Msg.StateIndex != index {
		t.Errorf("restored state index %d, want %d", res.Msg.StateIndex, index)
	}
	bf := b.Follower()
	bf.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "after-restore"})
	b.WaitConverged()
	for _, i := range b.Running() {
		for _, id := range ids {
			if _, ok := b.Node(i).Raft().State().Client("default", id); !ok {
				t.Fatalf("restored cluster node%d lacks client %s", i, id)
			}
		}
	}

	// Without the admin credential: refused.
	anon := clusterv1connect.NewClusterAdminServiceClient(http.DefaultClient, n.BaseURL())
	s2, err := anon.SaveSnapshot(context.Background(), connect.NewRequest(&clusterv1.SaveSnapshotRequest{}))
	if err == nil {
		for s2.Receive() {
			t.Fatal("snapshot streamed without the admin credential")
		}
		err = s2.Err()
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("SaveSnapshot without credential: %v", err)
	}
}

// TestLeaderRegionPreference: a leader outside the preferred region hands
// leadership to a voter inside it, and it is there after writes through a
// node outside it.
func TestLeaderRegionPreference(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithRegions("east", "west", "east"),
		nodetest.WithNodeOptions(func(cfg *node.Config) { cfg.LeaderRegion = "west" }))
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		if l := c.Leader(); l.Region() != "west" {
			return fmt.Errorf("leader %s is in %s", l.NodeID(), l.Region())
		}
		return nil
	})
	// Writes keep working through an east node, and leadership is in the
	// preferred region after them. An election (heartbeats late on a
	// loaded machine: 300 ms timeouts) may let an east node win for a
	// moment; it then hands leadership back, as above.
	c.Node(0).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "east"})
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		if l := c.Leader(); l.Region() != "west" {
			return fmt.Errorf("leadership left the preferred region: %s", l.NodeID())
		}
		return nil
	})
}

// TestForwardIsIdempotent: the internal Apply answers a repeated command
// (same request_id) with the first result instead of applying it twice, and
// rejects garbage with InvalidArgument, never a 500.
func TestForwardIsIdempotent(t *testing.T) {
	c := nodetest.StartCluster(t, 2)
	leader := c.Leader()
	// Only members forward writes: call as the follower.
	nt, err := raft.LoadNodeTLSDir(filepath.Join(c.Follower().DataDir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The two nodes may trade leadership between finding the leader and a
	// call reaching it (a loaded machine, a 150 ms lease): a call refused
	// as not the leader goes again to whichever leads.
	apply := func(req *clusterv1.ApplyRequest) (resp *connect.Response[clusterv1.ApplyResponse], err error) {
		nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
			leader = c.Leader()
			cl := clusterv1connect.NewClusterServiceClient(&http.Client{Transport: nt.HTTPTransport()}, "https://"+leader.ClusterAddr())
			if resp, err = cl.Apply(ctx, connect.NewRequest(req)); connect.CodeOf(err) == connect.CodeFailedPrecondition {
				return err
			}
			return nil
		})
		return resp, err
	}
	cmd := &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: time.Now().UnixNano(), RequestId: "retry-1",
		Op: &raftpb.Command_RevokeToken{RevokeToken: &raftpb.RevokeToken{Revocation: &raftpb.Revocation{
			Tenant: "default", Jti: "j1", ExpiresUnixNano: time.Now().Add(time.Hour).UnixNano()}}}}
	data, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	var first *clusterv1.ApplyResponse
	for range 3 {
		resp, err := apply(&clusterv1.ApplyRequest{Command: data})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Msg.Result != clusterv1.ResultCode_RESULT_CODE_OK {
			t.Fatalf("apply: %v", resp.Msg)
		}
		if first == nil {
			first = resp.Msg
		} else if resp.Msg.Index != first.Index {
			t.Fatalf("retried command applied again at %d (first at %d)", resp.Msg.Index, first.Index)
		}
	}
	if n := len(leader.Raft().State().Revocations("default")); n != 1 {
		t.Fatalf("%d revocations after three tries, want 1", n)
	}
	_, err = apply(&clusterv1.ApplyRequest{Command: []byte{0xff, 0x01, 0x02}})
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("garbage command: %v, want InvalidArgument", err)
	}
	resp, err := apply(&clusterv1.ApplyRequest{})
	if err != nil || resp.Msg.Result != clusterv1.ResultCode_RESULT_CODE_INVALID {
		t.Fatalf("empty command: %v, %v; want an invalid result", resp, err)
	}
	// A follower asked directly says who leads. (Should it lead by the
	// time the call arrives, it answers the repeat with the first result:
	// ask the follower again.)
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		fc := clusterv1connect.NewClusterServiceClient(&http.Client{Transport: nt.HTTPTransport()}, "https://"+c.Follower().ClusterAddr())
		_, err := fc.Apply(ctx, connect.NewRequest(&clusterv1.ApplyRequest{Command: data}))
		switch {
		case err == nil:
			return errors.New("the follower led by the time the call arrived")
		case connect.CodeOf(err) != connect.CodeFailedPrecondition:
			t.Fatalf("apply on a follower: %v, want FailedPrecondition", err)
		}
		return nil
	})
	// A restore of something that is not a state database changes nothing.
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		leader = c.Leader()
		st := leader.ClusterAdmin.RestoreSnapshot(ctx)
		st.Send(&clusterv1.RestoreSnapshotRequest{Chunk: []byte("not a database")})
		_, err := st.CloseAndReceive()
		switch connect.CodeOf(err) {
		case connect.CodeInvalidArgument:
			return nil
		case connect.CodeFailedPrecondition:
			return err // not the leader any more
		}
		t.Fatalf("restoring garbage: %v, want InvalidArgument", err)
		return nil
	})
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		if n := len(leader.Raft().State().Revocations("default")); n != 1 {
			return fmt.Errorf("state changed by a refused restore: %d revocations", n)
		}
		return nil
	})
}
