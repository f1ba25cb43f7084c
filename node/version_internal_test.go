package node

import (
	"errors"
	"slices"
	"strings"
	"testing"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// TestTargetVersion: the leader records the lowest version and the common
// features, and only once every member answers and supports recording one
// (a v0.1.0 member reports no version and only cluster_identity).
func TestTargetVersion(t *testing.T) {
	cur := &clusterv1.MemberStatus{State: "Follower", Features: features, ClusterVersion: raft.ClusterVersion}
	old := &clusterv1.MemberStatus{State: "Follower", Features: []string{featureClusterIdentity}}
	down := &clusterv1.MemberStatus{State: "unreachable"}
	if v := targetVersion([]*clusterv1.MemberStatus{cur, cur, old}); v != nil {
		t.Fatalf("with a v0.1.0 member: %v, want none", v)
	}
	if v := targetVersion([]*clusterv1.MemberStatus{cur, down, cur}); v != nil {
		t.Fatalf("with an unreachable member: %v, want none", v)
	}
	v := targetVersion([]*clusterv1.MemberStatus{cur, cur, cur})
	if v.GetVersion() != raft.ClusterVersion || !slices.Equal(v.GetFeatures(), raft.KnownFeatures()) {
		t.Fatalf("all current: %v", v)
	}
	fewer := &clusterv1.MemberStatus{State: "Leader", Features: []string{featureClusterIdentity, raft.FeatureClusterVersion}, ClusterVersion: raft.ClusterVersion}
	plus := &clusterv1.MemberStatus{State: "Follower", Features: append(slices.Clone(features), "zz_newer"), ClusterVersion: raft.ClusterVersion + 1}
	v = targetVersion([]*clusterv1.MemberStatus{plus, fewer, cur})
	if v.GetVersion() != raft.ClusterVersion || !slices.Equal(v.GetFeatures(), []string{featureClusterIdentity, raft.FeatureClusterVersion}) {
		t.Fatalf("mixed: %v", v)
	}
}

func TestRaises(t *testing.T) {
	a := &raftpb.ClusterVersion{Version: 2, Features: []string{"a", "b"}}
	for _, tc := range []struct {
		cur, want *raftpb.ClusterVersion
		raise     bool
	}{
		{nil, a, true},
		{a, a, false},
		{a, &raftpb.ClusterVersion{Version: 2, Features: []string{"a", "b", "c"}}, true},
		{a, &raftpb.ClusterVersion{Version: 3, Features: []string{"a", "b"}}, true},
		{a, &raftpb.ClusterVersion{Version: 2, Features: []string{"a"}}, false},
		{a, &raftpb.ClusterVersion{Version: 1, Features: []string{"a", "b", "c"}}, false},
	} {
		if got := raises(tc.cur, tc.want); got != tc.raise {
			t.Errorf("raises(%v, %v) = %v", tc.cur, tc.want, got)
		}
	}
}

// TestJoinRefusesTooOldNodes: with a recorded version, a node that does
// not implement it (a v0.1.0 node sends neither version nor features) is
// refused with a message that says what to do.
func TestJoinRefusesTooOldNodes(t *testing.T) {
	v := &raftpb.ClusterVersion{Version: raft.ClusterVersion, Features: []string{featureClusterIdentity, raft.FeatureClusterVersion}}
	for _, tc := range []struct {
		name string
		req  *clusterv1.JoinRequest
		ok   bool
	}{
		{"v0.1.0", &clusterv1.JoinRequest{Id: "node4"}, false},
		{"lacks a feature", &clusterv1.JoinRequest{Id: "node4", ClusterVersion: raft.ClusterVersion, Features: []string{featureClusterIdentity}}, false},
		{"this release", &clusterv1.JoinRequest{Id: "node4", ClusterVersion: raft.ClusterVersion, Features: features}, true},
	} {
		err := checkJoinVersion(v, tc.req)
		if tc.ok != (err == nil) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if err != nil && (!errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "tally admin cluster downgrade")) {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
	// After a downgrade to version 1 the v0.1.0 node may join.
	held := &raftpb.ClusterVersion{Version: 1, Features: []string{featureClusterIdentity}, Hold: true}
	if err := checkJoinVersion(held, &clusterv1.JoinRequest{Id: "node4"}); err != nil {
		t.Fatal(err)
	}
	if err := checkJoinVersion(nil, &clusterv1.JoinRequest{Id: "node4"}); err != nil {
		t.Fatal(err)
	}
}

// TestStatusMarksTooOldMembers: a member whose binary does not implement
// the recorded version shows as "too old" in the cluster status.
func TestStatusMarksTooOldMembers(t *testing.T) {
	v := &clusterv1.ClusterVersion{Version: raft.ClusterVersion, Features: []string{featureClusterIdentity, raft.FeatureClusterVersion}}
	old := &clusterv1.MemberStatus{Id: "node2", State: "Follower", Health: "healthy", Features: []string{featureClusterIdentity}}
	cur := &clusterv1.MemberStatus{Id: "node1", State: "Leader", Health: "healthy", Features: features, ClusterVersion: raft.ClusterVersion}
	tooOld(v, old)
	tooOld(v, cur)
	if old.Health != "too old" || !strings.Contains(old.Error, "node2") || cur.Health != "healthy" {
		t.Fatalf("old %s %q, current %s", old.Health, old.Error, cur.Health)
	}
	held := &clusterv1.MemberStatus{Id: "node2", State: "Follower", Health: "healthy", Features: []string{featureClusterIdentity}}
	tooOld(&clusterv1.ClusterVersion{Version: 1, Features: []string{featureClusterIdentity}, Hold: true}, held)
	if held.Health != "healthy" {
		t.Fatalf("after a downgrade an old member is %s", held.Health)
	}
}
