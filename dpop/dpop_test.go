package dpop_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tallyauth/tally/dpop"
	"github.com/tallyauth/tally/dpop/dpoptest"
)

const htu = "https://as.example.com/t/acme/oauth2/token"

var now = time.Unix(1_800_000_000, 0)

func params() dpop.Params { return dpop.Params{Method: "POST", URL: htu, Now: now} }

func TestParseAcceptsEveryAlg(t *testing.T) {
	for _, alg := range dpop.SigningAlgs {
		t.Run(alg, func(t *testing.T) {
			k := dpoptest.NewKey(alg)
			p, err := dpop.Parse(k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now}), params())
			if err != nil {
				t.Fatal(err)
			}
			if p.JKT != k.JKT() {
				t.Fatalf("jkt %s, go-jose says %s", p.JKT, k.JKT())
			}
		})
	}
}

func TestParseNormalizesHTU(t *testing.T) {
	k := dpoptest.NewKey("ES256")
	for _, u := range []string{
		"HTTPS://AS.example.com:443/t/acme/oauth2/token",
		htu + "?x=1",
		htu + "#frag",
	} {
		if _, err := dpop.Parse(k.Proof(dpoptest.Claims{HTM: "POST", HTU: u, IAT: now}), params()); err != nil {
			t.Errorf("htu %q: %v", u, err)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	k := dpoptest.NewKey("ES256")
	ok := dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now}
	with := func(f func(c *dpoptest.Claims)) string { c := ok; f(&c); return k.Proof(c) }
	cases := []struct {
		name  string
		proof string
		p     dpop.Params
		want  error
	}{
		{"wrong htm", with(func(c *dpoptest.Claims) { c.HTM = "GET" }), params(), dpop.ErrMethod},
		{"wrong htu path", with(func(c *dpoptest.Claims) { c.HTU = "https://as.example.com/t/other/oauth2/token" }), params(), dpop.ErrURI},
		{"wrong htu host", with(func(c *dpoptest.Claims) { c.HTU = "https://evil.example/t/acme/oauth2/token" }), params(), dpop.ErrURI},
		{"htu http vs https", with(func(c *dpoptest.Claims) { c.HTU = "http://as.example.com/t/acme/oauth2/token" }), params(), dpop.ErrURI},
		{"stale iat", with(func(c *dpoptest.Claims) { c.IAT = now.Add(-10 * time.Minute) }), params(), dpop.ErrIssuedAt},
		{"future iat", with(func(c *dpoptest.Claims) { c.IAT = now.Add(time.Minute) }), params(), dpop.ErrIssuedAt},
		{"no iat", with(func(c *dpoptest.Claims) { c.Omit = []string{"iat"} }), params(), dpop.ErrIssuedAt},
		{"no jti", with(func(c *dpoptest.Claims) { c.Omit = []string{"jti"} }), params(), dpop.ErrJTI},
		{"no htm", with(func(c *dpoptest.Claims) { c.Omit = []string{"htm"} }), params(), dpop.ErrMethod},
		{"wrong typ", with(func(c *dpoptest.Claims) { c.Typ = "JWT" }), params(), dpop.ErrType},
		{"missing ath", k.Proof(ok), dpop.Params{Method: "POST", URL: htu, Now: now, AccessToken: "tok"}, dpop.ErrATH},
		{"wrong ath", with(func(c *dpoptest.Claims) { c.AccessToken = "other" }), dpop.Params{Method: "POST", URL: htu, Now: now, AccessToken: "tok"}, dpop.ErrATH},
		{"empty", "", params(), dpop.ErrMalformed},
		{"garbage", "a.b.c", params(), dpop.ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dpop.Parse(tc.proof, tc.p)
			if !errors.Is(err, tc.want) || !errors.Is(err, dpop.ErrInvalidProof) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// ath present and right passes.
	if _, err := dpop.Parse(with(func(c *dpoptest.Claims) { c.AccessToken = "tok" }), dpop.Params{Method: "POST", URL: htu, Now: now, AccessToken: "tok"}); err != nil {
		t.Fatal(err)
	}
}

// handMade signs a proof by hand so the header can be anything.
func handMade(t *testing.T, header map[string]any, alg jwt.SigningMethod, key any) string {
	t.Helper()
	c := jwt.MapClaims{"htm": "POST", "htu": htu, "iat": now.Unix(), "jti": "j1"}
	tok := jwt.NewWithClaims(alg, c)
	tok.Header = header
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseRefusesBadKeysAndAlgs(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pt, _ := ec.PublicKey.Bytes() // 0x04 | x | y
	d, _ := ec.Bytes()
	pub := map[string]any{"kty": "EC", "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(pt[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(pt[33:65])}
	priv := map[string]any{"d": base64.RawURLEncoding.EncodeToString(d)}
	for k, v := range pub {
		priv[k] = v
	}
	// A symmetric "jwk" with HS256: the key material is public, so a MAC
	// proves nothing.
	hsKey := []byte("0123456789abcdef0123456789abcdef")
	cases := []struct {
		name  string
		proof string
		want  error
	}{
		{"private jwk", handMade(t, map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": priv}, jwt.SigningMethodES256, ec), dpop.ErrKey},
		{"no jwk", handMade(t, map[string]any{"typ": "dpop+jwt", "alg": "ES256"}, jwt.SigningMethodES256, ec), dpop.ErrKey},
		{"HS256", handMade(t, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": map[string]any{"kty": "oct", "k": base64.RawURLEncoding.EncodeToString(hsKey)}}, jwt.SigningMethodHS256, hsKey), dpop.ErrInvalidProof},
		{"ES384 alg with P-256 key", handMade(t, map[string]any{"typ": "dpop+jwt", "alg": "ES384", "jwk": pub}, jwt.SigningMethodES256, ec), dpop.ErrAlg},
	}
	// alg none.
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"dpop+jwt","alg":"none"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"htm":"POST","htu":"`+htu+`","iat":1800000000,"jti":"x"}`)) + "."
	cases = append(cases, struct {
		name  string
		proof string
		want  error
	}{"alg none", none, dpop.ErrInvalidProof})
	// Signed by another key than the embedded one.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cases = append(cases, struct {
		name  string
		proof string
		want  error
	}{"signature by another key", handMade(t, map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": pub}, jwt.SigningMethodES256, other), dpop.ErrSignature})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dpop.Parse(tc.proof, params())
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// The same header with the right key passes (the cases above fail for
	// their stated reason only).
	if _, err := dpop.Parse(handMade(t, map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": pub}, jwt.SigningMethodES256, ec), params()); err != nil {
		t.Fatal(err)
	}
}

func TestReplayCache(t *testing.T) {
	c := dpop.NewReplayCache(2, time.Minute)
	if err := c.Use("k", "a", now); err != nil {
		t.Fatal(err)
	}
	if err := c.Use("k", "a", now.Add(time.Second)); !errors.Is(err, dpop.ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
	if err := c.Use("other-key", "a", now); err != nil {
		t.Fatalf("same jti, other key: %v", err)
	}
	if err := c.Use("k", "b", now); !errors.Is(err, dpop.ErrCacheFull) {
		t.Fatalf("full: %v", err)
	}
	// After the ttl the entries are gone and the cache has room again.
	later := now.Add(2 * time.Minute)
	if err := c.Use("k", "b", later); err != nil {
		t.Fatal(err)
	}
	if c.Len() != 1 {
		t.Fatalf("len %d", c.Len())
	}
}

func TestNonceSource(t *testing.T) {
	secret := make([]byte, 32)
	a, _ := dpop.NewNonceSource(secret, time.Minute)
	b, _ := dpop.NewNonceSource(secret, time.Minute) // another node, same secret
	n := a.Nonce("acme", now)
	if !b.Valid("acme", n, now) || !b.Valid("acme", n, now.Add(time.Minute)) {
		t.Fatal("nonce not valid on another node or in the next window")
	}
	if b.Valid("acme", n, now.Add(3*time.Minute)) {
		t.Fatal("old nonce still valid")
	}
	if b.Valid("other", n, now) {
		t.Fatal("nonce valid for another tenant")
	}
	other, _ := dpop.NewNonceSource(append(make([]byte, 31), 1), time.Minute)
	if other.Valid("acme", n, now) {
		t.Fatal("nonce valid under another secret")
	}
	for _, bad := range []string{"", ".", "x.y", strings.Repeat("a", 100)} {
		if a.Valid("acme", bad, now) {
			t.Fatalf("%q valid", bad)
		}
	}
}

func TestNormalizeURI(t *testing.T) {
	for in, want := range map[string]string{
		"HTTPS://Example.COM:443/a?b#c": "https://example.com/a",
		"http://example.com:80":         "http://example.com/",
		"http://example.com:8080/x":     "http://example.com:8080/x",
		"https://[::1]:8443/t":          "https://[::1]:8443/t",
	} {
		got, err := dpop.NormalizeURI(in)
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ftp://x/", "/relative", "https://user@x/"} {
		if _, err := dpop.NormalizeURI(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	k := dpoptest.NewKey("ES256")
	f.Add(k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now}))
	f.Add(dpoptest.NewKey("EdDSA").Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: now, Nonce: "n"}))
	f.Add("eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, proof string) {
		p, err := dpop.Parse(proof, params())
		if err == nil && (p.JKT == "" || p.JTI == "" || p.Key == nil) {
			t.Fatalf("accepted proof without jkt/jti/key: %+v", p)
		}
		if err != nil && !errors.Is(err, dpop.ErrInvalidProof) {
			t.Fatalf("error does not wrap ErrInvalidProof: %v", err)
		}
	})
}

func FuzzParseJWK(f *testing.F) {
	f.Add(`{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}`)
	f.Add(`{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`)
	f.Add(`{"kty":"RSA","n":"AQAB","e":"AQAB"}`)
	f.Fuzz(func(t *testing.T, s string) {
		var m map[string]any
		if json.Unmarshal([]byte(s), &m) != nil {
			return
		}
		k, jkt, err := dpop.ParseJWK(m)
		if err == nil && (k == nil || jkt == "") {
			t.Fatal("nil key accepted")
		}
	})
}
