package node_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

func postToken(t *testing.T, tokenURL, id, secret string, proofs ...string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	for _, p := range proofs {
		req.Header.Add("DPoP", p)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, resp.Header, m
}

// TestDPoPAcrossNodes: a --dpop-bound client on a 3-node cluster with
// server nonces: the nonce one node hands out works on another; the token
// is bound (token_type DPoP, cnf.jkt in introspection); a
// replayed proof is refused; and a resource server using the SDK accepts
// the token only with a fresh proof of the same key.
func TestDPoPAcrossNodes(t *testing.T) {
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(nodetest.FastRaft, nodetest.WithConfig(func(cfg *node.Config) {
		cfg.DPoPRequireNonce = true
	})))
	n0, n1 := c.Node(0), c.Node(1)
	ctx := context.Background()
	cl, err := n0.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "svc", Scopes: []string{"read"}, Audiences: []string{"https://orders.example"}, DpopBound: true}))
	if err != nil {
		t.Fatal(err)
	}
	if !cl.Msg.Client.DpopBound {
		t.Fatal("client not dpop_bound")
	}
	id, secret := cl.Msg.Client.ClientId, cl.Msg.ClientSecret
	c.WaitConverged()
	k := dpoptest.NewKey("ES256")
	tok0, tok1 := n0.Issuer("default")+"/oauth2/token", n1.Issuer("default")+"/oauth2/token"

	if status, _, body := postToken(t, tok0, id, secret); status != 400 || body["error"] != "invalid_dpop_proof" {
		t.Fatalf("dpop_bound client without proof: %d %v", status, body)
	}
	status, h, body := postToken(t, tok0, id, secret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: tok0}))
	nonce := h.Get("DPoP-Nonce")
	if status != 400 || body["error"] != "use_dpop_nonce" || nonce == "" {
		t.Fatalf("no nonce: %d %v", status, body)
	}
	proof := k.Proof(dpoptest.Claims{HTM: "POST", HTU: tok1, Nonce: nonce})
	status, _, body = postToken(t, tok1, id, secret, proof)
	if status != 200 || body["token_type"] != "DPoP" {
		t.Fatalf("nonce of node 0 at node 1: %d %v", status, body)
	}
	at := body["access_token"].(string)
	if status, _, body := postToken(t, tok1, id, secret, proof); status != 400 || body["error"] != "invalid_dpop_proof" {
		t.Fatalf("replayed proof at the same node: %d %v", status, body)
	}

	// Introspection (test nodes have no shared issuer: at the issuing node).
	req, _ := http.NewRequest(http.MethodPost, n1.Issuer("default")+"/oauth2/introspect", strings.NewReader(url.Values{"token": {at}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var in map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&in)
	resp.Body.Close()
	if cnf, _ := in["cnf"].(map[string]any); in["active"] != true || in["token_type"] != "DPoP" || cnf["jkt"] != k.JKT() {
		t.Fatalf("introspection %v", in)
	}

	// A resource server with the SDK.
	v, err := revocation.NewVerifier(revocation.Config{Issuer: n1.Issuer("default"), Audience: "https://orders.example"})
	if err != nil {
		t.Fatal(err)
	}
	rs := httptest.NewServer(v.Middleware("read")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cl, _ := revocation.ClaimsFromContext(r.Context())
		io.WriteString(w, cl.JKT)
	})))
	defer rs.Close()
	call := func(scheme string, proofs ...string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, rs.URL+"/orders", nil)
		req.Header.Set("Authorization", scheme+" "+at)
		for _, p := range proofs {
			req.Header.Add("DPoP", p)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b) + resp.Header.Get("WWW-Authenticate")
	}
	if status, body := call("DPoP", k.Proof(dpoptest.Claims{HTM: "GET", HTU: rs.URL + "/orders", AccessToken: at})); status != 200 || body != k.JKT() {
		t.Fatalf("RS with proof: %d %s", status, body)
	}
	if status, body := call("Bearer"); status != 401 || !strings.Contains(body, `DPoP algs=`) {
		t.Fatalf("RS, bound token as bearer: %d %s", status, body)
	}
	other := dpoptest.NewKey("ES256")
	if status, body := call("DPoP", other.Proof(dpoptest.Claims{HTM: "GET", HTU: rs.URL + "/orders", AccessToken: at})); status != 401 || !strings.Contains(body, "invalid_dpop_proof") {
		t.Fatalf("RS, other key: %d %s", status, body)
	}
}
