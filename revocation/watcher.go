package revocation

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/tallyauth/tally/revocation/eventwire/eventsv1"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1/eventsv1connect"
)

// WatcherConfig configures a Watcher. Issuer, Tenant and ServerURL are
// required; NATS is optional (without it the Connect stream is the source).
type WatcherConfig struct {
	// Issuer is the tenant's issuer: SETs must carry it as iss, and their
	// signatures are checked with its JWKS.
	Issuer string
	// Tenant is the tenant whose events are followed.
	Tenant string
	// ServerURL is a tally node's base URL (or the cluster's one issuer
	// base URL), for GetRevocationSet (resync) and, without NATS,
	// WatchRevocations.
	ServerURL string
	// ServerURLs are further nodes' base URLs: after a failed call the
	// watcher moves on to the next one.
	ServerURLs []string
	// ClientID and ClientSecret of a confidential client of the tenant
	// authenticate to the events API (HTTP Basic); or AdminToken.
	ClientID, ClientSecret string
	AdminToken             string
	// HTTPClient for discovery, JWKS and the events API; default
	// http.DefaultClient. Streams need no client timeout.
	HTTPClient *http.Client
	// NATS, if set, is the live source: an ordered JetStream consumer on
	// Stream, and the live subjects (NATSLiveSubjects). The caller owns the
	// connection.
	NATS *nats.Conn
	// LiveNATS are further NATS connections on which the watcher follows
	// the live subjects too, best one held to each server (ConnectNATSEach
	// does that): a core NATS message sent while a connection reconnects
	// is lost to that connection only, so with them a revocation reaches
	// the set within milliseconds also while NATS moves to another server
	// (the server it was on stopped). Each SET is verified once whatever
	// the number of copies. The caller owns them.
	LiveNATS []*nats.Conn
	// Stream is the JetStream stream name; default "TALLY_EVENTS".
	Stream string
	// SETAudience is the aud that SETs must carry; default Issuer.
	SETAudience string
	// SETIssuers are further iss values accepted on SETs, for a cluster
	// whose nodes are reached under different base URLs (each node's
	// issuer derives from its own address unless they share --issuer).
	// Signatures are still checked against Issuer's JWKS.
	SETIssuers []string
	// PositionFile, if set, keeps the set and its stream sequence across
	// restarts, so the watcher replays only what it missed.
	PositionFile string
	// MaxDisconnect is how long the watcher may be disconnected before it
	// reports itself stale; default 1m.
	MaxDisconnect time.Duration
	// IdleTimeout restarts a Connect stream that delivered nothing (not
	// even a heartbeat) for this long; default 45s.
	IdleTimeout time.Duration
	// SaveInterval bounds how often PositionFile is written; default 1s.
	SaveInterval time.Duration
	// JWKSRefetchInterval rate-limits JWKS fetches for unknown kids;
	// default 10s.
	JWKSRefetchInterval time.Duration
	// UnknownKeyGrace is how long an event signed with a kid the JWKS does
	// not (yet) list is retried, refetching the JWKS with backoff, before
	// it is dropped as invalid; default 1m. Events after it wait.
	UnknownKeyGrace time.Duration
	// StreamCheckInterval is how often a NATS watcher compares the
	// stream's identity and head with its position (a Connect watcher does
	// it on every heartbeat); default 5s.
	StreamCheckInterval time.Duration
	Now                 func() time.Time
	Meter               metric.Meter
	Logger              *slog.Logger
}

func (c *WatcherConfig) fill() error {
	if c.Issuer == "" || c.Tenant == "" || c.ServerURL == "" {
		return errors.New("revocation: watcher needs Issuer, Tenant and ServerURL")
	}
	if strings.ContainsAny(c.Tenant, ".*> \t") {
		return fmt.Errorf("revocation: tenant %q is not a valid subject token", c.Tenant)
	}
	if c.HTTPClient == nil {
		c.HTTPClient = http.DefaultClient
	}
	if c.Stream == "" {
		c.Stream = "TALLY_EVENTS"
	}
	if c.SETAudience == "" {
		c.SETAudience = c.Issuer
	}
	if c.MaxDisconnect <= 0 {
		c.MaxDisconnect = time.Minute
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 45 * time.Second
	}
	if c.SaveInterval <= 0 {
		c.SaveInterval = time.Second
	}
	if c.JWKSRefetchInterval <= 0 {
		c.JWKSRefetchInterval = 10 * time.Second
	}
	if c.UnknownKeyGrace <= 0 {
		c.UnknownKeyGrace = time.Minute
	}
	if c.StreamCheckInterval <= 0 {
		c.StreamCheckInterval = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Meter == nil {
		c.Meter = noop.NewMeterProvider().Meter("tally/revocation")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Watcher keeps a tenant's revocation Set current from the event log. See
// the package documentation for replay, gaps and staleness. Safe for
// concurrent use; register hooks with OnEvent before Start.
type Watcher struct {
	cfg     WatcherConfig
	set     *Set
	keys    *keyCache
	clients []eventsv1connect.EventsServiceClient
	cur     atomic.Int64 // index into clients
	// authFailures counts consecutive refusals of the credentials; fatal
	// holds the error that stopped Run.
	authFailures int
	fatal        atomic.Pointer[error]
	log          *slog.Logger

	synced       atomic.Bool
	connected    atomic.Bool
	disconnected atomic.Int64 // unix nano since when; 0 while connected
	head         atomic.Uint64
	applied      atomic.Int64
	liveApplied  atomic.Int64
	resyncs      atomic.Int64
	rejected     atomic.Int64
	retried      atomic.Int64
	// leeway is the largest Leeway of the verifiers using this watcher: a
	// revocation is kept until its token's exp plus it.
	leeway atomic.Int64
	// resyncedAt is when the set was last replaced by the server's (unix
	// nanoseconds, 0 if never in this process).
	resyncedAt atomic.Int64
	// adoptStream: the last resync did not name the stream's identity;
	// the next connection adopts the one it finds.
	adoptStream atomic.Bool

	hooksMu sync.Mutex
	hooks   []func(typ string, d EventDetails)
	resyncH []func()

	saveMu   sync.Mutex
	lastSave time.Time

	runMu  sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}

	mApplied  metric.Int64Counter
	mResyncs  metric.Int64Counter
	mRejected metric.Int64Counter
	mLag      metric.Int64ObservableGauge
}

// NewWatcher returns a watcher; it loads PositionFile if it exists (a set
// loaded from it counts as synced up to its sequence). It does not connect
// until Start or Run.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	w := &Watcher{
		cfg:  cfg,
		set:  NewSet(),
		keys: newKeyCache(cfg.Issuer, cfg.HTTPClient, cfg.Now, cfg.JWKSRefetchInterval),
		log:  cfg.Logger.With("component", "revocation-watcher", "tenant", cfg.Tenant),
	}
	// A deleted tenant's last SET (tenant-deleted) is signed with a key its
	// issuer no longer publishes: verify it with the key cached before.
	w.keys.keepOnGone = true
	for _, u := range append([]string{cfg.ServerURL}, cfg.ServerURLs...) {
		w.clients = append(w.clients, eventsv1connect.NewEventsServiceClient(cfg.HTTPClient, strings.TrimRight(u, "/"),
			connect.WithInterceptors(w.authInterceptor())))
	}
	w.disconnected.Store(cfg.Now().UnixNano())
	if cfg.PositionFile != "" {
		s, err := loadSet(cfg.PositionFile, cfg.Tenant)
		if err != nil {
			return nil, err
		}
		if s != nil {
			w.set = s
			w.synced.Store(true)
			// Offline since the file was last written: a watcher that was
			// down longer than MaxDisconnect resyncs before it trusts the
			// saved set (see Run).
			if fi, err := os.Stat(cfg.PositionFile); err == nil {
				w.disconnected.Store(fi.ModTime().UnixNano())
			}
		}
	}
	var err error
	if w.mApplied, err = cfg.Meter.Int64Counter("tally.rs.events.applied", metric.WithDescription("revocation events applied to the local set")); err != nil {
		return nil, err
	}
	if w.mResyncs, err = cfg.Meter.Int64Counter("tally.rs.resyncs", metric.WithDescription("full resyncs of the revocation set")); err != nil {
		return nil, err
	}
	if w.mRejected, err = cfg.Meter.Int64Counter("tally.rs.events.rejected", metric.WithDescription("events dropped because their SET is permanently invalid")); err != nil {
		return nil, err
	}
	if w.mLag, err = cfg.Meter.Int64ObservableGauge("tally.rs.lag", metric.WithDescription("events between the local set and the stream head"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(w.Lag()))
			return nil
		})); err != nil {
		return nil, err
	}
	return w, nil
}

// Set is the revocation set the watcher maintains.
func (w *Watcher) Set() *Set { return w.set }

// OnEvent registers fn to be called for every new event applied, after the
// set changed. fn must be quick.
func (w *Watcher) OnEvent(fn func(typ string, d EventDetails)) {
	w.hooksMu.Lock()
	w.hooks = append(w.hooks, fn)
	w.hooksMu.Unlock()
}

// OnResync registers fn to be called after every resync.
func (w *Watcher) OnResync(fn func()) {
	w.hooksMu.Lock()
	w.resyncH = append(w.resyncH, fn)
	w.hooksMu.Unlock()
}

// Synced reports whether the set has a trusted baseline.
func (w *Watcher) Synced() bool { return w.synced.Load() }

// Connected reports whether the watcher is following the live stream.
func (w *Watcher) Connected() bool { return w.connected.Load() }

// Stale reports whether tokens must not be trusted on the set alone: it was
// never synced, a gap was found and not resynced yet, or it has been
// disconnected for longer than MaxDisconnect.
func (w *Watcher) Stale() bool {
	if !w.synced.Load() {
		return true
	}
	since := w.disconnected.Load()
	return since != 0 && w.cfg.Now().Sub(time.Unix(0, since)) > w.cfg.MaxDisconnect
}

// Position is the stream sequence of the last event applied.
func (w *Watcher) Position() uint64 { return w.set.Sequence() }

// Lag is how many stream sequences the set is behind the last known head.
func (w *Watcher) Lag() uint64 {
	h, p := w.head.Load(), w.set.Sequence()
	if h > p {
		return h - p
	}
	return 0
}

// Applied counts events applied (replays of known sequences excluded).
func (w *Watcher) Applied() int64 { return w.applied.Load() }

// LiveApplied counts live events applied ahead of the stream (each SET
// once, however many copies arrived; see WatcherConfig.LiveNATS).
func (w *Watcher) LiveApplied() int64 { return w.liveApplied.Load() }

// Resyncs counts full resyncs (the first sync included).
func (w *Watcher) Resyncs() int64 { return w.resyncs.Load() }

// Rejected counts events dropped because their SET is permanently invalid
// (bad signature, wrong iss, aud or tenant, unknown kid after
// UnknownKeyGrace).
func (w *Watcher) Rejected() int64 { return w.rejected.Load() }

// Retried counts verification attempts of events that failed for a
// transient reason (unknown kid, keys unreachable) and were retried.
func (w *Watcher) Retried() int64 { return w.retried.Load() }

// noteLeeway raises the time revocations are kept after their token's exp
// to at least d (a Verifier's Leeway).
func (w *Watcher) noteLeeway(d time.Duration) {
	for {
		cur := w.leeway.Load()
		if int64(d) <= cur || w.leeway.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

// vouchesAfterExpiry reports whether the set can still say whether a token
// that expired at exp is revoked: the server forgets a revocation when its
// token expires, so a set resynced after exp may lack one that a verifier's
// leeway still needs.
func (w *Watcher) vouchesAfterExpiry(exp time.Time) bool {
	r := w.resyncedAt.Load()
	return r == 0 || r <= exp.UnixNano()
}

// keepAfter is the expiry before which a revocation no longer matters.
func (w *Watcher) keepAfter() time.Time {
	return w.cfg.Now().Add(-time.Duration(w.leeway.Load()) - time.Second)
}

// Start runs the watcher in the background until Stop.
func (w *Watcher) Start() {
	w.runMu.Lock()
	defer w.runMu.Unlock()
	if w.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	w.cancel, w.done = cancel, done
	go func() {
		defer close(done) // not w.done: Stop clears it
		_ = w.Run(ctx)
	}()
}

// Stop stops a watcher started with Start, waits for it and saves the
// position. The watcher may be started again (it replays from its
// position). A stopped watcher follows nothing: it counts as disconnected
// from Stop on, so a Verifier using it still trusts its set for
// MaxDisconnect and then fails closed (ErrStale) or introspects, per
// StalePolicy; stop the watcher only together with its verifiers.
func (w *Watcher) Stop() {
	w.runMu.Lock()
	cancel, done := w.cancel, w.done
	w.cancel, w.done = nil, nil
	w.runMu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// WaitSynced waits until the watcher is synced and connected, or ctx ends,
// or the watcher stopped for good (Err: the credentials were refused).
func (w *Watcher) WaitSynced(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !(w.Synced() && w.Connected()) {
		if err := w.Err(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// ErrUnauthorized: the events API keeps refusing the watcher's credentials
// (ClientID and ClientSecret of an enabled confidential client of the
// tenant, or AdminToken). Run stops with it: retrying will not help.
var ErrUnauthorized = errors.New("revocation: the events API refuses the credentials")

// Err is the error that stopped Run for good (ErrUnauthorized), or nil.
func (w *Watcher) Err() error {
	if e := w.fatal.Load(); e != nil {
		return *e
	}
	return nil
}

// client is the events API client of the current node.
func (w *Watcher) client() eventsv1connect.EventsServiceClient {
	return w.clients[int(w.cur.Load())%len(w.clients)]
}

// failed notes a failed call: credentials refused three times in a row
// (not a replica that has not seen a new client yet) stop the watcher;
// otherwise the next call goes to the next node.
func (w *Watcher) failed(err error) error {
	if c := connect.CodeOf(err); c == connect.CodeUnauthenticated || c == connect.CodePermissionDenied {
		w.authFailures++
		if w.authFailures >= 3*len(w.clients) {
			ferr := fmt.Errorf("%w: %w", ErrUnauthorized, err)
			w.fatal.Store(&ferr)
			return ferr
		}
	} else {
		w.authFailures = 0
	}
	if len(w.clients) > 1 {
		w.cur.Add(1)
	}
	return nil
}

var (
	errGap   = errors.New("revocation: gap in the event stream")
	errStale = errors.New("revocation: reconnected after more than MaxDisconnect")
	// errReset: the stream is not the one the position belongs to (it was
	// recreated or reset: another identity, or a head below the position).
	errReset = errors.New("revocation: event stream recreated or reset")
)

// Run follows the event log until ctx ends, reconnecting and resyncing as
// needed, failing over between ServerURL and ServerURLs. It returns ctx's
// error after saving the position, or ErrUnauthorized at once when the
// credentials are refused.
func (w *Watcher) Run(ctx context.Context) error {
	w.fatal.Store(nil)
	w.authFailures = 0
	defer w.save(true)
	defer w.setConnected(false)
	if w.cfg.NATS != nil {
		// For the whole run, not per stream session: see followLive.
		defer w.followLive(ctx)()
	}
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		// Disconnected for longer than MaxDisconnect (or restarted from an
		// old position file): events may have been lost where no gap shows
		// (an outbox swept before it was published), so resync first.
		if w.synced.Load() && w.Stale() {
			w.log.Warn("disconnected longer than MaxDisconnect; resyncing")
			w.synced.Store(false)
		}
		if !w.synced.Load() {
			if err := w.Resync(ctx); err != nil {
				if ctx.Err() != nil {
					break
				}
				w.log.Warn("resync failed", "err", err)
				if ferr := w.failed(err); ferr != nil {
					w.log.Error("stopping: the events API refuses the credentials", "err", ferr)
					return ferr
				}
				sleep(ctx, backoff)
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			w.authFailures = 0
		}
		var err error
		followed := time.Now()
		if w.cfg.NATS != nil {
			err = w.followNATS(ctx)
		} else {
			err = w.followConnect(ctx)
		}
		if time.Since(followed) > 10*time.Second {
			backoff = 50 * time.Millisecond // a healthy session: start over
		}
		w.setConnected(false)
		w.save(true)
		backOff, ferr := w.sessionEnded(ctx, err)
		if ferr != nil {
			return ferr
		}
		if backOff {
			sleep(ctx, backoff)
			backoff = min(2*backoff, 5*time.Second)
		}
	}
	return ctx.Err()
}

// sessionEnded is what Run does after a follow session ended with err:
// start again at once (a resync at the loop's top when synced was
// cleared), back off first, or stop with fatal (the events API refuses the
// credentials).
func (w *Watcher) sessionEnded(ctx context.Context, err error) (backOff bool, fatal error) {
	switch {
	case errors.Is(err, errStale):
		return false, nil // the loop's staleness check resyncs
	case errors.Is(err, errGap):
		w.log.Warn("position outside the stream's retained sequences; resyncing", "position", w.Position())
		w.synced.Store(false)
		return false, nil
	case errors.Is(err, errTenantDeleted) ||
		(w.cfg.NATS == nil && connect.CodeOf(err) == connect.CodeNotFound && w.set.TenantDeleted() == 0):
		// An event the issuer's keys no longer verify (the tenant's
		// last one, signed with a key the watcher never cached), or a
		// node that no longer knows the tenant: GetRevocationSet says
		// whether, and when, it was deleted.
		w.log.Warn("the issuer no longer knows the tenant; resyncing", "err", err)
		w.synced.Store(false)
		return true, nil
	case errors.Is(err, errReset):
		w.synced.Store(false)
		if time.Duration(w.cfg.Now().UnixNano()-w.resyncedAt.Load()) < time.Second {
			// Right after a resync: the server's stream is not the one
			// followed (NATS of another cluster than ServerURL?). Do
			// not hammer the server.
			w.log.Error("the stream followed is not the one the events API resyncs from; check ServerURL and NATS", "err", err)
			return true, nil
		}
		w.log.Warn("the event stream was recreated or reset; resyncing", "position", w.Position(), "err", err)
		return false, nil
	case ctx.Err() != nil:
		return false, nil // Run's loop ends
	case err != nil:
		w.log.Info("event stream interrupted", "err", err)
		if w.cfg.NATS == nil {
			if ferr := w.failed(err); ferr != nil {
				w.log.Error("stopping: the events API refuses the credentials", "err", ferr)
				return false, ferr
			}
		}
	}
	return true, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (w *Watcher) setConnected(on bool) {
	if on {
		w.connected.Store(true)
		w.disconnected.Store(0)
		return
	}
	if w.connected.Swap(false) || w.disconnected.Load() == 0 {
		w.disconnected.Store(w.cfg.Now().UnixNano())
	}
}

// Resync replaces the set with the server's current revocation set
// (GetRevocationSet) and resumes after the stream sequence it reflects.
func (w *Watcher) Resync(ctx context.Context) error {
	resp, err := w.client().GetRevocationSet(ctx, connect.NewRequest(&eventsv1.GetRevocationSetRequest{Tenant: w.cfg.Tenant}))
	if err != nil {
		return fmt.Errorf("revocation: GetRevocationSet: %w", err)
	}
	m := resp.Msg
	ns := NewSet()
	ns.seq = m.GetStreamSequence()
	ns.stream = m.GetStreamCreatedUnixNano()
	ns.floor = m.GetRaftIndex()
	for _, t := range m.GetTokens() {
		ns.tokens[t.GetJti()] = t.GetExpiresUnix()
	}
	for _, c := range m.GetDisabledClients() {
		ns.clients[c] = toggle{on: true}
	}
	for _, u := range m.GetLockedSubjects() {
		ns.subjects[u] = toggle{on: true}
	}
	for _, c := range m.GetSubjectCutoffs() {
		ns.cutoffs[c.GetSubject()] = c.GetTokensIssuedUntilUnix()
	}
	for _, c := range m.GetClientCutoffs() {
		ns.clientCutoffs[c.GetClientId()] = c.GetTokensIssuedUntilUnix()
	}
	ns.tenantCutoff = m.GetTenantDeletedUnix()
	w.adoptStream.Store(ns.stream == 0)
	w.set.replace(ns, w.keepAfter())
	w.resyncedAt.Store(w.cfg.Now().UnixNano())
	w.head.Store(max(w.head.Load(), ns.seq))
	w.synced.Store(true)
	w.resyncs.Add(1)
	w.mResyncs.Add(ctx, 1)
	w.keys.invalidate()
	w.save(true)
	w.hooksMu.Lock()
	hs := w.resyncH
	w.hooksMu.Unlock()
	for _, h := range hs {
		h()
	}
	w.log.Info("revocation set resynced", "raft_index", m.GetRaftIndex(), "sequence", ns.seq, "tokens", len(m.GetTokens()),
		"disabled_clients", len(m.GetDisabledClients()), "locked_subjects", len(m.GetLockedSubjects()),
		"tenant_deleted", m.GetTenantDeletedUnix())
	return nil
}

// checkStream compares the stream's identity (creation time) and head with
// the set's position: errReset if the position belongs to another stream
// (recreated: other identity; reset: head below the position). A set that
// knows no identity adopts it right after a resync, and otherwise resyncs
// once (a position file from before identities were kept). pos is the
// set's position read before the stream state was asked for: a watcher
// that follows the stream meanwhile may be past the head the answer
// reports, which is no reset (every message at or below pos was stored
// before the answer was made).
func (w *Watcher) checkStream(created int64, last, pos uint64) error {
	id := w.set.streamID()
	if last < pos {
		return fmt.Errorf("%w: head %d below position %d", errReset, last, pos)
	}
	switch {
	case created == 0:
		return nil // a server that does not say
	case id == 0 && (w.adoptStream.Load() || pos == 0):
		w.set.setStreamID(created)
		w.adoptStream.Store(false)
	case id != created:
		return fmt.Errorf("%w: stream created at %d, position of the stream created at %d", errReset, created, id)
	}
	return nil
}

func (w *Watcher) followNATS(ctx context.Context) error {
	st, it, err := w.openNATS(ctx)
	if err != nil {
		return err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	w.setConnected(true)

	// The ordered consumer survives NATS reconnects by itself; follow the
	// connection's state for staleness.
	var mon natsMonitor
	mctx, cancelMon := context.WithCancel(ctx)
	monDone := make(chan struct{})
	defer func() { cancelMon(); <-monDone }()
	go func() {
		defer close(monDone)
		w.monitorNATS(mctx, st, it, &mon)
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if mon.staleBack.Load() {
				return errStale
			}
			if e := mon.streamErr.Load(); e != nil {
				return *e
			}
			return err
		}
		md, err := m.Metadata()
		if err != nil {
			continue
		}
		w.head.Store(max(w.head.Load(), md.Sequence.Stream+md.NumPending))
		if err := w.handle(ctx, md.Sequence.Stream, m.Data()); err != nil {
			return err
		}
	}
}

// openNATS checks the stream against the set's position (checkStream, and
// errGap if the next event was dropped) and opens an ordered consumer of
// the tenant's subjects from the next event on.
func (w *Watcher) openNATS(ctx context.Context) (jetstream.Stream, jetstream.MessagesContext, error) {
	js, err := jetstream.New(w.cfg.NATS)
	if err != nil {
		return nil, nil, err
	}
	st, err := js.Stream(ctx, w.cfg.Stream)
	if err != nil {
		return nil, nil, fmt.Errorf("revocation: stream %s: %w", w.cfg.Stream, err)
	}
	pos := w.set.Sequence()
	info, err := st.Info(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := w.checkStream(info.Created.UnixNano(), info.State.LastSeq, pos); err != nil {
		return nil, nil, err
	}
	from := w.set.Sequence() + 1
	if from < info.State.FirstSeq {
		return nil, nil, errGap
	}
	w.head.Store(max(w.head.Load(), info.State.LastSeq))
	cons, err := js.OrderedConsumer(ctx, w.cfg.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{TenantSubjects(w.cfg.Tenant)},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		return nil, nil, err
	}
	it, err := cons.Messages(NATSConsumerHeartbeat)
	if err != nil {
		return nil, nil, err
	}
	return st, it, nil
}

// natsMonitor is why monitorNATS stopped the consumer: the watcher came
// back stale after an outage, or the stream was recreated (errReset).
type natsMonitor struct {
	staleBack atomic.Bool
	streamErr atomic.Pointer[error]
}

// monitorNATS follows the NATS connection (setConnected) and, every
// StreamCheckInterval, the stream's identity, until ctx ends; it stops it
// and records why in res when the watcher must resync.
func (w *Watcher) monitorNATS(ctx context.Context, st jetstream.Stream, it jetstream.MessagesContext, res *natsMonitor) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	lastCheck := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			up := w.cfg.NATS.IsConnected()
			if up && w.Stale() {
				// Back after a long outage: resync (Run) before
				// trusting the set again.
				res.staleBack.Store(true)
				it.Stop()
				return
			}
			w.setConnected(up)
			if !up || time.Since(lastCheck) < w.cfg.StreamCheckInterval {
				continue
			}
			lastCheck = time.Now()
			// The ordered consumer waits forever at a position beyond
			// the head of a recreated stream: compare identities.
			// The position before the request: the loop of followNATS
			// keeps handling messages stored after the answer was made.
			pos := w.set.Sequence()
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := st.Info(ictx)
			cancel()
			if err == nil {
				err = w.checkStream(info.Created.UnixNano(), info.State.LastSeq, pos)
			} else if errors.Is(err, jetstream.ErrStreamNotFound) {
				err = fmt.Errorf("%w: %w", errReset, err)
			}
			if errors.Is(err, errReset) {
				res.streamErr.Store(&err)
				it.Stop()
				return
			}
		}
	}
}

func (w *Watcher) followConnect(ctx context.Context) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := w.set.Sequence() + 1
	stream, err := w.client().WatchRevocations(cctx, connect.NewRequest(&eventsv1.WatchRevocationsRequest{
		Tenant: w.cfg.Tenant, FromSequence: from,
	}))
	if err != nil {
		return err
	}
	defer stream.Close()
	idle := time.AfterFunc(w.cfg.IdleTimeout, cancel)
	defer idle.Stop()
	first := true
	for stream.Receive() {
		idle.Reset(w.cfg.IdleTimeout)
		switch m := stream.Msg().GetMsg().(type) {
		case *eventsv1.WatchRevocationsResponse_State:
			if first && (m.State.GetGap() || from < m.State.GetFirstSequence()) {
				return errGap
			}
			if err := w.checkStream(m.State.GetStreamCreatedUnixNano(), m.State.GetLastSequence(), w.set.Sequence()); err != nil {
				return err
			}
			w.head.Store(max(w.head.Load(), m.State.GetLastSequence()))
			w.setConnected(true)
		case *eventsv1.WatchRevocationsResponse_Event:
			w.head.Store(max(w.head.Load(), m.Event.GetSequence()))
			if err := w.handle(ctx, m.Event.GetSequence(), []byte(m.Event.GetSet())); err != nil {
				return err
			}
		}
		first = false
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := stream.Err(); err != nil {
		return err
	}
	return errors.New("revocation: event stream ended")
}

// handle verifies one SET and applies it at seq. A SET signed with a kid
// the JWKS does not list yet (a key rotated with no publish delay) is
// retried with backoff, refetching the JWKS, for up to UnknownKeyGrace. An
// error means the event could not be checked now (keys unreachable): the
// caller reconnects and retries from the same position. Only a
// permanently invalid SET is dropped, counted and logged.
func (w *Watcher) handle(ctx context.Context, seq uint64, raw []byte) error {
	if seq <= w.set.Sequence() {
		return nil // replay
	}
	c, err := w.verifySETRetrying(ctx, seq, string(raw))
	if errors.Is(err, errTenantDeleted) {
		return errTenantDeleted // Run resyncs
	}
	if errors.Is(err, errKeysUnavailable) || ctx.Err() != nil {
		return err
	}
	if err != nil {
		w.reject(ctx, seq, err)
		return nil
	}
	typ, d, err := c.Event()
	if err == nil && d.Tenant != w.cfg.Tenant {
		err = fmt.Errorf("SET of tenant %q", d.Tenant)
	}
	if err != nil {
		w.reject(ctx, seq, err)
		return nil
	}
	if !w.set.apply(seq, typ, d) {
		return nil
	}
	if typ == EventKeyRotated {
		w.keys.invalidate()
	}
	w.applied.Add(1)
	w.mApplied.Add(ctx, 1)
	w.hooksMu.Lock()
	hs := w.hooks
	w.hooksMu.Unlock()
	for _, h := range hs {
		h(typ, d)
	}
	if w.applied.Load()%1024 == 0 {
		w.set.prune(w.keepAfter())
	}
	w.save(false)
	return nil
}

var errKeysUnavailable = errors.New("revocation: issuer keys unavailable")

func (w *Watcher) reject(ctx context.Context, seq uint64, err error) {
	w.rejected.Add(1)
	w.mRejected.Add(ctx, 1)
	w.log.Warn("dropping an invalid event", "sequence", seq, "err", err)
	w.set.advance(seq)
}

// verifySETRetrying is verifySET that retries an unknown kid: each retry
// refetches the JWKS (past the rate limit, which the backoff replaces).
func (w *Watcher) verifySETRetrying(ctx context.Context, seq uint64, raw string) (*SETClaims, error) {
	start := time.Now()
	backoff := 50 * time.Millisecond
	for {
		c, err := w.verifySET(ctx, raw)
		if !errors.Is(err, errUnknownKid) {
			return c, err
		}
		if time.Since(start) >= w.cfg.UnknownKeyGrace {
			return nil, fmt.Errorf("%w after %v of retries", err, w.cfg.UnknownKeyGrace)
		}
		w.retried.Add(1)
		w.log.Info("event signed with a key not in the JWKS yet; retrying", "sequence", seq, "backoff", backoff)
		sleep(ctx, backoff)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, 5*time.Second)
		if err := w.keys.refresh(ctx, true); err != nil {
			return nil, fmt.Errorf("%w: %w", errKeysUnavailable, err)
		}
	}
}

// setJWT adapts SETClaims to golang-jwt.
type setJWT struct {
	SETClaims
}

func (c *setJWT) GetExpirationTime() (*jwt.NumericDate, error) { return nil, nil }
func (c *setJWT) GetIssuedAt() (*jwt.NumericDate, error)       { return nil, nil }
func (c *setJWT) GetNotBefore() (*jwt.NumericDate, error)      { return nil, nil }
func (c *setJWT) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *setJWT) GetSubject() (string, error)                  { return "", nil }
func (c *setJWT) GetAudience() (jwt.ClaimStrings, error) {
	return jwt.ClaimStrings(c.Audience), nil
}

// verifySET checks a SET: typ secevent+jwt (RFC 8417 §2.3), a pinned alg
// equal to the key's, the signature against the issuer's JWKS, iss and aud.
func (w *Watcher) verifySET(ctx context.Context, raw string) (*SETClaims, error) {
	var c setJWT
	_, err := jwt.NewParser(jwt.WithValidMethods(allowedAlgs), jwt.WithAudience(w.cfg.SETAudience)).
		ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
			if typ, _ := t.Header["typ"].(string); !strings.EqualFold(typ, SETType) && !strings.EqualFold(typ, "application/"+SETType) {
				return nil, errors.New("typ is not secevent+jwt")
			}
			return keyFor(ctx, w.keys, t)
		})
	if err != nil {
		if errors.Is(err, errTenantDeleted) {
			return nil, errTenantDeleted
		}
		if errors.Is(err, errKeysUnavailable) {
			return nil, errKeysUnavailable
		}
		return nil, err
	}
	if c.Issuer != w.cfg.Issuer && !slices.Contains(w.cfg.SETIssuers, c.Issuer) {
		return nil, fmt.Errorf("SET issuer %q is not %q", c.Issuer, w.cfg.Issuer)
	}
	return &c.SETClaims, nil
}

func (w *Watcher) save(force bool) {
	if w.cfg.PositionFile == "" {
		return
	}
	w.saveMu.Lock()
	defer w.saveMu.Unlock()
	now := time.Now()
	if !force && now.Sub(w.lastSave) < w.cfg.SaveInterval {
		return
	}
	w.lastSave = now
	if err := w.set.save(w.cfg.PositionFile, w.cfg.Tenant); err != nil {
		w.log.Warn("saving the revocation position", "err", err)
	}
}

func (w *Watcher) authInterceptor() connect.Interceptor {
	return authInterceptor{w: w}
}

type authInterceptor struct{ w *Watcher }

func (a authInterceptor) header() string {
	if a.w.cfg.AdminToken != "" {
		return "Bearer " + a.w.cfg.AdminToken
	}
	if a.w.cfg.ClientID != "" {
		cred := url.QueryEscape(a.w.cfg.ClientID) + ":" + url.QueryEscape(a.w.cfg.ClientSecret)
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(cred))
	}
	return ""
}

func (a authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if h := a.header(); h != "" {
			req.Header().Set("Authorization", h)
		}
		return next(ctx, req)
	}
}

func (a authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if h := a.header(); h != "" {
			conn.RequestHeader().Set("Authorization", h)
		}
		return conn
	}
}

func (a authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
