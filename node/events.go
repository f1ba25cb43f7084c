package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/replication"
	"github.com/tallyauth/tally/revocation/eventwire"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1/eventsv1connect"
)

// EventsConfig configures the event log: where the node publishes its
// replica's events (JetStream) and how long they are kept.
type EventsConfig struct {
	// NATSURL is an external NATS cluster (comma-separated URLs). Empty uses
	// the embedded server (Config.NATSListen); with neither, the node
	// publishes no events and serves no events API.
	NATSURL string
	// NATSCredsFile is a NATS credentials file (user JWT and nkey seed) for
	// NATSURL.
	NATSCredsFile string
	// NATSCAFile is a PEM CA bundle that verifies NATSURL's TLS certificate.
	NATSCAFile string
	// Retention is the stream's max age and the outbox retention: at least
	// the longest access-token lifetime (1h) plus a margin. Default 2h.
	Retention time.Duration
	// ClusterID prefixes message and SET ids; the same on every node of a
	// cluster. Default "tally".
	ClusterID string
	// Audience is the "aud" of every SET; empty means the tenant's issuer.
	Audience []string
	// StreamReplicas is the JetStream replication factor of the stream; 0
	// means min(3, NATS servers) with the embedded NATS cluster and 1 with
	// an external one.
	StreamReplicas int
}

// DefaultEventsConfig: embedded NATS, 2h retention.
func DefaultEventsConfig() EventsConfig {
	return EventsConfig{Retention: 2 * time.Hour, ClusterID: "tally"}
}

// Validate reports the first invalid field.
func (c EventsConfig) Validate() error {
	if c.Retention < time.Hour {
		return errors.New("node: event retention must be at least 1h (the longest access-token lifetime)")
	}
	if c.StreamReplicas < 0 || c.StreamReplicas > 5 {
		return errors.New("node: event stream replicas must be 1 to 5 (0: automatic)")
	}
	if c.NATSURL != "" {
		for _, s := range strings.Split(c.NATSURL, ",") {
			u, err := url.Parse(strings.TrimSpace(s))
			if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
				return fmt.Errorf("node: nats url %q: want nats://host:port or tls://host:port", s)
			}
		}
	}
	return nil
}

// eventLog is the node's side of the event log: its NATS connection, its
// publisher and the events Connect service.
type eventLog struct {
	cfg    EventsConfig
	kek    *issuance.KEK
	log    *slog.Logger
	nc     *nats.Conn
	js     jetstream.JetStream
	pub    *replication.Publisher
	stream string
	// streamConfig is the stream's configuration (replication.PublisherConfig.StreamConfig).
	streamConfig jetstream.StreamConfig
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

// startEvents connects to NATS, ensures the stream and starts the
// publisher and the outbox sweeper. No NATS configured: nil, nil.
func (n *Node) startEvents(kek *issuance.KEK) (*eventLog, error) {
	ec := n.cfg.Events
	url := ec.NATSURL
	if url == "" && n.nats != nil {
		url = n.nats.ClientURL()
	}
	if url == "" {
		return nil, nil
	}
	nc, err := nats.Connect(url, n.natsOptions()...)
	if err != nil {
		return nil, fmt.Errorf("node: nats: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("node: jetstream: %w", err)
	}
	pc := replication.DefaultPublisherConfig()
	pc.ClusterID = ec.ClusterID
	pc.Retention = ec.Retention
	pc.Replicas = n.cfg.streamReplicas()
	pc.PositionFile = filepath.Join(n.cfg.DataDir, "events-published")
	pc.Issuer = n.iss.Issuer
	if len(ec.Audience) > 0 {
		aud := ec.Audience
		pc.Audience = func(string) []string { return aud }
	}
	pc.Logger = n.log
	pc.Meter = n.tel.meter
	pc.Signable = func(t string) bool { // a deleted tenant signs with its tombstone's keys (DeletedTenantKeys)
		st := n.raft.State()
		_, ok := st.Tenant(t)
		if !ok {
			_, ok = st.DeletedTenant(t)
		}
		return ok
	}
	pub, err := replication.NewPublisher(pc, nc, n.raft.FSM(), n.iss)
	if err != nil {
		nc.Close()
		return nil, err
	}
	e := &eventLog{cfg: ec, kek: kek, log: n.log.With("component", "events"), nc: nc, js: js, pub: pub, stream: pc.Stream, streamConfig: pc.StreamConfig()}
	// Create the stream now, so the events API serves as soon as the node
	// does; the publisher ensures it again after every reconnect. An
	// unreachable external NATS does not stop the node: revocations are
	// acknowledged on the Raft commit, and the publisher catches up.
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := js.CreateOrUpdateStream(cctx, e.streamConfig); err != nil {
		e.log.Warn("event stream not created yet", "err", err)
	}
	ccancel()
	n.raft.FSM().OnApplied(func(uint64, *raftpb.Command, raft.Result) { pub.Notify() })
	pub.Start()

	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		n.sweepEvents(ctx, ec.Retention)
	}()
	return e, nil
}

// sweepEvents proposes, while this node leads, a Sweep that removes outbox
// events older than the retention: the cutoff travels in the command, so
// the FSM reads no configuration. Every Sweep also removes everything else
// that expired, so with an event log this is the node's only sweeper (Run
// does not start raft's).
func (n *Node) sweepEvents(ctx context.Context, retention time.Duration) {
	every := n.cfg.SweepInterval
	for {
		// While a bounded sweep (raft.FeatureBoundedSweep) has work left,
		// the next follows after raft.SweepPause.
		d := every
		if n.raft.IsLeader() && n.raft.FSM().SweepMore() {
			d = raft.SweepPause
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		if !n.raft.IsLeader() {
			continue
		}
		now := n.now()
		cmd := n.raft.SweepCommand(now, now.Add(-retention).UnixNano())
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := n.rep.propose(pctx, &raftpb.Command{Op: cmd.Op})
		cancel()
		if err != nil && ctx.Err() == nil {
			n.log.Warn("event outbox sweep not applied", "err", err)
		}
	}
}

func (e *eventLog) close() {
	if e == nil {
		return
	}
	e.cancel()
	e.wg.Wait()
	e.pub.Stop()
	e.nc.Close()
}

// Publisher is the node's event publisher, nil without NATS.
func (n *Node) Publisher() *replication.Publisher {
	if n.events == nil {
		return nil
	}
	return n.events.pub
}

// eventsService implements the events Connect API (revocation/eventwire/eventsv1).
//
// WatchRevocations reads the JetStream stream (not the Raft outbox), so the
// sequence numbers are the stream's and a resource server can move between
// NATS and Connect without losing its place. GetRevocationSet reads the
// replica.
//
// Authentication, either: HTTP Basic with the id and secret of an enabled
// confidential client of the requested tenant (RFC 6749 §2.3.1), or
// "Bearer <admin token>".
type eventsService struct {
	n     *Node
	ev    *eventLog
	kek   *issuance.KEK
	admin adminAuth
	// heartbeat is the interval of StreamState messages on a watch.
	heartbeat time.Duration
}

var _ eventsv1connect.EventsServiceHandler = (*eventsService)(nil)

func (s *eventsService) handler() (string, http.Handler) {
	return eventsv1connect.NewEventsServiceHandler(s, connect.WithReadMaxBytes(64<<10))
}

// authorize admits the admin or a client of tenant (the client
// authentication of the token endpoint: issuance.Server.AuthenticateBasic).
func (s *eventsService) authorize(ctx context.Context, h http.Header, tenant string) error {
	authz := h.Get("Authorization")
	if strings.HasPrefix(authz, "Bearer ") && s.admin.check(authz) {
		return nil
	}
	switch err := s.n.authenticateClient(ctx, tenant, authz); {
	case err == nil:
		return nil
	case credentialsRefused(err) || authz == "":
		return connect.NewError(connect.CodeUnauthenticated, errors.New("admin token or client credentials of the tenant required"))
	default:
		// A replica catching up or a throttle: not a verdict on the
		// credentials (a watcher stops for good on repeated
		// Unauthenticated), so the caller retries here or elsewhere.
		return connect.NewError(connect.CodeUnavailable, errors.New("client credentials cannot be checked on this node now; retry"))
	}
}

// deletedTenant returns the tombstone of a tenant that was deleted and
// not created again, nil otherwise.
func (s *eventsService) deletedTenant(tenant string) *raftpb.DeletedTenant {
	st := s.n.raft.State()
	if tenant == "" {
		return nil
	}
	if _, ok := st.Tenant(tenant); ok {
		return nil
	}
	d, _ := st.DeletedTenant(tenant)
	return d
}

func (s *eventsService) checkTenant(tenant string) error {
	if tenant == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("tenant is required"))
	}
	if _, ok := s.n.raft.State().Tenant(tenant); !ok {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", tenant))
	}
	return nil
}

func (s *eventsService) streamHandle(ctx context.Context) (jetstream.Stream, *jetstream.StreamInfo, error) {
	st, err := s.ev.js.Stream(ctx, s.ev.stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = s.ev.js.CreateOrUpdateStream(ctx, s.ev.streamConfig)
	}
	if err != nil {
		return nil, nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("event stream: %w", err))
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("event stream: %w", err))
	}
	return st, info, nil
}

// WatchRevocations streams the tenant's events from from_sequence on.
func (s *eventsService) WatchRevocations(ctx context.Context, req *connect.Request[eventsv1.WatchRevocationsRequest], out *connect.ServerStream[eventsv1.WatchRevocationsResponse]) error {
	tenant := req.Msg.GetTenant()
	if s.deletedTenant(tenant) != nil {
		// Its clients went with it: no credentials to check. The watcher
		// resyncs and GetRevocationSet says when it was deleted.
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q was deleted", tenant))
	}
	if err := s.authorize(ctx, req.Header(), tenant); err != nil {
		return err
	}
	if err := s.checkTenant(tenant); err != nil {
		return err
	}
	_, info, err := s.streamHandle(ctx)
	if err != nil {
		return err
	}
	from, state := watchStart(info, req.Msg.GetFromSequence())
	if err := out.Send(&eventsv1.WatchRevocationsResponse{Msg: &eventsv1.WatchRevocationsResponse_State{State: state}}); err != nil {
		return err
	}
	msgs, gone, stop, err := s.consumeTenant(ctx, tenant, from)
	if err != nil {
		return err
	}
	defer stop()
	hb := s.heartbeat
	if hb <= 0 {
		hb = 15 * time.Second
	}
	tick := time.NewTicker(hb)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.n.stopping:
			// End the stream at once on shutdown (http.Server.Shutdown
			// would wait for it): the watcher reconnects elsewhere.
			return connect.NewError(connect.CodeUnavailable, errors.New("node shutting down; reconnect to another node"))
		case <-gone:
			return connect.NewError(connect.CodeUnavailable, errors.New("event stream deleted or reset; reconnect"))
		case m := <-msgs:
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			idx, _ := strconv.ParseUint(m.Headers().Get(eventwire.HeaderRaftIndex), 10, 64)
			if err := out.Send(&eventsv1.WatchRevocationsResponse{Msg: &eventsv1.WatchRevocationsResponse_Event{Event: &eventsv1.Event{
				Sequence: md.Sequence.Stream, Subject: m.Subject(), Set: string(m.Data()), RaftIndex: idx,
			}}}); err != nil {
				return err
			}
		case <-tick.C:
			_, info, err := s.streamHandle(ctx)
			if err != nil {
				continue
			}
			if err := out.Send(&eventsv1.WatchRevocationsResponse{Msg: &eventsv1.WatchRevocationsResponse_State{State: streamState(info)}}); err != nil {
				return err
			}
		}
	}
}

// watchStart is where a watch asking for from starts, and the state it is
// told first. A position older than the first retained event lost events
// to retention; one beyond the head belongs to a stream that was reset or
// recreated since. Either way the caller must resync (state.Gap), and the
// watch starts within the retained sequences.
func watchStart(info *jetstream.StreamInfo, from uint64) (uint64, *eventsv1.StreamState) {
	first := max(info.State.FirstSeq, 1)
	state := streamState(info)
	if (from > 1 && from < first) || from > info.State.LastSeq+1 {
		state.Gap = true
	}
	if from < first || state.Gap {
		from = max(first, min(from, info.State.LastSeq+1))
	}
	return from, state
}

// consumeTenant consumes the tenant's events from sequence from on, into
// msgs until ctx ends; gone is closed when the stream is deleted (its
// consumers go with it), so that the watch ends and the caller reconnects
// at once and finds the new stream's identity, instead of at the next
// heartbeat. stop ends the consumer.
func (s *eventsService) consumeTenant(ctx context.Context, tenant string, from uint64) (msgs <-chan jetstream.Msg, gone <-chan struct{}, stop func(), err error) {
	cons, err := s.ev.js.OrderedConsumer(ctx, s.ev.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{eventwire.TenantSubjects(tenant)},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		return nil, nil, nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("event stream consumer: %w", err))
	}
	m := make(chan jetstream.Msg, 256)
	g := make(chan struct{})
	var goneOnce sync.Once
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		select {
		case m <- msg:
		case <-ctx.Done():
		}
	}, replication.ConsumerHeartbeat, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrStreamNotFound) {
			goneOnce.Do(func() { close(g) })
		}
	}))
	if err != nil {
		return nil, nil, nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("event stream consumer: %w", err))
	}
	return m, g, cc.Stop, nil
}

// streamState is the StreamState of info: its retained sequences and its
// identity (creation time).
func streamState(info *jetstream.StreamInfo) *eventsv1.StreamState {
	return &eventsv1.StreamState{FirstSequence: info.State.FirstSeq, LastSequence: info.State.LastSeq,
		StreamCreatedUnixNano: info.Created.UnixNano()}
}

// GetRevocationSet returns the tenant's revocations, disabled clients,
// disabled or locked users and recent lock cutoffs, with the Raft index
// they reflect, the stream sequence to resume after and the stream's
// identity; for a tenant deleted recently (its tombstone kept), when it
// was deleted, to any caller. It reads the stream head first and waits until the replica has applied
// the head's Raft index, so every event up to stream_sequence is reflected.
func (s *eventsService) GetRevocationSet(ctx context.Context, req *connect.Request[eventsv1.GetRevocationSetRequest]) (*connect.Response[eventsv1.GetRevocationSetResponse], error) {
	tenant := req.Msg.GetTenant()
	deleted := s.deletedTenant(tenant)
	if deleted == nil {
		if err := s.authorize(ctx, req.Header(), tenant); err != nil {
			return nil, err
		}
		if err := s.checkTenant(tenant); err != nil {
			return nil, err
		}
	}
	st, info, err := s.streamHandle(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	var need uint64
	if last > 0 && info.State.Msgs > 0 {
		m, err := st.GetMsg(ctx, last)
		if err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("event stream head: %w", err))
		}
		need, _ = strconv.ParseUint(m.Header.Get(eventwire.HeaderRaftIndex), 10, 64)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.n.raft.State().AppliedIndex() < need {
		if time.Now().After(deadline) {
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("replica behind the event stream; retry"))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	if deleted != nil {
		// A deleted tenant: answered without credentials (its clients went
		// with it; that it is gone is public, its metadata answers 404),
		// so the set says that and nothing else.
		return connect.NewResponse(&eventsv1.GetRevocationSetResponse{RaftIndex: s.n.raft.State().AppliedIndex(),
			StreamSequence: last, StreamCreatedUnixNano: info.Created.UnixNano(),
			TenantDeletedUnix: deleted.DeletedUnixNano / int64(time.Second)}), nil
	}
	idx, revs := s.n.raft.State().RevocationsSnapshot(tenant)
	resp := &eventsv1.GetRevocationSetResponse{RaftIndex: idx, StreamSequence: last, StreamCreatedUnixNano: info.Created.UnixNano()}
	if d, ok := s.n.raft.State().DeletedTenant(tenant); ok {
		// Created again since: the old tenant's tokens stay invalid.
		resp.TenantDeletedUnix = d.DeletedUnixNano / int64(time.Second)
	}
	for _, r := range revs {
		resp.Tokens = append(resp.Tokens, &eventsv1.RevokedToken{
			Jti: r.Jti, ClientId: r.ClientId, Subject: r.Subject,
			ExpiresUnix: (r.ExpiresUnixNano + int64(time.Second) - 1) / int64(time.Second),
		})
	}
	for _, c := range s.n.raft.State().Clients(tenant) {
		if c.Disabled {
			resp.DisabledClients = append(resp.DisabledClients, c.Id)
		}
	}
	// A lock older than the longest token lifetime (plus the largest
	// verifier leeway) invalidates no live token any more.
	recent := s.n.now().Add(-MaxAccessTokenTTL - 10*time.Minute).UnixNano()
	for _, u := range s.n.raft.State().Users(tenant) {
		if u.Disabled || u.Locked {
			resp.LockedSubjects = append(resp.LockedSubjects, u.Id)
		}
		if u.LockedUnixNano > recent {
			resp.SubjectCutoffs = append(resp.SubjectCutoffs, &eventsv1.SubjectCutoff{
				Subject: u.Id, TokensIssuedUntilUnix: u.LockedUnixNano / int64(time.Second)})
		}
	}
	addDeletionCutoffs(resp, s.n.raft.State(), tenant) // admin_delete.go
	return connect.NewResponse(resp), nil
}
