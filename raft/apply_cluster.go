package raft

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Cluster identity (issue 9): the one issuer base URL every node answers
// for, and the node ids whose removal is final. Both live in one
// raftpb.ClusterMeta record under the meta bucket's "cluster" key and in
// the read view (State.ClusterIssuer, State.NodeDenied).

// kindClusterMeta is the change kind of the ClusterMeta record.
const kindClusterMeta = "cluster_meta"

// maxIssuerLen bounds the issuer base URL.
const maxIssuerLen = 512

// ErrNodeDenied is returned (wrapped) for a node id that was removed from
// the cluster: its identity is refused for good.
var ErrNodeDenied = fmt.Errorf("raft: node was removed from the cluster; use a new node id: %w", ErrInvalid)

// CheckIssuer reports whether issuer is a valid cluster issuer base URL: an
// absolute http(s) URL without query, fragment or trailing slash.
func CheckIssuer(issuer string) error {
	if issuer == "" || len(issuer) > maxIssuerLen {
		return invalidf("issuer: want 1-%d bytes", maxIssuerLen)
	}
	u, err := url.Parse(issuer)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return invalidf("issuer %q: want an http(s) URL without user, query or fragment", issuer)
	}
	if strings.HasSuffix(issuer, "/") {
		return invalidf("issuer %q: no trailing slash", issuer)
	}
	return nil
}

func (a *applier) clusterMeta() *raftpb.ClusterMeta {
	m := &raftpb.ClusterMeta{}
	a.get(a.bucket(bucketMeta), metaCluster, m)
	return m
}

func (a *applier) putClusterMeta(m *raftpb.ClusterMeta) {
	v, err := marshalOpts.Marshal(m)
	if err != nil {
		storageFault("marshal cluster meta: %v", err)
	}
	a.put(a.bucket(bucketMeta), []byte(metaCluster), v)
	a.changes = append(a.changes, change{kind: kindClusterMeta, msg: m})
}

// setClusterIssuer sets the issuer once: the same value again is a no-op,
// a different one is a conflict.
func (a *applier) setClusterIssuer(issuer string) error {
	m := a.clusterMeta()
	switch m.Issuer {
	case issuer:
		return nil
	case "":
		m.Issuer = issuer
		a.putClusterMeta(m)
		return nil
	}
	return fmt.Errorf("%w: the cluster's issuer is %q, not %q", ErrConflict, m.Issuer, issuer)
}

// denyNode adds id to the deny list; denying it again keeps the first entry.
func (a *applier) denyNode(id, reason string, now int64) {
	m := a.clusterMeta()
	if slices.ContainsFunc(m.Denied, func(d *raftpb.DeniedNode) bool { return d.NodeId == id }) {
		return
	}
	m.Denied = append(m.Denied, &raftpb.DeniedNode{NodeId: id, DeniedUnixNano: now, Reason: reason})
	a.putClusterMeta(m)
}

// readClusterMeta reads the ClusterMeta record (empty if there is none).
func readClusterMeta(tx *bbolt.Tx) (*raftpb.ClusterMeta, error) {
	m := &raftpb.ClusterMeta{}
	b := tx.Bucket([]byte(bucketMeta))
	if b == nil {
		return m, nil
	}
	if v := b.Get([]byte(metaCluster)); v != nil {
		if err := proto.Unmarshal(v, m); err != nil {
			return nil, fmt.Errorf("raft: cluster meta: %w", err)
		}
	}
	return m, nil
}

// ClusterIssuer is the cluster's issuer base URL, or "" while no leader
// has set it.
func (s *State) ClusterIssuer() string {
	if m := s.cluster.Load(); m != nil {
		return m.Issuer
	}
	return ""
}

// NodeDenied reports whether id was removed from the cluster for good.
func (s *State) NodeDenied(id string) bool {
	m := s.cluster.Load()
	return m != nil && slices.ContainsFunc(m.Denied, func(d *raftpb.DeniedNode) bool { return d.NodeId == id })
}

// DeniedNodes lists the node ids removed for good, in the order of removal.
func (s *State) DeniedNodes() []string {
	m := s.cluster.Load()
	if m == nil {
		return nil
	}
	out := make([]string, len(m.Denied))
	for i, d := range m.Denied {
		out[i] = d.NodeId
	}
	return out
}
