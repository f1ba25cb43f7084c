package node

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/replication"
)

// DefaultTenant is created when a cluster bootstraps.
const DefaultTenant = "default"

// Node is one running tally node. Create it with New, serve with Run, and
// stop it by cancelling Run's context (or Close if it never ran).
type Node struct {
	// alerts queues the security alerts for Raft (alerts.go).
	alerts *alertSink
	risk   *riskIndex  // risk.go
	scopes *scopeWatch // scopes.go
	// metricsToken, if set, is the bearer token /metrics requires.
	metricsToken string
	// adminLn and adminSrv serve the admin APIs on Config.AdminListen
	// (admin_listen.go); nil without it.
	adminLn  net.Listener
	adminSrv *http.Server
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	base     string

	tel       *telemetry
	raft      *raft.Node
	cl        *cluster // cluster port, forwarding, membership (cluster.go)
	clusterLn *raft.ClusterListener
	kek       *issuance.KEK
	rep       *replica
	disk      *diskWatch // free space, write gate (disk.go)
	iss       *issuance.Server
	nats      *replication.Embedded
	events    *eventLog   // event publisher and events API (events.go)
	clock     *clockGuard // clock skew against the voters (clock.go)
	ln        net.Listener
	http      *http.Server
	ready     atomic.Bool
	fatal     chan error // a reason to stop (cluster.go: fail)

	metrics    *nodeMetrics   // node/metrics.go
	metricsSrv *metricsServer // --metrics-listen

	lock        *dataDirLock
	stopping    chan struct{} // closed when Run begins to shut down
	sweepCancel context.CancelFunc
	closeOnce   sync.Once
	closeErr    error

	// natsNodePass and natsTLS are the node's credentials on the embedded
	// NATS server (nats.go).
	natsNodePass string
	natsTLS      *tls.Config

	threat threatReady // issue 13 (admincred.go)
}

// New opens the node's data directory, starts its Raft replica (bootstrapping
// a one-voter cluster and the default tenant on first start), starts the
// embedded NATS server and binds the HTTP listener. It does not serve yet.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Node, err error) {
	if logger == nil {
		logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.KeyPublishDelay == 0 {
		cfg.KeyPublishDelay = cfg.JWKSMaxAge
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("node: data dir: %w", err)
	}
	n := &Node{cfg: cfg, log: logger.With("node", cfg.NodeID), now: time.Now, stopping: make(chan struct{})}
	if cfg.Now != nil {
		n.now = cfg.Now
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if n.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}

	kekRaw, kek, adminToken, err := loadSecrets(cfg)
	if err != nil {
		return nil, err
	}

	if n.tel, err = newTelemetry(ctx, cfg); err != nil {
		return nil, fmt.Errorf("node: telemetry: %w", err)
	}

	oauthTLS, err := n.listenOAuth()
	if err != nil {
		return nil, err
	}
	if err := n.startReplica(); err != nil {
		return nil, err
	}
	flows, err := n.newIssuer(kek)
	if err != nil {
		return nil, err
	}

	n.kek = kek
	if err := n.bootstrap(ctx, kek); err != nil {
		return nil, err
	}

	if err := n.startNATS(kekRaw); err != nil {
		return nil, err
	}

	if n.events, err = n.startEvents(kek); err != nil {
		return nil, err
	}
	if err := n.shareRateLimits(); err != nil {
		return nil, err
	}
	if err := n.startSIEM(); err != nil {
		return nil, err
	}
	n.startAlerts()

	if err := n.initMetrics(); err != nil {
		return nil, err
	}
	if n.adminLn, err = n.listenAdmin(); err != nil {
		return nil, fmt.Errorf("node: admin listen: %w", err)
	}
	admin := &adminService{rep: n.rep, iss: n.iss, kek: kek, cfg: cfg, now: n.now, base: n.base, supports: n.supportsFeature, par: flows.par, threatOK: n.threatSupported}
	n.http = n.newHTTPServer(n.routes(admin, n.adminAuthFor(adminToken, kek)), oauthTLS)
	return n, nil
}

// loadSecrets reads the key-encryption key (raw, and ready to use) and the
// admin token the configuration names.
func loadSecrets(cfg Config) (kekRaw []byte, kek *issuance.KEK, adminToken string, err error) {
	if kekRaw, err = loadKEK(cfg); err != nil {
		return nil, nil, "", err
	}
	if kek, err = issuance.NewKEK(kekRaw); err != nil {
		return nil, nil, "", err
	}
	if adminToken, err = loadAdminToken(cfg); err != nil {
		return nil, nil, "", err
	}
	return kekRaw, kek, adminToken, nil
}

// listenOAuth binds the OAuth listener (TLS if the zero-trust settings ask
// for it) and sets the node's base URL. It binds first: with port 0 the
// issuer derives from the real address.
func (n *Node) listenOAuth() (oauthTLS bool, err error) {
	cfg := n.cfg
	if n.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return false, fmt.Errorf("node: listen: %w", err)
	}
	if n.ln, oauthTLS, err = cfg.ZeroTrust.oauthTLS(n.ln); err != nil { // ztauth.go
		return false, err
	}
	n.base = strings.TrimSuffix(cfg.Issuer, "/")
	if n.base == "" {
		n.base = "http://" + n.ln.Addr().String()
		if oauthTLS {
			n.base = "https://" + n.ln.Addr().String()
		}
	}
	return oauthTLS, nil
}

// startReplica opens the Raft replica and what watches its applied entries
// and its disk.
func (n *Node) startReplica() error {
	cfg := n.cfg
	if err := n.openRaft(); err != nil {
		return err
	}
	n.risk = newRiskIndex(cfg.AlertRiskWindow, n.now) // risk.go
	n.raft.FSM().OnApplied(n.risk.observe)
	n.risk.rebuild(n.raft.FSM()) // the alerts of the risk window the state database keeps
	n.raft.FSM().OnRestored(func() { n.risk.rebuild(n.raft.FSM()) })
	n.scopes, n.threat.scopeStop = newScopeWatch(n) // scopes.go
	n.raft.FSM().OnApplied(n.scopes.observe)
	n.disk = newDiskWatch(cfg.DataDir, cfg.MinFreeDisk, n.raft, n.log.With("component", "disk"))
	n.raft.SetWriteGate(n.disk.refused)
	n.rep.fresh = n.fresh
	if err := n.disk.observe(n.tel.meter); err != nil {
		return fmt.Errorf("node: telemetry: %w", err)
	}
	return nil
}

// newIssuer configures the OAuth server (n.iss) over the replica; the
// flow store is also the admin API's view of the PAR feature.
func (n *Node) newIssuer(kek *issuance.KEK) (_ *flowStore, err error) {
	cfg := n.cfg
	ic := issuance.DefaultConfig()
	ic.BaseURL = n.base
	ic.KEK = kek
	ic.Now = n.now
	ic.Logger = n.log.With("component", "issuance")
	ic.Meter = n.tel.meter
	ic.MaxBodyBytes = cfg.MaxBodyBytes
	ic.JWKSMaxAge = cfg.JWKSMaxAge
	// End-user flows (node/grants.go); cookies are Secure outside dev.
	flows := &flowStore{rep: n.rep, node: cfg.NodeID, region: cfg.Region, par: newFeatureGate(n.cl, featurePARKeyPolicy),
		refreshNet: newFeatureGate(n.cl, raft.FeatureRefreshNetwork), threatV3: newFeatureGate(n.cl, raft.FeatureThreatV3),
		travelWindow: cfg.AlertTravelWindow, tenantTravel: tenantTravelWindows(cfg.RateLimits)}
	ic.Users, ic.Grants = flows, flows
	ic.InsecureCookies = cfg.Dev
	ic.RefreshTTL = cfg.RefreshTTL
	ic.RefreshIdleTimeout = cfg.RefreshIdleTimeout
	ic.RefreshReuseInterval = cfg.RefreshReuseInterval
	if ic.ZeroTrust, err = n.ztIssuanceConfig(); err != nil { // ztauth.go
		return nil, err
	}
	ic.DPoP.RequireNonce = cfg.DPoPRequireNonce
	ic.Policy = n.policyEngine() // node/gateway.go
	ic.RateLimits = cfg.RateLimits
	ic.Risk = n.risk.signal
	ic.ScopeUse = n.scopes.use
	ic.ZTv2 = n.ztv2(newFeatureGate(n.cl, featureZTv2)) // sealkeys.go
	if n.iss, err = issuance.NewServer(ic, n.rep, n.rep); err != nil {
		return nil, err
	}
	return flows, nil
}

// initMetrics creates the node's metrics, counts the replica's writes
// and binds the metrics listener.
func (n *Node) initMetrics() (err error) {
	if n.metrics, err = newNodeMetrics(n); err != nil {
		return fmt.Errorf("node: metrics: %w", err)
	}
	hook := writeHook(n.metrics.write)
	n.rep.onWrite.Store(&hook)
	if n.metricsToken, err = loadMetricsToken(n.cfg); err != nil {
		return err
	}
	if n.metricsSrv, err = n.listenMetrics(); err != nil {
		return fmt.Errorf("node: metrics listen: %w", err)
	}
	return nil
}

// newHTTPServer is the server of the OAuth listener.
func (n *Node) newHTTPServer(h http.Handler, oauthTLS bool) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	srv.Protocols.SetHTTP2(oauthTLS)
	return srv
}

// bootstrap waits for a leader and, if this node leads a cluster without a
// default tenant, creates it with its first keys.
func (n *Node) bootstrap(ctx context.Context, kek *issuance.KEK) error {
	if !n.soleVoter(ctx) {
		return nil // the leader creates it once elected (ensureDefaultTenant)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := n.raft.WaitLeader(wctx); err != nil {
		return fmt.Errorf("node: no Raft leader: %w", err)
	}
	if _, ok := n.raft.State().Tenant(DefaultTenant); ok || !n.raft.IsLeader() {
		return nil
	}
	return n.createDefaultTenant(wctx)
}

// createDefaultTenant proposes the default tenant with its first keys.
func (n *Node) createDefaultTenant(wctx context.Context) error {
	now := n.now()
	a := &adminService{rep: n.rep, kek: n.kek, cfg: n.cfg, now: n.now}
	keys, err := a.newKeys(DefaultTenant, n.cfg.DefaultSigningAlg, now, now)
	if err != nil {
		return err
	}
	t := &raftpb.Tenant{Id: DefaultTenant, DisplayName: "Default", CreatedUnixNano: now.UnixNano(), SigningAlg: n.cfg.DefaultSigningAlg}
	_, err = n.rep.propose(wctx, &raftpb.Command{Op: &raftpb.Command_CreateTenant{CreateTenant: &raftpb.CreateTenant{Tenant: t, Keys: keys}}})
	if err != nil && !errors.Is(err, raft.ErrExists) {
		return fmt.Errorf("node: creating the default tenant: %w", err)
	}
	n.log.Info("bootstrapped the default tenant", "issuer", n.iss.Issuer(DefaultTenant))
	return nil
}

func (n *Node) routes(admin *adminService, auth adminAuth) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", n.serveReady)
	if n.cfg.MetricsListen == "" {
		mux.Handle("GET /metrics", n.metricsEndpoint())
	}
	adminMux := mux
	if n.adminLn != nil {
		// The admin APIs on their own listener only (admin_listen.go).
		adminMux = http.NewServeMux()
		adminMux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
		n.adminSrv = n.adminServer(n.tel.traced(adminMux))
	}
	path, h := adminv1connect.NewAdminServiceHandler(admin,
		connect.WithInterceptors(n.adminGuard(auth, "admin")),
		connect.WithReadMaxBytes(1<<20),
	)
	adminMux.Handle(path, h)
	cpath, ch := clusterv1connect.NewClusterAdminServiceHandler(&clusterAdminService{c: n.cl, auth: auth},
		connect.WithInterceptors(n.adminGuard(auth, "cluster")),
		connect.WithReadMaxBytes(1<<20),
	)
	adminMux.Handle(cpath, ch)
	if n.events != nil {
		mux.Handle((&eventsService{n: n, ev: n.events, kek: n.events.kek, admin: auth}).handler())
	}
	n.gatewayRoutes(mux) // node/gateway.go
	mux.Handle("/", n.iss.Handler())
	return n.tel.traced(n.metrics.instrument(mux))
}

// readiness lists what keeps the node from serving; empty means ready.
func (n *Node) readiness() []string {
	var why []string
	if !n.ready.Load() {
		why = append(why, "not serving")
	}
	if leader, _ := n.raft.Leader(); leader == "" {
		why = append(why, "no raft leader")
	}
	if err := n.cl.stale(); err != nil {
		why = append(why, err.Error())
	}
	if n.nats != nil && !n.nats.Ready() {
		why = append(why, "nats not ready")
	}
	if err := n.clock.err(); err != nil {
		why = append(why, err.Error())
	}
	why = append(why, n.disk.reasons()...)
	return why
}

// fresh is the replica's read check: the staleness bound, and a replica
// whose storage has been failing (disk full) for longer than the same
// bound, since its view then no longer follows the log. A node merely
// below the free-space watermark still follows the log and stays fresh.
func (n *Node) fresh() error {
	if err := n.cl.stale(); err != nil {
		return err
	}
	if sf, ok := n.raft.StorageFault(); ok && time.Since(sf.Since) > n.cfg.MaxStale {
		return fmt.Errorf("%w: its storage cannot follow the log: %v", ErrStale, sf)
	}
	return nil
}

func (n *Node) serveReady(w http.ResponseWriter, _ *http.Request) {
	why := n.readiness()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if len(why) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(map[string]any{"ready": len(why) == 0, "reasons": why, "applied_index": n.raft.State().AppliedIndex()})
}

// BaseURL is the base that tenant issuers derive from.
func (n *Node) BaseURL() string { return n.base }

// Addr is the address the HTTP server listens on.
func (n *Node) Addr() string { return n.ln.Addr().String() }

// Issuer returns a tenant's issuer URL.
func (n *Node) Issuer(tenant string) string { return n.iss.Issuer(tenant) }

// NATSURL is the embedded NATS server's client URL, or "" when it is off.
func (n *Node) NATSURL() string {
	if n.nats == nil {
		return ""
	}
	return n.nats.ClientURL()
}

// NATSClientAddr is the host:port the embedded NATS server accepts clients
// on, or "" when it is off.
func (n *Node) NATSClientAddr() string {
	if n.nats == nil {
		return ""
	}
	return n.nats.ClientAddr()
}

// NATSClusterAddr is the embedded NATS server's route listener address, or
// "" without a NATS cluster.
func (n *Node) NATSClusterAddr() string {
	if n.nats == nil {
		return ""
	}
	if a := n.nats.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Run serves until ctx is cancelled, then shuts down gracefully and closes
// the node.
func (n *Node) Run(ctx context.Context) error {
	sctx, cancel := context.WithCancel(context.Background())
	n.sweepCancel = cancel
	if n.events == nil {
		// With an event log, its sweeper (events.go: sweepEvents) is the
		// only one: every Sweep command runs the whole sweep, so two
		// sweepers scanned everything twice per interval (issue 14).
		n.raft.StartSweeper(sctx, n.cfg.SweepInterval, n.now)
	}
	n.raft.StartTicker(sctx, raft.ClockTickInterval, n.now)
	n.startCluster(sctx)
	n.cl.wg.Add(1)
	go func() {
		defer n.cl.wg.Done()
		n.disk.run(sctx, n.cl)
	}()
	n.cl.wg.Add(1)
	go func() {
		defer n.cl.wg.Done()
		n.keyPolicyLoop(sctx, &adminService{rep: n.rep, kek: n.kek, cfg: n.cfg, now: n.now, par: newFeatureGate(n.cl, featurePARKeyPolicy)}) // keypolicy.go
	}()
	if n.nats != nil {
		n.cl.wg.Add(1)
		go func() {
			defer n.cl.wg.Done()
			n.reviveJetStream(sctx)
		}()
	}

	errc := make(chan error, 1)
	go func() { errc <- n.http.Serve(n.ln) }()
	if n.adminSrv != nil {
		go func() {
			if err := n.adminSrv.Serve(n.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				select {
				case errc <- err:
				default:
				}
			}
		}()
	}
	n.startMetrics(sctx)
	n.ready.Store(true)
	attrs := []any{"addr", n.Addr(), "issuer", n.iss.Issuer(DefaultTenant), "nats", n.NATSURL()}
	if n.cfg.Dev && n.cfg.AdminToken == "" && n.cfg.AdminTokenFile == "" {
		// Where the generated admin credential is (never the credential).
		attrs = append(attrs, "admin_token_file", filepath.Join(n.cfg.DataDir, adminTokenFileName))
	}
	n.log.Info("serving", attrs...)

	var serveErr error
	select {
	case <-ctx.Done():
		n.log.Info("shutting down: signal received")
	case serveErr = <-errc:
	case serveErr = <-n.fatal:
	}
	n.ready.Store(false)
	close(n.stopping) // ends event streams now, so resource servers move on
	shCtx, shCancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer shCancel()
	if err := n.http.Shutdown(shCtx); err != nil {
		n.log.Warn("http shutdown", "err", err)
	}
	if n.adminSrv != nil {
		if err := n.adminSrv.Shutdown(shCtx); err != nil {
			n.log.Warn("admin listener shutdown", "err", err)
		}
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return errors.Join(serveErr, n.Close())
}

// Close stops everything New started, in reverse order. It is safe to call
// more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.sweepCancel != nil {
			n.sweepCancel()
		}
		if n.http != nil {
			errs = append(errs, n.http.Close())
		} else if n.ln != nil {
			n.ln.Close()
		}
		errs = append(errs, n.metricsSrv.close())
		if n.adminSrv != nil {
			n.adminSrv.Close()
		} else if n.adminLn != nil {
			n.adminLn.Close()
		}
		if n.threat.alertStop != nil {
			n.threat.alertStop() // issue 13 (alerts.go)
		}
		if n.threat.scopeStop != nil {
			n.threat.scopeStop() // issue 13 (scopes.go)
		}
		if n.threat.siemStop != nil {
			n.threat.siemStop() // issue 13 (siem.go)
		}
		n.events.close()
		if n.nats != nil {
			n.nats.Shutdown()
		}
		if n.cl != nil {
			n.cl.close()
		}
		if n.raft != nil {
			errs = append(errs, n.raft.Close())
		}
		if n.clusterLn != nil {
			n.clusterLn.Close()
		}
		if n.tel != nil {
			errs = append(errs, n.tel.shutdown(context.Background()))
		}
		n.lock.release()
		for _, e := range errs {
			if e != nil && !errors.Is(e, http.ErrServerClosed) {
				n.closeErr = errors.Join(n.closeErr, e)
			}
		}
	})
	return n.closeErr
}

// reviveJetStream turns the embedded server's JetStream on again once the
// disk has room: nats-server disables it for good after a write fails for
// lack of space, which would leave the node's event log (and /readyz) down
// after the disk was freed.
func (n *Node) reviveJetStream(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.nats.Ready() || n.disk.refused() != nil {
			continue
		}
		if err := n.nats.RestartJetStream(); err != nil {
			n.log.Warn("nats: JetStream could not be enabled again", "err", err)
		} else if n.nats.Ready() {
			n.log.Info("nats: JetStream enabled again after the disk was freed")
		}
	}
}
