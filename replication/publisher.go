package replication

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/revocation/eventwire"
)

// ConsumerHeartbeat is the idle heartbeat of the ordered consumers that
// follow the stream (eventwire.ConsumerHeartbeat): a consumer whose
// server went away is recreated after two missed heartbeats.
var ConsumerHeartbeat = jetstream.PullHeartbeat(eventwire.ConsumerHeartbeat)

// EventSource is the outbox of this node's replica; raft.FSM satisfies it.
type EventSource interface {
	// EventsSince returns up to limit events with an index above after, in
	// log order, never splitting the events of one command.
	EventsSince(after uint64, limit int) ([]*raftpb.Event, error)
	// EventsSweptThrough is the highest index a Sweep removed.
	EventsSweptThrough() uint64
}

// SETSigner signs Security Event Tokens with a tenant's signing key;
// issuance.Server satisfies it.
type SETSigner interface {
	SignSET(ctx context.Context, tenant string, claims map[string]any) (string, error)
}

// PublisherConfig configures a Publisher. Start from DefaultPublisherConfig.
type PublisherConfig struct {
	// ClusterID prefixes message ids and SET ids; every node of a cluster
	// uses the same one. Default "tally".
	ClusterID string
	// Stream is the JetStream stream name; default "TALLY_EVENTS".
	Stream string
	// Retention is the stream's max age: at least the longest access-token
	// lifetime plus a margin, so a resource server that reconnects within
	// it replays what it missed. Default 2h.
	Retention time.Duration
	// Duplicates is the stream's de-duplication window; default (and
	// maximum) Retention.
	Duplicates time.Duration
	// Replicas of the stream (1 for a single NATS server).
	Replicas int
	// PositionFile keeps the highest Raft index this node has published.
	// It is local to the node, never replicated. Required.
	PositionFile string
	// Issuer returns a tenant's issuer (the SET's iss). Required.
	Issuer func(tenant string) string
	// Audience returns a tenant's SET audience; nil means the issuer.
	Audience func(tenant string) []string
	// Signable reports whether a tenant's events can be signed: the
	// tenant exists, or was deleted recently enough that its tombstone
	// keeps its signing keys. The events of other tenants are skipped (see
	// publishable). nil: all can.
	Signable func(tenant string) bool
	// Batch is how many events are read and published at a time; default 256.
	Batch int
	// PollInterval bounds how long a new event waits when Notify is not
	// called; default 1s.
	PollInterval time.Duration
	// AckTimeout bounds the wait for JetStream's acknowledgements of a
	// batch before it is retried; default 5s.
	AckTimeout time.Duration
	// Logger, nil discards; Meter, nil is a no-op.
	Logger *slog.Logger
	Meter  metric.Meter
}

// DefaultPublisherConfig returns the defaults; PositionFile and Issuer have
// none.
func DefaultPublisherConfig() PublisherConfig {
	return PublisherConfig{
		ClusterID:    "tally",
		Stream:       "TALLY_EVENTS",
		Retention:    2 * time.Hour,
		Replicas:     1,
		Batch:        256,
		PollInterval: time.Second,
		AckTimeout:   5 * time.Second,
	}
}

// Validate reports the first invalid field.
func (c PublisherConfig) Validate() error {
	switch {
	case c.ClusterID == "" || strings.ContainsAny(c.ClusterID, " .*>:\t\r\n"):
		return errors.New("replication: cluster id must be non-empty without spaces, dots, wildcards or colons")
	case c.Stream == "" || strings.ContainsAny(c.Stream, " .*>\t\r\n/\\"):
		return errors.New("replication: stream name is invalid")
	case c.Retention < time.Minute:
		return errors.New("replication: event retention must be at least 1m")
	case c.Duplicates < 0 || c.Duplicates > c.Retention:
		return errors.New("replication: duplicates window must be between 0 and the retention")
	case c.Replicas < 1 || c.Replicas > 5:
		return errors.New("replication: stream replicas must be 1 to 5")
	case c.PositionFile == "":
		return errors.New("replication: position file is required")
	case c.Issuer == nil:
		return errors.New("replication: Issuer is required")
	case c.Batch < 1 || c.PollInterval <= 0 || c.AckTimeout <= 0:
		return errors.New("replication: batch, poll interval and ack timeout must be positive")
	}
	return nil
}

// StreamConfig is the JetStream configuration of the event log.
func (c PublisherConfig) StreamConfig() jetstream.StreamConfig {
	dup := c.Duplicates
	if dup == 0 {
		dup = c.Retention
	}
	return jetstream.StreamConfig{
		Name:        c.Stream,
		Description: "tally revocation and security events (Security Event Tokens)",
		Subjects:    eventwire.StreamSubjects,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.Retention,
		Duplicates:  dup,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Discard:     jetstream.DiscardOld,
		// Nobody removes events: the permissions of the embedded server
		// deny stream delete and purge too.
		DenyDelete: true,
		DenyPurge:  true,
	}
}

// Publisher publishes the events of this node's replica to JetStream. Every
// node runs one: each event is published with Nats-Msg-Id
// "<cluster>:<index>.<ordinal>", so the stream's de-duplication window keeps
// one copy whichever nodes publish it, and no single node's crash loses it.
// The publisher keeps its own position (the highest index it saw
// acknowledged) in PositionFile and resumes after it; when NATS is down it
// retries until it is back, so nothing applied is skipped. Nothing read
// from the stream moves the position (see ensure); a node that starts from
// nothing republishes its outbox, which the duplicates window drops.
//
// Events reach the stream in Raft order while its leader stays: each node
// publishes in order and waits for acknowledgements before moving on, and a
// message id already in the window is dropped. When the stream's leader
// fails over in a NATS cluster, messages of a window in flight may be
// stored out of order (each event still exactly once); consumers order
// state changes by the event's raft_index, never by stream position.
type Publisher struct {
	cfg    PublisherConfig
	nc     *nats.Conn
	js     jetstream.JetStream
	src    EventSource
	signer SETSigner
	log    *slog.Logger

	wake     chan struct{}
	liveWake chan struct{}
	window   int // messages in flight at once (step's goroutine only)
	pos      atomic.Uint64
	fresh    atomic.Bool // no position saved yet: a new node (or data dir)
	ensured  atomic.Bool
	lastErr  atomic.Value // string
	wg       sync.WaitGroup
	stopOnce sync.Once
	cancel   context.CancelFunc

	published metric.Int64Counter
	failures  metric.Int64Counter
	lost      metric.Int64Counter

	sets signedSETs
}

// signedSETs remembers the SETs a publisher signed lately, by event, so
// that its live path and its stream path sign each event once between
// them (the signature is most of what an event costs a node). The first
// path to reach an event signs it while holding the lock; the other waits
// and takes the same token. The oldest of signedSETsKept are forgotten.
type signedSETs struct {
	mu    sync.Mutex
	byEv  map[eventKey]string
	order [signedSETsKept]eventKey // ring: the keys in the order they came
	next  int
}

// signedSETsKept bounds the remembered SETs: far more than the two paths
// are ever apart (a batch of each, PublisherConfig.Batch).
const signedSETsKept = 4096

type eventKey struct {
	index   uint64
	ordinal uint32
}

// get returns the SET of ev, signing it with sign the first time.
func (c *signedSETs) get(ev *raftpb.Event, sign func() (string, error)) (string, error) {
	k := eventKey{ev.Index, ev.Ordinal}
	c.mu.Lock()
	defer c.mu.Unlock()
	if set, ok := c.byEv[k]; ok {
		return set, nil
	}
	set, err := sign()
	if err != nil {
		return "", err
	}
	if c.byEv == nil {
		c.byEv = make(map[eventKey]string, signedSETsKept)
	}
	if old := c.order[c.next]; len(c.byEv) >= signedSETsKept {
		delete(c.byEv, old)
	}
	c.order[c.next] = k
	c.next = (c.next + 1) % signedSETsKept
	c.byEv[k] = set
	return set, nil
}

// NewPublisher returns a publisher on nc. It does not start; call Start.
// nc should reconnect forever (nats.MaxReconnects(-1)); the caller owns it.
func NewPublisher(cfg PublisherConfig, nc *nats.Conn, src EventSource, signer SETSigner) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil || src == nil || signer == nil {
		return nil, errors.New("replication: NewPublisher needs a NATS connection, an event source and a signer")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Meter == nil {
		cfg.Meter = noop.NewMeterProvider().Meter("tally/replication")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("replication: jetstream: %w", err)
	}
	p := &Publisher{
		cfg: cfg, nc: nc, js: js, src: src, signer: signer,
		log:      cfg.Logger.With("component", "event-publisher"),
		wake:     make(chan struct{}, 1),
		liveWake: make(chan struct{}, 1),
		// Start careful: the stream may be failing over.
		window: 1,
	}
	if p.published, err = cfg.Meter.Int64Counter("tally.events.published", metric.WithDescription("outbox events acknowledged by JetStream (including duplicates dropped by the stream)")); err != nil {
		return nil, err
	}
	if p.failures, err = cfg.Meter.Int64Counter("tally.events.publish_failures", metric.WithDescription("failed attempts to publish outbox events")); err != nil {
		return nil, err
	}
	if p.lost, err = cfg.Meter.Int64Counter("tally.events.lost", metric.WithDescription("times the publisher fell behind the outbox retention")); err != nil {
		return nil, err
	}
	// The counters start at 0, so that rates and alerts over them are
	// defined before the first event.
	for _, c := range []metric.Int64Counter{p.published, p.failures, p.lost} {
		c.Add(context.Background(), 0)
	}
	pos, err := readPosition(cfg.PositionFile)
	if err != nil {
		return nil, err
	}
	p.pos.Store(pos)
	if _, err := os.Stat(cfg.PositionFile); errors.Is(err, os.ErrNotExist) {
		p.fresh.Store(true)
	}
	return p, nil
}

// Start runs the publisher until Stop. It returns at once.
func (p *Publisher) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(2)
	go p.run(ctx)
	go p.live(ctx)
}

// Stop stops the publisher and waits for it. Safe to call more than once,
// and before Start.
func (p *Publisher) Stop() {
	p.stopOnce.Do(func() {
		if p.cancel == nil {
			return
		}
		p.cancel()
		p.wg.Wait()
	})
}

// Notify wakes the publisher: new events were applied. It never blocks.
func (p *Publisher) Notify() {
	for _, c := range []chan struct{}{p.wake, p.liveWake} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// Position is the highest Raft index published and acknowledged.
func (p *Publisher) Position() uint64 { return p.pos.Load() }

// LastError is the last publishing error, "" after a success.
func (p *Publisher) LastError() string {
	s, _ := p.lastErr.Load().(string)
	return s
}

// MsgID is the Nats-Msg-Id of an event.
func MsgID(cluster string, index uint64, ordinal uint32) string {
	return cluster + ":" + strconv.FormatUint(index, 10) + "." + strconv.FormatUint(uint64(ordinal), 10)
}

func (p *Publisher) run(ctx context.Context) {
	defer p.wg.Done()
	// A NATS reconnect may follow a server restart that lost the stream;
	// ensure it again then.
	p.nc.SetReconnectHandler(func(*nats.Conn) {
		p.ensured.Store(false)
		p.Notify()
	})
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		more, err := p.step(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.failures.Add(ctx, 1)
			if p.LastError() != err.Error() {
				p.log.Warn("publishing events", "err", err, "position", p.Position())
			}
			p.lastErr.Store(err.Error())
			p.wait(ctx, backoff)
			// Short: a stream failing over has a new leader within
			// seconds, and every retry of one message is cheap.
			backoff = min(2*backoff, 500*time.Millisecond)
			continue
		}
		backoff = 50 * time.Millisecond
		p.lastErr.Store("")
		if !more {
			p.wait(ctx, p.cfg.PollInterval)
		}
	}
}

func (p *Publisher) wait(ctx context.Context, d time.Duration) {
	waitOn(ctx, p.wake, d)
}

func waitOn(ctx context.Context, wake <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	case <-t.C:
	}
}

// live sends every event it has not sent yet as a core NATS message on
// its live subject (eventwire.LiveSubject) as soon as it is applied, whether or not the stream
// acknowledges it: a stream without a leader (JetStream elects one within
// 4-9 s after its server died) holds up the stream, not this. Every node
// sends every event, so a subscriber sees each once per node and keeps
// one by SET jti; the stream stays the ordered, durable log that replays.
// Nothing is retried here: the stream path is the one that guarantees
// delivery.
func (p *Publisher) live(ctx context.Context) {
	defer p.wg.Done()
	pos := p.Position()
	for ctx.Err() == nil {
		evs, err := p.src.EventsSince(pos, p.cfg.Batch)
		if err != nil {
			pos = max(pos, p.src.EventsSweptThrough(), p.Position())
			waitOn(ctx, p.liveWake, p.cfg.PollInterval)
			continue
		}
		n := len(evs)
		if n > 0 {
			last := evs[n-1].Index
			// Unsignable events (a deleted tenant's, its tombstone swept)
			// are skipped here as on the stream path, never waited for.
			if evs = p.publishable(evs, false); len(evs) == 0 {
				pos = last
			}
		}
		for _, ev := range evs {
			msg, err := p.message(ctx, ev)
			if err != nil {
				break // the stream path reports it
			}
			msg.Subject = eventwire.LiveSubject(msg.Subject)
			p.nc.PublishMsg(msg) // buffered while reconnecting; best effort
			pos = ev.Index
		}
		if n < p.cfg.Batch {
			waitOn(ctx, p.liveWake, p.cfg.PollInterval)
		}
	}
}

// step publishes one batch; more reports that a full batch was published.
func (p *Publisher) step(ctx context.Context) (more bool, err error) {
	if !p.ensured.Load() {
		if err := p.ensure(ctx); err != nil {
			return false, err
		}
	}
	pos := p.Position()
	evs, err := p.src.EventsSince(pos, p.cfg.Batch)
	if err != nil {
		swept := p.src.EventsSweptThrough()
		if swept <= pos {
			return false, fmt.Errorf("replication: reading the outbox: %w", err)
		}
		if p.fresh.Load() {
			// A node that never published starts after what was swept:
			// those events are older than the retention, so they have
			// left the stream too, and other nodes published them.
			p.log.Info("publishing starts after the swept outbox", "swept_through", swept)
			p.setPosition(swept)
			return true, nil
		}
		// Fell behind the outbox retention (NATS was down for longer than
		// it): those events are gone. Resource servers resync from the
		// revocation set; say so loudly and go on.
		p.lost.Add(ctx, 1)
		p.log.Error("events were swept from the outbox before this node published them",
			"position", pos, "swept_through", swept)
		p.setPosition(swept)
		return true, nil
	}
	if len(evs) == 0 {
		return false, nil
	}
	// Events go out in windows: all of a window's messages are sent, then
	// its acknowledgements awaited. After a failure the window is one
	// message (each sent only once the previous is stored), and it doubles
	// with every clean window: a message that failed is never overtaken by
	// a later one sent while the stream was failing over, so events reach
	// the stream in Raft order.
	all := evs
	evs = p.publishable(evs, true)
	var acked uint64
	for start := 0; start < len(evs); {
		end := min(start+p.window, len(evs))
		if err := p.publishWindow(ctx, evs[start:end], &acked); err != nil {
			p.window = 1
			if acked > 0 {
				p.setPosition(acked)
			}
			return false, err
		}
		p.window = min(2*p.window, p.cfg.Batch)
		start = end
	}
	p.published.Add(ctx, int64(len(evs)))
	p.setPosition(all[len(all)-1].Index)
	return len(all) >= p.cfg.Batch, nil
}

// publishWindow sends evs and waits for their acknowledgements; acked
// moves past every command whose events are all acknowledged and followed
// by another command's in evs (the window's last command may continue in
// the next window, so it counts only at the batch's end).
func (p *Publisher) publishWindow(ctx context.Context, evs []*raftpb.Event, acked *uint64) error {
	acks := make([]jetstream.PubAckFuture, 0, len(evs))
	for _, ev := range evs {
		msg, err := p.message(ctx, ev)
		if err != nil {
			return err
		}
		f, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(MsgID(p.cfg.ClusterID, ev.Index, ev.Ordinal)),
			jetstream.WithExpectStream(p.cfg.Stream))
		if err != nil {
			p.ensured.Store(false)
			return fmt.Errorf("replication: publish event %d: %w", ev.Index, err)
		}
		acks = append(acks, f)
	}
	tctx, cancel := context.WithTimeout(ctx, p.cfg.AckTimeout)
	defer cancel()
	for i, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			p.ensured.Store(false)
			return fmt.Errorf("replication: publish event %d: %w", evs[i].Index, err)
		case <-tctx.Done():
			return fmt.Errorf("replication: publish event %d: no acknowledgement: %w", evs[i].Index, tctx.Err())
		}
		// Position moves only past whole commands: the command's last
		// event is followed by another command's (or ends the outbox
		// read, which never splits a command).
		if i < len(evs)-1 && evs[i+1].Index != evs[i].Index {
			*acked = evs[i].Index
		}
	}
	return nil
}

// ensure creates or updates the stream. It does not look at what the
// stream holds: anyone who can publish on the stream's subjects could set
// a message's headers, so the position comes only from this node's outbox
// and JetStream's acknowledgements, and the stream's duplicates window
// (equal to the outbox retention) drops what another node published
// already.
func (p *Publisher) ensure(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.js.CreateOrUpdateStream(cctx, p.cfg.StreamConfig()); err != nil {
		return fmt.Errorf("replication: create stream %s: %w", p.cfg.Stream, err)
	}
	p.ensured.Store(true)
	return nil
}

func (p *Publisher) setPosition(idx uint64) {
	if idx <= p.Position() {
		return
	}
	p.pos.Store(idx)
	p.fresh.Store(false)
	if err := writePosition(p.cfg.PositionFile, idx); err != nil {
		p.log.Warn("saving the publisher position", "err", err)
	}
}

// message builds the NATS message of an event: its SET (signed once for
// both paths, signedSETs) and headers.
func (p *Publisher) message(ctx context.Context, ev *raftpb.Event) (*nats.Msg, error) {
	typ, claims := SETClaims(p.cfg.ClusterID, p.cfg.Issuer(ev.Tenant), p.audience(ev.Tenant), ev)
	if typ == "" {
		return nil, fmt.Errorf("replication: event %d has unknown kind %v", ev.Index, ev.Kind)
	}
	set, err := p.sets.get(ev, func() (string, error) { return p.signer.SignSET(ctx, ev.Tenant, claims) })
	if err != nil {
		return nil, fmt.Errorf("replication: sign event %d: %w", ev.Index, err)
	}
	m := nats.NewMsg(eventwire.Subject(ev.Tenant, typ))
	m.Data = []byte(set)
	m.Header.Set(eventwire.HeaderRaftIndex, strconv.FormatUint(ev.Index, 10))
	m.Header.Set(eventwire.HeaderCluster, p.cfg.ClusterID)
	m.Header.Set("Content-Type", eventwire.ContentType)
	return m, nil
}

func (p *Publisher) audience(tenant string) []string {
	if p.cfg.Audience != nil {
		if a := p.cfg.Audience(tenant); len(a) > 0 {
			return a
		}
	}
	return []string{p.cfg.Issuer(tenant)}
}

// SETClaims returns the event type and SET claims (RFC 8417 §2.2) of an
// outbox event; "" for a kind it does not know. The claims are derived from
// the event alone, so every node builds the same ones: jti is
// "<cluster>-<index>-<ordinal>", iat and toe are the command's time.
func SETClaims(cluster, issuer string, aud []string, ev *raftpb.Event) (string, map[string]any) {
	d := eventwire.EventDetails{
		SchemaVersion: eventwire.SchemaVersion,
		Tenant:        ev.Tenant,
		RaftIndex:     ev.Index,
		ClientID:      ev.ClientId,
		Subject:       ev.Subject,
		FamilyID:      ev.FamilyId,
	}
	var typ string
	switch ev.Kind {
	case raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED:
		typ = eventwire.EventTokenRevoked
		r := ev.GetRevocation()
		d.JTI = r.GetJti()
		d.ClientID = r.GetClientId()
		d.Subject = r.GetSubject()
		d.ExpiresAt = (r.GetExpiresUnixNano() + int64(time.Second) - 1) / int64(time.Second)
	case raftpb.EventKind_EVENT_KIND_CLIENT_DISABLED:
		typ = eventwire.EventClientDisabled
	case raftpb.EventKind_EVENT_KIND_CLIENT_ENABLED:
		typ = eventwire.EventClientEnabled
	case raftpb.EventKind_EVENT_KIND_KEY_ROTATED:
		typ = eventwire.EventKeyRotated
		d.KeyIDs = ev.Kids
	case raftpb.EventKind_EVENT_KIND_FAMILY_REVOKED:
		typ = eventwire.EventFamilyRevoked
	case raftpb.EventKind_EVENT_KIND_REUSE_DETECTED:
		typ = eventwire.EventReuseDetected
	case raftpb.EventKind_EVENT_KIND_USER_LOCKED:
		typ = eventwire.EventUserLocked
	case raftpb.EventKind_EVENT_KIND_USER_UNLOCKED:
		typ = eventwire.EventUserUnlocked
		d.TokensIssuedUntil = ev.LockedUnixNano / int64(time.Second)
	case raftpb.EventKind_EVENT_KIND_CLIENT_DELETED:
		typ = eventwire.EventClientDeleted
		d.TokensIssuedUntil = ev.TimeUnixNano / int64(time.Second)
	case raftpb.EventKind_EVENT_KIND_USER_DELETED:
		typ = eventwire.EventUserDeleted
		d.TokensIssuedUntil = ev.TimeUnixNano / int64(time.Second)
	case raftpb.EventKind_EVENT_KIND_TENANT_DELETED:
		typ = eventwire.EventTenantDeleted
		d.TokensIssuedUntil = ev.TimeUnixNano / int64(time.Second)
	case raftpb.EventKind_EVENT_KIND_ADMIN_AUDIT:
		typ = eventwire.EventAdminAudit
		r := ev.GetAudit()
		d.Audit = &eventwire.AuditDetails{Seq: r.GetSeq(), Actor: r.GetActor(), Role: r.GetRole(), Action: r.GetAction(),
			Target: r.GetTarget(), Tenant: r.GetTenant(), Outcome: r.GetOutcome(), Node: r.GetNode(),
			PrevHash: hex.EncodeToString(r.GetPrevHash()), Hash: hex.EncodeToString(r.GetHash())}
	case raftpb.EventKind_EVENT_KIND_SECURITY_ALERT:
		typ = eventwire.EventSecurityAlert
		a := ev.GetAlert()
		d.Alert = &eventwire.AlertDetails{Kind: a.GetKind(), ClientID: a.GetClientId(), Subject: a.GetSubject(), Source: a.GetSource(),
			Signal: a.GetSignal(), Count: a.GetCount(), WindowSeconds: a.GetWindowSeconds(), Node: a.GetNode(), Region: a.GetRegion(),
			Scope: a.GetScope(), PreviousRegion: a.GetPreviousRegion(), GapSeconds: a.GetGapNanos() / int64(time.Second)}
	default:
		return "", nil
	}
	sec := ev.TimeUnixNano / int64(time.Second)
	var audClaim any = aud
	if len(aud) == 1 {
		audClaim = aud[0]
	}
	return typ, map[string]any{
		"iss":    issuer,
		"iat":    sec,
		"toe":    sec,
		"jti":    fmt.Sprintf("%s-%d-%d", cluster, ev.Index, ev.Ordinal),
		"aud":    audClaim,
		"events": map[string]any{typ: d},
	}
}

func readPosition(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replication: read position: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("replication: position file %s: %w", path, err)
	}
	return v, nil
}

// writePosition replaces the file atomically. It does not fsync: a lost
// update only republishes events that the stream de-duplicates.
func writePosition(path string, v uint64) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(v, 10)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// publishable drops the events no node can sign (issue 16): a deleted
// tenant's events (its TENANT_DELETED above all) are signed with the keys
// its tombstone keeps; once the tombstone is swept (two hours) they are
// skipped (logged when log is set) rather than blocking the outbox for
// ever. By then every token the tenant issued has expired.
func (p *Publisher) publishable(evs []*raftpb.Event, log bool) []*raftpb.Event {
	out := evs[:0:0]
	for _, ev := range evs {
		if p.cfg.Signable != nil && !p.cfg.Signable(ev.Tenant) {
			if log {
				p.log.Info("skipping an event of a deleted tenant", "tenant", ev.Tenant, "index", ev.Index, "kind", ev.Kind.String())
			}
			continue
		}
		out = append(out, ev)
	}
	return out
}
