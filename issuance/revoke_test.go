package issuance_test

import (
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
)

func TestRevoke(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgEdDSA)
	secret := e.addClient("acme", "svc")
	other := e.addClient("acme", "other")
	e.addClient("acme", "op", func(c *issuance.Client) {
		c.TokenFormat = issuance.FormatOpaque
		c.Secrets[0].Hash = e.kek.HashSecret(secret)
	})

	revoke := func(id, sec, tok string) response {
		return e.postForm("/t/acme/oauth2/revoke", url.Values{"token": {tok}, "token_type_hint": {"access_token"}}, id, sec)
	}

	for _, client := range []string{"svc", "op"} {
		t.Run(client, func(t *testing.T) {
			before := len(e.rv.Calls())
			tok := e.token("acme", client, secret, nil)
			info, err := e.srv.Inspect(bg, "acme", tok)
			if err != nil {
				t.Fatal(err)
			}
			// Another client may not revoke it.
			res := revoke("other", other, tok)
			checkProtocolResponse(t, e, res, http.StatusBadRequest, "unauthorized_client")
			if m := e.introspect("acme", client, secret, tok); m["active"] != true {
				t.Fatal("token inactive after a refused revocation")
			}

			res = revoke(client, secret, tok)
			if res.status != http.StatusOK || res.header.Get("Cache-Control") != "no-store" {
				t.Fatalf("revoke: %d %v %s", res.status, res.header, res.body)
			}
			calls := e.rv.Calls()[before:]
			want := issuance.Revocation{Tenant: "acme", JTI: info.JTI, ClientID: client, Subject: client, ExpiresAt: info.ExpiresAt, Reason: issuance.RevocationReason}
			if len(calls) != 1 || calls[0] != want {
				t.Fatalf("revocations %+v, want [%+v]", calls, want)
			}
			if m := e.introspect("acme", client, secret, tok); m["active"] != false {
				t.Fatal("revoked token active")
			}
			// Inspect still reports it, for the admin API.
			if again, err := e.srv.Inspect(bg, "acme", tok); err != nil || again.JTI != info.JTI {
				t.Errorf("Inspect of a revoked token: %+v, %v", again, err)
			}
			// Revoking again is a no-op 200.
			if res := revoke(client, secret, tok); res.status != http.StatusOK {
				t.Errorf("second revoke: %d", res.status)
			}
			if n := len(e.rv.Calls()) - before; n != 1 {
				t.Errorf("%d revocations written, want 1", n)
			}
		})
	}

	t.Run("invalid tokens are 200 with no write", func(t *testing.T) {
		before := len(e.rv.Calls())
		expired := e.token("acme", "svc", secret, nil)
		e.clock.Advance(2 * time.Hour)
		defer e.clock.Advance(-2 * time.Hour)
		for _, tok := range []string{"garbage", "a.b.c", "tly1.x.AAAA", expired} {
			if res := revoke("svc", secret, tok); res.status != http.StatusOK {
				t.Errorf("revoke %.20q: %d %s", tok, res.status, res.body)
			}
		}
		if n := len(e.rv.Calls()) - before; n != 0 {
			t.Errorf("%d revocations written for invalid tokens", n)
		}
	})

	t.Run("errors", func(t *testing.T) {
		tok := e.token("acme", "svc", secret, nil)
		checkProtocolResponse(t, e, e.postForm("/t/acme/oauth2/revoke", url.Values{}, "svc", secret), 400, "invalid_request")
		checkProtocolResponse(t, e, revoke("", "", tok), 401, "invalid_client")
		checkProtocolResponse(t, e, revoke("svc", "wrong", tok), 401, "invalid_client")
		checkProtocolResponse(t, e, e.get("/t/acme/oauth2/revoke"), 405, "invalid_request")
	})

	t.Run("revoker failure is 503 and retry succeeds", func(t *testing.T) {
		tok := e.token("acme", "svc", secret, nil)
		e.rv.FailWith(errors.New("no quorum"))
		res := revoke("svc", secret, tok)
		checkProtocolResponse(t, e, res, http.StatusServiceUnavailable, "temporarily_unavailable")
		if res.header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
		if m := e.introspect("acme", "svc", secret, tok); m["active"] != true {
			t.Fatal("failed revocation took effect")
		}
		e.rv.FailWith(nil)
		if res := revoke("svc", secret, tok); res.status != http.StatusOK {
			t.Fatalf("retry: %d", res.status)
		}
		if m := e.introspect("acme", "svc", secret, tok); m["active"] != false {
			t.Fatal("token active after retried revocation")
		}
	})
}

func TestInspect(t *testing.T) {
	e := newEnv(t)
	e.addTenant("acme", issuance.AlgES256)
	e.addTenant("other", issuance.AlgES256)
	secret := e.addClient("acme", "svc")
	tok := e.token("acme", "svc", secret, url.Values{"scope": {"read"}})

	e.clock.Advance(3 * time.Hour) // expired tokens are still inspectable
	info, err := e.srv.Inspect(bg, "acme", tok)
	if err != nil {
		t.Fatal(err)
	}
	if info.ClientID != "svc" || info.Subject != "svc" || info.Format != issuance.FormatJWT ||
		len(info.Scopes) != 1 || info.Scopes[0] != "read" || info.ExpiresAt.Sub(info.IssuedAt) != issuance.DefaultAccessTokenTTL {
		t.Errorf("Inspect = %+v", info)
	}
	for name, tc := range map[string]struct{ tenant, tok string }{
		"other tenant":   {"other", tok},
		"garbage":        {"acme", "xyz"},
		"empty":          {"acme", ""},
		"unknown tenant": {"nope", tok},
	} {
		_, err := e.srv.Inspect(bg, tc.tenant, tc.tok)
		if !errors.Is(err, issuance.ErrNotFound) {
			t.Errorf("%s: err %v, want ErrNotFound", name, err)
		}
		if name != "unknown tenant" && !errors.Is(err, issuance.ErrInvalidToken) {
			t.Errorf("%s: err %v, want ErrInvalidToken", name, err)
		}
	}
}
