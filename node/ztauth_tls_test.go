package node_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/nodetest"
)

func ztCert(t *testing.T, cn string, ip net.IP, server bool) (tls.Certificate, []byte, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

// TestNodeMTLSListener: with --tls-cert/--tls-key the node serves its
// OAuth listener over TLS and requests a client certificate; a
// self_signed_tls_client_auth client gets a certificate-bound token over a
// real handshake, and discovery lists the certificate methods.
func TestNodeMTLSListener(t *testing.T) {
	dir := t.TempDir()
	srvCert, certPEM, keyPEM := ztCert(t, "node", net.IPv4(127, 0, 0, 1), true)
	certFile, keyFile := filepath.Join(dir, "tls.pem"), filepath.Join(dir, "tls-key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig()
	cfg.Dev = true
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Listen, cfg.RaftBind, cfg.NATSListen = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.AdminToken = "ztauth-admin-token-for-tests-0123456789"
	cfg.MinFreeDisk = 0
	nodetest.FastRaft(&cfg)
	cfg.ZeroTrust.TLSCert, cfg.ZeroTrust.TLSKey = certFile, keyFile
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := node.New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; n.Close() })

	pool := x509.NewCertPool()
	pool.AddCert(srvCert.Leaf)
	clientCert, _, _ := ztCert(t, "tool", nil, false)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert}}}}
	base := "https://" + n.Addr()
	if !strings.HasPrefix(n.Issuer("default"), "https://") {
		t.Fatalf("issuer %q is not https", n.Issuer("default"))
	}
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := hc.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return err
		}
		return nil
	})
	admin := adminv1connect.NewAdminServiceClient(hc, base, connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, r connect.AnyRequest) (connect.AnyResponse, error) {
			r.Header().Set("Authorization", "Bearer "+cfg.AdminToken)
			return next(ctx, r)
		}
	})))
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: clientCert.Leaf.PublicKey, KeyID: "cert"}}})
	res, err := admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "tool", Scopes: []string{"read"},
		Auth: &adminv1.ClientAuth{Methods: []string{"self_signed_tls_client_auth"}, Jwks: string(jwks)}}))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.PostForm(base+"/t/default/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {res.Msg.Client.ClientId}})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("token over mTLS: %d %s", resp.StatusCode, tok.Error)
	}
	parts := strings.Split(tok.AccessToken, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims struct {
		Cnf map[string]string `json:"cnf"`
	}
	json.Unmarshal(payload, &claims)
	if claims.Cnf["x5t#S256"] == "" {
		t.Fatalf("token not certificate-bound: %s", payload)
	}
	resp, err = hc.Get(base + "/t/default/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	var md map[string]any
	json.NewDecoder(resp.Body).Decode(&md)
	resp.Body.Close()
	if md["tls_client_certificate_bound_access_tokens"] != true || !strings.Contains(toJSON(md["token_endpoint_auth_methods_supported"]), "self_signed_tls_client_auth") {
		t.Fatalf("discovery: %v", md)
	}
}

func toJSON(v any) string { b, _ := json.Marshal(v); return string(b) }
