package raft

import (
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// TestOpRegistryCoversTheOneof: every member of Command.op has a registry
// entry and every entry names a member, so adding an operation to the proto
// without wiring it (or the reverse) fails here.
func TestOpRegistryCoversTheOneof(t *testing.T) {
	fields := opOneof.Fields()
	names := map[string]bool{}
	for i := 0; i < fields.Len(); i++ {
		name := fields.Get(i).Name()
		names[string(name)] = true
		if _, ok := opRegistry[name]; !ok {
			t.Errorf("oneof member %s (field %d) has no entry in opRegistry (ops.go)", name, fields.Get(i).Number())
		}
	}
	for name, spec := range opRegistry {
		if !names[string(name)] {
			t.Errorf("opRegistry entry %q is not a member of Command.op", name)
		}
		if spec.check == nil || spec.apply == nil {
			t.Errorf("opRegistry entry %q lacks check or apply", name)
		}
	}
}

// goldenVersion are the cluster version commands (issue 15), encoded in
// testdata/command_v1_*.bin like the others.
func goldenVersion() []struct {
	name string
	cmd  *raftpb.Command
} {
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"set_cluster_version", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0,
			Op: &raftpb.Command_SetClusterVersion{SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{
				Version: 2, Features: []string{"cluster_identity", "cluster_version"}}}}}},
	}
}

// TestVersionCommandV1Decoding pins the encoding of SetClusterVersion (run
// with -update to write new files) and what applying it records.
func TestVersionCommandV1Decoding(t *testing.T) {
	golden := goldenVersion()
	writeGolden(t, golden)
	f := openTestFSM(t)
	if f.State().ClusterVersion() != nil || f.State().FeatureEnabled(FeatureClusterVersion) {
		t.Fatal("a new state has a cluster version")
	}
	applyGolden(t, f, "TestVersionCommandV1Decoding", golden)
	v := f.State().ClusterVersion()
	if v.GetVersion() != 2 || !f.State().FeatureEnabled(FeatureClusterVersion) || v.GetUpdatedUnixNano() != t0 {
		t.Fatalf("recorded %v", v)
	}
	checkViewMatchesDB(t, f)
	// The record survives a reopen (read view rebuilt from the database).
	path := f.path
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g, err := OpenFSM(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if !proto.Equal(g.State().ClusterVersion(), v) {
		t.Fatalf("after reopen: %v, want %v", g.State().ClusterVersion(), v)
	}
}

func TestSetClusterVersionChecks(t *testing.T) {
	bad := []*raftpb.ClusterVersion{
		nil,
		{},
		{Version: 2, Features: []string{"b", "a"}},
		{Version: 2, Features: []string{"a", "a"}},
		{Version: 2, Features: []string{""}},
	}
	for _, v := range bad {
		if err := checkSetClusterVersion(&raftpb.SetClusterVersion{ClusterVersion: v}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v: %v, want ErrInvalid", v, err)
		}
	}
	if err := checkSetClusterVersion(&raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{Version: 1, Hold: true}}); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(KnownFeatures(), FeatureClusterVersion) || !slices.IsSorted(KnownFeatures()) {
		t.Fatalf("KnownFeatures = %v", KnownFeatures())
	}
}
