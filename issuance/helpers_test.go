package issuance_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/issuancetest"
)

// clock is a settable clock for Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().Truncate(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is one issuance server on a real loopback listener over fake state.
type env struct {
	t     testing.TB
	st    *issuancetest.State
	rv    *issuancetest.Revoker
	kek   *issuance.KEK
	clock *clock
	srv   *issuance.Server
	ts    *httptest.Server
	base  string
}

func newKEK(t testing.TB) *issuance.KEK {
	t.Helper()
	raw := make([]byte, issuance.KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := issuance.NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newEnv(t testing.TB, opts ...func(*issuance.Config)) *env {
	t.Helper()
	e := &env{t: t, st: issuancetest.NewState(), kek: newKEK(t), clock: newClock()}
	e.rv = issuancetest.NewRevoker(e.st)
	e.ts = httptest.NewUnstartedServer(nil)
	e.base = "http://" + e.ts.Listener.Addr().String()
	cfg := issuance.DefaultConfig()
	cfg.BaseURL = e.base
	cfg.KEK = e.kek
	cfg.Now = e.clock.Now
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := issuance.NewServer(cfg, e.st, e.rv)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.ts.Config.Handler = srv.Handler()
	e.ts.Start()
	t.Cleanup(e.ts.Close)
	return e
}

// addTenant creates an enabled tenant with a current signing key of alg and a
// current sealing key, both valid from an hour ago.
func (e *env) addTenant(id, alg string) (sig, seal issuance.Key) {
	e.t.Helper()
	e.st.PutTenant(issuance.Tenant{ID: id, DisplayName: id, SigningAlg: alg})
	nb := e.clock.Now().Add(-time.Hour)
	sig = e.addKey(id, alg, issuance.UseSign, nb)
	seal = e.addKey(id, issuance.AlgA256GCM, issuance.UseSeal, nb)
	return sig, seal
}

func (e *env) addKey(tenant, alg string, use issuance.KeyUse, notBefore time.Time) issuance.Key {
	e.t.Helper()
	k, err := issuance.GenerateKey(e.kek, rand.Reader, tenant, alg, use, e.clock.Now(), notBefore)
	if err != nil {
		e.t.Fatal(err)
	}
	e.st.PutKey(k)
	return k
}

// addClient registers a confidential client allowed client_credentials and
// returns its secret.
func (e *env) addClient(tenant, id string, mod ...func(*issuance.Client)) string {
	e.t.Helper()
	secret, err := issuance.NewClientSecret(rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	c := issuance.Client{
		Tenant:      tenant,
		ID:          id,
		Name:        id,
		Secrets:     []issuance.SecretHash{{Hash: e.kek.HashSecret(secret)}},
		GrantTypes:  []string{issuance.GrantClientCredentials},
		Scopes:      []string{"read", "write"},
		TokenFormat: issuance.FormatJWT,
	}
	for _, m := range mod {
		m(&c)
	}
	e.st.PutClient(c)
	return secret
}

func (e *env) url(path string) string { return e.base + path }

type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into a map.
func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

func (e *env) do(req *http.Request) response {
	e.t.Helper()
	res, err := e.ts.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: body}
}

func (e *env) get(path string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.url(path), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(req)
}

// postForm posts a urlencoded body, with Basic credentials when id is not
// empty.
func (e *env) postForm(path string, form url.Values, id, secret string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url(path), strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if id != "" {
		req.Header.Set("Authorization", basic(id, secret))
	}
	return e.do(req)
}

func basic(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// token obtains an access token with client_secret_basic.
func (e *env) token(tenant, id, secret string, extra url.Values) string {
	e.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}}
	for k, v := range extra {
		form[k] = v
	}
	res := e.postForm("/t/"+tenant+"/oauth2/token", form, id, secret)
	if res.status != http.StatusOK {
		e.t.Fatalf("token: status %d: %s", res.status, res.body)
	}
	tok, _ := res.json(e.t)["access_token"].(string)
	if tok == "" {
		e.t.Fatalf("token: no access_token in %s", res.body)
	}
	return tok
}

// introspect returns the introspection response for tok at tenant, asked by
// client id.
func (e *env) introspect(tenant, id, secret, tok string) map[string]any {
	e.t.Helper()
	res := e.postForm("/t/"+tenant+"/oauth2/introspect", url.Values{"token": {tok}}, id, secret)
	if res.status != http.StatusOK {
		e.t.Fatalf("introspect: status %d: %s", res.status, res.body)
	}
	if got := res.header.Get("Cache-Control"); got != "no-store" {
		e.t.Errorf("introspect: Cache-Control %q, want no-store", got)
	}
	m := res.json(e.t)
	if m["active"] != true && string(res.body) != `{"active":false}` {
		e.t.Errorf("inactive response must be exactly {\"active\":false}, got %s", res.body)
	}
	return m
}

var bg = context.Background()
