package issuance_test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
)

func (e *env) jwksKids(tenant string) []string {
	e.t.Helper()
	res := e.get("/t/" + tenant + "/jwks.json")
	if res.status != http.StatusOK {
		e.t.Fatalf("jwks: %d %s", res.status, res.body)
	}
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(res.body, &set); err != nil {
		e.t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.Kid)
	}
	return kids
}

func kidOf(t *testing.T, tok string) string {
	t.Helper()
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal([]byte(decodeSegment(t, strings.Split(tok, ".")[0])), &h); err != nil {
		t.Fatal(err)
	}
	return h.Kid
}

// TestKeyRotation: a pending key is published before it signs; the old key
// keeps verifying after it stops signing, until it expires.
func TestKeyRotation(t *testing.T) {
	e := newEnv(t)
	k1, _ := e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc", func(c *issuance.Client) { c.AccessTokenTTL = 10 * time.Minute })

	tok1 := e.token("acme", "svc", secret, nil)
	if kidOf(t, tok1) != k1.ID {
		t.Fatal("not signed by the only key")
	}
	loads := e.srv.KeyLoads()

	// Stage 1: k2 is pending. Published, not signing.
	k2 := e.addKey("acme", issuance.AlgES256, issuance.UseSign, e.clock.Now().Add(5*time.Minute))
	if kids := e.jwksKids("acme"); !slices.Equal(kids, []string{k1.ID, k2.ID}) {
		t.Fatalf("jwks %v, want [k1 k2]", kids)
	}
	if kid := kidOf(t, e.token("acme", "svc", secret, nil)); kid != k1.ID {
		t.Fatalf("pending key signed")
	}

	// Stage 2: k2 becomes current at its NotBefore; k1 tokens still verify.
	e.clock.Advance(5 * time.Minute)
	tok2 := e.token("acme", "svc", secret, nil)
	if kidOf(t, tok2) != k2.ID {
		t.Fatal("new key does not sign after its NotBefore")
	}
	if _, _, err := e.verifyWithJWKS("acme", tok1); err != nil {
		t.Fatalf("old token no longer verifies: %v", err)
	}
	if m := e.introspect("acme", "svc", secret, tok1); m["active"] != true {
		t.Fatal("old token inactive while its key is published")
	}

	// Stage 3: k1 retired, expiring after the longest token it signed.
	k1.RetiredAt = e.clock.Now()
	k1.ExpiresAt = e.clock.Now().Add(10 * time.Minute)
	e.st.PutKey(k1)
	if kids := e.jwksKids("acme"); !slices.Equal(kids, []string{k1.ID, k2.ID}) {
		t.Fatalf("jwks %v after retiring k1", kids)
	}
	if kidOf(t, e.token("acme", "svc", secret, nil)) != k2.ID {
		t.Fatal("retired key signs")
	}

	// Stage 4: k1 expired: unpublished, its tokens inactive (the replica may
	// still list it; the clock decides).
	e.clock.Advance(10 * time.Minute)
	if kids := e.jwksKids("acme"); !slices.Equal(kids, []string{k2.ID}) {
		t.Fatalf("jwks %v after k1 expired", kids)
	}
	if m := e.introspect("acme", "svc", secret, tok1); m["active"] != false {
		t.Fatal("token of an expired key active")
	}
	e.st.DeleteKey("acme", k1.ID)
	if kidOf(t, e.token("acme", "svc", secret, nil)) != k2.ID {
		t.Fatal("k2 stopped signing")
	}

	// Each key was decrypted once, however many requests ran; metadata
	// changes (retiring) did not decrypt again.
	if got := e.srv.KeyLoads() - loads; got != 1 {
		t.Errorf("%d key loads during rotation, want 1 (k2)", got)
	}
}

func TestSigningKeySelection(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	e.st.PutTenant(issuance.Tenant{ID: "acme", SigningAlg: issuance.AlgEdDSA})
	ed := e.addKey("acme", issuance.AlgEdDSA, issuance.UseSign, now.Add(-2*time.Hour))
	es := e.addKey("acme", issuance.AlgES256, issuance.UseSign, now.Add(-time.Hour))
	secret := e.addClient("acme", "svc")
	if kid := kidOf(t, e.token("acme", "svc", secret, nil)); kid != ed.ID {
		t.Errorf("signed with %s, want the tenant's preferred EdDSA key", kid)
	}
	e.st.PutTenant(issuance.Tenant{ID: "acme"})
	if kid := kidOf(t, e.token("acme", "svc", secret, nil)); kid != es.ID {
		t.Errorf("signed with %s, want the latest key", kid)
	}
	// A key expiring before the token would, caps the token.
	es.ExpiresAt = now.Add(2 * time.Minute)
	e.st.PutKey(es)
	res := e.postForm("/t/acme/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", secret)
	if got := res.json(t)["expires_in"]; got != float64(120) {
		t.Errorf("expires_in %v, want capped to the key's 120s", got)
	}
	// Only retired keys left: no signing key, 503 rather than a token that
	// outlives its key.
	for _, k := range []issuance.Key{ed, es} {
		k.RetiredAt = now
		k.ExpiresAt = now.Add(time.Hour)
		e.st.PutKey(k)
	}
	res = e.postForm("/t/acme/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", secret)
	checkProtocolResponse(t, e, res, http.StatusServiceUnavailable, "temporarily_unavailable")
}

// TestKeyringCache: keys are decrypted once per kid, not per request; a key
// whose private part cannot be decrypted is still published but never signs;
// tenants whose keys disappear are evicted.
func TestKeyringCache(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	e.addClient("acme", "op", func(c *issuance.Client) {
		c.TokenFormat = issuance.FormatOpaque
		c.Secrets[0].Hash = e.kek.HashSecret(secret)
	})
	for range 20 {
		e.token("acme", "svc", secret, nil)
		tok := e.token("acme", "op", secret, nil)
		e.introspect("acme", "svc", secret, tok)
	}
	if got := e.srv.KeyLoads(); got != 2 {
		t.Errorf("%d key loads for 60 requests over 2 keys, want 2", got)
	}

	// A newer key sealed under another KEK (a misconfigured node): published
	// from its public part, skipped for signing.
	foreign, err := issuance.GenerateKey(newKEK(t), rand.Reader, "acme", issuance.AlgES256, issuance.UseSign, e.clock.Now(), e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	e.st.PutKey(foreign)
	if kids := e.jwksKids("acme"); !slices.Contains(kids, foreign.ID) {
		t.Errorf("jwks %v lacks the undecryptable key", kids)
	}
	if kid := kidOf(t, e.token("acme", "svc", secret, nil)); kid == foreign.ID {
		t.Error("signed with an undecryptable key")
	}

	if e.srv.CachedTenants() != 1 {
		t.Fatalf("%d cached tenants", e.srv.CachedTenants())
	}
	for _, k := range mustKeys(t, e, "acme") {
		e.st.DeleteKey("acme", k.ID)
	}
	e.get("/t/acme/jwks.json")
	if n := e.srv.CachedTenants(); n != 0 {
		t.Errorf("%d cached tenants after all keys were removed", n)
	}
}

func mustKeys(t *testing.T, e *env, tenant string) []issuance.Key {
	t.Helper()
	ks, err := e.st.Keys(bg, tenant)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Clone(ks)
}

// TestConcurrentIssuanceDuringRotation issues and introspects tokens from
// many goroutines while keys are added and retired, for the race detector
// and to show every token minted mid-rotation stays verifiable.
func TestConcurrentIssuanceDuringRotation(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgEdDSA)
	secret := e.addClient("acme", "svc")
	e.addClient("acme", "op", func(c *issuance.Client) {
		c.TokenFormat = issuance.FormatOpaque
		c.Secrets[0].Hash = e.kek.HashSecret(secret)
	})
	h := e.srv.Handler()
	authz := basic("svc", secret)
	authzOp := basic("op", secret)

	const workers, perWorker = 4, 25
	toks := make(chan string, workers*perWorker)
	errs := make(chan error, workers)
	done := make(chan struct{})
	// Keys are generated up front; the rotation goroutine only changes State.
	var rotation []issuance.Key
	for i := range 5 {
		sig, err := issuance.GenerateKey(e.kek, rand.Reader, "acme", issuance.AlgEdDSA, issuance.UseSign, e.clock.Now(), e.clock.Now().Add(-time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		seal, err := issuance.GenerateKey(e.kek, rand.Reader, "acme", issuance.AlgA256GCM, issuance.UseSeal, e.clock.Now(), e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		rotation = append(rotation, sig, seal)
	}
	go func() {
		defer close(done)
		for i, k := range rotation {
			e.st.PutKey(k)
			if i >= 2 { // retire the key before last: still verifying, no longer signing
				old := rotation[i-2]
				old.RetiredAt = e.clock.Now()
				old.ExpiresAt = e.clock.Now().Add(2 * time.Hour)
				e.st.PutKey(old)
			}
		}
	}()
	for w := range workers {
		go func() {
			for i := range perWorker {
				a := authz
				if (w+i)%2 == 0 {
					a = authzOp
				}
				req := httptest.NewRequest(http.MethodPost, "/t/acme/oauth2/token", strings.NewReader("grant_type=client_credentials"))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("Authorization", a)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					errs <- fmt.Errorf("status %d: %s", rec.Code, rec.Body)
					return
				}
				var out struct {
					AccessToken string `json:"access_token"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
					errs <- err
					return
				}
				toks <- out.AccessToken
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	<-done
	close(toks)
	n := 0
	for tok := range toks {
		n++
		if m := e.introspect("acme", "svc", secret, tok); m["active"] != true {
			t.Fatalf("token minted during rotation inactive: %.30s", tok)
		}
	}
	if n != workers*perWorker {
		t.Fatalf("%d tokens", n)
	}
}
