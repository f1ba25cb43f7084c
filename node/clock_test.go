package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// jumpClock is a node clock that can be moved by an offset.
type jumpClock struct{ off atomic.Int64 }

func (c *jumpClock) now() time.Time       { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *jumpClock) jump(d time.Duration) { c.off.Store(int64(d)) }

func readyReasons(t *testing.T, n *nodetest.Node) (int, []string) {
	t.Helper()
	resp, err := http.Get("http://" + n.Addr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Reasons []string `json:"reasons"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Reasons
}

// A leader whose clock jumps an hour ahead expires nothing early on any
// node; it refuses writes, says why, and hands leadership to a voter whose
// clock agrees; writes resume there; and it is ready again once its clock
// is right.
func TestClusterLeaderClockJump(t *testing.T) {
	clocks := []*jumpClock{{}, {}, {}}
	opts := []nodetest.ClusterOption{nodetest.WithNodeOptions(nodetest.FastRaft, func(cfg *node.Config) {
		cfg.SweepInterval = 100 * time.Millisecond
		cfg.RefreshIdleTimeout = 10 * time.Minute
	})}
	for i, c := range clocks {
		opts = append(opts, nodetest.WithNode(i, func(cfg *node.Config) { cfg.Now = c.now }))
	}
	c := nodetest.StartCluster(t, 3, opts...)
	l := c.LeaderIndex()
	gi := (l + 1) % 3
	good := c.Node(gi)
	ctx := context.Background()

	// Live state with short lives: a refresh family idle-expiring in 10
	// minutes, a pending device code (10 minutes), a revocation (10
	// minutes).
	e := newFlowEnv(t, good)
	tok := e.codeTokens(t)
	da, err := e.conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	userCode := strings.ReplaceAll(da.UserCode, "-", "")
	if _, err := good.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
		Tenant: "default", Jti: "live-jti", ExpiresAt: timestamppb.New(time.Now().Add(10 * time.Minute)), Reason: "test"})); err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()

	// Watch for the jumped leader's commands reaching the log.
	jumped := time.Now().Add(50 * time.Minute).UnixNano()
	var sawJumped atomic.Bool
	good.Raft().FSM().OnApplied(func(_ uint64, cmd *raftpb.Command, _ raft.Result) {
		if cmd.GetTimeUnixNano() > jumped {
			sawJumped.Store(true)
		}
	})

	clocks[l].jump(time.Hour)
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		for _, i := range c.Running() {
			if c.Node(i).Raft().IsLeader() && i == l {
				return errors.New("the jumped node still leads")
			}
		}
		return nil
	})
	if !sawJumped.Load() {
		t.Log("no command stamped by the jumped clock reached the log before it was stopped")
	}
	old := c.Node(l)
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		status, reasons := readyReasons(t, old)
		if status != http.StatusServiceUnavailable || !strings.Contains(strings.Join(reasons, ";"), "clock skew") {
			return fmt.Errorf("jumped node readyz: %d %v", status, reasons)
		}
		return nil
	})
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		if m := metricLines(t, old, "tally_clock_write_refused"); !strings.HasSuffix(m, " 1") {
			return fmt.Errorf("jumped node metric: %q", m)
		}
		return nil
	})
	// The jumped node refuses to stamp writes with its clock.
	if _, err := old.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
		Tenant: "default", Jti: "from-jumped", ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})); connect.CodeOf(err) != connect.CodeUnavailable ||
		!strings.Contains(err.Error(), "clock") {
		t.Fatalf("write on the jumped node: %v", err)
	}

	// Writes resume on the others.
	nl := c.LeaderIndex()
	for _, i := range []int{gi, nl} {
		if _, err := c.Node(i).Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
			Tenant: "default", Jti: fmt.Sprintf("after-%d", i), ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})); err != nil {
			t.Fatalf("write through node%d after the handover: %v", i, err)
		}
	}
	// Let the new leader sweep and tick, then check every replica.
	st := c.Node(nl).Raft().Status()
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		if c.Node(nl).Raft().Status().AppliedIndex < st.AppliedIndex+5 {
			return errors.New("waiting for sweeps and ticks")
		}
		return nil
	})
	c.WaitConverged()
	for _, i := range c.Running() {
		s := c.Node(i).Raft().State()
		if !s.Revoked("default", "live-jti") {
			t.Errorf("node%d: a live revocation expired early", i)
		}
		if d, ok := s.DeviceCodeByUserCode("default", userCode); !ok || d.Status != "pending" {
			t.Errorf("node%d: a pending device code expired early: %v %v", i, d, ok)
		}
		fc, on := c.Node(i).Raft().FSM().Clock()
		if !on || fc.After(time.Now().Add(30*time.Second)) {
			t.Errorf("node%d: FSM clock %s (on %v), real %s", i, fc, on, time.Now())
		}
	}
	// The family still refreshes, and the device code is still approvable.
	if _, err := e.conf.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token(); err != nil {
		t.Fatalf("refresh after the jump: %v", err)
	}
	approveDevice(t, e, newBrowser(t), da.UserCode, true)
	if dt, err := e.conf.DeviceAccessToken(ctx, da); err != nil || dt.AccessToken == "" {
		t.Fatalf("device code after the jump: %v", err)
	}

	// Clock fixed: the node is ready again.
	clocks[l].jump(0)
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		if status, reasons := readyReasons(t, old); status != http.StatusOK {
			return fmt.Errorf("fixed node readyz: %d %v", status, reasons)
		}
		return nil
	})
}

// metricLines returns the /metrics sample lines of n whose name starts with
// name.
func metricLines(t *testing.T, n *nodetest.Node, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + n.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A follower whose clock jumps behind refuses to stamp writes and reports
// not ready; the leader keeps writing; nothing moves the FSM's clock back.
func TestClusterFollowerClockBehind(t *testing.T) {
	clocks := []*jumpClock{{}, {}, {}}
	opts := []nodetest.ClusterOption{nodetest.WithNodeOptions(nodetest.FastRaft)}
	for i, c := range clocks {
		opts = append(opts, nodetest.WithNode(i, func(cfg *node.Config) { cfg.Now = c.now }))
	}
	c := nodetest.StartCluster(t, 3, opts...)
	l := c.LeaderIndex()
	fi := (l + 1) % 3
	f := c.Node(fi)
	ctx := context.Background()
	c.WaitConverged()
	before, _ := c.Node(l).Raft().FSM().Clock()

	clocks[fi].jump(-time.Hour)
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		status, reasons := readyReasons(t, f)
		if status != http.StatusServiceUnavailable || !strings.Contains(strings.Join(reasons, ";"), "behind") {
			return fmt.Errorf("follower readyz: %d %v", status, reasons)
		}
		return nil
	})
	if _, err := f.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
		Tenant: "default", Jti: "from-behind", ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("write on the follower behind: %v", err)
	}
	if l2 := c.LeaderIndex(); l2 != l {
		t.Logf("leadership moved from node%d to node%d", l, l2)
	}
	leader := c.Leader()
	if _, err := leader.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
		Tenant: "default", Jti: "from-leader", ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})); err != nil {
		t.Fatalf("write on the leader: %v", err)
	}
	c.WaitConverged()
	for _, i := range c.Running() {
		if fc, _ := c.Node(i).Raft().FSM().Clock(); fc.Before(before) {
			t.Errorf("node%d: FSM clock went back from %s to %s", i, before, fc)
		}
	}
	clocks[fi].jump(0)
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		if status, reasons := readyReasons(t, f); status != http.StatusOK {
			return fmt.Errorf("fixed follower readyz: %d %v", status, reasons)
		}
		return nil
	})
}
