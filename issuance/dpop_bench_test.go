package issuance_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/issuance"
)

// BenchmarkTokenDPoP compares, in one run, the client credentials grant
// without and with a DPoP proof (one more signature verification, a JWK
// parse and a replay-cache insert at the token endpoint). Proofs are made
// off the clock: the client's cost is not the server's.
func BenchmarkTokenDPoP(b *testing.B) {
	for _, format := range []issuance.TokenFormat{issuance.FormatJWT, issuance.FormatOpaque} {
		b.Run(string(format)+"/bearer", func(b *testing.B) {
			_, h, secret := benchEnv(b, issuance.AlgES256, format)
			authz := basic("svc", secret)
			for b.Loop() {
				serveForm(b, h, "/t/acme/oauth2/token", "grant_type=client_credentials&scope=read", authz)
			}
		})
		b.Run(string(format)+"/dpop", func(b *testing.B) {
			e := newEnv(b, func(c *issuance.Config) { c.DPoP.ReplayCapacity = 1 << 24 })
			e.addTenant("acme", issuance.AlgES256)
			secret := e.addClient("acme", "svc", func(c *issuance.Client) { c.TokenFormat = format })
			h := e.srv.Handler()
			authz := basic("svc", secret)
			k := dpoptest.NewKey("ES256")
			htu := e.url("/t/acme/oauth2/token")
			proofs := make([]string, 2048)
			fill := func() {
				for i := range proofs {
					proofs[i] = k.Proof(dpoptest.Claims{HTM: "POST", HTU: htu, IAT: e.clock.Now()})
				}
			}
			fill()
			i := 0
			for b.Loop() {
				if i == len(proofs) {
					b.StopTimer()
					fill()
					i = 0
					b.StartTimer()
				}
				req := httptest.NewRequest(http.MethodPost, "/t/acme/oauth2/token", strings.NewReader("grant_type=client_credentials&scope=read"))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("Authorization", authz)
				req.Header.Set("DPoP", proofs[i])
				i++
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
