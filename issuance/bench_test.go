package issuance_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tallyauth/tally/issuance"
)

// benchEnv is an env whose handler is called in-process, without the
// network, so the benchmarks measure issuance itself.
func benchEnv(b *testing.B, alg string, format issuance.TokenFormat) (*env, http.Handler, string) {
	b.Helper()
	e := newEnv(b)
	e.addTenant("acme", alg)
	secret := e.addClient("acme", "svc", func(c *issuance.Client) { c.TokenFormat = format })
	return e, e.srv.Handler(), secret
}

func serveForm(b *testing.B, h http.Handler, path, body, authz string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", authz)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	return rec
}

func BenchmarkClientCredentialsHandler(b *testing.B) {
	for _, alg := range []string{issuance.AlgES256, issuance.AlgEdDSA} {
		for _, format := range []issuance.TokenFormat{issuance.FormatJWT, issuance.FormatOpaque} {
			b.Run(alg+"/"+string(format), func(b *testing.B) {
				_, h, secret := benchEnv(b, alg, format)
				authz := basic("svc", secret)
				body := "grant_type=client_credentials&scope=read"
				b.ReportAllocs()
				for b.Loop() {
					serveForm(b, h, "/t/acme/oauth2/token", body, authz)
				}
			})
		}
	}
}

func benchmarkIntrospect(b *testing.B, format issuance.TokenFormat) {
	e, h, secret := benchEnv(b, issuance.AlgES256, format)
	tok := e.token("acme", "svc", secret, nil)
	authz := basic("svc", secret)
	body := url.Values{"token": {tok}}.Encode()
	if rec := serveForm(b, h, "/t/acme/oauth2/introspect", body, authz); !strings.Contains(rec.Body.String(), `"active":true`) {
		b.Fatalf("inactive: %s", rec.Body)
	}
	b.ReportAllocs()
	for b.Loop() {
		serveForm(b, h, "/t/acme/oauth2/introspect", body, authz)
	}
}

func BenchmarkIntrospectOpaque(b *testing.B) { benchmarkIntrospect(b, issuance.FormatOpaque) }

func BenchmarkIntrospectJWT(b *testing.B) { benchmarkIntrospect(b, issuance.FormatJWT) }
