package revocation

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzVerify feeds arbitrary tokens to Verify and arbitrary SETs to the
// watcher: neither may panic, and nothing but a well-signed token of the
// issuer verifies.
func FuzzVerify(f *testing.F) {
	ti := newTestIssuer(f)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders", JWKSRefetchInterval: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	w, err := NewWatcher(WatcherConfig{Issuer: ti.issuer, Tenant: "acme", ServerURL: ti.srv.URL, JWKSRefetchInterval: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	good := ti.sign("k1", "at+jwt", ti.accessClaims(nil))
	f.Add(good)
	f.Add(string(ti.set(EventTokenRevoked, EventDetails{JTI: "x"})))
	f.Add(ti.sign("k1", "at+jwt", jwt.MapClaims{"iss": ti.issuer}))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Verify(context.Background(), tok)
		if err == nil && (c == nil || c.Issuer != ti.issuer) {
			t.Fatalf("accepted %q as %+v", tok, c)
		}
		if err != nil && !errors.Is(err, ErrInvalidToken) && !errors.Is(err, ErrUnavailable) {
			t.Fatalf("unexpected error class: %v", err)
		}
		_ = w.handle(context.Background(), w.Position()+1, []byte(tok))
	})
}

// FuzzUnverifiedJTI: reading the jti of any message on the live subjects
// never panics.
func FuzzUnverifiedJTI(f *testing.F) {
	f.Add("eyJhbGciOiJub25lIn0.eyJqdGkiOiJ0YWxseS03LTAiLCJhdWQiOlsiYSIsImIiXX0.")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, raw string) {
		_ = unverifiedJTI([]byte(raw))
	})
}
