package revocation

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestDiscoverThroughNode: with ThroughNode, a node behind a cluster's
// issuer URL is read directly: the document keeps the issuer it names (same
// path, another origin) and its endpoints on that origin move to the
// node's; without it, Discover refuses the document; a document of another
// path is refused either way.
func TestDiscoverThroughNode(t *testing.T) {
	const front = "https://front.example"
	docs := map[string]Metadata{
		"/t/a/.well-known/openid-configuration": {Issuer: front + "/t/a", TokenEndpoint: front + "/t/a/oauth2/token",
			RevocationEndpoint: front + "/t/a/oauth2/revoke", JWKSURI: "https://keys.example/jwks"},
		"/t/b/.well-known/openid-configuration": {Issuer: front + "/t/a", TokenEndpoint: front + "/t/a/oauth2/token"},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		md, ok := docs[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(md)
	}))
	defer srv.Close()
	ctx := context.Background()
	if _, err := Discover(ctx, srv.Client(), srv.URL+"/t/a", nil); err == nil {
		t.Fatal("Discover accepted a document naming another issuer")
	}
	md, err := Discover(ctx, srv.Client(), srv.URL+"/t/a", nil, ThroughNode())
	if err != nil {
		t.Fatal(err)
	}
	want := Metadata{Issuer: front + "/t/a", TokenEndpoint: srv.URL + "/t/a/oauth2/token",
		RevocationEndpoint: srv.URL + "/t/a/oauth2/revoke", JWKSURI: "https://keys.example/jwks"}
	if md.Issuer != want.Issuer || md.TokenEndpoint != want.TokenEndpoint || md.RevocationEndpoint != want.RevocationEndpoint || md.JWKSURI != want.JWKSURI {
		t.Fatalf("through the node: %+v, want %+v", md, want)
	}
	if md, err := Discover(ctx, srv.Client(), srv.URL+"/t/b", nil, ThroughNode()); err == nil {
		t.Fatalf("a document of another path accepted: %+v", md)
	}
}
