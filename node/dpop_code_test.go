package node_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestDPoPBoundCodeViaPAR: a DPoP proof at the PAR endpoint binds the
// authorization code to its key (RFC 9449 §10.1): the code is refused
// without a proof or with another key, and with the right key gives DPoP
// tokens whose refresh token (public client) needs that key again.
func TestDPoPBoundCodeViaPAR(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	iss := n.Issuer("default")
	k, other := dpoptest.NewKey("ES256"), dpoptest.NewKey("EdDSA")
	verifier := oauth2.GenerateVerifier()
	authURL, _ := url.Parse(e.conf.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier)))

	post := func(path string, form url.Values, proof string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, iss+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if proof != "" {
			req.Header.Set("DPoP", proof)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	status, body := post("/oauth2/par", authURL.Query(), k.Proof(dpoptest.Claims{HTM: "POST", HTU: iss + "/oauth2/par"}))
	if status != http.StatusCreated {
		t.Fatalf("push: %d %v", status, body)
	}
	loc := e.signIn(t, newBrowser(t), iss+"/oauth2/authorize?"+url.Values{"client_id": {e.conf.ClientID}, "request_uri": {body["request_uri"].(string)}}.Encode())
	exchange := url.Values{"grant_type": {"authorization_code"}, "code": {loc.Query().Get("code")}, "client_id": {e.conf.ClientID},
		"redirect_uri": {callback}, "code_verifier": {verifier}}
	tokenURL := iss + "/oauth2/token"
	if status, body := post("/oauth2/token", exchange, ""); status != 400 || body["error"] != "invalid_dpop_proof" {
		t.Fatalf("code without proof: %d %v", status, body)
	}
	if status, body := post("/oauth2/token", exchange, other.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL})); status != 400 || body["error"] != "invalid_dpop_proof" {
		t.Fatalf("code with another key: %d %v", status, body)
	}
	status, body = post("/oauth2/token", exchange, k.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL}))
	if status != 200 || body["token_type"] != "DPoP" || body["refresh_token"] == nil {
		t.Fatalf("code with the key: %d %v", status, body)
	}
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {body["refresh_token"].(string)}, "client_id": {e.conf.ClientID}}
	if status, body := post("/oauth2/token", refresh, other.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL})); status != 400 || body["error"] != "invalid_grant" {
		t.Fatalf("refresh with another key: %d %v", status, body)
	}
	if status, body := post("/oauth2/token", refresh, k.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL})); status != 200 || body["token_type"] != "DPoP" {
		t.Fatalf("refresh with the key: %d %v", status, body)
	}
}
