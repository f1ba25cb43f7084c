package node_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"connectrpc.com/connect"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	jose "github.com/go-jose/go-jose/v4"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// senderCheck is one forward-auth check with the gateway's headers.
func senderCheck(t *testing.T, n *nodetest.Node, authz string, hdr map[string]string, proofs ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, n.Issuer("default")+"/gateway/check", nil)
	req.Header.Set("X-Forwarded-Method", "GET")
	req.Header.Set("X-Forwarded-Uri", "/orders/1?x=1")
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Forwarded-Host", "api.example")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	for _, p := range proofs {
		req.Header.Add("DPoP", p)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

// TestGatewaySenderConstrainedTokens (issue 12): the gateway check
// enforces DPoP and certificate binding. A DPoP-bound token passes only
// with the DPoP scheme and a fresh proof of its key for the original
// request's method and URL (forward auth and ext_authz); sent as a Bearer
// token, with a replayed proof, a proof for another URL or another key it
// is refused with a DPoP challenge. A certificate-bound token passes only
// with the certificate it was issued for, forwarded by the (trusted)
// gateway. A bearer token sent with the DPoP scheme is refused.
func TestGatewaySenderConstrainedTokens(t *testing.T) {
	n := nodetest.Start(t, nodetest.WithConfig(func(cfg *node.Config) {
		cfg.ZeroTrust.TrustedProxies = []string{"127.0.0.1/32", "::1/128"}
	}))
	ctx := context.Background()
	if _, err := n.Admin.SetGatewayRoute(ctx, connect.NewRequest(&adminv1.SetGatewayRouteRequest{Tenant: "default",
		Route: &adminv1.GatewayRoute{PathPrefix: "/orders", Method: "GET", Scopes: []string{"read:orders"}}})); err != nil {
		t.Fatal(err)
	}
	tokenURL := n.Issuer("default") + "/oauth2/token"

	// DPoP.
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "dpop-app", Scopes: []string{"read:orders"}})
	k := dpoptest.NewKey("ES256")
	status, _, body := postToken(t, tokenURL, id, secret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL}))
	if status != 200 || body["token_type"] != "DPoP" {
		t.Fatalf("DPoP token: %d %v", status, body)
	}
	at := body["access_token"].(string)
	const htu = "https://api.example/orders/1"
	proof := func(key *dpoptest.Key, c dpoptest.Claims) string {
		if c.HTM == "" {
			c.HTM = "GET"
		}
		if c.HTU == "" {
			c.HTU = htu
		}
		if c.AccessToken == "" {
			c.AccessToken = at
		}
		return key.Proof(c)
	}
	if st, ch := senderCheck(t, n, "Bearer "+at, nil); st != 401 || !strings.HasPrefix(ch, "DPoP ") || !strings.Contains(ch, `error="invalid_token"`) {
		t.Errorf("DPoP-bound token as Bearer: %d %q", st, ch)
	}
	if st, ch := senderCheck(t, n, "DPoP "+at, nil); st != 401 || !strings.Contains(ch, `error="invalid_dpop_proof"`) {
		t.Errorf("no proof: %d %q", st, ch)
	}
	good := proof(k, dpoptest.Claims{})
	if st, ch := senderCheck(t, n, "DPoP "+at, nil, good); st != 200 {
		t.Fatalf("DPoP token with a proof: %d %q", st, ch)
	}
	if st, ch := senderCheck(t, n, "DPoP "+at, nil, good); st != 401 || !strings.Contains(ch, `error="invalid_dpop_proof"`) {
		t.Errorf("replayed proof: %d %q", st, ch)
	}
	for name, p := range map[string]string{
		"other key":    proof(dpoptest.NewKey("ES256"), dpoptest.Claims{}),
		"other URL":    proof(k, dpoptest.Claims{HTU: "https://api.example/orders/2"}),
		"other method": proof(k, dpoptest.Claims{HTM: "POST"}),
		"no ath":       proof(k, dpoptest.Claims{ATH: "x"}),
	} {
		if st, ch := senderCheck(t, n, "DPoP "+at, nil, p); st != 401 || !strings.Contains(ch, `error="invalid_dpop_proof"`) {
			t.Errorf("%s: %d %q", name, st, ch)
		}
	}
	// nginx: the full URL in X-Original-URL.
	if st, ch := senderCheck(t, n, "DPoP "+at, map[string]string{"X-Original-URL": htu + "?x=1", "X-Forwarded-Proto": "", "X-Forwarded-Host": ""}, proof(k, dpoptest.Claims{})); st != 200 {
		t.Errorf("X-Original-URL: %d %q", st, ch)
	}
	// A gateway that does not say the URL cannot pass a DPoP-bound token.
	if st, _ := senderCheck(t, n, "DPoP "+at, map[string]string{"X-Forwarded-Proto": "", "X-Forwarded-Host": ""}, proof(k, dpoptest.Claims{})); st != 401 {
		t.Errorf("no URL: %d", st)
	}
	bid, bsecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "bearer-app", Scopes: []string{"read:orders"}})
	bearer := ccToken(t, n, bid, bsecret)
	if st, ch := senderCheck(t, n, "DPoP "+bearer, nil, proof(k, dpoptest.Claims{AccessToken: bearer})); st != 401 || !strings.HasPrefix(ch, "DPoP ") {
		t.Errorf("bearer token with the DPoP scheme: %d %q", st, ch)
	}
	if st, _ := senderCheck(t, n, "Bearer "+bearer, nil); st != 200 {
		t.Errorf("bearer token: %d", st)
	}

	// ext_authz: the proof in the dpop header, htu from scheme, host and path.
	conn, err := grpc.NewClient(strings.TrimPrefix(n.BaseURL(), "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ea := authv3.NewAuthorizationClient(conn)
	envoy := func(hdr map[string]string, certPEM string) *authv3.CheckResponse {
		res, err := ea.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:  &authv3.AttributeContext_Peer{Certificate: certPEM, Address: &corev3.Address{}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Scheme: "https", Host: "api.example", Path: "/orders/1?x=1", Headers: hdr}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if r := envoy(map[string]string{"authorization": "DPoP " + at, "dpop": proof(k, dpoptest.Claims{})}, ""); r.Status.Code != int32(code.Code_OK) {
		t.Errorf("ext_authz with a proof: %v", r)
	}
	if r := envoy(map[string]string{"authorization": "Bearer " + at}, ""); r.Status.Code != int32(code.Code_UNAUTHENTICATED) {
		t.Errorf("ext_authz DPoP-bound token as Bearer: %v", r)
	}

	// Certificate binding: a self_signed_tls_client_auth client gets a
	// bound token through a trusted proxy's Client-Cert header.
	cert, certPEM, _ := ztCert(t, "svc", nil, false)
	other, otherPEM, _ := ztCert(t, "other", nil, false)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: cert.Leaf.PublicKey, KeyID: "cert"}}})
	cl, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "mtls-app", Scopes: []string{"read:orders"},
		Auth: &adminv1.ClientAuth{Methods: []string{"self_signed_tls_client_auth"}, Jwks: string(jwks)}}))
	if err != nil {
		t.Fatal(err)
	}
	header := ":" + base64.StdEncoding.EncodeToString(cert.Leaf.Raw) + ":"
	req, _ := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(url.Values{"grant_type": {"client_credentials"}, "client_id": {cl.Msg.Client.ClientId}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Client-Cert", header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tok map[string]any
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("certificate-bound token: %d %v", resp.StatusCode, tok)
	}
	ct := tok["access_token"].(string)
	if st, ch := senderCheck(t, n, "Bearer "+ct, nil); st != 401 || !strings.Contains(ch, `error="invalid_token"`) {
		t.Errorf("certificate-bound token without a certificate: %d %q", st, ch)
	}
	if st, _ := senderCheck(t, n, "Bearer "+ct, map[string]string{"Client-Cert": ":" + base64.StdEncoding.EncodeToString(other.Leaf.Raw) + ":"}); st != 401 {
		t.Errorf("certificate-bound token with another certificate: %d", st)
	}
	if st, ch := senderCheck(t, n, "Bearer "+ct, map[string]string{"Client-Cert": header}); st != 200 {
		t.Errorf("certificate-bound token with its certificate: %d %q", st, ch)
	}
	if st, _ := senderCheck(t, n, "Bearer "+ct, map[string]string{"Client-Cert": url.QueryEscape(string(certPEM))}); st != 200 {
		t.Errorf("certificate as nginx's escaped PEM: %d", st)
	}
	if r := envoy(map[string]string{"authorization": "Bearer " + ct}, url.QueryEscape(string(certPEM))); r.Status.Code != int32(code.Code_OK) {
		t.Errorf("ext_authz with the peer certificate: %v", r)
	}
	if r := envoy(map[string]string{"authorization": "Bearer " + ct}, url.QueryEscape(string(otherPEM))); r.Status.Code != int32(code.Code_UNAUTHENTICATED) {
		t.Errorf("ext_authz with another peer certificate: %v", r)
	}
}
