package issuance_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/issuancetest"
)

// fuzzSecret is the secret of client "svc" in the fuzz server; seeds use it
// so the fuzzer reaches the grant and minting code.
const fuzzSecret = "fuzz-secret-0123456789abcdefghijklmnopqrstu"

// FuzzParseTokenRequest feeds arbitrary headers, query and body to the token
// request parser and to the whole token endpoint. The parser must return a
// well-formed request or a 4xx protocol error; the endpoint must never
// answer 5xx (a recovered panic would be a 500).
func FuzzParseTokenRequest(f *testing.F) {
	st := issuancetest.NewState()
	kek, _ := issuance.NewKEK(bytes.Repeat([]byte{7}, issuance.KEKSize))
	now := time.Unix(1_800_000_000, 0)
	st.PutTenant(issuance.Tenant{ID: "acme"})
	for _, spec := range []struct {
		alg string
		use issuance.KeyUse
	}{{issuance.AlgEdDSA, issuance.UseSign}, {issuance.AlgA256GCM, issuance.UseSeal}} {
		k, err := issuance.GenerateKey(kek, rand.Reader, "acme", spec.alg, spec.use, now, now.Add(-time.Hour))
		if err != nil {
			f.Fatal(err)
		}
		st.PutKey(k)
	}
	st.PutClient(issuance.Client{
		Tenant: "acme", ID: "svc", Secrets: []issuance.SecretHash{{Hash: kek.HashSecret(fuzzSecret)}},
		GrantTypes: []string{issuance.GrantClientCredentials}, Scopes: []string{"read", "write"},
		Audiences: []string{"https://api.example.com"},
	})
	st.PutClient(issuance.Client{
		Tenant: "acme", ID: "op", Secrets: []issuance.SecretHash{{Hash: kek.HashSecret(fuzzSecret)}},
		GrantTypes: []string{issuance.GrantClientCredentials}, Scopes: []string{"read"}, TokenFormat: issuance.FormatOpaque,
	})
	cfg := issuance.DefaultConfig()
	cfg.BaseURL = "http://127.0.0.1:9"
	cfg.KEK = kek
	cfg.Now = func() time.Time { return now }
	cfg.MaxBodyBytes = 1 << 10
	srv, err := issuance.NewServer(cfg, st, issuancetest.NewRevoker(st))
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()

	form := "application/x-www-form-urlencoded"
	f.Add(form, basic("svc", fuzzSecret), []byte("grant_type=client_credentials"), "")
	f.Add(form, "", []byte("grant_type=client_credentials&client_id=op&client_secret="+fuzzSecret+"&scope=read"), "")
	f.Add(form+"; charset=utf-8", basic("svc", fuzzSecret), []byte("grant_type=client_credentials&scope=read+write&resource=https%3A%2F%2Fapi.example.com"), "")
	f.Add(form, basic("svc", "x"), []byte("grant_type=client_credentials&grant_type=client_credentials"), "")
	f.Add(form, "Basic !!", []byte("grant_type=a;b=c&scope=%zz"), "client_secret=x")
	f.Add("text/plain", "Bearer x", []byte("{}"), "a=b")

	f.Fuzz(func(t *testing.T, ctype, authz string, body []byte, query string) {
		newReq := func() *http.Request {
			r := &http.Request{
				Method:        http.MethodPost,
				URL:           &url.URL{Scheme: "http", Host: "127.0.0.1:9", Path: "/t/acme/oauth2/token", RawQuery: query},
				Header:        http.Header{},
				Body:          io.NopCloser(bytes.NewReader(body)),
				ContentLength: int64(len(body)),
				Host:          "127.0.0.1:9",
				RequestURI:    "/t/acme/oauth2/token",
			}
			if ctype != "" {
				r.Header.Set("Content-Type", ctype)
			}
			if authz != "" {
				r.Header.Set("Authorization", authz)
			}
			return r
		}

		req, err := issuance.ParseTokenRequestForTest(newReq(), cfg.MaxBodyBytes)
		if err != nil {
			var pe *issuance.Error
			if !errors.As(err, &pe) || pe.Status < 400 || pe.Status >= 500 || pe.Code == "" {
				t.Fatalf("parser error %#v is not a 4xx protocol error", err)
			}
			checkDescription(t, pe.Description)
		} else {
			if req.GrantType == "" {
				t.Fatal("parsed request without grant_type")
			}
			if req.ScopeRequested != (len(req.Scope) > 0) {
				t.Fatalf("ScopeRequested=%v with scope %q", req.ScopeRequested, req.Scope)
			}
			for _, s := range req.Scope {
				if !issuance.ValidScopeToken(s) {
					t.Fatalf("invalid scope token %q accepted", s)
				}
			}
			for _, r := range req.Resources {
				if u, err := url.Parse(r); err != nil || !u.IsAbs() || strings.Contains(r, "#") {
					t.Fatalf("invalid resource %q accepted", r)
				}
			}
			if req.Client.Method != "" && req.Client.Secret == "" {
				t.Fatalf("method %q without a secret", req.Client.Method)
			}
		}

		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, newReq())
		if rec.Code >= 500 || rec.Code == 0 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("non-JSON response %d %q", rec.Code, rec.Body)
		}
		if rec.Code == http.StatusOK {
			if out["access_token"] == nil || out["token_type"] != "Bearer" {
				t.Fatalf("200 without a token: %s", rec.Body)
			}
		} else {
			d, _ := out["error_description"].(string)
			checkDescription(t, d)
			if rec.Header().Get("Cache-Control") != "no-store" {
				t.Fatal("error without Cache-Control: no-store")
			}
		}
	})
}

func checkDescription(t *testing.T, d string) {
	t.Helper()
	for _, c := range []byte(d) {
		if c < 0x20 || c == 0x22 || c == 0x5c || c > 0x7e {
			t.Fatalf("error_description %q has a forbidden character", d)
		}
	}
}

// FuzzUnseal feeds arbitrary strings to the opaque token unsealer, and
// arbitrary plaintexts (sealed with a valid key, so they pass the AEAD) to
// the claim decoder behind it.
func FuzzUnseal(f *testing.F) {
	kek, _ := issuance.NewKEK(bytes.Repeat([]byte{9}, issuance.KEKSize))
	now := time.Unix(1_800_000_000, 0)
	key, err := issuance.GenerateKey(kek, rand.Reader, "acme", issuance.AlgA256GCM, issuance.UseSeal, now, now)
	if err != nil {
		f.Fatal(err)
	}
	s, err := issuance.NewSealerForTest(kek, key)
	if err != nil {
		f.Fatal(err)
	}
	valid := issuance.TokenDataForTest{
		JTI: "jti-0123456789abcdefgh", ClientID: "svc", Subject: "svc", Scope: []string{"read", "write"},
		Audience: []string{"https://api.example.com"}, IssuedAt: now, ExpiresAt: now.Add(time.Hour),
	}
	tok, err := s.Seal(rand.Reader, valid)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(tok))
	f.Add([]byte("tly1." + key.ID + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
	f.Add([]byte("tly1..."))
	valid.Tenant = "acme"
	f.Add(issuance.EncodeOpaqueForTest(valid))
	f.Add([]byte{1, 1, 'j', 4, 'a', 'c', 'm', 'e', 1, 'c', 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 2, 2})

	f.Fuzz(func(t *testing.T, data []byte) {
		// As a presented token.
		if d, err := s.Unseal("acme", string(data)); err == nil {
			if d.Tenant != "acme" || d.JTI == "" || d.ClientID == "" {
				t.Fatalf("unsealed incomplete claims %+v", d)
			}
		} else if !errors.Is(err, issuance.ErrInvalidToken) {
			t.Fatalf("error %v does not wrap ErrInvalidToken", err)
		}
		// As an authenticated plaintext.
		sealed, err := s.SealRaw(rand.Reader, data)
		if err != nil {
			t.Fatal(err)
		}
		d, err := s.Unseal("acme", sealed)
		if _, err2 := s.Unseal("other", sealed); err2 == nil {
			t.Fatal("token unsealed for another tenant")
		}
		if err != nil {
			if !errors.Is(err, issuance.ErrInvalidToken) {
				t.Fatalf("error %v does not wrap ErrInvalidToken", err)
			}
			return
		}
		if d.Tenant != "acme" || d.JTI == "" || d.ClientID == "" || !d.ExpiresAt.After(time.Unix(0, 0)) {
			t.Fatalf("decoded incomplete claims %+v", d)
		}
		// Decoding is stable: re-encoding what was decoded decodes the same.
		again, err := s.SealRaw(rand.Reader, issuance.EncodeOpaqueForTest(d))
		if err != nil {
			t.Fatal(err)
		}
		d2, err := s.Unseal("acme", again)
		if err != nil {
			t.Fatalf("re-encoded claims do not decode: %v", err)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("decode(encode(d)) != d:\n%+v\n%+v", d, d2)
		}
	})
}
