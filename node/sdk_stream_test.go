package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1/eventsv1connect"
)

func revokedBy(jti string, ps ...*sdkPair) func() error {
	return func() error {
		for _, p := range ps {
			if !p.w.Set().Revoked(jti) {
				return fmt.Errorf("%s: %s not revoked yet (position %d, resyncs %d)", p.name, jti, p.w.Position(), p.w.Resyncs())
			}
		}
		return nil
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestSDKResyncsWhenStreamRecreated (issue 9): the node's JetStream store
// is wiped and the node restarted, so the event stream is created again
// from empty (its sequences restart). Watchers following it over NATS and
// Connect notice and resync, and a watcher that was offline meanwhile is
// not blinded by its position file: a revocation made after the
// recreation reaches all of them.
func TestSDKResyncsWhenStreamRecreated(t *testing.T) {
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) { c.Listen, c.NATSListen = httpAddr, natsAddr }))
	f := newRSFixture(t, n)
	ctx := context.Background()
	dir := t.TempDir()
	nc := f.connectNATS(t)
	vc := f.verifierConfig
	wcOf := func(name string) revocation.WatcherConfig {
		wc := f.watcherConfig
		wc.PositionFile = filepath.Join(dir, name+".json")
		wc.StreamCheckInterval = 100 * time.Millisecond
		if name == "nats" {
			wc.NATS = nc
		}
		return wc
	}
	live := []*sdkPair{startSDK(t, "nats", wcOf("nats"), vc), startSDK(t, "connect", wcOf("connect"), vc)}
	offline := startSDK(t, "offline", wcOf("offline"), vc)
	for i := range 5 {
		jti := fmt.Sprintf("before-%d", i)
		if err := f.revokeJTI(ctx, jti); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, 5*time.Millisecond, revokedBy(jti, append(live, offline)...))
	}
	offline.w.Stop()
	base := map[string]int64{}
	for _, p := range live {
		base[p.name] = p.w.Resyncs()
	}

	// A plain restart keeps the stream (and its identity): no resync.
	n = n.Restart(t)
	f.n = n
	if err := f.revokeJTI(ctx, "after-restart"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 10*time.Millisecond, revokedBy("after-restart", live...))
	for _, p := range live {
		if p.w.Resyncs() != base[p.name] {
			t.Fatalf("%s: resynced after a plain node restart", p.name)
		}
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(n.DataDir, "nats")); err != nil {
		t.Fatal(err)
	}
	n = n.Restart(t)
	f.n = n
	if err := f.revokeJTI(ctx, "after"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		for _, p := range live {
			if p.w.Resyncs() <= base[p.name] {
				return fmt.Errorf("%s: no resync after the stream was recreated", p.name)
			}
		}
		return revokedBy("after", live...)()
	})
	restarted := startSDK(t, "offline-restarted", wcOf("offline"), vc)
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if restarted.w.Resyncs() < 1 {
			return errors.New("restarted from a position of the old stream without resyncing")
		}
		return revokedBy("after", restarted)()
	})
	// And they follow the new stream, with the old revocations kept.
	if err := f.revokeJTI(ctx, "after-2"); err != nil {
		t.Fatal(err)
	}
	all := append(live, restarted)
	checkFor(t, 10*time.Second, 5*time.Millisecond, revokedBy("after-2", all...))
	checkFor(t, time.Second, 5*time.Millisecond, revokedBy("before-0", all...))
}

// lagJWKS serves a saved (old) JWKS while lagging is set, like a JWKS
// endpoint behind a cache or a replica that has not applied a rotation.
type lagJWKS struct {
	mu      sync.Mutex
	lagging bool
	old     []byte
	served  int
}

func (l *lagJWKS) RoundTrip(r *http.Request) (*http.Response, error) {
	l.mu.Lock()
	lag := l.lagging && strings.HasSuffix(r.URL.Path, "/jwks.json")
	if lag {
		l.served++
	}
	old := l.old
	l.mu.Unlock()
	if !lag {
		return http.DefaultTransport.RoundTrip(r)
	}
	return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Request: r, Body: io.NopCloser(bytes.NewReader(old)),
		Header: http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"max-age=300"}}}, nil
}

func (l *lagJWKS) set(lagging bool) {
	l.mu.Lock()
	l.lagging = lagging
	l.mu.Unlock()
}

// TestSDKRetriesUnknownKid (issue 9): keys rotated with no publish delay
// sign the next events with a kid the watcher's JWKS does not list yet;
// while the JWKS it fetches still lacks the key, the events are retried,
// not dropped, and applied once the key is there.
func TestSDKRetriesUnknownKid(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	ctx := context.Background()
	resp, err := http.Get(f.issuer + "/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	old, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	lag := &lagJWKS{old: old}
	for _, transport := range []string{"nats", "connect"} {
		t.Run(transport, func(t *testing.T) {
			wc := f.watcherConfig
			wc.HTTPClient = &http.Client{Transport: lag}
			wc.JWKSRefetchInterval = time.Hour // an unknown kid gets one refetch, then the limit
			if transport == "nats" {
				wc.NATS = f.connectNATS(t)
			}
			sdk := startSDK(t, transport, wc, f.verifierConfig)
			jti := "kid-" + transport
			if err := f.revokeJTI(ctx, jti+"-warm"); err != nil { // the watcher holds a fresh JWKS
				t.Fatal(err)
			}
			checkFor(t, 10*time.Second, 5*time.Millisecond, revokedBy(jti+"-warm", sdk))

			lag.set(true)
			zero := int64(0)
			if _, err := n.Admin.RotateKeys(ctx, connect.NewRequest(&adminv1.RotateKeysRequest{Tenant: "default", PublishDelaySeconds: &zero})); err != nil {
				t.Fatal(err)
			}
			if err := f.revokeJTI(ctx, jti); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
				if sdk.w.Retried() < 2 {
					return fmt.Errorf("retries %d", sdk.w.Retried())
				}
				return nil
			})
			lag.set(false)
			checkFor(t, 20*time.Second, 10*time.Millisecond, revokedBy(jti, sdk))

			// Once more with the real JWKS and the refetch limit spent.
			if _, err := n.Admin.RotateKeys(ctx, connect.NewRequest(&adminv1.RotateKeysRequest{Tenant: "default", PublishDelaySeconds: &zero})); err != nil {
				t.Fatal(err)
			}
			if err := f.revokeJTI(ctx, jti+"-2"); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 20*time.Second, 10*time.Millisecond, revokedBy(jti+"-2", sdk))
			if r := sdk.w.Rejected(); r != 0 {
				t.Fatalf("%d events dropped", r)
			}
		})
	}
}

// TestSDKIgnoresReplayedStateChange (issue 9): an old, validly signed
// client-enabled SET published again later does not re-enable a client
// disabled since.
func TestSDKIgnoresReplayedStateChange(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	ctx := context.Background()
	nc := f.connectNATS(t)
	wc := f.watcherConfig
	wc.NATS = nc
	sdk := startSDK(t, "nats", wc, f.verifierConfig)
	other, _ := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "victim"})
	disable := func(on bool) {
		t.Helper()
		var err error
		if on {
			_, err = n.Admin.DisableClient(ctx, connect.NewRequest(&adminv1.DisableClientRequest{Tenant: "default", ClientId: other}))
		} else {
			_, err = n.Admin.EnableClient(ctx, connect.NewRequest(&adminv1.EnableClientRequest{Tenant: "default", ClientId: other}))
		}
		if err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if sdk.w.Set().ClientDisabled(other) != on {
				return fmt.Errorf("client disabled = %v, want %v", !on, on)
			}
			return nil
		})
	}
	disable(true)
	disable(false)
	// Reading a message by subject and republishing it takes a node's
	// credential: a resource server may do neither.
	nodeConn, err := nats.Connect(n.NATSURL(), n.NATSOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer nodeConn.Close()
	js, err := jetstream.New(nodeConn)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "TALLY_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	enabled, err := st.GetLastMsgForSubject(ctx, revocation.Subject("default", revocation.EventClientEnabled))
	if err != nil {
		t.Fatal(err)
	}
	disable(true)
	// Replay the old enable event: a new message, a new stream sequence.
	replay := nats.NewMsg(enabled.Subject)
	replay.Data = enabled.Data
	if _, err := js.PublishMsg(ctx, replay); err != nil {
		// A NATS server that lets resource servers only read refuses the
		// replay outright; the set must be unchanged all the same.
		t.Logf("replay refused by NATS: %v", err)
	}
	if err := f.revokeJTI(ctx, "marker"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, revokedBy("marker", sdk))
	if !sdk.w.Set().ClientDisabled(other) {
		t.Fatal("a replayed client-enabled event re-enabled the client")
	}
}

// TestWatchRevocationsGapBeyondHead (issue 9): a position beyond the
// stream's head belongs to a stream that was reset or recreated; the
// first StreamState says so (gap) and names the stream's identity, as
// GetRevocationSet does, with the disabled users.
func TestWatchRevocationsGapBeyondHead(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	ctx := context.Background()
	if err := f.revokeJTI(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	cl := eventsv1connect.NewEventsServiceClient(http.DefaultClient, n.BaseURL())
	auth := "Bearer " + n.AdminToken
	var set *eventsv1.GetRevocationSetResponse
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		req := connect.NewRequest(&eventsv1.GetRevocationSetRequest{Tenant: "default"})
		req.Header().Set("Authorization", auth)
		resp, err := cl.GetRevocationSet(ctx, req)
		if err != nil {
			return err
		}
		if set = resp.Msg; set.StreamSequence == 0 {
			return errors.New("revocation not in the stream yet")
		}
		return nil
	})
	if set.StreamCreatedUnixNano == 0 {
		t.Fatal("GetRevocationSet names no stream identity")
	}
	// The head may have moved since GetRevocationSet (events of the
	// fixture published after the revocation's): each watch's first state
	// names the head it was judged against, so the expected gap is
	// computed from that head (a position beyond head+1 is a gap).
	for _, from := range []uint64{0, 1, set.StreamSequence + 1, set.StreamSequence + 2, set.StreamSequence + 1000} {
		tc := struct {
			from uint64
			gap  bool
		}{from: from}
		wctx, cancel := context.WithTimeout(ctx, nodetest.Timeout)
		req := connect.NewRequest(&eventsv1.WatchRevocationsRequest{Tenant: "default", FromSequence: tc.from})
		req.Header().Set("Authorization", auth)
		stream, err := cl.WatchRevocations(wctx, req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if !stream.Receive() {
			cancel()
			t.Fatalf("from %d: no first message: %v", tc.from, stream.Err())
		}
		st := stream.Msg().GetState()
		stream.Close()
		cancel()
		tc.gap = tc.from > st.GetLastSequence()+1
		if from == set.StreamSequence+1000 && !tc.gap {
			t.Fatalf("from %d: the head moved to %d", from, st.GetLastSequence())
		}
		if st == nil || st.Gap != tc.gap || st.StreamCreatedUnixNano != set.StreamCreatedUnixNano {
			t.Fatalf("from %d (head %d): state %v, want gap %v and the stream's identity", tc.from, st.GetLastSequence(), st, tc.gap)
		}
	}
}

// TestWatcherCredentialsAndFailover (issue 16): wrong events-API
// credentials stop the watcher with ErrUnauthorized instead of retrying
// forever; with several node URLs it fails over past one that is down.
func TestWatcherCredentialsAndFailover(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	ctx := context.Background()

	wc := f.watcherConfig
	wc.ClientSecret = "wrong"
	w, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := w.Run(wctx); !errors.Is(err, revocation.ErrUnauthorized) {
		t.Fatalf("Run with a wrong secret: %v, want ErrUnauthorized", err)
	}
	w.Start()
	if err := w.WaitSynced(wctx); !errors.Is(err, revocation.ErrUnauthorized) {
		t.Fatalf("WaitSynced with a wrong secret: %v, want ErrUnauthorized", err)
	}
	w.Stop()

	wc = f.watcherConfig
	wc.ServerURL = "http://127.0.0.1:1" // nothing listens there
	wc.ServerURLs = []string{n.BaseURL()}
	sdk := startSDK(t, "failover", wc, f.verifierConfig)
	if err := f.revokeJTI(ctx, "via-second-node"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, revokedBy("via-second-node", sdk))
}

// TestShutdownEndsEventStreams (issue 16): on shutdown a node ends its
// events streams at once with Unavailable ("reconnect to another node")
// instead of holding resource servers until the HTTP shutdown timeout.
func TestShutdownEndsEventStreams(t *testing.T) {
	n := nodetest.Start(t)
	cl := eventsv1connect.NewEventsServiceClient(http.DefaultClient, n.URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := connect.NewRequest(&eventsv1.WatchRevocationsRequest{Tenant: "default"})
	req.Header().Set("Authorization", "Bearer "+n.AdminToken)
	stream, err := cl.WatchRevocations(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatalf("no first message: %v", stream.Err())
	}
	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	for stream.Receive() {
	}
	if code := connect.CodeOf(stream.Err()); code != connect.CodeUnavailable || !strings.Contains(stream.Err().Error(), "shutting down") {
		t.Fatalf("stream ended with %v (%v), want unavailable: node shutting down", stream.Err(), code)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}
