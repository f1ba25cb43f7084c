package issuance_test

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tallyauth/tally/issuance"
)

// FuzzParseClientCertHeader: any header value parses or fails, never
// panics, and a parsed value has a certificate.
func FuzzParseClientCertHeader(f *testing.F) {
	f.Add(":" + base64.StdEncoding.EncodeToString([]byte("x")) + ":")
	f.Add("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	f.Add("%2D%2D%2D%2D%2DBEGIN%20CERTIFICATE")
	f.Add("::")
	f.Add(":")
	f.Fuzz(func(t *testing.T, v string) {
		certs, err := issuance.ParseClientCertHeader(v)
		if err == nil && (len(certs) == 0 || certs[0] == nil) {
			t.Fatal("no error and no certificate")
		}
	})
}

// FuzzClientAssertion: any client_assertion (and client_id) at the token
// endpoint is answered 400 or 401 with a JSON error, never 500.
func FuzzClientAssertion(f *testing.F) {
	e := newEnv(f)
	e.addTenant("acme", issuance.AlgES256)
	k := newClientKey(f, "k1")
	e.addClient("acme", "svc", func(c *issuance.Client) {
		c.Auth = issuance.ClientAuth{Methods: []string{issuance.AuthMethodPrivateKeyJWT}, JWKS: jwksOf(f, k)}
	})
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJzdmMifQ.", "")
	f.Add("a.b.c", "svc")
	f.Add(strings.Repeat("A", 100), "")
	f.Add("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJzdmMiLCJzdWIiOiJzdmMiLCJhdWQiOiJ4In0.AAAA", "svc")
	f.Fuzz(func(t *testing.T, a, id string) {
		form := url.Values{"grant_type": {"client_credentials"},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {a}}
		if id != "" {
			form.Set("client_id", id)
		}
		te := *e
		te.t = t
		res := te.postForm("/t/acme/oauth2/token", form, "", "")
		if res.status != http.StatusBadRequest && res.status != http.StatusUnauthorized {
			t.Fatalf("status %d: %s", res.status, res.body)
		}
	})
}
