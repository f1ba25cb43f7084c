package issuance_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/tallyauth/tally/issuance"
)

// TestAuthenticateClientSecret: the client authentication other endpoints
// share (the events API, the embedded NATS server) refuses what the token
// endpoint refuses: wrong or missing secrets, disabled and public clients,
// clients of another tenant, and disabled or unknown tenants.
func TestAuthenticateClientSecret(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", "ES256")
	e.addTenant("other", "ES256")
	sec := e.addClient("acme", "rs1")
	disabledSec := e.addClient("acme", "off", func(c *issuance.Client) { c.Disabled = true })
	otherSec := e.addClient("other", "o1")
	ctx := context.Background()
	if _, err := e.srv.AuthenticateClientSecret(ctx, "acme", "rs1", sec); err != nil {
		t.Fatalf("valid client: %v", err)
	}
	basic := func(id, secret string) string {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(id, secret)
		return r.Header.Get("Authorization")
	}
	if c, err := e.srv.AuthenticateBasic(ctx, "acme", basic("rs1", sec)); err != nil || c.ID != "rs1" {
		t.Fatalf("valid Basic: %v %v", c.ID, err)
	}
	for _, tc := range []struct {
		name, tenant, id, secret string
		status                   int
	}{
		{"wrong secret", "acme", "rs1", "nope", http.StatusUnauthorized},
		{"no secret", "acme", "rs1", "", http.StatusUnauthorized},
		{"unknown client", "acme", "ghost", sec, http.StatusUnauthorized},
		{"disabled client", "acme", "off", disabledSec, http.StatusUnauthorized},
		{"client of another tenant", "acme", "o1", otherSec, http.StatusUnauthorized},
		{"unknown tenant", "nope", "rs1", sec, http.StatusNotFound},
	} {
		_, err := e.srv.AuthenticateClientSecret(ctx, tc.tenant, tc.id, tc.secret)
		var ie *issuance.Error
		if !errors.As(err, &ie) || ie.Status != tc.status {
			t.Errorf("%s: %v, want status %d", tc.name, err, tc.status)
		}
	}
	if _, err := e.srv.AuthenticateBasic(ctx, "acme", "Basic !!!"); err == nil {
		t.Error("garbage Basic accepted")
	}
	// A tenant disabled after the fact refuses its clients at once.
	e.st.PutTenant(issuance.Tenant{ID: "acme", DisplayName: "acme", SigningAlg: "ES256", Disabled: true})
	if _, err := e.srv.AuthenticateClientSecret(ctx, "acme", "rs1", sec); err == nil {
		t.Error("client of a disabled tenant accepted")
	}
}
