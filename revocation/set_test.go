package revocation

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestSetOrdersStateChangesByRaftIndex: a state change older than the last
// applied one for the same client or user (a replayed SET), or than the
// resync baseline, changes nothing; one without an index applies in stream
// order.
func TestSetOrdersStateChangesByRaftIndex(t *testing.T) {
	s := NewSet()
	steps := []struct {
		typ  string
		d    EventDetails
		want bool // client c / user u disabled or locked afterwards
	}{
		{EventClientDisabled, EventDetails{ClientID: "c", RaftIndex: 10}, true},
		{EventClientEnabled, EventDetails{ClientID: "c", RaftIndex: 20}, false},
		{EventClientDisabled, EventDetails{ClientID: "c", RaftIndex: 30}, true},
		{EventClientEnabled, EventDetails{ClientID: "c", RaftIndex: 20}, true}, // replay
		{EventClientEnabled, EventDetails{ClientID: "c", RaftIndex: 30}, true}, // same index: replay
		{EventUserLocked, EventDetails{Subject: "u", RaftIndex: 40}, true},
		{EventUserUnlocked, EventDetails{Subject: "u", RaftIndex: 35}, true}, // older: replay
		{EventUserUnlocked, EventDetails{Subject: "u", RaftIndex: 50}, false},
		{EventUserLocked, EventDetails{Subject: "u", RaftIndex: 40}, false}, // replay
		{EventUserLocked, EventDetails{Subject: "u"}, true},                 // no index: stream order
	}
	for i, st := range steps {
		if !s.apply(uint64(i+1), st.typ, st.d) {
			t.Fatalf("step %d: new sequence not applied", i)
		}
		got := s.ClientDisabled("c")
		if st.d.Subject != "" {
			got = s.SubjectLocked("u")
		}
		if got != st.want {
			t.Fatalf("step %d (%s at index %d): %v, want %v", i, st.typ, st.d.RaftIndex, got, st.want)
		}
	}
	// A resync baseline at index 100: changes at or below it are in it.
	b := NewSet()
	b.floor = 100
	b.clients["c"] = toggle{on: true}
	s.replace(b, time.Now())
	s.apply(100, EventClientEnabled, EventDetails{ClientID: "c", RaftIndex: 90})
	if !s.ClientDisabled("c") {
		t.Fatal("an event older than the resync baseline applied")
	}
	s.apply(101, EventClientEnabled, EventDetails{ClientID: "c", RaftIndex: 101})
	if s.ClientDisabled("c") {
		t.Fatal("an event newer than the resync baseline not applied")
	}
	// The indexes survive a restart.
	path := t.TempDir() + "/pos.json"
	if err := s.save(path, "acme"); err != nil {
		t.Fatal(err)
	}
	l, err := loadSet(path, "acme")
	if err != nil {
		t.Fatal(err)
	}
	l.apply(102, EventClientDisabled, EventDetails{ClientID: "c", RaftIndex: 95})
	if l.ClientDisabled("c") {
		t.Fatal("after a restart, a replayed event older than the last change applied")
	}
}

// TestSetKeepsRevocationsForTheLeeway: revocations are kept until their
// token's exp plus the verifiers' leeway, by prune and across a resync
// whose server set already forgot them.
func TestSetKeepsRevocationsForTheLeeway(t *testing.T) {
	ti := newTestIssuer(t)
	now := time.Now()
	w, err := NewWatcher(WatcherConfig{Issuer: ti.issuer, Tenant: "acme", ServerURL: ti.srv.URL, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "a", Watcher: w, Leeway: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "b", Watcher: w, Leeway: time.Minute}); err != nil {
		t.Fatal(err)
	}
	s := w.Set()
	s.apply(1, EventTokenRevoked, EventDetails{JTI: "recent", ExpiresAt: now.Add(-90 * time.Second).Unix()})
	s.apply(2, EventTokenRevoked, EventDetails{JTI: "old", ExpiresAt: now.Add(-3 * time.Minute).Unix()})
	s.prune(w.keepAfter())
	if !s.Revoked("recent") || s.Revoked("old") {
		t.Fatalf("after prune: recent %v (want true), old %v (want false)", s.Revoked("recent"), s.Revoked("old"))
	}
	s.replace(NewSet(), w.keepAfter())
	if !s.Revoked("recent") {
		t.Fatal("a resync dropped a revocation whose token a verifier still accepts")
	}
}

// TestWatcherChecksStreamIdentity: the position belongs to one stream; a
// head below it or another identity is a reset; a position file without
// an identity (version 1) resyncs once; a resync without one adopts the
// next it sees.
func TestWatcherChecksStreamIdentity(t *testing.T) {
	ti := newTestIssuer(t)
	w := newTestWatcher(t, ti)
	w.set.seq, w.set.stream = 10, 111
	for _, tc := range []struct {
		created int64
		last    uint64
		reset   bool
	}{
		{111, 10, false}, {111, 50, false}, {0, 50, false}, {111, 9, true}, {222, 50, true}, {222, 10, true},
	} {
		if err := w.checkStream(tc.created, tc.last, w.set.Sequence()); errors.Is(err, errReset) != tc.reset {
			t.Errorf("created %d last %d: %v, want reset %v", tc.created, tc.last, err, tc.reset)
		}
	}
	// A stream state asked for at position 8 and answered after the
	// watcher handled messages up to 10: its head 9 is no reset (the race
	// behind a spurious resync on a busy machine).
	if err := w.checkStream(111, 9, 8); err != nil {
		t.Errorf("a head below the position but not below the one asked at: %v", err)
	}
	path := t.TempDir() + "/pos.json"
	if err := os.WriteFile(path, []byte(`{"version":1,"tenant":"acme","sequence":5,"tokens":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	old, err := NewWatcher(WatcherConfig{Issuer: ti.issuer, Tenant: "acme", ServerURL: ti.srv.URL, PositionFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.checkStream(333, 5, old.set.Sequence()); !errors.Is(err, errReset) {
		t.Fatalf("a version-1 position file: %v, want a reset", err)
	}
	old.adoptStream.Store(true) // as after a resync that named no identity
	if err := old.checkStream(333, 5, old.set.Sequence()); err != nil || old.set.streamID() != 333 {
		t.Fatalf("adopting: %v, identity %d", err, old.set.streamID())
	}
}

// TestWatcherDropsOnlyPermanentlyInvalidEvents: a SET signed with a kid
// the JWKS never lists is dropped after UnknownKeyGrace, counted; one whose
// key appears meanwhile is applied.
func TestWatcherDropsOnlyPermanentlyInvalidEvents(t *testing.T) {
	ti := newTestIssuer(t)
	w, err := NewWatcher(WatcherConfig{Issuer: ti.issuer, Tenant: "acme", ServerURL: ti.srv.URL,
		UnknownKeyGrace: 300 * time.Millisecond, JWKSRefetchInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.handle(ctx, 1, ti.set(EventTokenRevoked, EventDetails{JTI: "j1", RaftIndex: 1})); err != nil {
		t.Fatal(err)
	}
	ti.addKey("k2", "ES256")
	signed := func(kid, jti string) []byte {
		return []byte(ti.sign(kid, SETType, jwt.MapClaims{"iss": ti.issuer, "aud": ti.issuer, "iat": time.Now().Unix(),
			"events": map[string]any{EventTokenRevoked: EventDetails{SchemaVersion: 1, Tenant: "acme", JTI: jti}}}))
	}
	if err := w.handle(ctx, 2, signed("k2", "j2")); err != nil || !w.Set().Revoked("j2") {
		t.Fatalf("an event signed with a new key: %v, revoked %v", err, w.Set().Revoked("j2"))
	}
	ti.addKey("never", "ES256") // signs, but leaves the JWKS at once
	never := signed("never", "j3")
	ti.mu.Lock()
	delete(ti.keys, "never")
	ti.mu.Unlock()
	if err := w.handle(ctx, 3, never); err != nil {
		t.Fatal(err)
	}
	if w.Set().Revoked("j3") || w.Rejected() != 1 || w.Retried() == 0 || w.Position() != 3 {
		t.Fatalf("unknown kid: revoked %v, rejected %d, retried %d, position %d", w.Set().Revoked("j3"), w.Rejected(), w.Retried(), w.Position())
	}
}

// TestSetCutoffAfterUnlock: a user enabled again keeps its tokens issued
// before the lock invalid, across a save, a resync and until no such token
// can be live.
func TestSetCutoffAfterUnlock(t *testing.T) {
	s := NewSet()
	s.apply(1, EventUserLocked, EventDetails{Subject: "u", RaftIndex: 5})
	s.apply(2, EventUserUnlocked, EventDetails{Subject: "u", RaftIndex: 6, TokensIssuedUntil: 1000})
	if s.SubjectLocked("u") || !s.IssuedBeforeLock("u", 1000) || s.IssuedBeforeLock("u", 1001) || s.IssuedBeforeLock("v", 1) {
		t.Fatal("cutoff not applied")
	}
	path := t.TempDir() + "/pos.json"
	if err := s.save(path, "acme"); err != nil {
		t.Fatal(err)
	}
	l, err := loadSet(path, "acme")
	if err != nil || !l.IssuedBeforeLock("u", 999) {
		t.Fatalf("after a restart: %v", err)
	}
	l.replace(NewSet(), time.Unix(1000, 0))
	if !l.IssuedBeforeLock("u", 999) {
		t.Fatal("a resync dropped a cutoff")
	}
	l.prune(time.Unix(1000+3600+1, 0))
	if l.IssuedBeforeLock("u", 999) {
		t.Fatal("a cutoff older than the longest token lifetime kept")
	}
}

// failJWKS fails JWKS requests while down is set.
type failJWKS struct{ down *atomic.Bool }

func (f failJWKS) RoundTrip(r *http.Request) (*http.Response, error) {
	if f.down.Load() && strings.HasSuffix(r.URL.Path, "/jwks.json") {
		return nil, errors.New("connection refused")
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestWatcherKeepsEventsWhileJWKSUnreachable: an event whose keys cannot
// be fetched is not dropped: handle reports it, the position stays, and
// the same event applies once the JWKS is back.
func TestWatcherKeepsEventsWhileJWKSUnreachable(t *testing.T) {
	ti := newTestIssuer(t)
	var down atomic.Bool
	down.Store(true)
	w, err := NewWatcher(WatcherConfig{Issuer: ti.issuer, Tenant: "acme", ServerURL: ti.srv.URL,
		HTTPClient: &http.Client{Transport: failJWKS{&down}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ev := ti.set(EventTokenRevoked, EventDetails{JTI: "j1", RaftIndex: 1})
	if err := w.handle(ctx, 1, ev); !errors.Is(err, errKeysUnavailable) {
		t.Fatalf("JWKS unreachable: %v, want errKeysUnavailable", err)
	}
	if w.Position() != 0 || w.Rejected() != 0 {
		t.Fatalf("position %d, rejected %d: the event was dropped", w.Position(), w.Rejected())
	}
	down.Store(false)
	if err := w.handle(ctx, 1, ev); err != nil || !w.Set().Revoked("j1") || w.Position() != 1 {
		t.Fatalf("JWKS back: %v, revoked %v, position %d", err, w.Set().Revoked("j1"), w.Position())
	}
}

// TestSetDeletions (issue 16): a deleted client or user has its tokens
// issued at or before the deletion rejected for good (not undone by a
// replayed older enable, kept across a restart and a resync that lacks
// it), and loses its disabled/locked flag, as the server's state does, so
// that the set converges with a resync.
func TestSetDeletions(t *testing.T) {
	s := NewSet()
	s.apply(1, EventClientDisabled, EventDetails{ClientID: "c", RaftIndex: 5})
	s.apply(2, EventClientDeleted, EventDetails{ClientID: "c", RaftIndex: 7, TokensIssuedUntil: 1000})
	s.apply(3, EventUserLocked, EventDetails{Subject: "u", RaftIndex: 8})
	s.apply(4, EventUserDeleted, EventDetails{Subject: "u", RaftIndex: 9, TokensIssuedUntil: 1001})
	s.apply(5, EventClientEnabled, EventDetails{ClientID: "c", RaftIndex: 6}) // replayed, older
	check := func(what string, s *Set) {
		t.Helper()
		if !s.IssuedBeforeClientDeleted("c", 1000) || s.IssuedBeforeClientDeleted("c", 1001) || s.IssuedBeforeClientDeleted("d", 1) {
			t.Fatalf("%s: client cutoff", what)
		}
		if !s.IssuedBeforeLock("u", 1001) || s.IssuedBeforeLock("u", 1002) {
			t.Fatalf("%s: user cutoff", what)
		}
		if s.ClientDisabled("c") || s.SubjectLocked("u") {
			t.Fatalf("%s: a deleted client or user keeps its flag", what)
		}
	}
	check("events", s)
	path := t.TempDir() + "/pos.json"
	if err := s.save(path, "acme"); err != nil {
		t.Fatal(err)
	}
	l, err := loadSet(path, "acme")
	if err != nil {
		t.Fatal(err)
	}
	check("restart", l)
	// The server's resync answer: the cutoffs, no flags.
	r := NewSet()
	r.clientCutoffs["c"] = 1000
	r.cutoffs["u"] = 1001
	n := NewSet()
	n.replace(r, time.Unix(1000, 0))
	check("resync", n)
	l.replace(NewSet(), time.Unix(1000, 0))
	check("resync that lacks them", l)
	l.prune(time.Unix(1001+3600+1, 0))
	if l.IssuedBeforeClientDeleted("c", 999) {
		t.Fatal("a cutoff older than the longest token lifetime kept")
	}
}

// TestSetTenantDeleted (issue 16): a tenant-deleted event makes every token
// issued at or before the deletion invalid, kept across a restart (position
// file), brought by a resync and kept by a resync that lacks it, until no
// such token can be live.
func TestSetTenantDeleted(t *testing.T) {
	s := NewSet()
	if s.IssuedBeforeTenantDeleted(1) || s.TenantDeleted() != 0 {
		t.Fatal("a new set knows a deletion")
	}
	s.apply(1, EventTenantDeleted, EventDetails{RaftIndex: 9, TokensIssuedUntil: 1000})
	s.apply(2, EventTenantDeleted, EventDetails{RaftIndex: 3, TokensIssuedUntil: 900}) // an older one changes nothing
	check := func(what string, s *Set) {
		t.Helper()
		if !s.IssuedBeforeTenantDeleted(1000) || s.IssuedBeforeTenantDeleted(1001) || s.TenantDeleted() != 1000 {
			t.Fatalf("%s: tenant cutoff %d", what, s.TenantDeleted())
		}
	}
	check("events", s)
	path := t.TempDir() + "/pos.json"
	if err := s.save(path, "acme"); err != nil {
		t.Fatal(err)
	}
	l, err := loadSet(path, "acme")
	if err != nil {
		t.Fatal(err)
	}
	check("restart", l)
	r := NewSet()
	r.tenantCutoff = 1000
	n := NewSet()
	n.replace(r, time.Unix(1000, 0))
	check("resync", n)
	l.replace(NewSet(), time.Unix(1000, 0))
	check("resync that lacks it", l)
	l.prune(time.Unix(1000+3600, 0))
	check("prune while a token may live", l)
	l.prune(time.Unix(1000+3600+1, 0))
	if l.TenantDeleted() != 0 {
		t.Fatal("a deletion older than the longest token lifetime kept")
	}
}
