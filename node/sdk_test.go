package node_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// sdkPair is a Watcher and a Verifier of one tenant, as a resource server
// runs them.
type sdkPair struct {
	name string
	w    *revocation.Watcher
	v    *revocation.Verifier
}

// startSDK starts a watcher (and a verifier using it) and waits until it
// is synced.
func startSDK(t *testing.T, name string, wc revocation.WatcherConfig, vc revocation.Config) *sdkPair {
	t.Helper()
	w, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	vc.Watcher = w
	v, err := revocation.NewVerifier(vc)
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	t.Cleanup(w.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil {
		t.Fatalf("%s: watcher never synced: %v", name, err)
	}
	return &sdkPair{name: name, w: w, v: v}
}

// rejected reports nil once the SDK rejects tok as revoked (or, for an
// opaque token, as inactive at introspection).
func (p *sdkPair) rejected(tok string) error {
	_, err := p.v.Verify(context.Background(), tok)
	if errors.Is(err, revocation.ErrRevoked) || errors.Is(err, revocation.ErrInvalidToken) {
		return nil
	}
	return fmt.Errorf("%s: token still accepted: %v", p.name, err)
}

func (p *sdkPair) accepted(tok string) error {
	if _, err := p.v.Verify(context.Background(), tok); err != nil {
		return fmt.Errorf("%s: token rejected: %w", p.name, err)
	}
	return nil
}

func jwtHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	h, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatalf("token header: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("token header: %v", err)
	}
	return m
}

// TestSDKVerifiesRealTokens (issue 16 bug 1): the SDK, following the event
// log over Connect and over NATS, accepts the tokens a real node issues, in
// every format and with every signing algorithm, and rejects them once
// revoked or once their client is disabled; an enabled client's fresh
// tokens are accepted again, and so are tokens signed with keys rotated
// with no publish delay.
func TestSDKVerifiesRealTokens(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		t.Run(alg, func(t *testing.T) {
			tenant := strings.ToLower(alg)
			if _, err := n.Admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: tenant, SigningAlg: alg})); err != nil {
				t.Fatal(err)
			}
			iss := n.Issuer(tenant)
			rsID, rsSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "orders-api"})
			wc := revocation.WatcherConfig{Issuer: iss, Tenant: tenant, ServerURL: n.BaseURL(), ClientID: rsID, ClientSecret: rsSecret}
			vc := revocation.Config{Issuer: iss, Audience: ordersAPI, ClientID: rsID, ClientSecret: rsSecret}
			sdks := []*sdkPair{startSDK(t, alg+"/connect", wc, vc)}
			nc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: n.NATSURL(), Tenant: tenant, ClientID: rsID, ClientSecret: rsSecret})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			wc.NATS = nc
			sdks = append(sdks, startSDK(t, alg+"/nats", wc, vc))
			each := func(fn func(p *sdkPair) error) func() error {
				return func() error {
					for _, p := range sdks {
						if err := fn(p); err != nil {
							return err
						}
					}
					return nil
				}
			}
			rejected := func(tok string) func() error { return each(func(p *sdkPair) error { return p.rejected(tok) }) }
			accepted := func(tok string) func() error { return each(func(p *sdkPair) error { return p.accepted(tok) }) }
			for _, format := range []string{"jwt", "opaque"} {
				t.Run(format, func(t *testing.T) {
					id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: format,
						Scopes: []string{"read:orders"}, Audiences: []string{ordersAPI}, TokenFormat: format})
					tok := token(t, iss, id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
					if format == "opaque" {
						if !strings.HasPrefix(tok, "tly1.") || strings.Count(tok, ".") != 2 {
							t.Fatalf("opaque token %.12s… is not tly1.<kid>.<ct>", tok)
						}
					} else if got := jwtHeader(t, tok)["alg"]; got != alg {
						t.Fatalf("JWT alg %v, want %s", got, alg)
					}
					for _, p := range sdks {
						c, err := p.v.Verify(ctx, tok)
						if err != nil {
							t.Fatalf("%s: the SDK rejects a fresh %s token: %v", p.name, format, err)
						}
						if c.ClientID != id || !c.HasScope("read:orders") || c.Issuer != iss || c.Introspected != (format == "opaque") {
							t.Fatalf("claims %+v", c)
						}
					}
					if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: tenant, Token: tok})); err != nil {
						t.Fatal(err)
					}
					checkFor(t, 10*time.Second, 5*time.Millisecond, rejected(tok))
					want := revocation.ReasonRevoked
					if format == "opaque" {
						want = revocation.ReasonInactive // introspection says so first
					}
					for _, p := range sdks {
						// An opaque token's revocation may reach the set (the
						// live subjects, milliseconds) before introspection.
						_, err := p.v.Verify(ctx, tok)
						if got := revocation.ReasonOf(err); got != want && (format != "opaque" || got != revocation.ReasonRevoked) {
							t.Fatalf("%s: revoked %s token: reason %q (%v), want %q", p.name, format, revocation.ReasonOf(err), err, want)
						}
					}

					tok2 := token(t, iss, id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
					if err := accepted(tok2)(); err != nil {
						t.Fatal(err)
					}
					if _, err := n.Admin.DisableClient(ctx, connect.NewRequest(&adminv1.DisableClientRequest{Tenant: tenant, ClientId: id})); err != nil {
						t.Fatal(err)
					}
					checkFor(t, 10*time.Second, 5*time.Millisecond, rejected(tok2))
					if _, err := n.Admin.EnableClient(ctx, connect.NewRequest(&adminv1.EnableClientRequest{Tenant: tenant, ClientId: id})); err != nil {
						t.Fatal(err)
					}
					tok3 := token(t, iss, id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
					checkFor(t, 10*time.Second, 5*time.Millisecond, accepted(tok3))

					// Keys rotated with no publish delay: new tokens and the
					// events signed with the new key verify at once.
					zero := int64(0)
					if _, err := n.Admin.RotateKeys(ctx, connect.NewRequest(&adminv1.RotateKeysRequest{Tenant: tenant, PublishDelaySeconds: &zero})); err != nil {
						t.Fatal(err)
					}
					tok4 := token(t, iss, id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
					if format == "jwt" && jwtHeader(t, tok4)["kid"] == jwtHeader(t, tok3)["kid"] {
						t.Fatal("the rotation did not change the signing key")
					}
					checkFor(t, 10*time.Second, 5*time.Millisecond, accepted(tok4))
					if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: tenant, Token: tok4})); err != nil {
						t.Fatal(err)
					}
					checkFor(t, 10*time.Second, 5*time.Millisecond, rejected(tok4))
				})
			}
			// A client created without --audience gets tokens for the
			// tenant issuer: a resource server with its own Audience says
			// why it refuses them.
			plainID, plainSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "no-audience", Scopes: []string{"read:orders"}})
			noAud := token(t, iss, plainID, plainSecret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
			if _, err := sdks[0].v.Verify(ctx, noAud); revocation.ReasonOf(err) != revocation.ReasonWrongAudience {
				t.Fatalf("token without the API's audience: reason %q (%v)", revocation.ReasonOf(err), err)
			}
			for _, p := range sdks {
				if r := p.w.Rejected(); r != 0 {
					t.Errorf("%s: the watcher dropped %d events", p.name, r)
				}
			}
		})
	}
}

// codeTokensScopes runs the authorization-code flow for alice with scopes.
func (e *flowEnv) codeTokensScopes(t *testing.T, scopes ...string) *oauth2.Token {
	t.Helper()
	conf := *e.conf
	conf.Scopes = scopes
	e2 := *e
	e2.conf = &conf
	return e2.codeTokens(t)
}

// TestUserDisableEnableReachesSDK (issue 9, issue 16 bug 2): disabling a
// user makes its live access tokens inactive at introspection and rejected
// by the SDK (over NATS and Connect, and after a resync), and ends its
// refresh families; enabling it again is published, so the SDK accepts the
// user's fresh tokens, also after a restart from its position file.
func TestUserDisableEnableReachesSDK(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	f := newRSFixture(t, n)
	ctx := context.Background()
	dir := t.TempDir()
	vc := revocation.Config{Issuer: e.issuer, Audience: e.issuer}
	wcOf := func(transport string) revocation.WatcherConfig {
		wc := f.watcherConfig
		wc.PositionFile = filepath.Join(dir, transport+".json")
		if transport == "nats" {
			wc.NATS = f.connectNATS(t)
		}
		return wc
	}
	sdks := []*sdkPair{startSDK(t, "nats", wcOf("nats"), vc), startSDK(t, "connect", wcOf("connect"), vc)}
	all := func(fn func(p *sdkPair) error) func() error {
		return func() error {
			for _, p := range sdks {
				if err := fn(p); err != nil {
					return err
				}
			}
			return nil
		}
	}
	active := func(tok string) bool { return introspect(t, e.issuer, f.clientID, f.sec, tok)["active"] == true }

	withFamily := e.codeTokens(t)                                   // offline_access: a refresh family
	plain := e.codeTokensScopes(t, "openid", "profile").AccessToken // no family
	for _, tok := range []string{withFamily.AccessToken, plain} {
		if !active(tok) {
			t.Fatal("a fresh user token is inactive")
		}
		checkFor(t, 5*time.Second, 5*time.Millisecond, all(func(p *sdkPair) error { return p.accepted(tok) }))
	}

	if _, err := n.Admin.DisableUser(ctx, connect.NewRequest(&adminv1.DisableUserRequest{Tenant: "default", User: e.userID})); err != nil {
		t.Fatal(err)
	}
	lockedBy := time.Now()
	for _, tok := range []string{withFamily.AccessToken, plain} {
		if active(tok) {
			t.Fatal("introspection: a disabled user's token is active")
		}
		checkFor(t, 10*time.Second, 5*time.Millisecond, all(func(p *sdkPair) error {
			if _, err := p.v.Verify(ctx, tok); !errors.Is(err, revocation.ErrRevoked) {
				return fmt.Errorf("%s: a disabled user's token: %v, want ErrRevoked", p.name, err)
			}
			return nil
		}))
	}
	// A resource server that starts now learns the lock from the resync.
	fresh := startSDK(t, "resynced", f.watcherConfig, vc)
	if _, err := fresh.v.Verify(ctx, plain); !errors.Is(err, revocation.ErrRevoked) {
		t.Fatalf("after a resync, a disabled user's token: %v, want ErrRevoked", err)
	}
	fresh.w.Stop()

	if _, err := n.Admin.EnableUser(ctx, connect.NewRequest(&adminv1.EnableUserRequest{Tenant: "default", User: e.userID})); err != nil {
		t.Fatal(err)
	}
	// The family ended with the lock: it stays revoked.
	if _, err := e.refresh(withFamily.RefreshToken); err == nil {
		t.Fatal("the refresh family survived disabling the user")
	}
	if active(withFamily.AccessToken) {
		t.Fatal("the family's access token is active again after the user was enabled")
	}
	// Tokens issued before the lock stay dead: a stolen one does not come
	// back with the user. (iat has whole seconds: a token issued in the
	// lock's second counts as before it, so the new sign-in waits for the
	// next second.)
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if time.Now().Unix() <= lockedBy.Unix() {
			return errors.New("still the lock's second")
		}
		return nil
	})
	again := e.codeTokens(t).AccessToken
	checkFor(t, 10*time.Second, 5*time.Millisecond, all(func(p *sdkPair) error { return p.accepted(again) }))
	if !active(again) {
		t.Fatal("introspection: a fresh token of the enabled user is inactive")
	}
	if got, want := userinfoStatus(t, e.issuer, plain), http.StatusUnauthorized; got != want {
		t.Fatalf("userinfo with a token issued before the lock: %d, want %d", got, want)
	}
	if got := userinfoStatus(t, e.issuer, again); got != http.StatusOK {
		t.Fatalf("userinfo with a fresh token: %d", got)
	}
	for _, tok := range []string{withFamily.AccessToken, plain} {
		if active(tok) {
			t.Fatal("introspection: a token issued before the lock is active again")
		}
		for _, p := range sdks {
			if _, err := p.v.Verify(ctx, tok); !errors.Is(err, revocation.ErrRevoked) {
				t.Fatalf("%s: a token issued before the lock: %v, want ErrRevoked", p.name, err)
			}
		}
	}
	resynced := startSDK(t, "resynced-after-enable", f.watcherConfig, vc)
	if err := resynced.accepted(again); err != nil {
		t.Fatal(err)
	}
	if _, err := resynced.v.Verify(ctx, plain); !errors.Is(err, revocation.ErrRevoked) {
		t.Fatalf("after a resync, a token issued before the lock: %v, want ErrRevoked", err)
	}
	resynced.w.Stop()

	// Restarted from their position files, they still accept the user.
	for _, p := range sdks {
		p.w.Stop()
	}
	for i, transport := range []string{"nats", "connect"} {
		sdks[i] = startSDK(t, transport+"-restarted", wcOf(transport), vc)
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, all(func(p *sdkPair) error {
		if _, err := p.v.Verify(ctx, plain); !errors.Is(err, revocation.ErrRevoked) {
			return fmt.Errorf("%s: a token issued before the lock: %v, want ErrRevoked", p.name, err)
		}
		return p.accepted(again)
	}))
}

// TestStolenRefreshRotated100Times (issue 9): a thief rotates a stolen
// refresh token 100 times; when the old one is presented again, every
// access token the family issued is inactive at introspection and
// rejected by the SDK.
func TestStolenRefreshRotated100Times(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	f := newRSFixture(t, n)
	ctx := context.Background()
	sdk := startSDK(t, "connect", f.watcherConfig, revocation.Config{Issuer: e.issuer, Audience: e.issuer})

	first := e.codeTokens(t)
	access := []string{first.AccessToken}
	rt := first.RefreshToken
	for i := range 100 {
		tok, err := e.refresh(rt)
		if err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
		access = append(access, tok.AccessToken)
		rt = tok.RefreshToken
	}
	if err := sdk.accepted(access[len(access)-1]); err != nil {
		t.Fatal(err)
	}
	if _, err := e.refresh(first.RefreshToken); err == nil {
		t.Fatal("reuse of the first refresh token succeeded")
	}
	for i, tok := range access {
		if got := introspect(t, e.issuer, f.clientID, f.sec, tok); got["active"] != false {
			t.Fatalf("access token %d of %d is active after reuse detection", i, len(access))
		}
	}
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		for i, tok := range access {
			if _, err := sdk.v.Verify(ctx, tok); !errors.Is(err, revocation.ErrRevoked) {
				return fmt.Errorf("access token %d of %d: %v, want ErrRevoked", i, len(access), err)
			}
		}
		return nil
	})
}
