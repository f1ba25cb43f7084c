package replication

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyauth/tally/revocation"
	"github.com/tallyauth/tally/revocation/eventwire"
)

// fakeClients is a ResourceServerAuth over an in-memory client table.
type fakeClients struct {
	mu      sync.Mutex
	clients map[string]*fakeClient
}

type fakeClient struct {
	tenant, secret string
	disabled       atomic.Bool
}

func (f *fakeClients) add(id, tenant, secret string) *fakeClient {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.clients == nil {
		f.clients = map[string]*fakeClient{}
	}
	c := &fakeClient{tenant: tenant, secret: secret}
	f.clients[id] = c
	return c
}

func (f *fakeClients) AuthenticateResourceServer(id, secret string) (string, func() bool, bool) {
	f.mu.Lock()
	c := f.clients[id]
	f.mu.Unlock()
	ok := func() bool { return c != nil && c.secret == secret && !c.disabled.Load() }
	if !ok() {
		return "", nil, false
	}
	return c.tenant, ok, true
}

const testNodePass = "node-password-for-tests"

func startAuthNATS(t *testing.T, rs ResourceServerAuth) *Embedded {
	t.Helper()
	cfg := DefaultEmbeddedConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StoreDir = t.TempDir()
	cfg.NodePassword = testNodePass
	cfg.ResourceServers = rs
	cfg.RevalidateInterval = 50 * time.Millisecond
	e, err := StartEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

func connectNode(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserInfo(NodeUser, testNodePass), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// permErrors collects the asynchronous errors of a connection.
type permErrors struct {
	mu   sync.Mutex
	errs []string
}

func (p *permErrors) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	p.mu.Lock()
	p.errs = append(p.errs, err.Error())
	p.mu.Unlock()
}

func (p *permErrors) waitFor(t *testing.T, substr string) {
	t.Helper()
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.errs {
			if strings.Contains(e, substr) {
				return nil
			}
		}
		return fmt.Errorf("no error containing %q among %q", substr, p.errs)
	})
}

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), "TALLY_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestEmbeddedRefusesAnonymous(t *testing.T) {
	e := startAuthNATS(t, &fakeClients{})
	// The server says so in its INFO.
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.ClientURL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		AuthRequired bool `json:"auth_required"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(line), "INFO ")), &info); err != nil || !info.AuthRequired {
		t.Fatalf("INFO %q: auth_required false (%v)", line, err)
	}
	for name, opts := range map[string][]nats.Option{
		"anonymous":      nil,
		"node, wrong":    {nats.UserInfo(NodeUser, "guess")},
		"route user":     {nats.UserInfo(RouteUser, testNodePass)},
		"unknown client": {nats.UserInfo("nobody", "x")},
		"token":          {nats.Token(testNodePass)},
		"no password":    {nats.UserInfo("c1", "")},
	} {
		if nc, err := nats.Connect(e.ClientURL(), opts...); err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: %v, want an authorization violation", name, err)
		}
	}
}

func TestEmbeddedPermissions(t *testing.T) {
	rs := &fakeClients{}
	acme := rs.add("c1", "acme", "s1")
	rs.add("c2", "other", "s2")
	e := startAuthNATS(t, rs)

	// The node creates the stream and publishes both tenants' events.
	node := connectNode(t, e.ClientURL())
	njs, _ := jetstream.New(node)
	pc := DefaultPublisherConfig()
	if _, err := njs.CreateOrUpdateStream(t.Context(), pc.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{"tally.acme.revocation.token", "tally.other.revocation.token"} {
		if _, err := njs.Publish(t.Context(), subj, []byte(subj)); err != nil {
			t.Fatal(err)
		}
	}

	// Nobody deletes or purges the stream, not even a node.
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	if err := njs.DeleteStream(short(), "TALLY_EVENTS"); err == nil {
		t.Fatal("node deleted the stream")
	}
	s, _ := njs.Stream(t.Context(), "TALLY_EVENTS")
	if err := s.Purge(short()); err == nil {
		t.Fatal("node purged the stream")
	}
	if err := s.DeleteMsg(short(), 1); err == nil {
		t.Fatal("node deleted a message")
	}
	if n := streamMsgs(t, njs); n != 2 {
		t.Fatalf("stream holds %d messages, want 2", n)
	}

	// A resource server reads its tenant's events with an ordered
	// consumer, as the SDK's watcher does.
	var perr permErrors
	rsc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: e.ClientURL(), Tenant: "acme", ClientID: "c1", ClientSecret: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer rsc.Close()
	rsc.SetErrorHandler(perr.handler)
	rjs, _ := jetstream.New(rsc)
	if n := streamMsgs(t, rjs); n != 2 {
		t.Fatalf("resource server sees %d messages in the stream info, want 2", n)
	}
	cons, err := rjs.OrderedConsumer(t.Context(), "TALLY_EVENTS", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{revocation.TenantSubjects("acme")},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: 1,
	})
	if err != nil {
		t.Fatalf("ordered consumer: %v", err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	if m.Subject() != "tally.acme.revocation.token" {
		t.Fatalf("resource server of acme got %q", m.Subject())
	}
	// A live core subscription on its own subjects works too.
	if _, err := rsc.SubscribeSync("tally.acme.>"); err != nil {
		t.Fatal(err)
	}

	// Another tenant's events: refused, with any filter but its own.
	for _, filters := range [][]string{{"tally.other.>"}, {"tally.>"}, {"tally.acme.>", "tally.other.>"}, nil} {
		c, err := rjs.OrderedConsumer(short(), "TALLY_EVENTS", jetstream.OrderedConsumerConfig{FilterSubjects: filters})
		if err != nil {
			continue // refused (the request times out: no permission)
		}
		if m, err := c.Next(jetstream.FetchMaxWait(time.Second)); err == nil {
			t.Errorf("filters %q: resource server of acme read %q", filters, m.Subject())
		}
	}
	// Core subscriptions beyond its tenant and inbox: refused.
	for _, subj := range []string{"tally.other.>", "tally.>", "_INBOX.>", ">", "$JS.API.>"} {
		rsc.SubscribeSync(subj)
		perr.waitFor(t, fmt.Sprintf("Subscription to %q", subj))
	}

	// A forged event: refused, and the stream does not take it.
	forged := nats.NewMsg("tally.acme.revocation.token")
	forged.Header.Set(eventwire.HeaderCluster, "tally")
	forged.Header.Set(eventwire.HeaderRaftIndex, "18446744073709551000")
	forged.Data = []byte("forged")
	if err := rsc.PublishMsg(forged); err != nil {
		t.Fatal(err)
	}
	perr.waitFor(t, `Publish to "tally.acme.revocation.token"`)
	if _, err := rjs.PublishMsg(short(), forged); err == nil {
		t.Fatal("resource server's forged event was acknowledged")
	}
	// Nor may it change the stream.
	if err := rjs.DeleteStream(short(), "TALLY_EVENTS"); err == nil {
		t.Fatal("resource server deleted the stream")
	}
	perr.waitFor(t, `Publish to "$JS.API.STREAM.DELETE.TALLY_EVENTS"`)
	if _, err := rjs.UpdateStream(short(), pc.StreamConfig()); err == nil {
		t.Fatal("resource server updated the stream")
	}
	if n := streamMsgs(t, njs); n != 2 {
		t.Fatalf("stream holds %d messages, want 2", n)
	}

	// Disabling the client closes its connection at once and keeps it out.
	acme.disabled.Store(true)
	e.Revalidate()
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if rsc.IsConnected() {
			return errors.New("disabled client still connected")
		}
		return nil
	})
	if nc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: e.ClientURL(), Tenant: "acme", ClientID: "c1", ClientSecret: "s1"}); err == nil {
		nc.Close()
		t.Fatal("disabled client connected")
	}
}
