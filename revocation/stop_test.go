package revocation

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestStoppedWatcherGoesStale: a watcher that was following its stream and
// is stopped (or whose Run ended) follows nothing any more, so it counts as
// disconnected from then on: its verifier still trusts the set within
// MaxDisconnect, like across a reconnect (a restarted watcher replays from
// its position), and fails closed after it. (TestSDKMatrix once held the
// watchers of a subtest that had ended: they missed the events after a node
// restart and were within MaxDisconnect, so not stale yet.)
func TestStoppedWatcherGoesStale(t *testing.T) {
	ti := newTestIssuer(t)
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	// The test issuer serves no events API: Run's stream fails and retries.
	w, err := NewWatcher(WatcherConfig{Issuer: ti.issuer, Tenant: "acme", ServerURL: ti.srv.URL, MaxDisconnect: time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", Watcher: w, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["jti"] = "jt" }))
	w.synced.Store(true)
	w.setConnected(true) // as if following the stream
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	w.Start()
	w.Stop()
	if w.Connected() {
		t.Fatal("a stopped watcher reports itself connected")
	}
	// Within MaxDisconnect: trusted, like during a reconnect.
	now.Add(int64(30 * time.Second))
	if w.Stale() {
		t.Fatal("stale within MaxDisconnect")
	}
	// Past it: stale, and the verifier fails closed.
	now.Add(int64(31 * time.Second))
	if !w.Stale() {
		t.Fatal("a watcher stopped for longer than MaxDisconnect is not stale")
	}
	if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrStale) {
		t.Fatalf("verify with a watcher stopped past MaxDisconnect: %v", err)
	}
}
