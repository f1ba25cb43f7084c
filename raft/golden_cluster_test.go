package raft

import (
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

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
	if *update {
		for _, g := range golden {
			data, err := marshalOpts.Marshal(g.cmd)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(goldenPath(g.name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := openTestFSM(t)
	for _, g := range golden {
		data, err := os.ReadFile(goldenPath(g.name))
		if err != nil {
			t.Fatalf("%s: %v (run go test -run TestClusterCommandV1Decoding -update)", g.name, err)
		}
		got := new(raftpb.Command)
		if err := proto.Unmarshal(data, got); err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		if got.Version != 1 || !proto.Equal(got, g.cmd) {
			t.Fatalf("%s decodes to\n%v\nwant\n%v", g.name, got, g.cmd)
		}
		if res := applyAll(t, f, got)[0]; res.Err != nil {
			t.Fatalf("%s: %v", g.name, res.Err)
		}
	}
	if f.State().ClusterIssuer() != "https://auth.example.com" || !f.State().NodeDenied("node3") {
		t.Fatalf("after the golden log: issuer %q, denied %v", f.State().ClusterIssuer(), f.State().DeniedNodes())
	}
}
