package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// waitClusterVersion waits until every running node has replicated a
// cluster version for which ok holds.
func waitClusterVersion(t *testing.T, c *nodetest.Cluster, what string, ok func(version uint32, features []string, hold bool) bool) {
	t.Helper()
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		for _, i := range c.Running() {
			v := c.Node(i).Raft().State().ClusterVersion()
			if v == nil || !ok(v.Version, v.Features, v.Hold) {
				return fmt.Errorf("node%d: cluster version %v, want %s", i, v, what)
			}
		}
		return nil
	})
}

// TestClusterVersionRecordedAndDowngraded: a cluster whose members all run
// this release records its version and features (every node replicates
// it, status shows it); a downgrade lowers and holds it, the leader does
// not raise it while held, and cancelling the hold lets it raise it again.
func TestClusterVersionRecordedAndDowngraded(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(withIssuer(sharedIssuer)))
	current := func(v uint32, f []string, hold bool) bool {
		return v == raft.ClusterVersion && slices.Equal(f, raft.KnownFeatures()) && !hold
	}
	waitClusterVersion(t, c, "this release's", current)
	ctx := context.Background()
	// Typed enums (raft/enums.go): with the feature recorded every node
	// stores the typed token format next to the string.
	cid, _ := c.Node(0).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "typed", TokenFormat: "opaque"})
	checkTokenFormat(t, c, cid, "opaque", raftpb.TokenFormat_TOKEN_FORMAT_OPAQUE)
	for _, k := range c.Node(1).Raft().State().Keys("default") { // migrated when the feature was recorded
		if k.GetKeyUse() == raftpb.KeyUse_KEY_USE_UNSPECIFIED || raft.KeyUseName(k.GetKeyUse()) != k.GetUse() {
			t.Fatalf("key %s: use %q, key use %v", k.GetKid(), k.GetUse(), k.GetKeyUse())
		}
	}
	// The second set (raft/enums_v2.go): the default tenant, created before
	// the version was recorded, was migrated by the entry that recorded it.
	if tn, ok := c.Node(1).Raft().State().Tenant("default"); !ok || tn.GetSigningAlgorithm() <= raftpb.KeyAlg_KEY_ALG_OTHER || raft.SigningAlgOf(tn) != tn.GetSigningAlg() {
		t.Fatalf("default tenant: %v", tn)
	}
	// The third set (raft/enums_v3.go): a credential created now stores its
	// typed role on every node, and the admin API reads it back.
	cred, err := c.Node(0).Admin.CreateAdminCredential(ctx, connect.NewRequest(&adminv1.CreateAdminCredentialRequest{Name: "typed-ci", Role: raft.RoleOperator}))
	if err != nil {
		t.Fatal(err)
	}
	if r := cred.Msg.GetCredential().GetRole(); r != raft.RoleOperator {
		t.Fatalf("created credential role %q", r)
	}
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		for _, i := range c.Running() {
			ac, ok := c.Node(i).Raft().FSM().AdminCredential(cred.Msg.GetCredential().GetId())
			if !ok || ac.GetRole() != raft.RoleOperator || ac.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_OPERATOR || raft.RoleOf(ac) != raft.RoleOperator {
				return fmt.Errorf("node%d: admin credential %v", i, ac)
			}
		}
		return nil
	})
	st, err := c.Node(1).ClusterAdmin.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if v := st.Msg.ClusterVersion; v.GetVersion() != raft.ClusterVersion || !slices.Contains(v.GetFeatures(), raft.FeatureClusterVersion) {
		t.Fatalf("status cluster version %v", v)
	}
	for _, m := range st.Msg.Members {
		if m.ClusterVersion != raft.ClusterVersion {
			t.Fatalf("member %s reports cluster version %d", m.Id, m.ClusterVersion)
		}
	}

	res, err := c.Node(2).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Version: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.Index == 0 || !res.Msg.ClusterVersion.GetHold() {
		t.Fatalf("downgrade answered %v", res.Msg)
	}
	held := func(v uint32, f []string, hold bool) bool {
		return v == 1 && hold && !slices.Contains(f, raft.FeatureClusterVersion)
	}
	waitClusterVersion(t, c, "version 1, held", held)
	// The leader compares versions once a second; several rounds later
	// the hold still stands.
	time.Sleep(3 * time.Second)
	waitClusterVersion(t, c, "version 1, still held", held)
	// Held at version 1, new writes carry the string only, as v0.1.0
	// writes them.
	if _, err := c.Node(1).Admin.UpdateClient(ctx, connect.NewRequest(&adminv1.UpdateClientRequest{Tenant: "default", ClientId: cid, TokenFormat: proto.String("jwt")})); err != nil {
		t.Fatal(err)
	}
	checkTokenFormat(t, c, cid, "jwt", raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED)
	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Version: 7})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("downgrade to an unknown version: %v", err)
	}

	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Cancel: true})); err != nil {
		t.Fatal(err)
	}
	waitClusterVersion(t, c, "this release's again", current)
	checkTokenFormat(t, c, cid, "jwt", raftpb.TokenFormat_TOKEN_FORMAT_JWT) // migrated again
	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Cancel: true})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("cancel without a hold: %v", err)
	}
}

// checkTokenFormat waits until every running node stores client id with
// token_format s and the typed format f, and the admin API reports s.
func checkTokenFormat(t *testing.T, c *nodetest.Cluster, id, s string, f raftpb.TokenFormat) {
	t.Helper()
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		for _, i := range c.Running() {
			cl, ok := c.Node(i).Raft().State().Client("default", id)
			if !ok || cl.GetTokenFormat() != s || cl.GetFormat() != f {
				return fmt.Errorf("node%d: client %v, want token_format %q and format %v", i, cl, s, f)
			}
		}
		return nil
	})
	got, err := c.Node(2).Admin.GetClient(context.Background(), connect.NewRequest(&adminv1.GetClientRequest{Tenant: "default", ClientId: id}))
	if err != nil || got.Msg.GetClient().GetTokenFormat() != s {
		t.Fatalf("admin GetClient: %v %v, want token format %q", got, err, s)
	}
}

// TestForwardedWriteRefusedByFeatureReturnsAtOnce: a follower forwards a
// write whose gated part the recorded cluster version lacks (a downgrade
// the leader has applied): the leader's refusal reaches the follower as
// raft.ErrFeatureDisabled at once, so the caller can propose again without
// the gated part (a refresh rotation without its network), instead of the
// follower retrying until its write timeout and answering
// temporarily_unavailable (make upgrade-test met that during a downgrade).
func TestForwardedWriteRefusedByFeatureReturnsAtOnce(t *testing.T) {
	const writeTimeout = 20 * time.Second
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(func(cfg *node.Config) { cfg.WriteTimeout = writeTimeout }))
	ctx := context.Background()
	if _, err := c.Node(0).ClusterAdmin.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Version: 1})); err != nil {
		t.Fatal(err)
	}
	waitClusterVersion(t, c, "version 1, held", func(v uint32, f []string, hold bool) bool { return v == 1 && hold })
	f := c.Follower()
	cmd := &raftpb.Command{Op: &raftpb.Command_RotateRefresh{RotateRefresh: &raftpb.RotateRefresh{
		Tenant: "default", FamilyId: "f_none", Generation: 1, TokenHash: make([]byte, 32), ClientId: "c", NewHash: make([]byte, 32), Network: "192.0.2.0/24"}}}
	if _, err := node.ProposeForTest(ctx, f.Node, cmd); !errors.Is(err, raft.ErrFeatureDisabled) {
		t.Fatalf("forwarded gated write after a downgrade: %v, want raft.ErrFeatureDisabled", err)
	}
}
