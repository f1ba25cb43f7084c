package replication

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	hraft "github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/revocation"
	"github.com/tallyauth/tally/revocation/eventwire"
)

// checkFor polls fn every `every` until it returns nil or timeout passes,
// but never gives up before 20 s: a budget bounds a hung test, it is no
// speed target (a loaded machine may take many times longer).
func checkFor(t testing.TB, timeout, every time.Duration, fn func() error) {
	t.Helper()
	timeout = max(timeout, 20*time.Second)
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(every)
	}
}

// testSigner signs SETs with one ES256 key.
type testSigner struct {
	key   *ecdsa.PrivateKey
	fails atomic.Bool
}

func newTestSigner(t *testing.T) *testSigner {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &testSigner{key: k}
}

func (s *testSigner) SignSET(_ context.Context, _ string, claims map[string]any) (string, error) {
	if s.fails.Load() {
		return "", errors.New("signer down")
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims(claims))
	tok.Header["typ"] = revocation.SETType
	tok.Header["kid"] = "k1"
	return tok.SignedString(s.key)
}

// testFSM is a real FSM fed log entries directly.
type testFSM struct {
	*raft.FSM
	t     *testing.T
	index uint64
	now   int64
}

func newTestFSM(t *testing.T) *testFSM {
	f, err := raft.OpenFSM(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	tf := &testFSM{FSM: f, t: t, now: time.Now().UnixNano()}
	tf.apply(&raftpb.Command{Op: &raftpb.Command_CreateTenant{CreateTenant: &raftpb.CreateTenant{
		Tenant: &raftpb.Tenant{Id: "acme", SigningAlg: "ES256"},
	}}})
	return tf
}

func (f *testFSM) apply(cmd *raftpb.Command) {
	f.t.Helper()
	f.index++
	f.now += int64(time.Millisecond)
	cmd.Version = raft.CommandVersion
	cmd.TimeUnixNano = f.now
	data, err := proto.Marshal(cmd)
	if err != nil {
		f.t.Fatal(err)
	}
	res := f.Apply(&hraft.Log{Index: f.index, Term: 1, Type: hraft.LogCommand, Data: data}).(raft.Result)
	if res.Err != nil {
		f.t.Fatal(res.Err)
	}
}

func (f *testFSM) revoke(jti string) {
	f.apply(&raftpb.Command{Op: &raftpb.Command_RevokeToken{RevokeToken: &raftpb.RevokeToken{Revocation: &raftpb.Revocation{
		Tenant: "acme", Jti: jti, ClientId: "c1", ExpiresUnixNano: f.now + int64(time.Hour),
	}}}})
}

func startNATS(t *testing.T, dir, listen string) *Embedded {
	t.Helper()
	cfg := DefaultEmbeddedConfig()
	cfg.Listen = listen
	cfg.StoreDir = dir
	cfg.AllowAnonymous = true // an unauthenticated, external server
	// A restart binds the port the previous server just released, which
	// another process may hold for a moment: try again until it binds.
	var e *Embedded
	checkFor(t, time.Minute, 50*time.Millisecond, func() error {
		var err error
		e, err = StartEmbedded(cfg)
		return err
	})
	return e
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newTestPublisher(t *testing.T, nc *nats.Conn, src EventSource, signer SETSigner, posFile string) *Publisher {
	t.Helper()
	cfg := DefaultPublisherConfig()
	cfg.PositionFile = posFile
	cfg.Issuer = func(tenant string) string { return "https://issuer.test/t/" + tenant }
	cfg.PollInterval = 20 * time.Millisecond
	cfg.Batch = 16
	cfg.AckTimeout = 300 * time.Millisecond
	p, err := NewPublisher(cfg, nc, src, signer)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(p.Stop)
	return p
}

// streamIndexes reads every message of the stream and returns the Raft
// indexes in stream order.
func streamIndexes(t *testing.T, nc *nats.Conn) ([]uint64, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "TALLY_EVENTS")
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			return nil, err
		}
		idx, err := strconv.ParseUint(m.Header.Get(eventwire.HeaderRaftIndex), 10, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, idx)
	}
	return out, nil
}

// wantExactly checks that the stream holds exactly the given indexes, in
// order, each once.
func wantExactly(t *testing.T, nc *nats.Conn, want []uint64) func() error {
	return func() error {
		got, err := streamIndexes(t, nc)
		if err != nil {
			return err
		}
		if len(got) != len(want) {
			return fmt.Errorf("stream has %d events, want %d", len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				return fmt.Errorf("stream event %d has index %d, want %d (stream %v)", i, got[i], want[i], got)
			}
		}
		return nil
	}
}

func TestPublisherExactlyOnceAcrossNATSRestart(t *testing.T) {
	natsDir := t.TempDir()
	e := startNATS(t, natsDir, "127.0.0.1:0")
	url := e.ClientURL()
	nc := connect(t, url)
	f := newTestFSM(t)
	signer := newTestSigner(t)
	posFile := filepath.Join(t.TempDir(), "pos")
	p := newTestPublisher(t, nc, f, signer, posFile)

	var want []uint64
	for i := range 40 {
		f.revoke(fmt.Sprintf("a%d", i))
		want = append(want, f.index)
		if i%7 == 0 {
			p.Notify()
		}
	}
	p.Notify()
	checkFor(t, 10*time.Second, 20*time.Millisecond, wantExactly(t, nc, want))

	// NATS goes down while revocations keep being applied.
	e.Shutdown()
	for i := range 40 {
		f.revoke(fmt.Sprintf("b%d", i))
		want = append(want, f.index)
		p.Notify()
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if p.LastError() == "" {
			return errors.New("no publishing error while NATS is down")
		}
		return nil
	})
	host := url[len("nats://"):]
	e = startNATS(t, natsDir, host)
	defer e.Shutdown()
	// The position moves a moment after the stream has the event.
	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if p.Position() != f.index {
			return fmt.Errorf("position %d, want %d", p.Position(), f.index)
		}
		return wantExactly(t, nc, want)()
	})

	// A second node's publisher, starting from nothing, publishes the same
	// events: the stream skips them (start-up check and message ids).
	other := newTestPublisher(t, nc, f, signer, filepath.Join(t.TempDir(), "pos2"))
	f.revoke("c0")
	want = append(want, f.index)
	p.Notify()
	other.Notify()
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if other.Position() != f.index {
			return fmt.Errorf("second publisher at %d", other.Position())
		}
		return wantExactly(t, nc, want)()
	})

	// The position survives a restart of the publisher.
	p.Stop()
	if got, err := readPosition(posFile); err != nil || got != f.index {
		t.Fatalf("position file: %d %v", got, err)
	}
}

func TestPublisherSETPayload(t *testing.T) {
	e := startNATS(t, t.TempDir(), "127.0.0.1:0")
	defer e.Shutdown()
	nc := connect(t, e.ClientURL())
	f := newTestFSM(t)
	signer := newTestSigner(t)
	newTestPublisher(t, nc, f, signer, filepath.Join(t.TempDir(), "pos"))
	f.revoke("tok-1")

	js, _ := jetstream.New(nc)
	var m *jetstream.RawStreamMsg
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		s, err := js.Stream(context.Background(), "TALLY_EVENTS")
		if err != nil {
			return err
		}
		m, err = s.GetMsg(context.Background(), 1)
		return err
	})
	if m.Subject != "tally.acme.revocation.token" {
		t.Fatalf("subject %q", m.Subject)
	}
	var c revocation.SETClaims
	tok, err := jwt.ParseWithClaims(string(m.Data), &setClaims{SETClaims: &c}, func(*jwt.Token) (any, error) { return &signer.key.PublicKey, nil },
		jwt.WithValidMethods([]string{"ES256"}))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Header["typ"] != revocation.SETType {
		t.Fatalf("typ %v", tok.Header["typ"])
	}
	typ, d, err := c.Event()
	if err != nil || typ != revocation.EventTokenRevoked || d.JTI != "tok-1" || d.ClientID != "c1" || d.RaftIndex != f.index || d.ExpiresAt == 0 {
		t.Fatalf("event %s %+v %v", typ, d, err)
	}
	if c.Issuer != "https://issuer.test/t/acme" || len(c.Audience) != 1 || c.Audience[0] != c.Issuer || c.ID != fmt.Sprintf("tally-%d-0", f.index) {
		t.Fatalf("claims %+v", c)
	}
}

// setClaims adapts revocation.SETClaims to jwt.Claims for the test.
type setClaims struct {
	*revocation.SETClaims
	jwt.RegisteredClaims
}

func (c *setClaims) UnmarshalJSON(b []byte) error { return jsonUnmarshal(b, c.SETClaims) }

func TestPublisherConfigValidate(t *testing.T) {
	base := DefaultPublisherConfig()
	base.PositionFile = "x"
	base.Issuer = func(string) string { return "" }
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*PublisherConfig){
		"cluster with dot":   func(c *PublisherConfig) { c.ClusterID = "a.b" },
		"short retention":    func(c *PublisherConfig) { c.Retention = time.Second },
		"dup over retention": func(c *PublisherConfig) { c.Duplicates = 3 * time.Hour },
		"no position":        func(c *PublisherConfig) { c.PositionFile = "" },
		"no issuer":          func(c *PublisherConfig) { c.Issuer = nil },
	} {
		c := base
		mut(&c)
		if c.Validate() == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// TestPublisherIgnoresForgedPosition is the regression test of a forged
// message whose Tally-Raft-Index header once stopped publishing for good:
// whoever can publish on the stream's subjects (here an anonymous client
// of an unauthenticated external server, or a holder of the node
// credential of the embedded one) cannot move a publisher's position.
func TestPublisherIgnoresForgedPosition(t *testing.T) {
	for _, tc := range []struct {
		name   string
		server func(t *testing.T) (*Embedded, func(t *testing.T) *nats.Conn)
	}{
		{"anonymous on an external server", func(t *testing.T) (*Embedded, func(t *testing.T) *nats.Conn) {
			e := startNATS(t, t.TempDir(), "127.0.0.1:0")
			t.Cleanup(e.Shutdown)
			return e, func(t *testing.T) *nats.Conn { return connect(t, e.ClientURL()) }
		}},
		{"node credential on the embedded server", func(t *testing.T) (*Embedded, func(t *testing.T) *nats.Conn) {
			e := startAuthNATS(t, nil)
			return e, func(t *testing.T) *nats.Conn { return connectNode(t, e.ClientURL()) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, conn := tc.server(t)
			nc := conn(t)
			f := newTestFSM(t)
			signer := newTestSigner(t)
			posFile := filepath.Join(t.TempDir(), "pos")
			p := newTestPublisher(t, nc, f, signer, posFile)
			f.revoke("a")
			want := []uint64{f.index}
			p.Notify()
			checkFor(t, 10*time.Second, 20*time.Millisecond, wantExactly(t, nc, want))

			forger := conn(t)
			forged := nats.NewMsg("tally.acme.revocation.token")
			forged.Header.Set(eventwire.HeaderCluster, "tally")
			forged.Header.Set(eventwire.HeaderRaftIndex, "18446744073709551000")
			forged.Data = []byte("forged")
			js, _ := jetstream.New(forger)
			if _, err := js.PublishMsg(t.Context(), forged); err != nil {
				t.Fatal(err)
			}
			want = append(want, 18446744073709551000)

			// The node restarts: a new publisher on the same position file.
			p.Stop()
			p = newTestPublisher(t, nc, f, signer, posFile)
			f.revoke("b")
			want = append(want, f.index)
			p.Notify()
			checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
				if p.Position() != f.index {
					return fmt.Errorf("position %d, want %d", p.Position(), f.index)
				}
				return wantExactly(t, nc, want)()
			})
			if got, err := readPosition(posFile); err != nil || got != f.index {
				t.Fatalf("position file: %d %v, want %d", got, err, f.index)
			}
		})
	}
}

// TestFreshPublisherStartsAfterTheSweptOutbox: a node that never published
// (no position file) starts after what the outbox swept, quietly: those
// events are older than the retention and were published by others.
func TestFreshPublisherStartsAfterTheSweptOutbox(t *testing.T) {
	e := startNATS(t, t.TempDir(), "127.0.0.1:0")
	defer e.Shutdown()
	nc := connect(t, e.ClientURL())
	f := newTestFSM(t)
	for i := range 5 {
		f.revoke(fmt.Sprintf("old%d", i))
	}
	f.apply(&raftpb.Command{Op: &raftpb.Command_Sweep{Sweep: &raftpb.Sweep{EventsBeforeUnixNano: f.now + 1}}})
	if f.EventsSweptThrough() == 0 {
		t.Fatal("nothing swept")
	}
	f.revoke("new")
	p := newTestPublisher(t, nc, f, newTestSigner(t), filepath.Join(t.TempDir(), "pos"))
	p.Notify()
	// The event is in the stream a moment before the publisher records
	// its position (after the stream's acknowledgement): wait for both.
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if p.Position() != f.index {
			return fmt.Errorf("position %d, want %d", p.Position(), f.index)
		}
		return wantExactly(t, nc, []uint64{f.index})()
	})
	if p.LastError() != "" {
		t.Fatalf("last error %q", p.LastError())
	}
}

// countingSigner counts the SETs it signs.
type countingSigner struct {
	*testSigner
	n atomic.Int64
}

func (s *countingSigner) SignSET(ctx context.Context, tenant string, claims map[string]any) (string, error) {
	s.n.Add(1)
	return s.testSigner.SignSET(ctx, tenant, claims)
}

// TestPublisherSignsEachEventOnce: the live path and the stream path send
// the same SET of an event, signed once between them (an ECDSA signature
// is randomised, so two signings would differ).
func TestPublisherSignsEachEventOnce(t *testing.T) {
	e := startNATS(t, t.TempDir(), "127.0.0.1:0")
	defer e.Shutdown()
	nc := connect(t, e.ClientURL())
	live := map[string][]byte{} // Nats-Raft-Index → SET
	var mu sync.Mutex
	sub, err := nc.Subscribe(eventwire.LiveSubjects("acme"), func(m *nats.Msg) {
		mu.Lock()
		live[m.Header.Get(eventwire.HeaderRaftIndex)] = m.Data
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	f := newTestFSM(t)
	signer := &countingSigner{testSigner: newTestSigner(t)}
	newTestPublisher(t, nc, f, signer, filepath.Join(t.TempDir(), "pos"))
	const n = 40
	var want []uint64
	for i := range n {
		f.revoke(fmt.Sprintf("tok-%d", i))
		want = append(want, f.index)
	}
	checkFor(t, 30*time.Second, 20*time.Millisecond, wantExactly(t, nc, want))
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(live) != n {
			return fmt.Errorf("%d live events, want %d", len(live), n)
		}
		return nil
	})
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), "TALLY_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= n; seq++ {
		m, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		l := live[m.Header.Get(eventwire.HeaderRaftIndex)]
		mu.Unlock()
		if !bytes.Equal(l, m.Data) {
			t.Fatalf("event %s: the live SET differs from the stream's", m.Header.Get(eventwire.HeaderRaftIndex))
		}
	}
	if got := signer.n.Load(); got != n {
		t.Fatalf("%d signatures for %d events", got, n)
	}
}
