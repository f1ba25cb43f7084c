package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// cluster is a node's side of the multi-node machinery: the cluster port
// (Raft and the internal Connect service over mutual TLS), the client for
// calling peers, write forwarding and membership.
type cluster struct {
	cfg    Config
	rn     *raft.Node
	ln     *raft.ClusterListener
	tls    *raft.NodeTLS
	client *http.Client // internal calls to peers, node mTLS
	srv    *http.Server // internal Connect service on ln.RPCListener
	now    func() time.Time
	http   func() string // this node's public HTTP address, for status
	log    *slog.Logger
	fail   func(error) // stops the node (Node.fail)
	// issuer is the configured issuer base URL, "" for a --dev node that
	// derives its own (it neither records nor checks the cluster's).
	issuer string
	// catch keeps the node stale after a stale period (and at start) until
	// its replica holds what the leader had committed (catchup.go).
	catch catchUp

	wg sync.WaitGroup
}

// loadNodeTLS returns the node's cluster identity: Config.TLS, the files in
// TLSDir, or (for a node that needs no peers) a private CA and certificate
// generated in DataDir/tls on first start.
func loadNodeTLS(cfg Config) (*raft.NodeTLS, error) {
	if cfg.TLS != nil {
		return cfg.TLS, nil
	}
	if cfg.TLSDir != "" {
		return raft.LoadNodeTLSDir(cfg.TLSDir)
	}
	dir := filepath.Join(cfg.DataDir, "tls")
	if _, err := os.Stat(filepath.Join(dir, raft.NodeCertFile)); err == nil {
		return raft.LoadNodeTLSDir(dir)
	}
	caDir := filepath.Join(dir, "ca")
	if err := raft.InitCADir(caDir, time.Time{}); err != nil {
		return nil, fmt.Errorf("node: generating a cluster CA: %w", err)
	}
	o := raft.CertOptions{NodeID: cfg.NodeID}
	for _, a := range []string{cfg.RaftAdvertise, cfg.RaftBind} {
		if host, _, err := net.SplitHostPort(a); err == nil {
			if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
				o.IPs = append(o.IPs, ip)
			} else if host != "" && ip == nil {
				o.DNSNames = append(o.DNSNames, host)
			}
		}
	}
	o.IPs = append(o.IPs, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
	if err := raft.IssueNodeCertDir(caDir, dir, o); err != nil {
		return nil, fmt.Errorf("node: generating a node certificate: %w", err)
	}
	return raft.LoadNodeTLSDir(dir)
}

// raftConfig is the Raft configuration of this node on the cluster port.
func raftConfig(cfg Config, ln *raft.ClusterListener) (raft.Config, error) {
	rc := raft.DefaultConfig()
	if err := rc.ApplyProfile(cfg.RaftProfile); err != nil {
		return rc, err
	}
	rc.ID = cfg.NodeID
	rc.DataDir = filepath.Join(cfg.DataDir, "raft")
	rc.StreamLayer = ln.StreamLayer()
	rc.Bootstrap = cfg.Join == ""
	for _, p := range cfg.Peers {
		rc.BootstrapServers = append(rc.BootstrapServers, raft.Member{ID: p.ID, Addr: p.RaftAddr, Voter: !p.Nonvoter})
	}
	if cfg.RaftTuning != nil {
		cfg.RaftTuning(&rc)
	}
	return rc, nil
}

// soleVoter reports whether this node is the only voter of its
// configuration, so that it can wait for its own leadership while starting.
// A member of a larger cluster must not: its peers may not be up yet.
func (n *Node) soleVoter(ctx context.Context) bool {
	ms, err := n.raft.Members(ctx)
	if err != nil {
		return false
	}
	voters := 0
	self := false
	for _, m := range ms {
		if m.Voter {
			voters++
			self = self || m.ID == n.cfg.NodeID
		}
	}
	return voters == 1 && self
}

func newCluster(cfg Config, rn *raft.Node, ln *raft.ClusterListener, now func() time.Time, httpAddr func() string) *cluster {
	c := &cluster{
		cfg: cfg, rn: rn, ln: ln, tls: ln.TLS(), now: now, http: httpAddr,
		client: &http.Client{Transport: ln.TLS().HTTPTransport()},
		log:    slog.New(slog.DiscardHandler), fail: func(error) {},
	}
	if cfg.Issuer != "" {
		c.issuer = trimIssuer(cfg.Issuer)
	}
	ln.SetPeerCheck(c.peerAllowed)
	// A node that starts may be far behind: it serves once it caught up.
	c.catch.mark()
	return c
}

// peer returns a client of the internal service at a cluster address.
func (c *cluster) peer(addr string) clusterv1connect.ClusterServiceClient {
	return clusterv1connect.NewClusterServiceClient(c.client, "https://"+addr, connect.WithSendMaxBytes(8<<20), connect.WithReadMaxBytes(8<<20))
}

// clusterCompressMinBytes is the smallest answer of the internal service
// that is gzipped (when the caller accepts it).
const clusterCompressMinBytes = 16 << 10

// serve starts the internal Connect service on the cluster port.
func (c *cluster) serve(svc clusterv1connect.ClusterServiceHandler) {
	mux := http.NewServeMux()
	// Answers smaller than clusterCompressMinBytes go uncompressed: gzip
	// of every forward's answer (a few hundred bytes, on the cluster
	// network) was 3% of a three-node write run's CPU (issue 14).
	path, h := clusterv1connect.NewClusterServiceHandler(svc, connect.WithReadMaxBytes(8<<20),
		connect.WithCompressMinBytes(clusterCompressMinBytes))
	mux.Handle(path, h)
	c.srv = &http.Server{
		Handler:           c.peerIdentity(mux),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_ = c.srv.Serve(c.ln.RPCListener())
	}()
}

// close stops the internal service and the client; the listener is closed
// by Node.Close (n.clusterLn), after Raft.
func (c *cluster) close() {
	if c.srv != nil {
		_ = c.srv.Close()
	}
	c.wg.Wait()
	if t, ok := c.client.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}

type peerIDKey struct{}

// peerIdentity puts the verified node id of the caller's certificate into
// the request context, and refuses a node that was removed from the
// cluster (the replicated deny list) with a Connect permission_denied
// error that says so.
func (c *cluster) peerIdentity(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := ""
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			id = raft.NodeIDOf(r.TLS.PeerCertificates[0])
		}
		if id == "" { // unreachable: the listener verified the certificate
			http.Error(w, "node certificate required", http.StatusForbidden)
			return
		}
		if err := c.peerAllowed(id); err != nil {
			c.log.Warn("refused an internal call", "peer", id, "path", r.URL.Path, "err", err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(map[string]string{"code": "permission_denied", "message": err.Error()})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerIDKey{}, id)))
	})
}

// peerAllowed refuses a node id that was removed from the cluster; it is
// the check on both sides of the cluster port (Raft connections, see
// raft.ClusterListener.SetPeerCheck, and internal calls).
func (c *cluster) peerAllowed(id string) error {
	if c.rn.State().NodeDenied(id) {
		return fmt.Errorf("%w: node %q (its certificate is refused on the cluster port; start the replacement with a new node id)", raft.ErrNodeDenied, id)
	}
	return nil
}

// joinLoop asks the member at cfg.Join to add this node until this node is
// in the configuration or ctx ends.
func (c *cluster) joinLoop(ctx context.Context, log func(msg string, args ...any)) {
	if c.cfg.Join == "" {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			if c.isMember(ctx) {
				return
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := c.peer(c.cfg.Join).Join(cctx, connect.NewRequest(&clusterv1.JoinRequest{
				Id: c.cfg.NodeID, Address: c.ln.Addr().String(), Nonvoter: c.cfg.Nonvoter, Issuer: c.issuer,
				ClusterVersion: raft.ClusterVersion, Features: features,
			}))
			cancel()
			if err == nil {
				log("joined the cluster", "via", c.cfg.Join, "nonvoter", c.cfg.Nonvoter)
				return
			}
			switch connect.CodeOf(err) {
			case connect.CodePermissionDenied, connect.CodeFailedPrecondition, connect.CodeInvalidArgument:
				// A removed id, another issuer, a bad address: retrying
				// cannot help.
				c.fail(fmt.Errorf("node: the cluster at %s refused to let this node join: %w", c.cfg.Join, err))
				return
			}
			log("join failed; retrying", "via", c.cfg.Join, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// isMember reports whether this node is in its own latest configuration.
func (c *cluster) isMember(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ms, err := c.rn.Members(cctx)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.ID == c.cfg.NodeID {
			return true
		}
	}
	return false
}

// stale reports why this node's replica is beyond the staleness bound, or
// nil.
func (c *cluster) stale() error {
	last := c.rn.LastLeaderContact()
	if last.IsZero() {
		return fmt.Errorf("%w: never heard from a raft leader", ErrStale)
	}
	if d := time.Since(last); d > c.cfg.MaxStale {
		c.catch.mark()
		return fmt.Errorf("%w: last heard from a raft leader %s ago (bound %s)", ErrStale, d.Round(time.Millisecond), c.cfg.MaxStale)
	}
	return c.catchingUp()
}

// ErrStale marks a read refused because the local replica has not heard
// from a leader within the staleness bound (Config.MaxStale).
var ErrStale = errors.New("node: replica is stale")

// localStatus is this node's own status.
func (c *cluster) localStatus(ctx context.Context) *clusterv1.MemberStatus {
	st := c.rn.Status()
	ms := &clusterv1.MemberStatus{
		Id:           c.cfg.NodeID,
		Region:       c.cfg.Region,
		RaftAddress:  c.ln.Addr().String(),
		HttpAddress:  c.http(),
		Leader:       st.State == "Leader",
		State:        st.State,
		Term:         st.Term,
		LastIndex:    st.LastIndex,
		CommitIndex:  st.CommitIndex,
		AppliedIndex: st.AppliedIndex,
		LastContactMs: func() int64 {
			if st.LastContact.IsZero() {
				return -1
			}
			return max(time.Since(st.LastContact).Milliseconds(), 0)
		}(),
		LeaderId:       st.LeaderID,
		Health:         "healthy",
		Features:       features,
		ClusterVersion: raft.ClusterVersion,
	}
	if ms.Leader {
		ms.LastContactMs = 0
	}
	if err := c.rn.NotUnderstood(); err != nil {
		ms.Health, ms.Error = "stopped", err.Error() // too old for the log (version.go)
	} else if err := c.stale(); err != nil {
		ms.Health, ms.Error = "stale", err.Error()
	} else if err := c.rn.WritesRefused(); err != nil {
		ms.Health, ms.Error = "refusing writes", err.Error() // low on disk (disk.go)
	}
	if members, err := c.rn.Members(ctx); err == nil {
		for _, m := range members {
			if m.ID == c.cfg.NodeID {
				ms.Voter = m.Voter
			}
		}
	}
	return ms
}

// laggingEntries is how far behind the leader's commit index a member may
// be before status reports it as lagging.
const laggingEntries = 1000

// status gathers every member's status, asking each over the internal
// service with timeout; members that do not answer are "unreachable".
func (c *cluster) status(ctx context.Context, timeout time.Duration) (*clusterv1.StatusResponse, error) {
	members, err := c.rn.Members(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*clusterv1.MemberStatus, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		if m.ID == c.cfg.NodeID {
			out[i] = c.localStatus(ctx)
			out[i].Voter = m.Voter
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			resp, err := c.peer(m.Addr).LocalStatus(cctx, connect.NewRequest(&clusterv1.LocalStatusRequest{}))
			if err != nil || resp.Msg.Status == nil {
				out[i] = &clusterv1.MemberStatus{Id: m.ID, RaftAddress: m.Addr, Voter: m.Voter, State: "unreachable", Health: "unreachable", LastContactMs: -1}
				if err != nil {
					out[i].Error = err.Error()
				}
				return
			}
			s := resp.Msg.Status
			s.Voter = m.Voter
			if s.Id != m.ID {
				s.Health, s.Error = "unreachable", fmt.Sprintf("answered as %q", s.Id)
			}
			out[i] = s
		}()
	}
	wg.Wait()
	resp := &clusterv1.StatusResponse{Members: out, ClusterVersion: versionStatus(c.rn.State().ClusterVersion())}
	var commit uint64
	for _, s := range out {
		if s.Leader {
			resp.LeaderId, commit = s.Id, s.CommitIndex
		}
	}
	for _, s := range out {
		if s.State == "unreachable" {
			continue
		}
		if commit > s.AppliedIndex {
			s.Lag = commit - s.AppliedIndex
		}
		if s.Health == "healthy" && s.Lag > laggingEntries {
			s.Health = "lagging"
		}
		tooOld(resp.ClusterVersion, s) // version.go
	}
	return resp, nil
}

// openRaft opens the cluster port and the Raft replica on it, and wires the
// replica adapter to forward writes and to fail closed when stale.
func (n *Node) openRaft() error {
	nodeTLS, err := loadNodeTLS(n.cfg)
	if err != nil {
		return err
	}
	clog := n.log.With("component", "cluster")
	if n.clusterLn, err = raft.ListenCluster(n.cfg.RaftBind, n.cfg.RaftAdvertise, nodeTLS, clog); err != nil {
		return fmt.Errorf("node: cluster port: %w", err)
	}
	rc, err := raftConfig(n.cfg, n.clusterLn)
	if err != nil {
		return err
	}
	rc.Logger = n.log.With("component", "raft")
	if n.raft, err = raft.Open(rc); err != nil {
		return err
	}
	n.cl = newCluster(n.cfg, n.raft, n.clusterLn, n.now, func() string { return n.Addr() })
	n.cl.log, n.cl.fail = clog, n.fail
	n.fatal = make(chan error, 1)
	// A node configured with another issuer than the cluster's refuses to
	// start.
	if err := n.issuerMismatch(); err != nil {
		return err
	}
	n.rep = newReplica(n.raft, n.now)
	n.rep.forward = n.cl.propose
	n.rep.fresh = n.cl.stale
	n.clock = newClockGuard(n.cl, n.now, n.cfg.MaxClockSkew, func(msg string, args ...any) { n.log.Warn(msg, args...) })
	n.raft.SetProposeGate(n.clock.err)
	n.rep.clockErr = n.clock.err
	return n.clock.registerMetrics(n.tel.meter)
}

// startCluster serves the internal service, joins through cfg.Join if this
// node is new, and keeps the default tenant created by whichever node
// leads.
func (n *Node) startCluster(ctx context.Context) {
	n.cl.serve(&clusterService{c: n.cl})
	logInfo := func(msg string, args ...any) { n.log.Info(msg, args...) }
	n.cl.joinLoop(ctx, logInfo)
	n.cl.wg.Add(1)
	go func() {
		defer n.cl.wg.Done()
		n.keepIssuer(ctx)
	}()
	n.cl.wg.Add(1)
	go func() {
		defer n.cl.wg.Done()
		n.keepClusterVersion(ctx) // version.go
	}()
	n.cl.preferLeaderRegion(ctx, logInfo)
	n.clock.run(ctx)
	n.cl.wg.Add(1)
	go func() {
		defer n.cl.wg.Done()
		n.ensureDefaultTenant(ctx)
	}()
}

// ensureDefaultTenant creates the default tenant when this node leads a
// cluster without one, polling until the tenant exists or ctx ends.
func (n *Node) ensureDefaultTenant(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if _, ok := n.raft.State().Tenant(DefaultTenant); ok {
			return
		}
		if n.raft.IsLeader() {
			if err := n.createDefaultTenant(ctx); err != nil {
				n.log.Warn("creating the default tenant", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Raft is the node's Raft replica (for tests and tools).
func (n *Node) Raft() *raft.Node { return n.raft }

// ClusterAddr is the advertised address of the cluster port (Raft and the
// internal service).
func (n *Node) ClusterAddr() string { return n.clusterLn.Addr().String() }

// NodeID is this node's id.
func (n *Node) NodeID() string { return n.cfg.NodeID }

// Region is this node's region label.
func (n *Node) Region() string { return n.cfg.Region }

// Stale reports why the replica is beyond the staleness bound, or nil.
func (n *Node) Stale() error { return n.cl.stale() }

// leaderRegionEvery is how often a leader outside Config.LeaderRegion looks
// for a voter of that region to hand leadership to.
const leaderRegionEvery = time.Second

// preferLeaderRegion moves leadership into cfg.LeaderRegion: while this
// node leads from another region, it transfers leadership to a healthy voter
// of that region with no lag, if there is one.
func (c *cluster) preferLeaderRegion(ctx context.Context, log func(msg string, args ...any)) {
	if c.cfg.LeaderRegion == "" || c.cfg.LeaderRegion == c.cfg.Region {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(leaderRegionEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if !c.rn.IsLeader() {
				continue
			}
			st, err := c.status(ctx, statusTimeout)
			if err != nil {
				continue
			}
			for _, m := range st.Members {
				if m.Voter && !m.Leader && m.Region == c.cfg.LeaderRegion && m.Health == "healthy" && m.Lag == 0 {
					tctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
					err := c.rn.TransferLeadership(tctx, m.Id)
					cancel()
					log("moved leadership to the preferred region", "to", m.Id, "region", m.Region, "err", err)
					break
				}
			}
		}
	}()
}

// fail stops the node: Run returns err. Only the first reason is kept.
func (n *Node) fail(err error) {
	n.log.Error("stopping the node", "err", err)
	select {
	case n.fatal <- err:
	default:
	}
}

// ErrIssuerMismatch marks a node whose configured issuer is not the
// cluster's: it refuses to start or join.
var ErrIssuerMismatch = errors.New("node: issuer differs from the cluster's")

// issuerMismatch reports a configured issuer that differs from the one the
// cluster recorded (nil while none is recorded, and for a --dev node that
// derives its own).
func (n *Node) issuerMismatch() error {
	cluster := n.raft.State().ClusterIssuer()
	if n.cl.issuer == "" || cluster == "" || cluster == n.cl.issuer {
		return nil
	}
	return fmt.Errorf("%w: this node is configured with --issuer %q but the cluster's issuer is %q; every node of a cluster must use the same issuer (the one URL clients use)",
		ErrIssuerMismatch, n.cl.issuer, cluster)
}

// issuerEvery is how often keepIssuer looks at the cluster's issuer.
const issuerEvery = 250 * time.Millisecond

// keepIssuer records this node's configured issuer as the cluster's when
// it leads a cluster that has none yet (the first leader with an issuer
// does, once), and stops the node if the cluster's issuer, as replicated
// here, is another one (a node that joined or bootstrapped with the wrong
// --issuer learns it once it has caught up). It returns once the cluster's
// issuer is this node's, or ctx ends.
func (n *Node) keepIssuer(ctx context.Context) {
	if n.cl.issuer == "" {
		return // --dev without --issuer: this node answers only for itself
	}
	t := time.NewTicker(issuerEvery)
	defer t.Stop()
	for {
		if err := n.issuerMismatch(); err != nil {
			n.fail(err)
			return
		}
		switch n.raft.State().ClusterIssuer() {
		case n.cl.issuer:
			return
		case "":
			if n.raft.IsLeader() && n.cl.allSupport(ctx, featureClusterIdentity) {
				cmd := &raftpb.Command{Op: &raftpb.Command_SetClusterIssuer{SetClusterIssuer: &raftpb.SetClusterIssuer{Issuer: n.cl.issuer}}}
				_, err := n.rep.propose(ctx, cmd)
				if err == nil {
					n.log.Info("recorded the cluster's issuer", "issuer", n.cl.issuer)
				}
				if err == nil || errors.Is(err, raft.ErrConflict) {
					continue // look again at once
				}
				n.log.Warn("recording the cluster's issuer", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// trimIssuer is an issuer base URL as recorded: without a trailing slash.
func trimIssuer(s string) string { return strings.TrimSuffix(s, "/") }

// featureClusterIdentity names the SetClusterIssuer and DenyNode
// operations (raft ops 48, 49) in MemberStatus.features.
const featureClusterIdentity = "cluster_identity"

// features are the Raft operations this binary applies beyond the first
// release's (MemberStatus.features).
var features = []string{featureClusterIdentity, featureZTAuth, featureDelete, featurePARKeyPolicy, featureGatewayConfig}

// allSupport reports whether every member of the configuration answers
// its status and lists feature, so that a leader does not propose an
// operation a member running an older binary would not understand (it
// would stop at that entry): during a rolling upgrade the cluster's issuer
// is recorded once the last node runs this version.
func (c *cluster) allSupport(ctx context.Context, feature string) bool {
	st, err := c.status(ctx, statusTimeout)
	if err != nil {
		return false
	}
	for _, m := range st.Members {
		if !slices.Contains(m.Features, feature) {
			return false
		}
	}
	return true
}
