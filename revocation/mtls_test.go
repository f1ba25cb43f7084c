package revocation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func selfSignedClientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestCertificateBoundMiddleware is the resource server's side of RFC 8705
// §3: a token bound to a certificate is accepted over a TLS connection that
// presents that certificate, and refused (401 invalid_token) with another
// certificate or none; an unbound token needs no certificate.
func TestCertificateBoundMiddleware(t *testing.T) {
	ti := newTestIssuer(t)
	v, err := NewVerifier(Config{Issuer: ti.issuer, Audience: "https://orders"})
	if err != nil {
		t.Fatal(err)
	}
	rs := httptest.NewUnstartedServer(v.Middleware("read:orders")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := ClaimsFromContext(r.Context())
		w.Write([]byte(c.Cnf.X5TS256))
	})))
	rs.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	rs.StartTLS()
	defer rs.Close()

	mine, theirs := selfSignedClientCert(t, "mine"), selfSignedClientCert(t, "theirs")
	bound := ti.sign("k1", "at+jwt", ti.accessClaims(func(c jwt.MapClaims) {
		c["cnf"] = map[string]any{"x5t#S256": CertificateThumbprint(mine.Leaf)}
	}))
	unbound := ti.sign("k1", "at+jwt", ti.accessClaims(nil))
	get := func(tok string, cert *tls.Certificate) (int, string, string) {
		tr := rs.Client().Transport.(*http.Transport).Clone()
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, rs.URL, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(b)
	}
	if st, _, body := get(bound, &mine); st != 200 || body != CertificateThumbprint(mine.Leaf) {
		t.Fatalf("bound token with its certificate: %d %q", st, body)
	}
	for name, cert := range map[string]*tls.Certificate{"another certificate": &theirs, "no certificate": nil} {
		st, www, _ := get(bound, cert)
		if st != 401 || !strings.Contains(www, `error="invalid_token"`) {
			t.Errorf("bound token, %s: %d %q", name, st, www)
		}
	}
	if st, _, _ := get(unbound, nil); st != 200 {
		t.Errorf("unbound token without certificate: %d", st)
	}

	// VerifyWithCertificate, for servers that are not net/http.
	ctx := t.Context()
	if _, err := v.VerifyWithCertificate(ctx, bound, mine.Leaf); err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyWithCertificate(ctx, bound, theirs.Leaf); ReasonOf(err) != ReasonCertBinding {
		t.Fatalf("another certificate: %v (reason %q)", err, ReasonOf(err))
	}
}
