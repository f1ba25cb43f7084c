package node_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// BenchmarkTokenAuthMethod: client_credentials tokens per second by client
// authentication method, on one node, in one run so the ratios compare
// like with like (see loadtest/BENCHMARKS.md):
//
//	secret_basic     the baseline: one keyed hash, no write
//	private_key_jwt  one ES256 verify plus one Raft write (the jti ledger)
//	tls_client_auth  certificate from a trusted proxy's header: a chain
//	                 verify, no write
//	federated        a platform token: one ES256 verify, no write
//	dpop             secret_basic plus a DPoP proof (ES256): one proof
//	                 verify and a jti in the per-node replay cache, no
//	                 write; the token is DPoP-bound
//
// Assertions and proofs are signed before the timer starts (the client's
// cost is not the server's).
func BenchmarkTokenAuthMethod(b *testing.B) {
	n := nodetest.Start(b, nodetest.WithConfig(func(c *node.Config) {
		c.ZeroTrust.TrustedProxies = []string{"127.0.0.1"}
	}))
	ctx := context.Background()
	tokenURL := n.Issuer("default") + "/oauth2/token"

	// client_secret_basic
	basicID, basicSecret := n.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "basic", Scopes: []string{"read"}})

	// private_key_jwt
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	pkID, _ := n.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "pk", Scopes: []string{"read"},
		Auth: &adminv1.ClientAuth{Methods: []string{"private_key_jwt"}, Jwks: string(jwks)}})

	// tls_client_auth through a trusted proxy's Client-Cert header
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bench"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, leafKey.Public(), caKey)
	tlsID, _ := n.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "mtls", Scopes: []string{"read"},
		Auth: &adminv1.ClientAuth{Methods: []string{"tls_client_auth"}, TlsSubjectDn: "CN=bench"}})
	if _, err := n.Admin.SetTenantTrust(ctx, connect.NewRequest(&adminv1.SetTenantTrustRequest{Tenant: "default", Trust: &adminv1.TenantTrust{
		ClientCaPem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		Federations: []*adminv1.FederationTrust{{Name: "k8s", Issuer: "https://k8s.example", Jwks: string(jwks),
			Subjects: []*adminv1.SubjectMapping{{Subject: "system:serviceaccount:bench:w", ClientId: pkID}}}},
	}})); err != nil {
		b.Fatal(err)
	}
	certHeader := ":" + base64.StdEncoding.EncodeToString(leafDER) + ":"

	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	sign := func(c map[string]any) string {
		p, _ := json.Marshal(c)
		o, err := signer.Sign(p)
		if err != nil {
			b.Fatal(err)
		}
		s, _ := o.CompactSerialize()
		return s
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	post := func(form url.Values, set func(*http.Request)) {
		req, _ := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if set != nil {
			set(req)
		}
		resp, err := hc.Do(req)
		if err != nil {
			b.Error(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Errorf("status %d", resp.StatusCode)
		}
	}
	cc := url.Values{"grant_type": {"client_credentials"}}
	run := func(b *testing.B, prep func(i int) (url.Values, func(*http.Request))) {
		reqs := make([]func(), b.N)
		for i := range b.N {
			f, set := prep(i)
			reqs[i] = func() { post(f, set) }
		}
		var next atomic.Int64
		b.ResetTimer()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				reqs[next.Add(1)-1]()
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	}
	b.Run("secret_basic", func(b *testing.B) {
		run(b, func(int) (url.Values, func(*http.Request)) {
			return cc, func(r *http.Request) { r.SetBasicAuth(basicID, basicSecret) }
		})
	})
	var seq atomic.Int64
	b.Run("private_key_jwt", func(b *testing.B) {
		run(b, func(int) (url.Values, func(*http.Request)) {
			now := time.Now()
			a := sign(map[string]any{"iss": pkID, "sub": pkID, "aud": n.Issuer("default"), "iat": now.Unix(),
				"exp": now.Add(5 * time.Minute).Unix(), "jti": "b" + strconv.FormatInt(seq.Add(1), 10)})
			return url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
				"client_assertion": {a}}, nil
		})
	})
	b.Run("tls_client_auth", func(b *testing.B) {
		run(b, func(int) (url.Values, func(*http.Request)) {
			return url.Values{"grant_type": {"client_credentials"}, "client_id": {tlsID}}, func(r *http.Request) { r.Header.Set("Client-Cert", certHeader) }
		})
	})
	platform := func() string {
		now := time.Now()
		return sign(map[string]any{"iss": "https://k8s.example", "sub": "system:serviceaccount:bench:w", "aud": n.Issuer("default"),
			"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	}()
	b.Run("federated", func(b *testing.B) {
		run(b, func(int) (url.Values, func(*http.Request)) {
			return url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
				"client_assertion": {platform}}, nil
		})
	})
	dk := dpoptest.NewKey("ES256")
	b.Run("dpop", func(b *testing.B) {
		run(b, func(int) (url.Values, func(*http.Request)) {
			proof := dk.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL})
			return cc, func(r *http.Request) { r.SetBasicAuth(basicID, basicSecret); r.Header.Set("DPoP", proof) }
		})
	})
}
