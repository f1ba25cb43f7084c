package revocation

import (
	"context"
	"sync"

	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"
)

// followLive subscribes to the tenant's live subjects (NATSLiveSubjects)
// on the watcher's NATS connection and on every LiveNATS connection, for
// the whole of Run: not only while the stream is followed, so a stream
// without a leader, a consumer being recreated or a reconnect of the main
// connection leaves no window in which a live event is missed. (A core
// NATS message sent while a connection is down is lost to that connection
// only; with connections held to different servers, another one has it.)
//
// A live event is verified like any other (signature with the issuer's
// keys, iss, aud, tenant) and applied to the set at once, without moving
// the set's stream sequence and without OnEvent hooks: the stream delivers
// the same event again, in order, and that is when the hooks run and the
// position moves. So a revocation reaches the set within milliseconds even
// while the stream elects a new leader, and the stream stays the one log
// that replays. An event that does not verify here is left to the stream
// path, which retries or reports it.
//
// Every node sends every event on every connection's server, so the same
// SET arrives several times (nodes × connections): a SET whose jti was
// verified and applied already is skipped before its signature is checked
// again.
func (w *Watcher) followLive(ctx context.Context) (stop func()) {
	conns := append([]*nats.Conn{w.cfg.NATS}, w.cfg.LiveNATS...)
	seen := newJTISeen(4096)
	handler := func(m *nats.Msg) {
		jti := unverifiedJTI(m.Data)
		if jti != "" && seen.has(jti) {
			return
		}
		c, err := w.verifySET(ctx, string(m.Data))
		if err != nil {
			return
		}
		typ, d, err := c.Event()
		if err != nil || d.Tenant != w.cfg.Tenant {
			return
		}
		if c.ID != "" && !seen.add(c.ID) {
			return // a copy verified on another connection meanwhile
		}
		w.set.apply(0, typ, d)
		w.liveApplied.Add(1)
	}
	var subs []*nats.Subscription
	for i, nc := range conns {
		if nc == nil {
			continue
		}
		sub, err := nc.Subscribe(NATSLiveSubjects(w.cfg.Tenant), handler)
		if err != nil {
			w.log.Warn("live subjects not followed on a NATS connection", "connection", i, "err", err)
			continue
		}
		subs = append(subs, sub)
	}
	return func() {
		for _, s := range subs {
			s.Unsubscribe()
		}
	}
}

// unverifiedJTI is the jti of a SET, read without checking anything: only
// to skip copies of a SET already verified under that jti.
func unverifiedJTI(raw []byte) string {
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(string(raw), &c); err != nil {
		return ""
	}
	return c.ID
}

// jtiSeen remembers the last n jtis added.
type jtiSeen struct {
	mu   sync.Mutex
	m    map[string]struct{}
	ring []string
	next int
}

func newJTISeen(n int) *jtiSeen {
	return &jtiSeen{m: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (s *jtiSeen) has(jti string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[jti]
	return ok
}

// add reports whether jti is new.
func (s *jtiSeen) add(jti string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[jti]; ok {
		return false
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.m, old)
	}
	s.ring[s.next] = jti
	s.m[jti] = struct{}{}
	s.next = (s.next + 1) % len(s.ring)
	return true
}
