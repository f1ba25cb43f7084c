package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Cluster version and feature set (issue 15). Every member reports the
// cluster version its binary implements (raft.ClusterVersion) and its
// features (MemberStatus.features). The leader records the lowest version
// and the features every member of the configuration lists (SetClusterVersion,
// raft op 70) once all of them list raft.FeatureClusterVersion, and raises
// the record as members are upgraded; it never lowers it by itself. A
// proposer uses an operation gated on a feature only once the record
// enables it (raft.Node.Propose refuses with raft.ErrFeatureDisabled). A
// node too old for the record is refused at Join, and a member that reads a
// record it does not implement stops applying (raft.FSM.NotUnderstood)
// instead of diverging. `tally admin cluster downgrade` lowers the record
// and holds it for a rollback (deploy/runbooks/rolling-upgrade.md).

func init() {
	// The features this binary reports are the ones its FSM accepts in a
	// recorded ClusterVersion, so a node never stops at a record its own
	// report produced.
	raft.RegisterFeatures(features...)
	features = raft.KnownFeatures()
}

// versionEvery is how often the leader compares the members' versions with
// the recorded one.
const versionEvery = time.Second

// releaseFeatures are the features of each older cluster version, which a
// downgrade records (version 1 is v0.1.0).
var releaseFeatures = map[uint32][]string{1: {featureClusterIdentity}}

// memberVersion is the cluster version a member reports (v0.1.0 reports
// none: 1).
func memberVersion(m *clusterv1.MemberStatus) uint32 { return max(m.GetClusterVersion(), 1) }

// targetVersion is the version and features every member supports, or nil
// while a member does not answer or does not support recording one.
func targetVersion(members []*clusterv1.MemberStatus) *raftpb.ClusterVersion {
	if len(members) == 0 {
		return nil
	}
	v := &raftpb.ClusterVersion{Version: raft.ClusterVersion}
	common := slices.Clone(members[0].GetFeatures())
	for _, m := range members {
		if m.GetState() == "unreachable" || !slices.Contains(m.GetFeatures(), raft.FeatureClusterVersion) {
			return nil
		}
		v.Version = min(v.Version, memberVersion(m))
		common = slices.DeleteFunc(common, func(f string) bool { return !slices.Contains(m.GetFeatures(), f) })
	}
	slices.Sort(common)
	v.Features = slices.Compact(common)
	return v
}

// raises reports whether want records more than cur: a higher version or a
// feature cur lacks, and nothing cur has dropped.
func raises(cur, want *raftpb.ClusterVersion) bool {
	if cur == nil {
		return true
	}
	if want.Version < cur.Version {
		return false
	}
	for _, f := range cur.Features {
		if !slices.Contains(want.Features, f) {
			return false
		}
	}
	return want.Version > cur.Version || len(want.Features) > len(cur.Features)
}

// keepClusterVersion raises the recorded cluster version while this node
// leads (see the comment at the top of this file). It returns when ctx
// ends.
func (n *Node) keepClusterVersion(ctx context.Context) {
	t := time.NewTicker(versionEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !n.raft.IsLeader() {
			continue
		}
		cur := n.raft.State().ClusterVersion()
		if cur.GetHold() {
			continue // a downgrade in progress
		}
		if cur.GetVersion() >= raft.ClusterVersion && slices.Equal(cur.GetFeatures(), features) {
			continue // nothing this leader could raise: no status round
		}
		st, err := n.cl.status(ctx, statusTimeout)
		if err != nil {
			continue
		}
		want := targetVersion(st.Members)
		if want == nil || !raises(cur, want) {
			continue
		}
		cmd := &raftpb.Command{Op: &raftpb.Command_SetClusterVersion{SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: want}}}
		if _, err := n.rep.propose(ctx, cmd); err != nil {
			n.log.Warn("recording the cluster version", "err", err)
			continue
		}
		n.log.Info("recorded the cluster version", "version", want.Version, "features", want.Features)
	}
}

// ErrTooOld marks a join refused because the joining binary does not
// implement the cluster's recorded version.
var ErrTooOld = errors.New("node: this node's release is too old for the cluster's version")

// checkJoinVersion refuses a joining node that does not implement the
// recorded cluster version (a v0.1.0 node reports version 0: 1).
func (c *cluster) checkJoinVersion(req *clusterv1.JoinRequest) error {
	return checkJoinVersion(c.rn.State().ClusterVersion(), req)
}

func checkJoinVersion(v *raftpb.ClusterVersion, req *clusterv1.JoinRequest) error {
	if v == nil {
		return nil
	}
	joiner := max(req.GetClusterVersion(), 1)
	var missing []string
	for _, f := range v.Features {
		if !slices.Contains(req.GetFeatures(), f) && !(joiner == 1 && slices.Contains(releaseFeatures[1], f)) {
			missing = append(missing, f)
		}
	}
	if joiner >= v.Version && len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: node %q implements cluster version %d, the cluster is at version %d (features it lacks: %v); run the cluster's release on it, or lower the cluster's version first with `tally admin cluster downgrade` (deploy/runbooks/rolling-upgrade.md)",
		ErrTooOld, req.GetId(), joiner, v.Version, missing)
}

// versionStatus is the recorded version for the cluster status.
func versionStatus(v *raftpb.ClusterVersion) *clusterv1.ClusterVersion {
	if v == nil {
		return nil
	}
	return &clusterv1.ClusterVersion{Version: v.Version, Features: v.Features, Hold: v.Hold, UpdatedUnixNano: v.UpdatedUnixNano}
}

// Downgrade lowers the recorded version to req.version (default 1, the
// features of that release) and holds it; with cancel it clears the hold.
func (a *clusterAdminService) Downgrade(ctx context.Context, req *connect.Request[clusterv1.DowngradeRequest]) (*connect.Response[clusterv1.DowngradeResponse], error) {
	cur := a.c.rn.State().ClusterVersion()
	var want *raftpb.ClusterVersion
	if req.Msg.Cancel {
		if cur == nil || !cur.Hold {
			return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("no downgrade hold to cancel"))
		}
		want = &raftpb.ClusterVersion{Version: cur.Version, Features: cur.Features}
	} else {
		to := max(req.Msg.Version, 1)
		fs, ok := releaseFeatures[to]
		if !ok {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cannot downgrade to cluster version %d (known: 1)", to))
		}
		want = &raftpb.ClusterVersion{Version: to, Features: slices.Clone(fs), Hold: true}
	}
	cmd := &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: a.c.now().UnixNano(),
		Op: &raftpb.Command_SetClusterVersion{SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: want}}}
	res, err := a.c.propose(ctx, cmd)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&clusterv1.DowngradeResponse{Index: res.Index, ClusterVersion: versionStatus(want)}), nil
}

// tooOld marks member s "too old" when its binary does not implement the
// recorded cluster version v (a member restarted with an older release
// without a downgrade first): it will stop at the first newer entry.
func tooOld(v *clusterv1.ClusterVersion, s *clusterv1.MemberStatus) {
	if v == nil || s.GetState() == "unreachable" || s.Health == "stopped" {
		return
	}
	err := checkJoinVersion(&raftpb.ClusterVersion{Version: v.Version, Features: v.Features},
		&clusterv1.JoinRequest{Id: s.Id, ClusterVersion: s.ClusterVersion, Features: s.Features})
	if err != nil {
		s.Health, s.Error = "too old", err.Error()
	}
}
