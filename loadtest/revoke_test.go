package loadtest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestRevokePropagationAndVerifyCompare runs both measurements briefly
// against a real node over the Connect stream.
func TestRevokePropagationAndVerifyCompare(t *testing.T) {
	n := nodetest.Start(t)
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{
		Tenant: "default", Name: "rs", Scopes: []string{"read:orders"}, Audiences: []string{"https://orders.example"},
	})
	issuer := n.Issuer("default")
	w, err := revocation.NewWatcher(revocation.WatcherConfig{Issuer: issuer, Tenant: "default", ServerURL: n.BaseURL(), ClientID: id, ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	v, err := revocation.NewVerifier(revocation.Config{Issuer: issuer, Audience: "https://orders.example", Watcher: w})
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	defer w.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := loadtest.RunRevokePropagation(ctx, loadtest.RevokePropagationConfig{Admin: n.Admin, Tenant: "default", Watcher: w, Revocations: 50})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Revocations != 50 || rep.Max < rep.P50 || w.Set().Len() < 50 {
		t.Fatalf("report %+v, set %d", rep, w.Set().Len())
	}

	tok, err := (&clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: n.TokenURL("default")}).Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(issuer + "/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	var jwks jose.JSONWebKeySet
	err = json.NewDecoder(resp.Body).Decode(&jwks)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	vr, err := loadtest.RunVerifyCompare(ctx, v, jwks, issuer, tok.AccessToken, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if vr.SDKOps <= 0 || vr.BareOps <= 0 || vr.Alg != "ES256" {
		t.Fatalf("verify report %+v", vr)
	}
	// A token the SDK rejects is an error, not a measurement.
	if _, err := loadtest.RunVerifyCompare(ctx, v, jwks, issuer, "x.y.z", 10*time.Millisecond); err == nil {
		t.Fatal("an invalid token was measured")
	}
}
