package issuance_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tallyauth/tally/issuance"
)

func TestIntrospectActive(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc", func(c *issuance.Client) {
		c.Audiences = []string{"https://a.example", "https://b.example"}
	})
	rs := e.addClient("acme", "rs") // a resource server introspecting others' tokens
	for _, format := range []issuance.TokenFormat{issuance.FormatJWT, issuance.FormatOpaque} {
		t.Run(string(format), func(t *testing.T) {
			e.addClient("acme", "svc", func(c *issuance.Client) {
				c.Audiences = []string{"https://a.example", "https://b.example"}
				c.TokenFormat = format
				c.Secrets[0].Hash = e.kek.HashSecret(secret)
			})
			tok := e.token("acme", "svc", secret, url.Values{"scope": {"write"}})
			m := e.introspect("acme", "rs", rs, tok)
			now := e.clock.Now().Unix()
			want := map[string]any{
				"active": true, "scope": "write", "client_id": "svc", "token_type": "Bearer",
				"exp": float64(now + int64(issuance.DefaultAccessTokenTTL/time.Second)), "iat": float64(now), "sub": "svc",
				"aud": []any{"https://a.example", "https://b.example"}, "iss": e.srv.Issuer("acme"),
			}
			for k, v := range want {
				if got, _ := json.Marshal(m[k]); string(got) != mustJSON(v) {
					t.Errorf("%s = %s, want %s", k, got, mustJSON(v))
				}
			}
			if jti, _ := m["jti"].(string); len(jti) < 22 {
				t.Errorf("jti %q", jti)
			}
			// token_type_hint is only a hint.
			res := e.postForm("/t/acme/oauth2/introspect", url.Values{"token": {tok}, "token_type_hint": {"refresh_token"}}, "rs", rs)
			if res.json(t)["active"] != true {
				t.Errorf("wrong hint made the token inactive: %s", res.body)
			}
			// Within the leeway still active, past it inactive.
			e.clock.Advance(issuance.DefaultAccessTokenTTL + 29*time.Second)
			if m := e.introspect("acme", "rs", rs, tok); m["active"] != true {
				t.Error("token inactive within the leeway")
			}
			e.clock.Advance(2 * time.Second)
			if m := e.introspect("acme", "rs", rs, tok); m["active"] != false {
				t.Error("expired token active")
			}
			e.clock.Advance(-issuance.DefaultAccessTokenTTL - 31*time.Second)
		})
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestIntrospectInactive(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	rs := e.addClient("acme", "rs")

	revokedTok := e.token("acme", "svc", secret, nil)
	info, err := e.srv.Inspect(bg, "acme", revokedTok)
	if err != nil {
		t.Fatal(err)
	}
	e.st.AddRevocation(issuance.Revocation{Tenant: "acme", JTI: info.JTI, ExpiresAt: info.ExpiresAt})

	goneSecret := e.addClient("acme", "gone")
	disSecret := e.addClient("acme", "later-disabled")
	goneJWT := e.token("acme", "gone", goneSecret, nil)
	disJWT := e.token("acme", "later-disabled", disSecret, nil)
	e.addClient("acme", "gone", func(c *issuance.Client) {
		c.TokenFormat = issuance.FormatOpaque
		c.Secrets[0].Hash = e.kek.HashSecret(goneSecret)
	})
	goneOpaque := e.token("acme", "gone", goneSecret, nil)
	e.st.DeleteClient("acme", "gone")
	e.addClient("acme", "later-disabled", func(c *issuance.Client) { c.Disabled = true })

	for name, tok := range map[string]string{
		"garbage":                 "not a token",
		"two dots":                "a.b.c",
		"opaque garbage":          "tly1.kid.AAAA",
		"opaque no kid":           "tly1..AAAA",
		"revoked":                 revokedTok,
		"client deleted (jwt)":    goneJWT,
		"client deleted (sealed)": goneOpaque,
		"client disabled":         disJWT,
		"huge":                    strings.Repeat("a", 9000),
	} {
		t.Run(name, func(t *testing.T) {
			if m := e.introspect("acme", "rs", rs, tok); m["active"] != false {
				t.Errorf("active: %v", m)
			}
		})
	}
}

func TestIntrospectErrors(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	tok := e.token("acme", "svc", secret, nil)
	for _, tc := range []struct {
		name       string
		form       url.Values
		id, secret string
		status     int
		code       string
	}{
		{"missing token", url.Values{}, "svc", secret, 400, "invalid_request"},
		{"repeated token", url.Values{"token": {tok, tok}}, "svc", secret, 400, "invalid_request"},
		{"no client auth", url.Values{"token": {tok}}, "", "", 401, "invalid_client"},
		{"wrong secret", url.Values{"token": {tok}}, "svc", "nope", 401, "invalid_client"},
		{"both methods", url.Values{"token": {tok}, "client_secret": {secret}}, "svc", secret, 400, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.postForm("/t/acme/oauth2/introspect", tc.form, tc.id, tc.secret)
			checkProtocolResponse(t, e, res, tc.status, tc.code)
		})
	}
	res := e.get("/t/acme/oauth2/introspect")
	checkProtocolResponse(t, e, res, http.StatusMethodNotAllowed, "invalid_request")
	if res.header.Get("Allow") != "POST" {
		t.Errorf("Allow %q", res.header.Get("Allow"))
	}
	// client_secret_post works for introspection too.
	res = e.postForm("/t/acme/oauth2/introspect", url.Values{"token": {tok}, "client_id": {"svc"}, "client_secret": {secret}}, "", "")
	if res.status != 200 || res.json(t)["active"] != true {
		t.Errorf("client_secret_post introspection: %d %s", res.status, res.body)
	}
}

// TestTenantIsolation: a token of tenant A is inactive at tenant B and does
// not verify against B's JWKS.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t)
	e.addTenant("a", issuance.AlgES256)
	e.addTenant("b", issuance.AlgES256)
	secretA := e.addClient("a", "svc")
	secretB := e.addClient("b", "svc") // same client id in both tenants
	e.addClient("a", "op", func(c *issuance.Client) {
		c.TokenFormat = issuance.FormatOpaque
		c.Secrets[0].Hash = e.kek.HashSecret(secretA)
	})

	jwtA := e.token("a", "svc", secretA, nil)
	opaqueA := e.token("a", "op", secretA, nil)
	for name, tok := range map[string]string{"jwt": jwtA, "opaque": opaqueA} {
		if m := e.introspect("a", "svc", secretA, tok); m["active"] != true {
			t.Fatalf("%s: inactive at its own tenant", name)
		}
		if m := e.introspect("b", "svc", secretB, tok); m["active"] != false {
			t.Errorf("%s: tenant A token active at tenant B: %v", name, m)
		}
		if _, err := e.srv.Inspect(bg, "b", tok); err == nil {
			t.Errorf("%s: Inspect at tenant B accepted tenant A's token", name)
		}
	}
	if _, _, err := e.verifyWithJWKS("b", jwtA); err == nil {
		t.Error("tenant A JWT verifies against tenant B JWKS")
	}
	if _, _, err := e.verifyWithJWKS("a", jwtA); err != nil {
		t.Errorf("tenant A JWT does not verify against its own JWKS: %v", err)
	}
	// Secrets of tenant A do not authenticate at tenant B.
	res := e.postForm("/t/b/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", secretA)
	checkProtocolResponse(t, e, res, http.StatusUnauthorized, "invalid_client")
}

// TestAttackTokens: forged or mangled JWTs are inactive.
func TestAttackTokens(t *testing.T) {
	e := newEnv(t)
	sigA, _ := e.addTenant("acme", issuance.AlgES256)
	sigB, _ := e.addTenant("other", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	privA, err := issuance.PrivateKeyForTest(e.kek, sigA)
	if err != nil {
		t.Fatal(err)
	}
	privB, err := issuance.PrivateKeyForTest(e.kek, sigB)
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := e.clock.Now()
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{
			"iss": e.srv.Issuer("acme"), "sub": "svc", "aud": e.srv.Issuer("acme"),
			"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "jti": "forged-jti-0123456789",
			"client_id": "svc", "scope": "read",
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	sign := func(method jwt.SigningMethod, key any, header map[string]any, c jwt.MapClaims) string {
		t.Helper()
		tok := jwt.NewWithClaims(method, c)
		tok.Header["typ"] = "at+jwt"
		tok.Header["kid"] = sigA.ID
		for k, v := range header {
			if v == nil {
				delete(tok.Header, k)
			} else {
				tok.Header[k] = v
			}
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// Control: a token we forge with the real key and right claims is active,
	// so each case below fails for its own reason.
	control := sign(jwt.SigningMethodES256, privA, nil, claims(nil))
	if m := e.introspect("acme", "svc", secret, control); m["active"] != true {
		t.Fatalf("control token inactive: %v", m)
	}

	legit := e.token("acme", "svc", secret, nil)
	parts := strings.Split(legit, ".")
	sigBytes, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sigBytes[0] ^= 0x01
	badSig := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sigBytes)
	swapped := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(decodeSegment(t, parts[1]), `"read write"`, `"admin"`, 1))) + "." + parts[2]

	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"at+jwt","kid":"` + sigA.ID + `"}`))
	body := base64.RawURLEncoding.EncodeToString([]byte(mustJSON(claims(nil))))
	algNone := header + "." + body + "."
	noneViaLib := sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, map[string]any{"alg": "none"}, claims(nil))

	pemPub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: sigA.PublicKey})

	cases := map[string]string{
		"alg none":                    algNone,
		"alg none via library":        noneViaLib,
		"HS256 with PKIX DER":         sign(jwt.SigningMethodHS256, sigA.PublicKey, nil, claims(nil)),
		"HS256 with PEM":              sign(jwt.SigningMethodHS256, pemPub, nil, claims(nil)),
		"HS256 with PEM, no kid":      sign(jwt.SigningMethodHS256, pemPub, map[string]any{"kid": nil}, claims(nil)),
		"foreign kid":                 sign(jwt.SigningMethodES256, stranger, map[string]any{"kid": "unknown-kid-1234567890"}, claims(nil)),
		"stranger key, our kid":       sign(jwt.SigningMethodES256, stranger, nil, claims(nil)),
		"other tenant's key and kid":  sign(jwt.SigningMethodES256, privB, map[string]any{"kid": sigB.ID}, claims(nil)),
		"other tenant's key, our kid": sign(jwt.SigningMethodES256, privB, nil, claims(nil)),
		"bad signature":               badSig,
		"claims swapped":              swapped,
		"typ JWT":                     sign(jwt.SigningMethodES256, privA, map[string]any{"typ": "JWT"}, claims(nil)),
		"no typ":                      sign(jwt.SigningMethodES256, privA, map[string]any{"typ": nil}, claims(nil)),
		"no kid":                      sign(jwt.SigningMethodES256, privA, map[string]any{"kid": nil}, claims(nil)),
		"expired":                     sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() })),
		"no exp":                      sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { delete(c, "exp") })),
		"not yet valid":               sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() })),
		"issued in the future":        sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { c["iat"] = now.Add(time.Hour).Unix() })),
		"other issuer":                sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { c["iss"] = e.srv.Issuer("other") })),
		"no jti":                      sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { delete(c, "jti") })),
		"no client_id":                sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { delete(c, "client_id") })),
		"unknown client":              sign(jwt.SigningMethodES256, privA, nil, claims(func(c jwt.MapClaims) { c["client_id"] = "ghost" })),
		"ES384 header on ES256 key":   sign(jwt.SigningMethodES384, mustP384(t), nil, claims(nil)),
		"EdDSA header on ES256 key":   sign(jwt.SigningMethodEdDSA, mustEd(t), nil, claims(nil)),
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			if m := e.introspect("acme", "svc", secret, tok); m["active"] != false {
				t.Errorf("active: %v", m)
			}
		})
	}
	// The verifier used by resource servers agrees on the signature cases.
	for _, name := range []string{"alg none", "HS256 with PKIX DER", "foreign kid", "bad signature", "claims swapped"} {
		if _, _, err := e.verifyWithJWKS("acme", cases[name]); err == nil {
			t.Errorf("%s: go-jose accepted it", name)
		}
	}
}

func mustP384(t *testing.T) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustEd(t *testing.T) crypto.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
