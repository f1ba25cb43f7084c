package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/oauth2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/replication"
	"github.com/tallyauth/tally/revocation"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1"
	"github.com/tallyauth/tally/revocation/eventwire/eventsv1/eventsv1connect"
)

// checkFor polls fn until it returns nil (see nodetest.CheckFor).
var checkFor = nodetest.CheckFor

const ordersAPI = "https://orders.example"

type rsFixture struct {
	n              *nodetest.Node
	issuer         string
	clientID, sec  string
	rsID, rsSecret string // the resource server's client
	watcherConfig  revocation.WatcherConfig
	verifierConfig revocation.Config
}

func newRSFixture(t *testing.T, n *nodetest.Node) *rsFixture {
	t.Helper()
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "orders-client", Scopes: []string{"read:orders"}, Audiences: []string{ordersAPI},
	})
	f := &rsFixture{n: n, issuer: n.Issuer("default"), clientID: id, sec: secret}
	// The resource server's own confidential client authenticates it to
	// the events API and NATS: disabling the client whose tokens it
	// verifies must not cut it off.
	f.rsID, f.rsSecret = n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "orders-api"})
	f.watcherConfig = revocation.WatcherConfig{
		Issuer: f.issuer, Tenant: "default", ServerURL: n.BaseURL(),
		ClientID: f.rsID, ClientSecret: f.rsSecret, MaxDisconnect: time.Minute,
	}
	f.verifierConfig = revocation.Config{Issuer: f.issuer, Audience: ordersAPI}
	return f
}

func (f *rsFixture) connectNATS(t *testing.T) *nats.Conn {
	t.Helper()
	// A resource server authenticates with its confidential client.
	rc := revocation.NATSConfig{URLs: f.n.NATSURL(), Tenant: "default", ClientID: f.rsID, ClientSecret: f.rsSecret}
	nc, err := nats.Connect(rc.URLs, append(rc.NATSOptions(), nats.ReconnectWait(20*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func (f *rsFixture) start(t *testing.T, wc revocation.WatcherConfig) (*revocation.Watcher, *revocation.Verifier) {
	t.Helper()
	w, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	vc := f.verifierConfig
	vc.Watcher = w
	v, err := revocation.NewVerifier(vc)
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	t.Cleanup(w.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil {
		t.Fatalf("watcher never synced: %v", err)
	}
	return w, v
}

func (f *rsFixture) revokeJTI(ctx context.Context, jti string) error {
	_, err := f.n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
		Tenant: "default", Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)), Reason: "test",
	}))
	return err
}

// TestRevocationReachesSDK: revoke through the admin API; an SDK following
// the stream (over NATS, and over the Connect stream) rejects the token.
func TestRevocationReachesSDK(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	for _, transport := range []string{"nats", "connect"} {
		t.Run(transport, func(t *testing.T) {
			wc := f.watcherConfig
			if transport == "nats" {
				wc.NATS = f.connectNATS(t)
			}
			w, v := f.start(t, wc)
			tok := token(t, f.issuer, f.clientID, f.sec, oauth2.AuthStyleInHeader, "read:orders").AccessToken
			c, err := v.Verify(context.Background(), tok)
			if err != nil {
				t.Fatalf("fresh token: %v", err)
			}
			if !c.HasScope("read:orders") || c.ClientID != f.clientID {
				t.Fatalf("claims %+v", c)
			}
			if _, err := n.Admin.RevokeToken(context.Background(), connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Token: tok})); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if _, err := v.Verify(context.Background(), tok); !errors.Is(err, revocation.ErrRevoked) {
					return fmt.Errorf("after revocation: %v", err)
				}
				return nil
			})
			// The live subject may reject the token before the stream
			// delivers the event (Applied counts stream events): wait for
			// the stream too rather than assume which comes first.
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if w.Stale() || w.Applied() == 0 {
					return fmt.Errorf("stale %v, applied %d", w.Stale(), w.Applied())
				}
				return nil
			})

			// Disabling the client rejects its other tokens too.
			tok2 := token(t, f.issuer, f.clientID, f.sec, oauth2.AuthStyleInHeader).AccessToken
			if _, err := v.Verify(context.Background(), tok2); err != nil {
				t.Fatal(err)
			}
			if _, err := n.Admin.DisableClient(context.Background(), connect.NewRequest(&adminv1.DisableClientRequest{Tenant: "default", ClientId: f.clientID})); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if _, err := v.Verify(context.Background(), tok2); !errors.Is(err, revocation.ErrRevoked) {
					return fmt.Errorf("after disabling the client: %v", err)
				}
				return nil
			})
			if _, err := n.Admin.EnableClient(context.Background(), connect.NewRequest(&adminv1.EnableClientRequest{Tenant: "default", ClientId: f.clientID})); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				_, err := v.Verify(context.Background(), tok2)
				return err
			})
		})
	}
}

// TestSDKReplaysAfterRestart: stop the SDK's watcher, revoke 1,000 tokens,
// start a new watcher on the same position file: all 1,000 applied, none
// twice.
func TestSDKReplaysAfterRestart(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	wc := f.watcherConfig
	wc.NATS = f.connectNATS(t)
	wc.PositionFile = filepath.Join(t.TempDir(), "position.json")

	var mu sync.Mutex
	seen := map[string]int{}
	count := func(w *revocation.Watcher) {
		w.OnEvent(func(typ string, d revocation.EventDetails) {
			if typ == revocation.EventTokenRevoked {
				mu.Lock()
				seen[d.JTI]++
				mu.Unlock()
			}
		})
	}
	w1, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	count(w1)
	w1.Start()
	// The budget bounds a hung test, not the speed of 1,000 writes: under
	// the race detector on a loaded 2-core machine they took over a minute.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := w1.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.revokeJTI(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !w1.Set().Revoked("before") {
			return errors.New("first revocation not seen")
		}
		return nil
	})
	w1.Stop()

	const total = 1000
	jobs := make(chan int)
	errc := make(chan error, total)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range jobs {
				errc <- f.revokeJTI(ctx, fmt.Sprintf("jti-%04d", i))
			}
		})
	}
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}

	w2, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	count(w2)
	w2.Start()
	defer w2.Stop()
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != total+1 {
			return fmt.Errorf("%d of %d revocations applied", len(seen), total+1)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for jti, k := range seen {
		if k != 1 {
			t.Errorf("%s applied %d times", jti, k)
		}
	}
	if w2.Resyncs() != 0 {
		t.Errorf("replay from the position file resynced %d times", w2.Resyncs())
	}
	for i := range total {
		if !w2.Set().Revoked(fmt.Sprintf("jti-%04d", i)) {
			t.Fatalf("jti-%04d missing from the set", i)
		}
	}
}

// TestSDKResyncsAfterGap: a position older than the stream's first
// sequence makes the watcher resync with GetRevocationSet, and report it.
func TestSDKResyncsAfterGap(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	ctx := context.Background()
	for _, transport := range []string{"nats", "connect"} {
		t.Run(transport, func(t *testing.T) {
			nc := f.connectNATS(t)
			wc := f.watcherConfig
			if transport == "nats" {
				wc.NATS = nc
			}
			wc.PositionFile = filepath.Join(t.TempDir(), "position.json")
			w, _ := f.start(t, wc)
			base := w.Resyncs()
			if err := f.revokeJTI(ctx, "gap-a-"+transport); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if !w.Set().Revoked("gap-a-" + transport) {
					return errors.New("not seen")
				}
				return nil
			})
			w.Stop()

			// Retention drops what the watcher has not read.
			if err := f.revokeJTI(ctx, "gap-b-"+transport); err != nil {
				t.Fatal(err)
			}
			// The stream denies purge: age the events out instead, with
			// the node's credential (a short max age, then the old one).
			nodeConn, err := nats.Connect(n.NATSURL(), n.NATSOptions()...)
			if err != nil {
				t.Fatal(err)
			}
			defer nodeConn.Close()
			js, err := jetstream.New(nodeConn)
			if err != nil {
				t.Fatal(err)
			}
			var orig jetstream.StreamConfig
			var last uint64
			checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				st, err := js.Stream(ctx, "TALLY_EVENTS")
				if err != nil {
					return err
				}
				info, err := st.Info(ctx)
				if err != nil {
					return err
				}
				if info.State.LastSeq <= w.Position() {
					return errors.New("second revocation not in the stream yet")
				}
				orig, last = info.Config, info.State.LastSeq
				short := info.Config
				short.MaxAge, short.Duplicates = time.Second, time.Second
				_, err = js.UpdateStream(ctx, short)
				return err
			})
			checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
				st, err := js.Stream(ctx, "TALLY_EVENTS")
				if err != nil {
					return err
				}
				if st.CachedInfo().State.FirstSeq <= last {
					return errors.New("events not aged out yet")
				}
				return nil
			})
			if _, err := js.UpdateStream(ctx, orig); err != nil {
				t.Fatal(err)
			}

			w2, err := revocation.NewWatcher(wc)
			if err != nil {
				t.Fatal(err)
			}
			w2.Start()
			defer w2.Stop()
			checkFor(t, 15*time.Second, 10*time.Millisecond, func() error {
				if w2.Resyncs() < 1 || !w2.Synced() {
					return fmt.Errorf("resyncs %d (before %d), synced %v", w2.Resyncs(), base, w2.Synced())
				}
				if !w2.Set().Revoked("gap-b-"+transport) || !w2.Set().Revoked("gap-a-"+transport) {
					return errors.New("resynced set misses a revocation")
				}
				return nil
			})
		})
	}
}

// TestEventStreamSurvivesNodeRestart: revocations acknowledged to the
// caller while the node (and its embedded NATS) restarts are all in the
// stream afterwards, each exactly once.
func TestEventStreamSurvivesNodeRestart(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	revoke := func(n *nodetest.Node, jti string) error {
		_, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
			Tenant: "default", Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		}))
		return err
	}
	var acked []string
	for i := range 50 {
		jti := fmt.Sprintf("r1-%d", i)
		if err := revoke(n, jti); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, jti)
	}
	// Stop right after the acknowledgements: the publisher may not have
	// published them all; the next start must.
	n = n.Restart(t)
	for i := range 50 {
		jti := fmt.Sprintf("r2-%d", i)
		if err := revoke(n, jti); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, jti)
	}
	nc, err := nats.Connect(n.NATSURL(), n.NATSOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		got, err := streamJTIs(ctx, js)
		if err != nil {
			return err
		}
		for _, j := range acked {
			if got[j] != 1 {
				return fmt.Errorf("%s is in the stream %d times", j, got[j])
			}
		}
		if len(got) != len(acked) {
			return fmt.Errorf("stream has %d revocations, want %d", len(got), len(acked))
		}
		return nil
	})
}

// streamJTIs counts the revoked jtis in the stream, reading each SET's
// claims without verifying (TestSETVerifiesWithJWKS verifies).
func streamJTIs(ctx context.Context, js jetstream.JetStream) (map[string]int, error) {
	st, err := js.Stream(ctx, "TALLY_EVENTS")
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			return nil, err
		}
		if !strings.HasSuffix(m.Subject, ".revocation.token") {
			continue
		}
		sig, err := jose.ParseSignedCompact(string(m.Data), signatureAlgs)
		if err != nil {
			return nil, err
		}
		var c revocation.SETClaims
		if err := jsonUnmarshal(sig.UnsafePayloadWithoutVerification(), &c); err != nil {
			return nil, err
		}
		_, d, err := c.Event()
		if err != nil {
			return nil, err
		}
		out[d.JTI]++
	}
	return out, nil
}

// TestSETVerifiesWithJWKS: the published SET verifies with go-jose against
// the tenant's JWKS and carries the RFC 8417 claims.
func TestSETVerifiesWithJWKS(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	ctx := context.Background()
	if err := f.revokeJTI(ctx, "set-1"); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(n.NATSURL(), n.NATSOptions()...) // reads messages by sequence: a node's access
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var raw []byte
	var subject string
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		st, err := js.Stream(ctx, "TALLY_EVENTS")
		if err != nil {
			return err
		}
		m, err := st.GetLastMsgForSubject(ctx, "tally.default.revocation.token")
		if err != nil {
			return err
		}
		raw, subject = m.Data, m.Subject
		return nil
	})
	if subject != "tally.default.revocation.token" {
		t.Fatalf("subject %q", subject)
	}
	sig, err := jose.ParseSignedCompact(string(raw), signatureAlgs)
	if err != nil {
		t.Fatal(err)
	}
	h := sig.Signatures[0].Header
	if h.ExtraHeaders["typ"] != "secevent+jwt" {
		t.Fatalf("typ %v", h.ExtraHeaders["typ"])
	}
	jwks := fetchJWKS(t, f.issuer)
	keys := jwks.Key(h.KeyID)
	if len(keys) != 1 {
		t.Fatalf("kid %q not in the JWKS", h.KeyID)
	}
	payload, err := sig.Verify(keys[0].Key)
	if err != nil {
		t.Fatalf("SET does not verify with the tenant JWKS: %v", err)
	}
	var c revocation.SETClaims
	if err := jsonUnmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	typ, d, err := c.Event()
	if err != nil || typ != revocation.EventTokenRevoked || d.JTI != "set-1" || d.SchemaVersion != 1 || d.Tenant != "default" {
		t.Fatalf("event %s %+v %v", typ, d, err)
	}
	if c.Issuer != f.issuer || c.IssuedAt == 0 || c.ID == "" || len(c.Audience) != 1 || c.Audience[0] != f.issuer {
		t.Fatalf("claims %+v", c)
	}
}

// TestEventsAPIAuth: the events API admits the admin and the tenant's
// clients, and nobody else.
func TestEventsAPIAuth(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	cl := eventsv1connect.NewEventsServiceClient(http.DefaultClient, n.BaseURL())
	call := func(authz, tenant string) error {
		req := connect.NewRequest(&eventsv1.GetRevocationSetRequest{Tenant: tenant})
		if authz != "" {
			req.Header().Set("Authorization", authz)
		}
		_, err := cl.GetRevocationSet(context.Background(), req)
		return err
	}
	basic := func(id, secret string) string {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(id, secret)
		return r.Header.Get("Authorization")
	}
	for _, tc := range []struct {
		name, authz, tenant string
		code                connect.Code
	}{
		{"admin", "Bearer " + n.AdminToken, "default", 0},
		{"client", basic(f.clientID, f.sec), "default", 0},
		{"no credentials", "", "default", connect.CodeUnauthenticated},
		{"wrong secret", basic(f.clientID, "nope"), "default", connect.CodeUnauthenticated},
		{"wrong admin token", "Bearer nope", "default", connect.CodeUnauthenticated},
		{"garbage basic", "Basic !!!", "default", connect.CodeUnauthenticated},
		{"client of another tenant", basic(f.clientID, f.sec), "nope", connect.CodeUnauthenticated},
		{"unknown tenant as admin", "Bearer " + n.AdminToken, "nope", connect.CodeNotFound},
		{"empty tenant", "Bearer " + n.AdminToken, "", connect.CodeInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := call(tc.authz, tc.tenant)
			if connect.CodeOf(err) != tc.code && !(tc.code == 0 && err == nil) {
				t.Fatalf("got %v, want code %v", err, tc.code)
			}
		})
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// TestExternalNATSRestart: with an external NATS server, revocations
// acknowledged while it is down reach the stream once it is back, each
// exactly once.
func TestExternalNATSRestart(t *testing.T) {
	natsDir := t.TempDir()
	start := func(listen string) *replication.Embedded {
		cfg := replication.DefaultEmbeddedConfig()
		cfg.Listen, cfg.StoreDir = listen, natsDir
		cfg.AllowAnonymous = true // an external NATS server without auth
		// The restart binds the port the first server just released,
		// which another process may hold for a moment: try until it binds.
		var e *replication.Embedded
		checkFor(t, time.Minute, 50*time.Millisecond, func() error {
			var err error
			e, err = replication.StartEmbedded(cfg)
			return err
		})
		return e
	}
	ext := start("127.0.0.1:0")
	url := ext.ClientURL()
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.NATSListen = ""
		c.Events.NATSURL = url
	}))
	f := newRSFixture(t, n)
	ctx := context.Background()
	var acked []string
	for i := range 20 {
		jti := fmt.Sprintf("up-%d", i)
		if err := f.revokeJTI(ctx, jti); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, jti)
	}
	ext.Shutdown()
	for i := range 20 {
		jti := fmt.Sprintf("down-%d", i)
		if err := f.revokeJTI(ctx, jti); err != nil {
			t.Fatalf("revocation while NATS is down: %v", err)
		}
		acked = append(acked, jti)
	}
	ext = start(strings.TrimPrefix(url, "nats://"))
	defer ext.Shutdown()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		got, err := streamJTIs(ctx, js)
		if err != nil {
			return err
		}
		for _, j := range acked {
			if got[j] != 1 {
				return fmt.Errorf("%s is in the stream %d times", j, got[j])
			}
		}
		if len(got) != len(acked) {
			return fmt.Errorf("stream has %d revocations, want %d", len(got), len(acked))
		}
		return nil
	})
}

// TestSDKResyncsAfterLongOutage: a watcher restarted from a position file
// older than MaxDisconnect resyncs before it trusts the saved set (events
// may have been lost where no gap shows).
func TestSDKResyncsAfterLongOutage(t *testing.T) {
	n := nodetest.Start(t)
	f := newRSFixture(t, n)
	wc := f.watcherConfig
	wc.NATS = f.connectNATS(t)
	wc.PositionFile = filepath.Join(t.TempDir(), "position.json")
	wc.MaxDisconnect = time.Minute
	w, _ := f.start(t, wc)
	w.Stop()

	// Restarted at once: replay, no resync.
	w2, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	if !w2.Synced() {
		t.Fatal("a fresh position file is not trusted")
	}
	w2.Start()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	if err := w2.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	w2.Stop()
	if w2.Resyncs() != 0 {
		t.Fatalf("quick restart resynced %d times", w2.Resyncs())
	}

	// Down for longer than MaxDisconnect: stale until it resyncs.
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(wc.PositionFile, old, old); err != nil {
		t.Fatal(err)
	}
	w3, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	if !w3.Stale() {
		t.Fatal("a watcher restarted from an old position file is not stale")
	}
	w3.Start()
	defer w3.Stop()
	if err := w3.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if w3.Resyncs() != 1 || w3.Stale() {
		t.Fatalf("resyncs %d, stale %v", w3.Resyncs(), w3.Stale())
	}
}
