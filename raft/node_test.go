package raft_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

const t0 = int64(1_700_000_000_000_000_000)

func newTenant(id string) *raftpb.Command {
	return &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: t0, Op: &raftpb.Command_CreateTenant{
		CreateTenant: &raftpb.CreateTenant{
			Tenant: &raftpb.Tenant{Id: id, SigningAlg: "ES256"},
			Keys: []*raftpb.Key{{Kid: id + "-k1", Alg: "ES256", Use: "sig", PublicKey: []byte("pub"),
				EncryptedPrivate: []byte("priv"), RetentionNanos: int64(time.Hour)}},
		},
	}}
}

func newClient(tenant, id string) *raftpb.Command {
	return &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: t0 + 1, Op: &raftpb.Command_CreateClient{
		CreateClient: &raftpb.CreateClient{Client: &raftpb.Client{
			Tenant: tenant, Id: id, Secrets: []*raftpb.SecretHash{{Hash: []byte("h")}},
			GrantTypes: []string{"client_credentials"}, TokenFormat: "jwt",
		}},
	}}
}

func newRevocation(tenant, jti string, expires int64) *raftpb.Command {
	return &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: t0 + 2, Op: &raftpb.Command_RevokeToken{
		RevokeToken: &raftpb.RevokeToken{Revocation: &raftpb.Revocation{Tenant: tenant, Jti: jti, ExpiresUnixNano: expires}},
	}}
}

func propose(t *testing.T, n *raft.Node, cmd *raftpb.Command) raft.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
	defer cancel()
	res, err := n.Propose(ctx, cmd)
	if err != nil {
		t.Fatalf("propose: %v", err)
	}
	return res
}

func mustPropose(t *testing.T, n *raft.Node, cmd *raftpb.Command) raft.Result {
	t.Helper()
	res := propose(t, n, cmd)
	if res.Err != nil {
		t.Fatalf("propose: %v", res.Err)
	}
	return res
}

func waitLeader(t *testing.T, n *raft.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rafttest.Timeout)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	rafttest.CheckFor(t, rafttest.Timeout, 10*time.Millisecond, func() error {
		if !n.IsLeader() {
			return errors.New("not leader yet")
		}
		return nil
	})
}

func TestNodeSingleBootstrapsAndKeepsStateAcrossRestart(t *testing.T) {
	cfg := rafttest.Config(t, "solo")
	cfg.Bootstrap = true
	n, err := raft.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, n)
	if id, addr := n.Leader(); id != "solo" || addr != n.Addr() {
		t.Fatalf("leader = %q %q, want solo %q", id, addr, n.Addr())
	}

	r1 := mustPropose(t, n, newTenant("acme"))
	r2 := mustPropose(t, n, newClient("acme", "c1"))
	if r2.Index <= r1.Index {
		t.Fatalf("indexes %d then %d", r1.Index, r2.Index)
	}
	// Read-your-write: the view has it as soon as Propose returns.
	if _, ok := n.State().Client("acme", "c1"); !ok {
		t.Fatal("client not in view after Propose")
	}
	if res := propose(t, n, newTenant("acme")); !errors.Is(res.Err, raft.ErrExists) {
		t.Fatalf("duplicate tenant: %v", res.Err)
	}
	if n.Stats()["state"] != "Leader" || n.State().AppliedIndex() < r2.Index {
		t.Fatalf("stats %v, applied %d", n.Stats()["state"], n.State().AppliedIndex())
	}
	lastIndex := n.Stats()["last_log_index"]

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := n.Propose(context.Background(), newTenant("beta")); !errors.Is(err, raft.ErrClosed) {
		t.Fatalf("Propose after Close: %v", err)
	}

	// Re-open with Bootstrap still set: the state is there before any
	// replay, and the node does not bootstrap again (the log continues).
	n2 := rafttest.Open(t, cfg)
	if _, ok := n2.State().Client("acme", "c1"); !ok {
		t.Fatal("client lost across restart")
	}
	waitLeader(t, n2)
	r3 := mustPropose(t, n2, newTenant("beta"))
	if r3.Index <= r2.Index {
		t.Fatalf("index after restart %d, before %d (log %s)", r3.Index, r2.Index, lastIndex)
	}
	if got := len(n2.State().Tenants()); got != 2 {
		t.Fatalf("tenants = %d", got)
	}
}

func TestNodeProposeRejects(t *testing.T) {
	cfg := rafttest.Config(t, "solo")
	cfg.Bootstrap = true
	n := rafttest.Open(t, cfg)
	waitLeader(t, n)
	applied := n.State().AppliedIndex()

	for name, cmd := range map[string]*raftpb.Command{
		"nil":          nil,
		"version 0":    {TimeUnixNano: t0, Op: &raftpb.Command_Sweep{Sweep: &raftpb.Sweep{}}},
		"version 2":    {Version: 2, TimeUnixNano: t0, Op: &raftpb.Command_Sweep{Sweep: &raftpb.Sweep{}}},
		"no operation": {Version: 1, TimeUnixNano: t0},
		"no time":      {Version: 1, Op: &raftpb.Command_Sweep{Sweep: &raftpb.Sweep{}}},
	} {
		res, err := n.Propose(context.Background(), cmd)
		if err != nil || !errors.Is(res.Err, raft.ErrInvalid) || res.Index != 0 {
			t.Errorf("%s: %+v, %v; want ErrInvalid before proposing", name, res, err)
		}
	}
	if got := n.State().AppliedIndex(); got != applied {
		t.Fatalf("invalid commands reached the log: applied %d → %d", applied, got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Propose(ctx, newTenant("acme")); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled ctx: %v", err)
	}
}

func TestNodeRecoversLostStateFromSnapshot(t *testing.T) {
	cfg := rafttest.Config(t, "solo")
	cfg.Bootstrap = true
	cfg.TrailingLogs = 2 // the snapshot compacts the log: recovery needs it
	n, err := raft.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, n)
	mustPropose(t, n, newTenant("acme"))
	for i := range 10 {
		mustPropose(t, n, newRevocation("acme", fmt.Sprintf("j%d", i), t0+int64(time.Hour)))
	}
	if err := n.Snapshot(); err != nil {
		t.Fatal(err)
	}
	mustPropose(t, n, newClient("acme", "after-snapshot"))
	want := rafttest.ViewDump(n.State())
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	// Losing state.db: the node restores the snapshot, then replays the log.
	if err := os.Remove(filepath.Join(cfg.DataDir, "state.db")); err != nil {
		t.Fatal(err)
	}
	n2 := rafttest.Open(t, cfg)
	rafttest.CheckFor(t, rafttest.Timeout, 10*time.Millisecond, func() error {
		if got := rafttest.ViewDump(n2.State()); got != want {
			return fmt.Errorf("view after recovery:\n%s\nwant:\n%s", got, want)
		}
		return nil
	})
	if !n2.State().Revoked("acme", "j9") {
		t.Fatal("revocation lost")
	}
}

func TestNodeSweeper(t *testing.T) {
	cfg := rafttest.Config(t, "solo")
	cfg.Bootstrap = true
	n := rafttest.Open(t, cfg)
	waitLeader(t, n)
	mustPropose(t, n, newTenant("acme"))
	mustPropose(t, n, newRevocation("acme", "short", t0+int64(time.Minute)))
	mustPropose(t, n, newRevocation("acme", "long", t0+int64(48*time.Hour)))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := func() time.Time { return time.Unix(0, t0+int64(time.Hour)) }
	n.StartSweeper(ctx, 20*time.Millisecond, clock)
	rafttest.CheckFor(t, rafttest.Timeout, 10*time.Millisecond, func() error {
		if n.State().Revoked("acme", "short") {
			return errors.New("expired revocation not swept")
		}
		return nil
	})
	if !n.State().Revoked("acme", "long") {
		t.Fatal("sweeper removed a live revocation")
	}
	n.StartSweeper(ctx, 0, clock) // no-op
}

func TestClusterReplicatesAndSurvivesRestarts(t *testing.T) {
	c := rafttest.NewCluster(t, 3)
	leader := c.Leader()
	res := c.Propose(newTenant("acme"))
	c.Propose(newClient("acme", "c1"))
	last := c.Propose(newRevocation("acme", "jti-1", t0+int64(time.Hour)))
	if res.Err != nil || last.Err != nil {
		t.Fatal(res.Err, last.Err)
	}
	c.WaitApplied(last.Index)
	for _, n := range c.Running() {
		if _, ok := n.State().Client("acme", "c1"); !ok || !n.State().Revoked("acme", "jti-1") {
			t.Fatalf("%s misses replicated writes", n.ID())
		}
	}
	c.CheckConverged()

	// A follower refuses writes with ErrNotLeader (which is also hraft's).
	for _, n := range c.Running() {
		if n == leader {
			continue
		}
		_, err := n.Propose(context.Background(), newTenant("beta"))
		if !errors.Is(err, raft.ErrNotLeader) || !errors.Is(err, hraft.ErrNotLeader) {
			t.Fatalf("follower propose: %v", err)
		}
		if id, _ := n.Leader(); id != leader.ID() {
			t.Fatalf("%s sees leader %q, want %q", n.ID(), id, leader.ID())
		}
		break
	}

	// User snapshots on every node, then restart each node in turn.
	for _, n := range c.Running() {
		if err := n.Snapshot(); err != nil {
			t.Fatalf("%s snapshot: %v", n.ID(), err)
		}
	}
	for i := range 3 {
		c.Restart(i)
		c.Leader()
	}
	after := c.Propose(newClient("acme", "c2"))
	if after.Err != nil {
		t.Fatal(after.Err)
	}
	c.WaitApplied(after.Index)
	c.CheckConverged()
	for _, n := range c.Running() {
		if _, ok := n.State().Client("acme", "c1"); !ok {
			t.Fatalf("%s lost state across restart", n.ID())
		}
	}
}

func TestClusterJoinInstallsSnapshot(t *testing.T) {
	c := rafttest.NewCluster(t, 1, func(cfg *raft.Config) { cfg.TrailingLogs = 1 })
	c.Propose(newTenant("acme"))
	var last raft.Result
	for i := range 20 {
		last = c.Propose(newRevocation("acme", fmt.Sprintf("j%d", i), t0+int64(time.Hour)))
	}
	if err := c.Leader().Snapshot(); err != nil {
		t.Fatal(err)
	}
	// The log before the snapshot is gone: new members get the state by
	// InstallSnapshot (FSMSnapshot.Persist → FSM.Restore over TCP).
	if first := c.Leader().Stats()["last_snapshot_index"]; first == "0" {
		t.Fatal("no snapshot")
	}
	c.Join()
	c.Join()
	c.WaitApplied(last.Index)
	c.CheckConverged()
	for i, n := range c.Running() {
		if !n.State().Revoked("acme", "j19") {
			t.Fatalf("%s misses the snapshotted state", n.ID())
		}
		if s := n.Stats()["last_snapshot_index"]; i > 0 && (s == "" || s == "0") {
			t.Fatalf("%s did not install a snapshot (last_snapshot_index %q)", n.ID(), s)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := raft.DefaultConfig()
	ok.ID, ok.DataDir = "n1", "/tmp/x"
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*raft.Config){
		"no id":             func(c *raft.Config) { c.ID = "" },
		"no data dir":       func(c *raft.Config) { c.DataDir = "" },
		"no bind addr":      func(c *raft.Config) { c.BindAddr = "" },
		"lease > heartbeat": func(c *raft.Config) { c.LeaderLeaseTimeout = 2 * c.HeartbeatTimeout },
		"zero apply":        func(c *raft.Config) { c.ApplyTimeout = 0 },
		"huge batch":        func(c *raft.Config) { c.MaxAppendEntries = 5000 },
		"no retain":         func(c *raft.Config) { c.SnapshotRetain = 0 },
		"no threshold":      func(c *raft.Config) { c.SnapshotThreshold = 0 },
	} {
		c := ok
		mut(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), "raft: config: ") {
			t.Errorf("%s: %v", name, err)
		}
		if _, oerr := raft.Open(c); oerr == nil {
			t.Errorf("%s: Open accepted it", name)
		}
	}
}

// TestProposeRefusesDisabledFeatures: an operation gated on a feature is
// refused before it reaches the log until the cluster's recorded version
// enables the feature, and proposed normally afterwards.
func TestProposeRefusesDisabledFeatures(t *testing.T) {
	restore := raft.GateOpForTest("sweep", "test_feature")
	defer restore()
	cfg := rafttest.Config(t, "solo")
	cfg.Bootstrap = true
	n := rafttest.Open(t, cfg)
	waitLeader(t, n)
	sweep := func() *raftpb.Command {
		return &raftpb.Command{Version: 1, TimeUnixNano: time.Now().UnixNano(), Op: &raftpb.Command_Sweep{Sweep: &raftpb.Sweep{}}}
	}
	applied := n.State().AppliedIndex()
	if _, err := n.Propose(context.Background(), sweep()); !errors.Is(err, raft.ErrFeatureDisabled) {
		t.Fatalf("gated operation before its feature: %v, want ErrFeatureDisabled", err)
	}
	if got := n.State().AppliedIndex(); got != applied {
		t.Fatalf("a refused operation reached the log: applied %d → %d", applied, got)
	}
	mustPropose(t, n, &raftpb.Command{Version: 1, TimeUnixNano: time.Now().UnixNano(), Op: &raftpb.Command_SetClusterVersion{
		SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{Version: 2, Features: []string{"cluster_version", "test_feature"}}}}})
	if !n.State().FeatureEnabled("test_feature") {
		t.Fatal("feature not enabled after SetClusterVersion")
	}
	mustPropose(t, n, sweep())
}

// TestProposeRefusesGatedClientFields: a CreateClient carrying dpop_bound
// or require_pushed_authorization_requests (fields an older release would
// ignore) is proposed while no cluster version is recorded (the node gates
// it on the live members), and refused once a recorded cluster version
// lacks par_keypolicy (after a downgrade); a client without them is not.
func TestProposeRefusesGatedClientFields(t *testing.T) {
	cfg := rafttest.Config(t, "solo")
	cfg.Bootstrap = true
	n := rafttest.Open(t, cfg)
	waitLeader(t, n)
	seq := 0
	create := func(c *raftpb.Client) *raftpb.Command {
		seq++
		c.Tenant, c.Id, c.Name, c.GrantTypes, c.TokenFormat, c.AccessTokenTtlSeconds = "default", "c"+strconv.Itoa(seq), "x", []string{"client_credentials"}, "jwt", 60
		return &raftpb.Command{Version: 1, TimeUnixNano: time.Now().UnixNano(), Op: &raftpb.Command_CreateClient{CreateClient: &raftpb.CreateClient{Client: c}}}
	}
	if _, err := n.Propose(context.Background(), create(&raftpb.Client{DpopBound: true})); errors.Is(err, raft.ErrFeatureDisabled) {
		t.Errorf("dpop_bound with no recorded cluster version: %v", err)
	}
	mustPropose(t, n, &raftpb.Command{Version: 1, TimeUnixNano: time.Now().UnixNano(), Op: &raftpb.Command_SetClusterVersion{
		SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{Version: 2, Features: []string{"cluster_version"}}}}})
	applied := n.State().AppliedIndex()
	for name, c := range map[string]*raftpb.Client{"dpop_bound": {DpopBound: true}, "require_par": {RequirePushedAuthorizationRequests: true}} {
		if _, err := n.Propose(context.Background(), create(c)); !errors.Is(err, raft.ErrFeatureDisabled) {
			t.Errorf("%s without par_keypolicy recorded: %v, want ErrFeatureDisabled", name, err)
		}
	}
	if got := n.State().AppliedIndex(); got != applied {
		t.Fatalf("a refused command reached the log: applied %d → %d", applied, got)
	}
	if _, err := n.Propose(context.Background(), create(&raftpb.Client{})); errors.Is(err, raft.ErrFeatureDisabled) {
		t.Errorf("plain client refused: %v", err)
	}
}
