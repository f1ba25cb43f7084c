package node_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/nodetest"
)

// certHeader is a transport that sends a client certificate as a trusted
// TLS-terminating proxy does (RFC 9440 Client-Cert).
type certHeader struct{ cert *tls.Certificate }

func (c certHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if c.cert != nil {
		r.Header.Set("Client-Cert", ":"+base64.StdEncoding.EncodeToString(c.cert.Leaf.Raw)+":")
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestPublicClientCertificateBoundRefresh (issue 11; RFC 8705 §4): a
// public client that presents a (self-signed) client certificate at the
// token endpoint gets a certificate-bound access token and a refresh token
// bound to the same certificate: a refresh without it or with another
// certificate is invalid_grant, with it the refresh works and the new
// access token is bound again.
func TestPublicClientCertificateBoundRefresh(t *testing.T) {
	n := nodetest.Start(t, nodetest.WithConfig(func(cfg *node.Config) {
		cfg.ZeroTrust.TrustedProxies = []string{"127.0.0.1/32", "::1/128"}
	}))
	e := newFlowEnv(t, n)
	cert, _, _ := ztCert(t, "device-42", nil, false)
	other, _, _ := ztCert(t, "device-43", nil, false)
	with := func(c *tls.Certificate) context.Context {
		return context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: certHeader{c}})
	}
	x5t := func(at string) string {
		parts := strings.Split(at, ".")
		if len(parts) != 3 {
			t.Fatalf("access token is not a JWT")
		}
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var c struct {
			Cnf map[string]string `json:"cnf"`
		}
		json.Unmarshal(payload, &c)
		return c.Cnf["x5t#S256"]
	}
	verifier := oauth2.GenerateVerifier()
	loc := e.signIn(t, newBrowser(t), e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	tok, err := e.conf.Exchange(with(&cert), loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if x5t(tok.AccessToken) == "" || tok.RefreshToken == "" || strings.Count(tok.RefreshToken, ".") != 5 {
		t.Fatalf("tokens of a public client with a certificate: access cnf %q, refresh %q", x5t(tok.AccessToken), tok.RefreshToken)
	}
	refresh := func(ctx context.Context) (*oauth2.Token, error) {
		return e.conf.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	}
	for name, ctx := range map[string]context.Context{"no certificate": with(nil), "another certificate": with(&other)} {
		_, err := refresh(ctx)
		if code, status := tokenError(t, err); code != "invalid_grant" || status != http.StatusBadRequest {
			t.Errorf("refresh with %s: %s %d", name, code, status)
		}
	}
	next, err := refresh(with(&cert))
	if err != nil {
		t.Fatalf("refresh with the certificate: %v", err)
	}
	if got := x5t(next.AccessToken); got == "" || got != x5t(tok.AccessToken) {
		t.Errorf("refreshed access token bound to %q, want %q", got, x5t(tok.AccessToken))
	}

	// Without a certificate nothing is bound, as before.
	verifier = oauth2.GenerateVerifier()
	loc = e.signIn(t, newBrowser(t), e.conf.AuthCodeURL("s2", oauth2.S256ChallengeOption(verifier)))
	plain, err := e.conf.Exchange(with(nil), loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if x5t(plain.AccessToken) != "" || strings.Count(plain.RefreshToken, ".") != 4 {
		t.Errorf("tokens without a certificate are bound: %q %q", x5t(plain.AccessToken), plain.RefreshToken)
	}
}
