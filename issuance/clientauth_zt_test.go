package issuance_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tallyauth/tally/issuance"
)

// ----- helpers: keys, assertions (built with go-jose), certificates -----

type clientKey struct {
	priv *ecdsa.PrivateKey
	kid  string
}

func newClientKey(t testing.TB, kid string) clientKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return clientKey{priv: k, kid: kid}
}

func jwksOf(t testing.TB, keys ...clientKey) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: "ES256", Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signAssertion signs claims with go-jose (an implementation independent
// of the server's).
func signAssertion(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var jtiSeq atomic.Int64

func assertionClaims(e *env, tenant, clientID string) map[string]any {
	now := e.clock.Now()
	return map[string]any{
		"iss": clientID, "sub": clientID, "aud": e.srv.Issuer(tenant),
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
		"jti": "jti-" + strings.Repeat("x", 4) + "-" + big.NewInt(jtiSeq.Add(1)).String(),
	}
}

func assertionForm(a string) url.Values {
	return url.Values{"grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {a}}
}

func wantOAuthError(t testing.TB, res response, status int, code string) {
	t.Helper()
	if res.status != status {
		t.Fatalf("status %d, want %d: %s", res.status, status, res.body)
	}
	if got := res.json(t)["error"]; got != code {
		t.Fatalf("error %v, want %s: %s", got, code, res.body)
	}
}

func jwtPayload(t testing.TB, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t testing.TB, cn string) testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return testCA{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a client certificate signed by ca (or self-signed when ca
// is nil).
func issueCert(t testing.TB, ca *testCA, subject pkix.Name, dns ...string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: subject, DNSNames: dns,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// newTLSEnv is newEnv over TLS, requesting (not requiring) client
// certificates, as the node's OAuth listener does with --tls-cert.
func newTLSEnv(t testing.TB, opts ...func(*issuance.Config)) *env {
	t.Helper()
	e := &env{t: t, st: nil, kek: newKEK(t), clock: newClock()}
	base := newEnv(t) // for its state types only
	e.st, e.rv = base.st, base.rv
	e.ts = httptest.NewUnstartedServer(nil)
	e.ts.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	e.base = "https://" + e.ts.Listener.Addr().String()
	cfg := issuance.DefaultConfig()
	cfg.BaseURL, cfg.KEK, cfg.Now = e.base, e.kek, e.clock.Now
	cfg.ZeroTrust.ClientCertificates = true
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := issuance.NewServer(cfg, e.st, e.rv)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.ts.Config.Handler = srv.Handler()
	e.ts.StartTLS()
	t.Cleanup(e.ts.Close)
	return e
}

// postWithCert posts form over a TLS connection presenting cert.
func (e *env) postWithCert(path string, form url.Values, cert *tls.Certificate) response {
	e.t.Helper()
	tr := e.ts.Client().Transport.(*http.Transport).Clone()
	if cert != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
	}
	c := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, e.url(path), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	res, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	var buf strings.Builder
	_, _ = io_Copy(&buf, res)
	return response{status: res.StatusCode, header: res.Header, body: []byte(buf.String())}
}

// ----- private_key_jwt -----

func TestPrivateKeyJWT(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	k := newClientKey(t, "k1")
	e.addClient("acme", "svc", func(c *issuance.Client) {
		c.Secrets = nil
		c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKS: jwksOf(t, k)}
	})
	other := newClientKey(t, "k1")
	e.addClient("acme", "other", func(c *issuance.Client) {
		c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKS: jwksOf(t, other)}
	})
	secretOnly := e.addClient("acme", "legacy")
	path := "/t/acme/oauth2/token"

	t.Run("ok and replay", func(t *testing.T) {
		a := signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc"))
		res := e.postForm(path, assertionForm(a), "", "")
		if res.status != http.StatusOK {
			t.Fatalf("status %d: %s", res.status, res.body)
		}
		if sub := jwtPayload(t, res.json(t)["access_token"].(string))["sub"]; sub != "svc" {
			t.Errorf("sub %v", sub)
		}
		wantOAuthError(t, e.postForm(path, assertionForm(a), "", ""), 401, "invalid_client")
	})
	t.Run("token endpoint aud and client_id param", func(t *testing.T) {
		c := assertionClaims(e, "acme", "svc")
		c["aud"] = []string{e.srv.Issuer("acme") + "/oauth2/token"}
		f := assertionForm(signAssertion(t, jose.ES256, k.priv, k.kid, c))
		f.Set("client_id", "svc")
		if res := e.postForm(path, f, "", ""); res.status != http.StatusOK {
			t.Fatalf("status %d: %s", res.status, res.body)
		}
	})
	bad := map[string]func(c map[string]any) (string, url.Values){
		"expired": func(c map[string]any) (string, url.Values) {
			c["exp"] = e.clock.Now().Add(-2 * time.Minute).Unix()
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"not yet valid": func(c map[string]any) (string, url.Values) {
			c["nbf"] = e.clock.Now().Add(2 * time.Minute).Unix()
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"iat in the future": func(c map[string]any) (string, url.Values) {
			c["iat"] = e.clock.Now().Add(2 * time.Minute).Unix()
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"far-future exp": func(c map[string]any) (string, url.Values) {
			c["exp"] = e.clock.Now().Add(time.Hour).Unix()
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"no exp": func(c map[string]any) (string, url.Values) {
			delete(c, "exp")
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"wrong aud": func(c map[string]any) (string, url.Values) {
			c["aud"] = "https://elsewhere.example"
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"other tenant aud": func(c map[string]any) (string, url.Values) {
			c["aud"] = e.srv.Issuer("other")
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"no jti": func(c map[string]any) (string, url.Values) {
			delete(c, "jti")
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"iss is not sub": func(c map[string]any) (string, url.Values) {
			c["sub"] = "other"
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"alg none": func(c map[string]any) (string, url.Values) {
			h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
			p, _ := json.Marshal(c)
			return h + "." + base64.RawURLEncoding.EncodeToString(p) + ".", nil
		},
		"HS256 with the public key": func(c map[string]any) (string, url.Values) {
			pub, _ := x509.MarshalPKIXPublicKey(k.priv.Public())
			return signAssertion(t, jose.HS256, pub, k.kid, c), nil
		},
		"HS256 with the JWKS": func(c map[string]any) (string, url.Values) {
			return signAssertion(t, jose.HS256, jwksOf(t, k), k.kid, c), nil
		},
		"key of another client": func(c map[string]any) (string, url.Values) {
			return signAssertion(t, jose.ES256, other.priv, other.kid, c), nil
		},
		"no kid, wrong key": func(c map[string]any) (string, url.Values) {
			return signAssertion(t, jose.ES256, other.priv, "", c), nil
		},
		"client_id param names another client": func(c map[string]any) (string, url.Values) {
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), url.Values{"client_id": {"other"}}
		},
		"unknown client": func(c map[string]any) (string, url.Values) {
			c["iss"], c["sub"] = "ghost", "ghost"
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
		"garbage": func(map[string]any) (string, url.Values) { return "not.a.jwt", nil },
		"secret-only client": func(c map[string]any) (string, url.Values) {
			c["iss"], c["sub"] = "legacy", "legacy"
			return signAssertion(t, jose.ES256, k.priv, k.kid, c), nil
		},
	}
	for name, mk := range bad {
		t.Run(name, func(t *testing.T) {
			a, extra := mk(assertionClaims(e, "acme", "svc"))
			f := assertionForm(a)
			for k, v := range extra {
				f[k] = v
			}
			wantOAuthError(t, e.postForm(path, f, "", ""), 401, "invalid_client")
		})
	}
	t.Run("assertion with Basic", func(t *testing.T) {
		a := signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc"))
		wantOAuthError(t, e.postForm(path, assertionForm(a), "legacy", secretOnly), 400, "invalid_request")
	})
	t.Run("wrong assertion type", func(t *testing.T) {
		f := assertionForm(signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc")))
		f.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
		wantOAuthError(t, e.postForm(path, f, "", ""), 400, "invalid_request")
	})
	t.Run("private_key_jwt-only client with a secret", func(t *testing.T) {
		e.addClient("acme", "pkonly", func(c *issuance.Client) {
			c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKS: jwksOf(t, k)}
		})
		s := e.addClient("acme", "pkonly2", func(c *issuance.Client) {
			c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKS: jwksOf(t, k)}
		})
		wantOAuthError(t, e.postForm(path, url.Values{"grant_type": {"client_credentials"}}, "pkonly2", s), 401, "invalid_client")
	})
	t.Run("introspection with private_key_jwt", func(t *testing.T) {
		tok := e.token("acme", "legacy", secretOnly, nil)
		f := assertionForm(signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc")))
		f.Del("grant_type")
		f.Set("token", tok)
		res := e.postForm("/t/acme/oauth2/introspect", f, "", "")
		if res.status != 200 || res.json(t)["active"] != true {
			t.Fatalf("introspect: %d %s", res.status, res.body)
		}
	})
}

// jwksServer serves a JWKS over TLS and counts fetches.
type jwksServer struct {
	ts      *httptest.Server
	fetches atomic.Int64
	body    atomic.Pointer[[]byte]
}

func newJWKSServer(t testing.TB, h http.HandlerFunc) *jwksServer {
	s := &jwksServer{}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			s.fetches.Add(1)
			w.Header().Set("Cache-Control", "public, max-age=600")
			w.Header().Set("Content-Type", "application/json")
			w.Write(*s.body.Load())
		}
	}
	s.ts = httptest.NewTLSServer(h)
	t.Cleanup(s.ts.Close)
	return s
}

func fetchFor(ts *httptest.Server, private bool) func(*issuance.Config) {
	return func(c *issuance.Config) {
		pool := x509.NewCertPool()
		pool.AddCert(ts.Certificate())
		// Generous: a TLS fetch from the test server may take seconds on a
		// loaded machine under -race (the tests of slow servers set 300 ms).
		c.ZeroTrust.Fetch = issuance.FetchPolicy{AllowPrivate: private, RootCAs: pool, Timeout: 30 * time.Second, MaxBytes: 64 << 10}
	}
}

func TestPrivateKeyJWTJWKSURI(t *testing.T) {
	js := newJWKSServer(t, nil)
	k1, k2 := newClientKey(t, "k1"), newClientKey(t, "k2")
	b := jwksOf(t, k1)
	js.body.Store(&b)
	e := newEnv(t, fetchFor(js.ts, true))
	e.addTenant("acme", issuance.AlgES256)
	e.addClient("acme", "svc", func(c *issuance.Client) {
		c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKSURI: js.ts.URL + "/jwks"}
	})
	path := "/t/acme/oauth2/token"
	post := func(k clientKey) response {
		return e.postForm(path, assertionForm(signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc"))), "", "")
	}
	for range 3 {
		if res := post(k1); res.status != 200 {
			t.Fatalf("status %d: %s", res.status, res.body)
		}
	}
	if n := js.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1 (Cache-Control max-age=600)", n)
	}
	// The client rotates: an unknown kid refetches once (at most once per
	// MinRefetch, default 30s, since the last fetch).
	b2 := jwksOf(t, k1, k2)
	js.body.Store(&b2)
	if res := post(k2); res.status != 401 {
		t.Fatalf("new kid within MinRefetch of the last fetch: status %d", res.status)
	}
	e.clock.Advance(31 * time.Second)
	if res := post(k2); res.status != 200 {
		t.Fatalf("new kid: status %d: %s", res.status, res.body)
	}
	if n := js.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	// Made-up kids do not refetch again within MinRefetch.
	for range 5 {
		wantOAuthError(t, post(newClientKey(t, "made-up")), 401, "invalid_client")
	}
	if n := js.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after unknown kids, want 2 (bounded refetch)", n)
	}
}

func TestJWKSURIGuards(t *testing.T) {
	k := newClientKey(t, "k1")
	body := jwksOf(t, k)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	handlers := map[string]http.HandlerFunc{
		"redirect": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://127.0.0.1:1/jwks", http.StatusFound)
		},
		"slow": func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		},
		"huge": func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"keys":[`))
			w.Write([]byte(strings.Repeat(" ", 1<<20)))
			w.Write(body[len(`{"keys":[`):])
		},
		"not found": func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) },
		"private key in JWKS": func(w http.ResponseWriter, r *http.Request) {
			b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.priv, KeyID: "k1"}}})
			w.Write(b)
		},
	}
	for name, h := range handlers {
		t.Run(name, func(t *testing.T) {
			js := newJWKSServer(t, h)
			opt := fetchFor(js.ts, true)
			e := newEnv(t, opt, func(c *issuance.Config) { c.ZeroTrust.Fetch.Timeout = 300 * time.Millisecond })
			e.addTenant("acme", issuance.AlgES256)
			e.addClient("acme", "svc", func(c *issuance.Client) {
				c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKSURI: js.ts.URL + "/jwks"}
			})
			a := signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc"))
			wantOAuthError(t, e.postForm("/t/acme/oauth2/token", assertionForm(a), "", ""), 401, "invalid_client")
		})
	}
	t.Run("private address", func(t *testing.T) {
		js := newJWKSServer(t, nil)
		js.body.Store(&body)
		e := newEnv(t, fetchFor(js.ts, false))
		e.addTenant("acme", issuance.AlgES256)
		e.addClient("acme", "svc", func(c *issuance.Client) {
			c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKSURI: js.ts.URL + "/jwks"}
		})
		a := signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc"))
		wantOAuthError(t, e.postForm("/t/acme/oauth2/token", assertionForm(a), "", ""), 401, "invalid_client")
		if js.fetches.Load() != 0 {
			t.Fatal("a loopback jwks_uri was fetched without AllowPrivate")
		}
	})
	t.Run("http scheme", func(t *testing.T) {
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
		t.Cleanup(hs.Close)
		e := newEnv(t, func(c *issuance.Config) { c.ZeroTrust.Fetch = issuance.FetchPolicy{AllowPrivate: true} })
		e.addTenant("acme", issuance.AlgES256)
		e.addClient("acme", "svc", func(c *issuance.Client) {
			c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKSURI: hs.URL + "/jwks"}
		})
		a := signAssertion(t, jose.ES256, k.priv, k.kid, assertionClaims(e, "acme", "svc"))
		wantOAuthError(t, e.postForm("/t/acme/oauth2/token", assertionForm(a), "", ""), 401, "invalid_client")
	})
}

// ----- mutual TLS -----

func TestMTLSClientAuth(t *testing.T) {
	e := newTLSEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	e.addTenant("beta", issuance.AlgES256)
	caA, caB := newCA(t, "acme CA"), newCA(t, "beta CA")
	e.st.PutTenant(issuance.Tenant{ID: "acme", DisplayName: "acme", SigningAlg: issuance.AlgES256,
		Trust: issuance.TenantTrust{ClientCAPEM: caA.pem, UpdatedAt: time.Unix(1, 0)}})
	e.st.PutTenant(issuance.Tenant{ID: "beta", DisplayName: "beta", SigningAlg: issuance.AlgES256,
		Trust: issuance.TenantTrust{ClientCAPEM: caB.pem, UpdatedAt: time.Unix(1, 0)}})
	introSecret := e.addClient("acme", "rs")
	e.addClient("acme", "billing", func(c *issuance.Client) {
		c.Secrets = nil
		c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodTLSClientAuth}, TLSSubjectDN: "CN=billing, O=Example"}
	})
	e.addClient("acme", "dnsclient", func(c *issuance.Client) {
		c.TokenFormat = issuance.FormatOpaque
		c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodTLSClientAuth}, TLSSANDNS: "billing.example"}
	})
	self := issueCert(t, nil, pkix.Name{CommonName: "self"})
	selfJWKS, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: self.PrivateKey.(*ecdsa.PrivateKey).Public(), KeyID: "c"}}})
	e.addClient("acme", "selfie", func(c *issuance.Client) {
		c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodSelfSignedTLSClientAuth}, JWKS: selfJWKS}
	})
	good := issueCert(t, &caA, pkix.Name{CommonName: "billing", Organization: []string{"Example"}}, "billing.example")
	form := func(id string) url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_id": {id}}
	}
	path := "/t/acme/oauth2/token"

	res := e.postWithCert(path, form("billing"), &good)
	if res.status != 200 {
		t.Fatalf("tls_client_auth: %d %s", res.status, res.body)
	}
	tok := res.json(t)["access_token"].(string)
	cnf, _ := jwtPayload(t, tok)["cnf"].(map[string]any)
	if want := issuance.Thumbprint(good.Certificate[0]); cnf["x5t#S256"] != want {
		t.Fatalf("cnf %v, want x5t#S256 %s", cnf, want)
	}
	intro := e.postWithCert("/t/acme/oauth2/introspect", url.Values{"token": {tok}}, nil)
	_ = intro
	req, _ := http.NewRequest(http.MethodPost, e.url("/t/acme/oauth2/introspect"), strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("rs", introSecret)
	ir := e.do(req).json(t)
	if c, _ := ir["cnf"].(map[string]any); c["x5t#S256"] != cnf["x5t#S256"] {
		t.Fatalf("introspection cnf %v", ir["cnf"])
	}

	// SAN match, opaque token: the binding survives sealing.
	res = e.postWithCert(path, form("dnsclient"), &good)
	if res.status != 200 {
		t.Fatalf("san: %d %s", res.status, res.body)
	}
	req, _ = http.NewRequest(http.MethodPost, e.url("/t/acme/oauth2/introspect"), strings.NewReader(url.Values{"token": {res.json(t)["access_token"].(string)}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("rs", introSecret)
	if c, _ := e.do(req).json(t)["cnf"].(map[string]any); c["x5t#S256"] != cnf["x5t#S256"] {
		t.Fatalf("opaque introspection cnf %v", c)
	}

	res = e.postWithCert(path, form("selfie"), &self)
	if res.status != 200 {
		t.Fatalf("self_signed_tls_client_auth: %d %s", res.status, res.body)
	}

	other := issueCert(t, &caB, pkix.Name{CommonName: "billing", Organization: []string{"Example"}}, "billing.example")
	wrongSubject := issueCert(t, &caA, pkix.Name{CommonName: "payments", Organization: []string{"Example"}})
	for name, c := range map[string]struct {
		id   string
		cert *tls.Certificate
	}{
		"chains to another tenant's CA": {"billing", &other},
		"subject does not match":        {"billing", &wrongSubject},
		"self-signed for a PKI client":  {"billing", &self},
		"no certificate":                {"billing", nil},
		"self-signed, other key":        {"selfie", &good},
		"secret client with a cert":     {"rs", &good},
	} {
		t.Run(name, func(t *testing.T) {
			wantOAuthError(t, e.postWithCert(path, form(c.id), c.cert), 401, "invalid_client")
		})
	}
}

func TestTrustedProxyCertHeader(t *testing.T) {
	ca := newCA(t, "mesh CA")
	leaf := issueCert(t, &ca, pkix.Name{CommonName: "billing"})
	rfc9440 := ":" + base64.StdEncoding.EncodeToString(leaf.Certificate[0]) + ":"
	escapedPEM := url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})))
	setup := func(proxies ...string) *env {
		e := newEnv(t, func(c *issuance.Config) {
			for _, p := range proxies {
				c.ZeroTrust.TrustedProxies = append(c.ZeroTrust.TrustedProxies, netip.MustParsePrefix(p))
			}
		})
		e.addTenant("acme", issuance.AlgES256)
		e.st.PutTenant(issuance.Tenant{ID: "acme", DisplayName: "acme", SigningAlg: issuance.AlgES256,
			Trust: issuance.TenantTrust{ClientCAPEM: ca.pem, UpdatedAt: time.Unix(1, 0)}})
		e.addClient("acme", "billing", func(c *issuance.Client) {
			c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodTLSClientAuth}, TLSSubjectDN: "CN=billing"}
		})
		return e
	}
	post := func(e *env, header string) response {
		req, _ := http.NewRequest(http.MethodPost, e.url("/t/acme/oauth2/token"),
			strings.NewReader(url.Values{"grant_type": {"client_credentials"}, "client_id": {"billing"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Client-Cert", header)
		return e.do(req)
	}
	trusted := setup("127.0.0.0/8")
	for _, h := range []string{rfc9440, escapedPEM} {
		res := post(trusted, h)
		if res.status != 200 {
			t.Fatalf("trusted proxy: %d %s", res.status, res.body)
		}
		cnf, _ := jwtPayload(t, res.json(t)["access_token"].(string))["cnf"].(map[string]any)
		if cnf["x5t#S256"] != issuance.Thumbprint(leaf.Certificate[0]) {
			t.Fatalf("cnf %v", cnf)
		}
	}
	wantOAuthError(t, post(trusted, ":bm90IGEgY2VydA==:"), 401, "invalid_client")
	// The same header from an address that is not a trusted proxy is
	// ignored: no certificate, no authentication.
	untrusted := setup("10.0.0.0/8")
	wantOAuthError(t, post(untrusted, rfc9440), 401, "invalid_client")
}

// ----- workload identity federation -----

func TestWorkloadFederation(t *testing.T) {
	platform := newClientKey(t, "sa-key")
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	e.addClient("acme", "billing-client", func(c *issuance.Client) { c.Secrets = nil })
	e.st.PutTenant(issuance.Tenant{ID: "acme", DisplayName: "acme", SigningAlg: issuance.AlgES256,
		Trust: issuance.TenantTrust{Federations: []issuance.FederationTrust{{
			Name: "k8s", Issuer: "https://k8s.example/cluster-1", JWKS: jwksOf(t, platform), Audience: "tally",
			Subjects: map[string]string{"system:serviceaccount:payments:billing": "billing-client"},
		}}}})
	k8sToken := func(mod func(map[string]any)) string {
		now := e.clock.Now()
		c := map[string]any{"iss": "https://k8s.example/cluster-1", "sub": "system:serviceaccount:payments:billing",
			"aud": []string{"tally"}, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "nbf": now.Unix()}
		if mod != nil {
			mod(c)
		}
		return signAssertion(t, jose.ES256, platform.priv, platform.kid, c)
	}
	path := "/t/acme/oauth2/token"
	tok := k8sToken(nil)
	for range 2 { // a platform token is reusable for its lifetime
		res := e.postForm(path, assertionForm(tok), "", "")
		if res.status != 200 {
			t.Fatalf("federated: %d %s", res.status, res.body)
		}
		if got := jwtPayload(t, res.json(t)["access_token"].(string))["client_id"]; got != "billing-client" {
			t.Fatalf("client_id %v", got)
		}
	}
	for name, a := range map[string]string{
		"unmapped subject": k8sToken(func(c map[string]any) { c["sub"] = "system:serviceaccount:payments:other" }),
		"untrusted issuer": k8sToken(func(c map[string]any) { c["iss"] = "https://evil.example" }),
		"wrong audience":   k8sToken(func(c map[string]any) { c["aud"] = "someone-else" }),
		"expired":          k8sToken(func(c map[string]any) { c["exp"] = e.clock.Now().Add(-time.Hour).Unix() }),
		"other key":        signAssertion(t, jose.ES256, newClientKey(t, "sa-key").priv, "sa-key", jwtPayload(t, tok)),
	} {
		t.Run(name, func(t *testing.T) {
			wantOAuthError(t, e.postForm(path, assertionForm(a), "", ""), 401, "invalid_client")
		})
	}
}

func TestWorkloadFederationDiscovery(t *testing.T) {
	platform := newClientKey(t, "spiffe")
	var issuer string
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": issuer, "jwks_uri": issuer + "/keys"})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) { w.Write(jwksOf(t, platform)) })
	ts := httptest.NewTLSServer(mux)
	t.Cleanup(ts.Close)
	issuer = ts.URL
	e := newEnv(t, fetchFor(ts, true))
	e.addTenant("acme", issuance.AlgES256)
	e.addClient("acme", "w", func(c *issuance.Client) { c.Secrets = nil })
	e.st.PutTenant(issuance.Tenant{ID: "acme", DisplayName: "acme", SigningAlg: issuance.AlgES256,
		Trust: issuance.TenantTrust{Federations: []issuance.FederationTrust{{Name: "spiffe", Issuer: issuer,
			Subjects: map[string]string{"spiffe://example.org/ns/prod/sa/w": "w"}}}}})
	now := e.clock.Now()
	a := signAssertion(t, jose.ES256, platform.priv, platform.kid, map[string]any{"iss": issuer, "sub": "spiffe://example.org/ns/prod/sa/w",
		"aud": e.srv.Issuer("acme"), "exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix()})
	if res := e.postForm("/t/acme/oauth2/token", assertionForm(a), "", ""); res.status != 200 {
		t.Fatalf("status %d: %s", res.status, res.body)
	}
}

func TestDiscoveryZeroTrust(t *testing.T) {
	e := newEnv(t, func(c *issuance.Config) { c.ZeroTrust.MTLSBaseURL = "https://mtls.example" })
	e.addTenant("acme", issuance.AlgES256)
	md := e.get("/t/acme/.well-known/oauth-authorization-server").json(t)
	methods, _ := md["token_endpoint_auth_methods_supported"].([]any)
	for _, want := range []string{"client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth"} {
		found := false
		for _, m := range methods {
			found = found || m == want
		}
		if !found {
			t.Errorf("token_endpoint_auth_methods_supported %v lacks %s", methods, want)
		}
	}
	if md["tls_client_certificate_bound_access_tokens"] != true {
		t.Errorf("tls_client_certificate_bound_access_tokens %v", md["tls_client_certificate_bound_access_tokens"])
	}
	al, _ := md["mtls_endpoint_aliases"].(map[string]any)
	if al["token_endpoint"] != "https://mtls.example/t/acme/oauth2/token" {
		t.Errorf("mtls_endpoint_aliases %v", al)
	}
}

func io_Copy(sb *strings.Builder, res *http.Response) (int64, error) {
	b := make([]byte, 32<<10)
	var n int64
	for {
		m, err := res.Body.Read(b)
		sb.Write(b[:m])
		n += int64(m)
		if err != nil {
			return n, nil
		}
	}
}
