package loadtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

const (
	testClientID     = "load client"
	testClientSecret = "s3cret:with/odd+chars"
)

// startBaseline serves a baseline on 127.0.0.1 and returns its issuer URL.
func startBaseline(t testing.TB, alg string, mutate func(*BaselineConfig)) (issuer string, key crypto.Signer) {
	t.Helper()
	key, err := NewSigningKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	cfg := DefaultBaselineConfig()
	cfg.Issuer = srv.URL + "/t/default"
	cfg.ClientID, cfg.ClientSecret = testClientID, testClientSecret
	cfg.Scopes = []string{"read:orders", "write:orders"}
	cfg.Alg, cfg.Key = alg, key
	if mutate != nil {
		mutate(&cfg)
	}
	if h, err = NewBaseline(cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Issuer, key
}

// basic encodes client credentials as RFC 6749 section 2.3.1 says.
func basic(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

func postToken(t testing.TB, tokenURL, auth, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

const form = "application/x-www-form-urlencoded"

func TestBaselineIssuesVerifiableToken(t *testing.T) {
	for _, tc := range []struct {
		alg     string
		joseAlg jose.SignatureAlgorithm
	}{
		{AlgES256, jose.ES256},
		{AlgEdDSA, jose.EdDSA},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			issuer, key := startBaseline(t, tc.alg, nil)
			before := time.Now().Add(-time.Second)
			resp, body := postToken(t, issuer+"/oauth2/token", basic(testClientID, testClientSecret), form,
				"grant_type=client_credentials&scope=read%3Aorders")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", got)
			}
			var tr map[string]any
			if err := json.Unmarshal(body, &tr); err != nil {
				t.Fatal(err)
			}
			if tr["token_type"] != "Bearer" || tr["expires_in"] != float64(300) || tr["scope"] != "read:orders" {
				t.Errorf("token response = %v", tr)
			}
			raw, _ := tr["access_token"].(string)

			jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{tc.joseAlg})
			if err != nil {
				t.Fatal(err)
			}
			hdr := jws.Signatures[0].Header
			if hdr.ExtraHeaders["typ"] != "at+jwt" {
				t.Errorf("typ = %v, want at+jwt", hdr.ExtraHeaders["typ"])
			}
			want := jose.JSONWebKey{Key: key.Public()}
			tp, _ := want.Thumbprint(crypto.SHA256)
			if hdr.KeyID != base64.RawURLEncoding.EncodeToString(tp) {
				t.Errorf("kid = %q, want the key's RFC 7638 thumbprint", hdr.KeyID)
			}
			payload, err := jws.Verify(key.Public())
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			var c struct {
				Iss      string `json:"iss"`
				Sub      string `json:"sub"`
				Aud      any    `json:"aud"`
				Exp, Iat int64
				JTI      string `json:"jti"`
				ClientID string `json:"client_id"`
				Scope    string `json:"scope"`
			}
			if err := json.Unmarshal(payload, &c); err != nil {
				t.Fatal(err)
			}
			if c.Iss != issuer || c.Sub != testClientID || c.ClientID != testClientID || c.Scope != "read:orders" ||
				c.Aud != issuer {
				t.Errorf("claims = %+v", c)
			}
			if c.Iat < before.Unix() || c.Exp-c.Iat != 300 {
				t.Errorf("iat %d exp %d", c.Iat, c.Exp)
			}
			if jti, err := base64.RawURLEncoding.DecodeString(c.JTI); err != nil || len(jti) != 16 {
				t.Errorf("jti %q is not 128 random bits", c.JTI)
			}
			// The JWKS it serves verifies the token too.
			jr, err := http.Get(issuer + "/jwks.json")
			if err != nil {
				t.Fatal(err)
			}
			defer jr.Body.Close()
			var set jose.JSONWebKeySet
			if err := json.NewDecoder(jr.Body).Decode(&set); err != nil {
				t.Fatal(err)
			}
			keys := set.Key(hdr.KeyID)
			if len(keys) != 1 {
				t.Fatalf("jwks has %d keys for kid %q", len(keys), hdr.KeyID)
			}
			if _, err := jws.Verify(keys[0].Key); err != nil {
				t.Errorf("verify with jwks key: %v", err)
			}
		})
	}
}

func TestBaselineUniqueJTIAndDefaultScope(t *testing.T) {
	issuer, key := startBaseline(t, AlgES256, func(c *BaselineConfig) { c.Audience = []string{"https://a.example", "https://b.example"} })
	seen := map[string]bool{}
	for range 5 {
		resp, body := postToken(t, issuer+"/oauth2/token", basic(testClientID, testClientSecret), form, "grant_type=client_credentials")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var tr struct {
			AccessToken string `json:"access_token"`
			Scope       string `json:"scope"`
		}
		if err := json.Unmarshal(body, &tr); err != nil {
			t.Fatal(err)
		}
		if tr.Scope != "read:orders write:orders" {
			t.Errorf("default scope = %q", tr.Scope)
		}
		jws, err := jose.ParseSignedCompact(tr.AccessToken, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		payload, err := jws.Verify(key.Public())
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			JTI string   `json:"jti"`
			Aud []string `json:"aud"`
		}
		if err := json.Unmarshal(payload, &c); err != nil {
			t.Fatal(err)
		}
		if seen[c.JTI] {
			t.Errorf("jti %q repeated", c.JTI)
		}
		seen[c.JTI] = true
		if len(c.Aud) != 2 || c.Aud[0] != "https://a.example" || c.Aud[1] != "https://b.example" {
			t.Errorf("aud = %v", c.Aud)
		}
	}
}

func TestBaselineErrors(t *testing.T) {
	issuer, _ := startBaseline(t, AlgEdDSA, func(c *BaselineConfig) { c.MaxBodyBytes = 1024 })
	good := basic(testClientID, testClientSecret)
	for _, tc := range []struct {
		name        string
		method      string
		auth, ctype string
		body        string
		status      int
		code        string
	}{
		{"get", http.MethodGet, good, form, "", http.StatusMethodNotAllowed, "invalid_request"},
		{"json body", "", good, "application/json", `{"grant_type":"client_credentials"}`, 400, "invalid_request"},
		{"no content type", "", good, "", "grant_type=client_credentials", 400, "invalid_request"},
		{"no auth", "", "", form, "grant_type=client_credentials", 401, "invalid_client"},
		{"wrong secret", "", basic(testClientID, "nope"), form, "grant_type=client_credentials", 401, "invalid_client"},
		{"wrong id", "", basic("other", testClientSecret), form, "grant_type=client_credentials", 401, "invalid_client"},
		{"unencoded basic", "", "Basic " + base64.StdEncoding.EncodeToString([]byte("%zz:x")), form, "grant_type=client_credentials", 401, "invalid_client"},
		{"bearer", "", "Bearer abc", form, "grant_type=client_credentials", 401, "invalid_client"},
		{"two auth methods", "", good, form, "grant_type=client_credentials&client_secret=x", 400, "invalid_request"},
		{"client_id mismatch", "", good, form, "grant_type=client_credentials&client_id=other", 400, "invalid_request"},
		{"missing grant", "", good, form, "scope=read%3Aorders", 400, "invalid_request"},
		{"empty grant", "", good, form, "grant_type=", 400, "invalid_request"},
		{"other grant", "", good, form, "grant_type=password", 400, "unsupported_grant_type"},
		{"repeated grant", "", good, form, "grant_type=client_credentials&grant_type=client_credentials", 400, "invalid_request"},
		{"bad form", "", good, form, "grant_type=%zz", 400, "invalid_request"},
		{"unknown scope", "", good, form, "grant_type=client_credentials&scope=admin", 400, "invalid_scope"},
		{"scope with double space", "", good, form, "grant_type=client_credentials&scope=read%3Aorders++write%3Aorders", 400, "invalid_scope"},
		{"body too large", "", good, form, "grant_type=client_credentials&pad=" + strings.Repeat("a", 2048), 400, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			req, err := http.NewRequest(method, issuer+"/oauth2/token", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e errorResponse
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || e.Error != tc.code {
				t.Errorf("got %d %q (%s), want %d %q", resp.StatusCode, e.Error, e.ErrorDescription, tc.status, tc.code)
			}
			if resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("error without Cache-Control: no-store")
			}
			if resp.StatusCode == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("401 without a Basic challenge")
			}
		})
	}
}

func TestBaselineConfigValidate(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := NewSigningKey(AlgES256)
	ok := func() BaselineConfig {
		c := DefaultBaselineConfig()
		c.Issuer, c.ClientID, c.ClientSecret, c.Key = "http://127.0.0.1:1/x", "id", "secret", p256
		return c
	}
	if err := ok().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*BaselineConfig){
		"relative issuer": func(c *BaselineConfig) { c.Issuer = "/x" },
		"issuer query":    func(c *BaselineConfig) { c.Issuer = "http://h/x?a=b" },
		"ftp issuer":      func(c *BaselineConfig) { c.Issuer = "ftp://h/x" },
		"no client":       func(c *BaselineConfig) { c.ClientID = "" },
		"no secret":       func(c *BaselineConfig) { c.ClientSecret = "" },
		"bad scope":       func(c *BaselineConfig) { c.Scopes = []string{"a b"} },
		"no key":          func(c *BaselineConfig) { c.Key = nil },
		"P-384 for ES256": func(c *BaselineConfig) { c.Key = ec },
		"ES256 for EdDSA": func(c *BaselineConfig) { c.Alg = AlgEdDSA },
		"Ed25519 ES256":   func(c *BaselineConfig) { c.Key = ed },
		"RS256":           func(c *BaselineConfig) { c.Alg = "RS256" },
		"short ttl":       func(c *BaselineConfig) { c.TTL = time.Millisecond },
		"no body":         func(c *BaselineConfig) { c.MaxBodyBytes = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			c := ok()
			mutate(&c)
			if err := c.Validate(); err == nil {
				t.Error("Validate accepted it")
			}
			if _, err := NewBaseline(c); err == nil {
				t.Error("NewBaseline accepted it")
			}
		})
	}
	if _, err := NewSigningKey("HS256"); err == nil {
		t.Error("NewSigningKey accepted HS256")
	}
}

func TestBaselineDiscoverable(t *testing.T) {
	issuer, _ := startBaseline(t, AlgES256, nil)
	md, err := Discover(context.Background(), issuer)
	if err != nil {
		t.Fatal(err)
	}
	if md.Issuer != issuer || md.TokenEndpoint != issuer+"/oauth2/token" || md.JWKSURI != issuer+"/jwks.json" {
		t.Errorf("metadata = %+v", md)
	}
}

// FuzzBaselineToken sends arbitrary bodies and Authorization headers to the
// token endpoint: it must answer with a JSON OAuth error or a token, never
// a 5xx or a panic.
func FuzzBaselineToken(f *testing.F) {
	key, err := NewSigningKey(AlgEdDSA)
	if err != nil {
		f.Fatal(err)
	}
	cfg := DefaultBaselineConfig()
	cfg.Issuer, cfg.ClientID, cfg.ClientSecret = "http://127.0.0.1/t", testClientID, testClientSecret
	cfg.Alg, cfg.Key, cfg.Scopes, cfg.MaxBodyBytes = AlgEdDSA, key, []string{"read:orders"}, 4096
	h, err := NewBaseline(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("grant_type=client_credentials", basic(testClientID, testClientSecret))
	f.Add("grant_type=client_credentials&scope=read%3Aorders+read%3Aorders", basic(testClientID, testClientSecret))
	f.Add("grant_type=client_credentials&scope=%00", basic(testClientID, testClientSecret))
	f.Add("a=%", "Basic !!!")
	f.Add("grant_type=authorization_code&code=x", "Basic Og==")
	f.Fuzz(func(t *testing.T, body, auth string) {
		req := httptest.NewRequest(http.MethodPost, "/t/oauth2/token", strings.NewReader(body))
		req.Header.Set("Content-Type", form)
		req.Header.Set("Authorization", auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("status %d for body %q auth %q", rec.Code, body, auth)
		}
		var v map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("answer is not JSON: %q", rec.Body.String())
		}
		if rec.Code == http.StatusOK {
			if _, ok := v["access_token"].(string); !ok {
				t.Fatalf("200 without access_token: %v", v)
			}
		} else if _, ok := v["error"].(string); !ok {
			t.Fatalf("%d without error: %v", rec.Code, v)
		}
	})
}
