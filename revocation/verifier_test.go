package revocation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// testIssuer is a small OAuth issuer on 127.0.0.1: discovery, a JWKS with
// Cache-Control, introspection of opaque tokens it knows.
type testIssuer struct {
	t      testing.TB
	srv    *httptest.Server
	issuer string

	mu      sync.Mutex
	keys    map[string]crypto.Signer
	algs    map[string]string
	opaque  map[string]map[string]any
	maxAge  int
	fetches atomic.Int64
	intros  atomic.Int64
}

func newTestIssuer(t testing.TB) *testIssuer {
	ti := &testIssuer{t: t, keys: map[string]crypto.Signer{}, algs: map[string]string{}, opaque: map[string]map[string]any{}, maxAge: 300}
	mux := http.NewServeMux()
	ti.srv = httptest.NewServer(mux)
	t.Cleanup(ti.srv.Close)
	ti.issuer = ti.srv.URL + "/t/acme"
	mux.HandleFunc("GET /.well-known/oauth-authorization-server/t/acme", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{
			"issuer": ti.issuer, "jwks_uri": ti.issuer + "/jwks.json", "introspection_endpoint": ti.issuer + "/oauth2/introspect",
		})
	})
	mux.HandleFunc("GET /t/acme/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		ti.fetches.Add(1)
		ti.mu.Lock()
		var set jose.JSONWebKeySet
		for kid, k := range ti.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: kid, Algorithm: ti.algs[kid], Use: "sig"})
		}
		w.Header().Set("Cache-Control", "max-age="+itoa(ti.maxAge))
		ti.mu.Unlock()
		json.NewEncoder(w).Encode(set)
	})
	mux.HandleFunc("POST /t/acme/oauth2/introspect", func(w http.ResponseWriter, r *http.Request) {
		ti.intros.Add(1)
		if id, sec, ok := r.BasicAuth(); !ok || id != "rs" || sec != "rs-secret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		ti.mu.Lock()
		resp, ok := ti.opaque[r.PostFormValue("token")]
		ti.mu.Unlock()
		if !ok {
			resp = map[string]any{"active": false}
		}
		json.NewEncoder(w).Encode(resp)
	})
	ti.addKey("k1", "ES256")
	return ti
}

func itoa(n int) string { return strconv.Itoa(n) }

func (ti *testIssuer) addKey(kid, alg string) {
	var k crypto.Signer
	var err error
	switch alg {
	case "ES256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		ti.t.Fatal(err)
	}
	ti.mu.Lock()
	ti.keys[kid], ti.algs[kid] = k, alg
	ti.mu.Unlock()
}

func (ti *testIssuer) sign(kid, typ string, claims jwt.MapClaims) string {
	ti.mu.Lock()
	k, alg := ti.keys[kid], ti.algs[kid]
	ti.mu.Unlock()
	m := jwt.GetSigningMethod(alg)
	tok := jwt.NewWithClaims(m, claims)
	tok.Header["typ"] = typ
	tok.Header["kid"] = kid
	s, err := tok.SignedString(k)
	if err != nil {
		ti.t.Fatal(err)
	}
	return s
}

func (ti *testIssuer) accessClaims(mut func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now().Unix()
	c := jwt.MapClaims{
		"iss": ti.issuer, "sub": "alice", "aud": "https://orders", "exp": now + 600, "iat": now,
		"jti": "j-" + itoa(int(now)), "client_id": "c1", "scope": "read:orders write:orders",
	}
	if mut != nil {
		mut(c)
	}
	return c
}

func TestVerifyJWT(t *testing.T) {
	ti := newTestIssuer(t)
	ti.addKey("ed", "EdDSA")
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	good := ti.sign("k1", "at+jwt", ti.accessClaims(nil))
	c, err := v.Verify(context.Background(), good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "alice" || c.ClientID != "c1" || !c.HasScope("write:orders") || c.HasScope("admin") {
		t.Fatalf("claims %+v", c)
	}
	if _, err := v.Verify(context.Background(), ti.sign("ed", "application/at+jwt", ti.accessClaims(nil))); err != nil {
		t.Fatalf("EdDSA, full media type: %v", err)
	}

	// A token signed with k1's alg name but another key, and HS256 keyed
	// with public material, must fail.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged := jwt.NewWithClaims(jwt.SigningMethodES256, ti.accessClaims(nil))
	forged.Header["typ"], forged.Header["kid"] = "at+jwt", "k1"
	forgedS, _ := forged.SignedString(other)
	hs := jwt.NewWithClaims(jwt.SigningMethodHS256, ti.accessClaims(nil))
	hs.Header["typ"], hs.Header["kid"] = "at+jwt", "k1"
	hsS, _ := hs.SignedString([]byte("secret"))
	// EdDSA key named with an ES256 header: alg must be the key's.
	confused := strings.Split(ti.sign("ed", "at+jwt", ti.accessClaims(nil)), ".")
	confused[0] = b64(`{"alg":"ES256","typ":"at+jwt","kid":"ed"}`)

	for name, tok := range map[string]string{
		"wrong typ":      ti.sign("k1", "JWT", ti.accessClaims(nil)),
		"wrong issuer":   ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["iss"] = "https://evil" })),
		"wrong audience": ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["aud"] = "https://other" })),
		"expired":        ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["exp"] = now - 120 })),
		"not yet valid":  ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["nbf"] = now + 600 })),
		"no exp":         ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { delete(c, "exp") })),
		"no jti":         ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { delete(c, "jti") })),
		"forged":         forgedS,
		"HS256":          hsS,
		"alg confusion":  strings.Join(confused, "."),
		"garbage":        "a.b.c",
		"empty":          "",
	} {
		if _, err := v.Verify(context.Background(), tok); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: %v, want ErrInvalidToken", name, err)
		}
	}
	// Within the leeway is fine.
	if _, err := v.Verify(context.Background(), ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["exp"] = now - 5 }))); err != nil {
		t.Errorf("expired within leeway: %v", err)
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestJWKSCachingAndUnknownKid(t *testing.T) {
	ti := newTestIssuer(t)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", JWKSRefetchInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 5 {
		if _, err := v.Verify(ctx, ti.sign("k1", "at+jwt", ti.accessClaims(nil))); err != nil {
			t.Fatal(err)
		}
	}
	if n := ti.fetches.Load(); n != 1 {
		t.Fatalf("%d JWKS fetches for a cached key, want 1", n)
	}
	// A new key: the unknown kid triggers one refetch.
	ti.addKey("k2", "ES256")
	if _, err := v.Verify(ctx, ti.sign("k2", "at+jwt", ti.accessClaims(nil))); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if n := ti.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after an unknown kid, want 2", n)
	}
	// Another unknown kid within the rate limit: no fetch, rejected.
	ti.addKey("k3", "ES256")
	for range 3 {
		if _, err := v.Verify(ctx, ti.sign("k3", "at+jwt", ti.accessClaims(nil))); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("rate-limited unknown kid: %v", err)
		}
	}
	if n := ti.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, the rate limit allows 2", n)
	}
	// max-age=0 refetches every time.
	ti.mu.Lock()
	ti.maxAge = 0
	ti.mu.Unlock()
	v.keys.invalidate()
	for range 3 {
		if _, err := v.Verify(ctx, ti.sign("k3", "at+jwt", ti.accessClaims(nil))); err != nil {
			t.Fatal(err)
		}
	}
	if n := ti.fetches.Load(); n != 5 {
		t.Fatalf("%d fetches with max-age=0, want 5", n)
	}
}

func TestMaxAge(t *testing.T) {
	def := time.Minute
	for cc, want := range map[string]time.Duration{
		"":                              def,
		"max-age=30":                    30 * time.Second,
		"public, max-age=300":           5 * time.Minute,
		"no-store":                      0,
		"max-age=abc":                   def,
		"max-age=99999999":              24 * time.Hour,
		`max-age="10", must-revalidate`: 10 * time.Second,
	} {
		if got := maxAge(cc, def); got != want {
			t.Errorf("%q: %s, want %s", cc, got, want)
		}
	}
}

// newTestWatcher returns an unstarted watcher for the test issuer; tests
// feed it events with handle.
func newTestWatcher(t *testing.T, ti *testIssuer) *Watcher {
	w, err := NewWatcher(WatcherConfig{Issuer: ti.issuer, Tenant: "acme", ServerURL: ti.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (ti *testIssuer) set(typ string, d EventDetails) []byte {
	if d.SchemaVersion == 0 {
		d.SchemaVersion = SchemaVersion
	}
	d.Tenant = "acme"
	return []byte(ti.sign("k1", SETType, jwt.MapClaims{
		"iss": ti.issuer, "aud": ti.issuer, "iat": time.Now().Unix(), "jti": "e-" + itoa(int(d.RaftIndex)),
		"events": map[string]any{typ: d},
	}))
}

func TestWatcherAppliesVerifiedEvents(t *testing.T) {
	ti := newTestIssuer(t)
	w := newTestWatcher(t, ti)
	ctx := context.Background()
	var got []string
	w.OnEvent(func(typ string, d EventDetails) { got = append(got, typ+" "+d.JTI+d.ClientID) })

	steps := []struct {
		seq uint64
		raw []byte
	}{
		{1, ti.set(EventTokenRevoked, EventDetails{JTI: "j1", ExpiresAt: time.Now().Add(time.Hour).Unix()})},
		{1, ti.set(EventTokenRevoked, EventDetails{JTI: "j1"})}, // replay
		{3, ti.set(EventClientDisabled, EventDetails{ClientID: "c9"})},
		{4, []byte(ti.sign("k1", "JWT", jwt.MapClaims{"iss": ti.issuer}))},                                    // wrong typ: dropped
		{5, []byte(strings.Replace(string(ti.set(EventTokenRevoked, EventDetails{JTI: "j2"})), "e", "f", 1))}, // broken
		{6, ti.set(EventClientEnabled, EventDetails{ClientID: "c9"})},
		{7, []byte(ti.sign("k1", SETType, jwt.MapClaims{"iss": "https://other", "aud": ti.issuer, "iat": 1,
			"events": map[string]any{EventTokenRevoked: EventDetails{SchemaVersion: 1, Tenant: "acme", JTI: "j3"}}}))}, // foreign issuer
		{8, []byte(ti.sign("k1", SETType, jwt.MapClaims{"iss": ti.issuer, "aud": "https://elsewhere", "iat": 1,
			"events": map[string]any{EventTokenRevoked: EventDetails{SchemaVersion: 1, Tenant: "acme", JTI: "j3"}}}))}, // other audience
		{9, ti.set(EventTokenRevoked, EventDetails{JTI: "j4", SchemaVersion: 2})}, // unknown schema version
	}
	for _, s := range steps {
		if err := w.handle(ctx, s.seq, s.raw); err != nil {
			t.Fatalf("seq %d: %v", s.seq, err)
		}
	}
	want := []string{EventTokenRevoked + " j1", EventClientDisabled + " c9", EventClientEnabled + " c9"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("applied %v, want %v", got, want)
	}
	if !w.Set().Revoked("j1") || w.Set().Revoked("j2") || w.Set().Revoked("j3") || w.Set().ClientDisabled("c9") || w.Position() != 9 {
		t.Fatalf("set: j1 %v j2 %v c9 %v pos %d", w.Set().Revoked("j1"), w.Set().Revoked("j2"), w.Set().ClientDisabled("c9"), w.Position())
	}
	if w.Rejected() != 5 || w.Applied() != 3 {
		t.Fatalf("rejected %d, applied %d", w.Rejected(), w.Applied())
	}
}

func TestVerifierWithWatcher(t *testing.T) {
	ti := newTestIssuer(t)
	w := newTestWatcher(t, ti)
	ctx := context.Background()
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", Watcher: w, ClientID: "rs", ClientSecret: "rs-secret"})
	if err != nil {
		t.Fatal(err)
	}
	tok := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["jti"] = "jt" }))
	// Never synced: stale, fail closed.
	if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrStale) {
		t.Fatalf("unsynced watcher: %v", err)
	}
	w.synced.Store(true)
	w.setConnected(true)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}

	// Opaque token: introspected once, then cached, until a revocation
	// event drops it.
	ti.mu.Lock()
	ti.opaque["opaque-1"] = map[string]any{"active": true, "iss": ti.issuer, "aud": "https://orders", "client_id": "c1", "jti": "op1",
		"scope": "read:orders", "exp": time.Now().Add(time.Hour).Unix(), "sub": "bob"}
	ti.mu.Unlock()
	for range 3 {
		c, err := v.Verify(ctx, "opaque-1")
		if err != nil || !c.Introspected || c.Subject != "bob" {
			t.Fatalf("opaque: %+v %v", c, err)
		}
	}
	if ti.intros.Load() != 1 || v.introspectionCacheLen() != 1 {
		t.Fatalf("%d introspections, cache %d", ti.intros.Load(), v.introspectionCacheLen())
	}
	if err := w.handle(ctx, 10, ti.set(EventTokenRevoked, EventDetails{JTI: "op1", ExpiresAt: time.Now().Add(time.Hour).Unix()})); err != nil {
		t.Fatal(err)
	}
	if v.introspectionCacheLen() != 0 {
		t.Fatal("revocation event did not drop the cached introspection")
	}
	if _, err := v.Verify(ctx, "opaque-1"); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked opaque token: %v", err)
	}
	if _, err := v.Verify(ctx, "unknown-opaque"); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("inactive opaque token: %v", err)
	}
	if err := w.handle(ctx, 11, ti.set(EventTokenRevoked, EventDetails{JTI: "jt", ExpiresAt: time.Now().Add(time.Hour).Unix()})); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked JWT: %v", err)
	}

	// Disconnected past MaxDisconnect: stale; with the fallback policy,
	// introspection decides.
	w.setConnected(false)
	w.disconnected.Store(time.Now().Add(-2 * w.cfg.MaxDisconnect).UnixNano())
	if !w.Stale() {
		t.Fatal("not stale after a long disconnect")
	}
	fresh := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["jti"] = "fresh" }))
	if _, err := v.Verify(ctx, fresh); !errors.Is(err, ErrStale) {
		t.Fatalf("stale, fail closed: %v", err)
	}
	vf, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", Watcher: w, StalePolicy: FallbackIntrospection, ClientID: "rs", ClientSecret: "rs-secret"})
	if err != nil {
		t.Fatal(err)
	}
	ti.mu.Lock()
	ti.opaque[fresh] = map[string]any{"active": true, "iss": ti.issuer, "client_id": "c1", "jti": "fresh", "exp": time.Now().Add(time.Hour).Unix()}
	ti.mu.Unlock()
	if c, err := vf.Verify(ctx, fresh); err != nil || !c.Introspected {
		t.Fatalf("stale, fallback: %+v %v", c, err)
	}
}

func TestMiddleware(t *testing.T) {
	ti := newTestIssuer(t)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders"})
	if err != nil {
		t.Fatal(err)
	}
	h := v.Middleware("read:orders")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := ClaimsFromContext(r.Context())
		w.Write([]byte(c.Subject))
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(authz string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		return resp, b.String()
	}
	for _, tc := range []struct {
		name, authz string
		status      int
		www         string
	}{
		{"ok", "Bearer " + ti.sign("k1", "at+jwt", ti.accessClaims(nil)), 200, ""},
		{"no token", "", 401, `Bearer realm=`},
		{"basic", "Basic abc", 401, `Bearer realm=`},
		{"invalid", "Bearer x.y.z", 401, `error="invalid_token", error_description="the access token is malformed"`},
		{"expired", "Bearer " + ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })),
			401, `error="invalid_token", error_description="the access token expired"`},
		{"scope", "Bearer " + ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) { c["scope"] = "write:orders" })), 403,
			`error="insufficient_scope", error_description="the access token lacks a required scope", scope="read:orders"`},
	} {
		resp, body := get(tc.authz)
		if resp.StatusCode != tc.status || !strings.Contains(resp.Header.Get("WWW-Authenticate"), tc.www) {
			t.Errorf("%s: %d %q %q", tc.name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
		if tc.status == 200 && body != "alice" {
			t.Errorf("%s: body %q", tc.name, body)
		}
	}
}

func TestSetPersistence(t *testing.T) {
	path := t.TempDir() + "/pos.json"
	s := NewSet()
	s.apply(7, EventTokenRevoked, EventDetails{JTI: "a", ExpiresAt: 99})
	s.apply(8, EventClientDisabled, EventDetails{ClientID: "c"})
	if err := s.save(path, "acme"); err != nil {
		t.Fatal(err)
	}
	got, err := loadSet(path, "acme")
	if err != nil || got.Sequence() != 8 || !got.Revoked("a") || !got.ClientDisabled("c") {
		t.Fatalf("loaded %+v %v", got, err)
	}
	if _, err := loadSet(path, "other"); err == nil {
		t.Fatal("position file of another tenant accepted")
	}
	s.prune(time.Unix(1000, 0))
	if s.Revoked("a") {
		t.Fatal("expired revocation not pruned")
	}
}
