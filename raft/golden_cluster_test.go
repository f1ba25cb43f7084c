package raft

import (
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// goldenClusterV1 are the cluster identity commands (issue 9), encoded in
// testdata/command_v1_*.bin like the others.
func goldenClusterV1() []struct {
	name string
	cmd  *raftpb.Command
} {
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"set_cluster_issuer", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0,
			Op: &raftpb.Command_SetClusterIssuer{SetClusterIssuer: &raftpb.SetClusterIssuer{Issuer: "https://auth.example.com"}}}},
		{"deny_node", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + 1,
			Op: &raftpb.Command_DenyNode{DenyNode: &raftpb.DenyNode{NodeId: "node3", Reason: "removed from the cluster"}}}},
	}
}

// TestClusterCommandV1Decoding is TestCommandV1Decoding for the cluster
// identity commands (run with -update to write new files).
func TestClusterCommandV1Decoding(t *testing.T) {
	golden := goldenClusterV1()
	writeGolden(t, golden)
	f := openTestFSM(t)
	applyGolden(t, f, "TestClusterCommandV1Decoding", golden)
	if f.State().ClusterIssuer() != "https://auth.example.com" || !f.State().NodeDenied("node3") {
		t.Fatalf("after the golden log: issuer %q, denied %v", f.State().ClusterIssuer(), f.State().DeniedNodes())
	}
}
