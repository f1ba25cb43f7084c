package revocation

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestRejectionReasons: every rejection names why, through ReasonOf, the
// OnReject hook and the sentinel errors.
func TestRejectionReasons(t *testing.T) {
	ti := newTestIssuer(t)
	w := newTestWatcher(t, ti)
	var mu sync.Mutex
	var hooked []Reason
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", Watcher: w, ClientID: "rs", ClientSecret: "rs-secret",
		JWKSRefetchInterval: time.Hour,
		OnReject: func(_ context.Context, r Reason, _ error) {
			mu.Lock()
			hooked = append(hooked, r)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	claims := func(mut func(jwt.MapClaims)) string { return ti.sign("k1", "at+jwt", ti.accessClaims(mut)) }
	good := claims(nil)
	if _, err := v.Verify(ctx, good); !errors.Is(err, ErrStale) || ReasonOf(err) != ReasonStale {
		t.Fatalf("unsynced: %v (%s)", err, ReasonOf(err))
	}
	w.synced.Store(true)
	w.setConnected(true)
	if _, err := v.Verify(ctx, good); err != nil {
		t.Fatal(err)
	}
	ti.addKey("gone", "ES256")
	unknown := ti.sign("gone", "at+jwt", ti.accessClaims(nil))
	ti.mu.Lock()
	delete(ti.keys, "gone")
	ti.mu.Unlock()
	v.keys.limit.Allow() // the refetch budget is spent
	w.set.apply(1, EventTokenRevoked, EventDetails{JTI: "revoked-jti", ExpiresAt: time.Now().Add(time.Hour).Unix()})
	ti.mu.Lock()
	ti.opaque["opaque-off"] = map[string]any{"active": false}
	ti.mu.Unlock()
	for _, tc := range []struct {
		name  string
		token string
		want  Reason
		is    error
	}{
		{"malformed", "a.b.c", ReasonMalformed, ErrInvalidToken},
		{"bad signature", good[:len(good)-4] + "AAAA", ReasonBadSignature, ErrInvalidToken},
		{"unknown key", unknown, ReasonUnknownKey, ErrInvalidToken},
		{"wrong issuer", claims(func(c jwt.MapClaims) { c["iss"] = "https://other" }), ReasonWrongIssuer, ErrInvalidToken},
		{"wrong audience", claims(func(c jwt.MapClaims) { c["aud"] = "https://billing" }), ReasonWrongAudience, ErrInvalidToken},
		{"expired", claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }), ReasonExpired, ErrInvalidToken},
		{"not yet valid", claims(func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Hour).Unix() }), ReasonNotYetValid, ErrInvalidToken},
		{"revoked", claims(func(c jwt.MapClaims) { c["jti"] = "revoked-jti" }), ReasonRevoked, ErrRevoked},
		{"inactive", "opaque-off", ReasonInactive, ErrInvalidToken},
	} {
		_, err := v.Verify(ctx, tc.token)
		var re *RejectionError
		if !errors.As(err, &re) || re.Reason != tc.want || ReasonOf(err) != tc.want || !errors.Is(err, tc.is) {
			t.Errorf("%s: %v (reason %q), want %q wrapping %v", tc.name, err, ReasonOf(err), tc.want, tc.is)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hooked) != 10 || hooked[0] != ReasonStale || hooked[9] != ReasonInactive {
		t.Fatalf("OnReject saw %v", hooked)
	}
}

// TestLeewayAfterResync: inside the leeway after exp, a token is accepted
// only if the set followed the stream since before exp (the server forgets
// a revocation when its token expires, so a later resync may lack it).
func TestLeewayAfterResync(t *testing.T) {
	ti := newTestIssuer(t)
	w := newTestWatcher(t, ti)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", Watcher: w, Leeway: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	w.synced.Store(true)
	w.setConnected(true)
	ctx := context.Background()
	now := time.Now()
	tok := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) {
		c["iat"], c["exp"] = now.Add(-time.Minute).Unix(), now.Add(-10*time.Second).Unix()
	}))
	w.resyncedAt.Store(now.Add(-time.Hour).UnixNano())
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("inside the leeway, set followed since before exp: %v", err)
	}
	w.resyncedAt.Store(now.Add(-time.Second).UnixNano())
	if _, err := v.Verify(ctx, tok); ReasonOf(err) != ReasonExpired {
		t.Fatalf("inside the leeway, set resynced after exp: %v (%s), want expired", err, ReasonOf(err))
	}
}

// TestTenantDeletedRejects (issue 16): once the set knows the tenant was
// deleted, its tokens issued at or before the deletion are rejected with
// ReasonTenantDeleted (wrapping ErrRevoked), also while the watcher is
// stale; a later token (the tenant created again) is not.
func TestTenantDeletedRejects(t *testing.T) {
	ti := newTestIssuer(t)
	w := newTestWatcher(t, ti)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", Watcher: w})
	if err != nil {
		t.Fatal(err)
	}
	w.synced.Store(true)
	w.setConnected(true)
	ctx := context.Background()
	now := time.Now()
	before := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["iat"] = now.Add(-time.Minute).Unix() }))
	after := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["iat"] = now.Add(time.Second).Unix() }))
	if _, err := v.Verify(ctx, before); err != nil {
		t.Fatal(err)
	}
	w.set.apply(1, EventTenantDeleted, EventDetails{Tenant: "acme", RaftIndex: 5, TokensIssuedUntil: now.Unix()})
	if _, err := v.Verify(ctx, before); ReasonOf(err) != ReasonTenantDeleted || !errors.Is(err, ErrRevoked) {
		t.Fatalf("token of the deleted tenant: %v (%s)", err, ReasonOf(err))
	}
	if _, err := v.Verify(ctx, after); err != nil {
		t.Fatalf("token issued after the deletion: %v", err)
	}
	w.synced.Store(false) // stale: the deletion still holds
	if _, err := v.Verify(ctx, before); ReasonOf(err) != ReasonTenantDeleted {
		t.Fatalf("stale watcher: %v (%s)", err, ReasonOf(err))
	}
}
