package raft

import (
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Cluster version (issue 15). Each binary knows ClusterVersion and a set of
// features (the operations and fields it added beyond v0.1.0, by name; the
// node reports them in its member status). The leader records the lowest
// version and the features every member supports with SetClusterVersion;
// a proposer uses an operation gated on a feature (opSpec.feature) only once
// State.FeatureEnabled says it is recorded. A node that reads a recorded
// version or feature it does not know stops applying (it is too old for the
// cluster) instead of diverging. A downgrade lowers the record first, with
// hold set, so that the leader does not raise it again (runbook
// deploy/runbooks/rolling-upgrade.md).

// ClusterVersion is the cluster version this binary implements. v0.1.0 is 1
// (it has no SetClusterVersion); this release is 2.
const ClusterVersion = 2

// FeatureClusterVersion names the SetClusterVersion operation (op 70): a
// leader proposes it only once every member lists it.
const FeatureClusterVersion = "cluster_version"

// KnownFeatures are the feature names this binary understands in a
// recorded ClusterVersion: the cluster identity operations of v0.1.0, the
// cluster version itself, the typed enum fields (enums.go, enums_v2.go,
// enums_v3.go), and the features of the registered operations.
func KnownFeatures() []string {
	out := append([]string{"cluster_identity", FeatureClusterVersion, FeatureTypedEnums, FeatureTypedEnumsV2, FeatureTypedEnumsV3}, OpFeatures()...)
	out = append(out, registered...)
	slices.Sort(out)
	return slices.Compact(out)
}

// registered are the features added by RegisterFeatures.
var registered []string

// RegisterFeatures adds features this binary implements outside the
// operation registry (e.g. a new field of an existing operation, gated by
// its proposer). Call it from an init function, before any FSM applies.
func RegisterFeatures(f ...string) { registered = append(registered, f...) }

// kindClusterVersion is the change kind of the ClusterVersion record.
const kindClusterVersion = "cluster_version"

const maxFeatures = 256

func checkSetClusterVersion(s *raftpb.SetClusterVersion) error {
	v := s.GetClusterVersion()
	if v == nil || v.GetVersion() == 0 {
		return invalidf("set cluster version: no version")
	}
	if len(v.GetFeatures()) > maxFeatures {
		return invalidf("set cluster version: more than %d features", maxFeatures)
	}
	for i, f := range v.GetFeatures() {
		if f == "" || len(f) > 64 {
			return invalidf("set cluster version: feature %q", f)
		}
		if i > 0 && v.Features[i-1] >= f {
			return invalidf("set cluster version: features not sorted and unique")
		}
	}
	return nil
}

// setClusterVersion records the version. A version or feature this binary
// does not know is not an outcome but a stop (see applyLog): applying it
// would let the leader use operations this node cannot apply.
func (a *applier) setClusterVersion(s *raftpb.SetClusterVersion, now int64) error {
	v := proto.Clone(s.GetClusterVersion()).(*raftpb.ClusterVersion)
	v.UpdatedUnixNano = now
	if slices.Contains(v.GetFeatures(), FeatureTypedEnums) && !a.typedEnums() {
		a.migrateTypedEnums() // enums.go; before the record, which typedEnums reads
	}
	enableV2 := slices.Contains(v.GetFeatures(), FeatureTypedEnumsV2) && !a.typedEnumsV2()
	enableV3 := slices.Contains(v.GetFeatures(), FeatureTypedEnumsV3) && !a.typedEnumsV3()
	b, err := marshalOpts.Marshal(v)
	if err != nil {
		storageFault("marshal cluster version: %v", err)
	}
	a.put(a.bucket(bucketMeta), []byte(metaClusterVersion), b)
	a.cv, a.cvRead = nil, false // read again (clusterVersion)
	a.changes = append(a.changes, change{kind: kindClusterVersion, msg: v})
	if enableV2 {
		a.migrateTypedEnumsV2() // enums_v2.go; after the record, which the writes read
	}
	if enableV3 {
		a.migrateTypedEnumsV3() // enums_v3.go; likewise
	}
	return nil
}

// tooNew reports why this binary cannot follow a cluster at version v, or
// "".
func tooNew(v *raftpb.ClusterVersion) string {
	if v.GetVersion() > ClusterVersion {
		return fmt.Sprintf("the cluster's version is %d, this node implements %d", v.GetVersion(), ClusterVersion)
	}
	known := KnownFeatures()
	for _, f := range v.GetFeatures() {
		if !slices.Contains(known, f) {
			return fmt.Sprintf("the cluster uses feature %q, which this node does not implement", f)
		}
	}
	return ""
}

// readClusterVersion reads the ClusterVersion record (nil if none).
func readClusterVersion(tx *bbolt.Tx) (*raftpb.ClusterVersion, error) {
	b := tx.Bucket([]byte(bucketMeta))
	if b == nil {
		return nil, nil
	}
	v := b.Get([]byte(metaClusterVersion))
	if v == nil {
		return nil, nil
	}
	m := &raftpb.ClusterVersion{}
	if err := proto.Unmarshal(v, m); err != nil {
		return nil, fmt.Errorf("raft: cluster version: %w", err)
	}
	return m, nil
}

// ClusterVersion is the recorded cluster version, or nil while none is
// recorded (a cluster that has not run this release on every member yet).
func (s *State) ClusterVersion() *raftpb.ClusterVersion { return s.version.Load() }

// FeatureEnabled reports whether feature is in the recorded feature set.
func (s *State) FeatureEnabled(feature string) bool {
	v := s.version.Load()
	return v != nil && slices.Contains(v.Features, feature)
}

// ErrFeatureDisabled is returned (wrapped) by Propose for an operation whose
// feature the cluster has not enabled yet: some member runs an older
// release, or a downgrade holds the version.
var ErrFeatureDisabled = errors.New("raft: operation not enabled in this cluster yet (every member must run a release that supports it)")
