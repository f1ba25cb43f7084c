package node_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestSDKMatrix (issue 16) completes the SDK's end-to-end matrix against a
// real node: for every signing algorithm (ES256, EdDSA, RS256) and token
// format (JWT, opaque), SDKs following the event log over NATS and over
// Connect reject a user's tokens once the user is disabled, accept the
// user's fresh tokens once enabled again (not those from before), reject
// them once the user is deleted, and reject a client's tokens once the
// client is deleted; and across a node restart they keep accepting live
// tokens and receive revocations made after it. (Revocation, client
// disable/enable and key rotation per algorithm and format are in
// TestSDKVerifiesRealTokens.)
func TestSDKMatrix(t *testing.T) {
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.Listen, c.NATSListen = httpAddr, natsAddr
		// The matrix signs the same users in many times a second; the
		// per-username sign-in budget (30 a minute) is not what it tests.
		c.RateLimits.Off = true
	}))
	ctx := context.Background()
	type tenantSDKs struct {
		iss      string
		tenant   string
		id, sec  string // a confidential client of the tenant
		sdks     []*sdkPair
		jwt, opq string // live tokens issued before the restart
	}
	var tenants []*tenantSDKs
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		// The tenant's SDKs belong to the whole test, not to the subtest
		// below: they must outlive it for the restart leg (a watcher
		// stopped by the subtest's cleanup goes stale only after
		// MaxDisconnect, and meanwhile misses every event).
		tenant := "m-" + strings.ToLower(alg)
		if _, err := n.Admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: tenant, SigningAlg: alg})); err != nil {
			t.Fatal(err)
		}
		iss := n.Issuer(tenant)
		rsID, rsSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "rs"})
		// Default SDK settings (StreamCheckInterval, IdleTimeout, NATS
		// reconnects) apart from MaxDisconnect, which is the default too.
		wc := revocation.WatcherConfig{Issuer: iss, Tenant: tenant, ServerURL: n.BaseURL(), ClientID: rsID, ClientSecret: rsSecret,
			MaxDisconnect: time.Minute}
		vc := revocation.Config{Issuer: iss, Audience: iss, ClientID: rsID, ClientSecret: rsSecret}
		nc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: n.NATSURL(), Tenant: tenant, ClientID: rsID, ClientSecret: rsSecret})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		wcN := wc
		wcN.NATS = nc
		ts := &tenantSDKs{iss: iss, tenant: tenant, id: rsID, sec: rsSecret,
			sdks: []*sdkPair{startSDK(t, alg+"/connect", wc, vc), startSDK(t, alg+"/nats", wcN, vc)}}
		tenants = append(tenants, ts)
		t.Run(alg, func(t *testing.T) {
			each := func(fn func(p *sdkPair) error) func() error {
				return func() error {
					for _, p := range ts.sdks {
						if err := fn(p); err != nil {
							return err
						}
					}
					return nil
				}
			}
			accepted := func(tok string) func() error { return each(func(p *sdkPair) error { return p.accepted(tok) }) }
			rejected := func(tok string) func() error { return each(func(p *sdkPair) error { return p.rejected(tok) }) }
			for _, format := range []string{"jwt", "opaque"} {
				t.Run(format, func(t *testing.T) {
					u, err := n.Admin.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{Tenant: tenant, Username: "alice",
						Password: alicePassword}))
					if err != nil {
						t.Fatal(err)
					}
					userID := u.Msg.User.UserId
					web, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: tenant, Name: "web-" + format,
						Public: true, GrantTypes: []string{"authorization_code", "refresh_token"}, TokenFormat: format,
						Scopes: []string{"openid", "profile", "offline_access"}, RedirectUris: []string{callback}}))
					if err != nil {
						t.Fatal(err)
					}
					e := &flowEnv{n: n, issuer: iss, userID: userID, conf: &oauth2.Config{
						ClientID: web.Msg.Client.ClientId,
						Endpoint: oauth2.Endpoint{AuthURL: iss + "/oauth2/authorize", TokenURL: iss + "/oauth2/token",
							AuthStyle: oauth2.AuthStyleInParams},
						RedirectURL: callback,
						Scopes:      []string{"openid", "profile", "offline_access"},
					}}
					before := e.codeTokens(t).AccessToken
					checkFor(t, 10*time.Second, 5*time.Millisecond, accepted(before))

					// User disabled, then enabled again.
					if _, err := n.Admin.DisableUser(ctx, connect.NewRequest(&adminv1.DisableUserRequest{Tenant: tenant, User: userID})); err != nil {
						t.Fatal(err)
					}
					lockedBy := time.Now()
					checkFor(t, 10*time.Second, 5*time.Millisecond, rejected(before))
					if _, err := n.Admin.EnableUser(ctx, connect.NewRequest(&adminv1.EnableUserRequest{Tenant: tenant, User: userID})); err != nil {
						t.Fatal(err)
					}
					checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
						if time.Now().Unix() <= lockedBy.Unix() {
							return errors.New("still the lock's second")
						}
						return nil
					})
					after := e.codeTokens(t).AccessToken
					checkFor(t, 10*time.Second, 5*time.Millisecond, accepted(after))
					if err := rejected(before)(); err != nil {
						t.Fatalf("a token from before the lock: %v", err)
					}

					// User deleted.
					if _, err := n.Admin.DeleteUser(ctx, connect.NewRequest(&adminv1.DeleteUserRequest{Tenant: tenant, User: userID})); err != nil {
						t.Fatal(err)
					}
					checkFor(t, 10*time.Second, 5*time.Millisecond, rejected(after))

					// Client deleted.
					id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "svc-" + format,
						Scopes: []string{"read:orders"}, Audiences: []string{iss}, TokenFormat: format})
					ct := token(t, iss, id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
					checkFor(t, 10*time.Second, 5*time.Millisecond, accepted(ct))
					if _, err := n.Admin.DeleteClient(ctx, connect.NewRequest(&adminv1.DeleteClientRequest{Tenant: tenant, ClientId: id})); err != nil {
						t.Fatal(err)
					}
					checkFor(t, 10*time.Second, 5*time.Millisecond, rejected(ct))
				})
			}
			for _, format := range []string{"jwt", "opaque"} {
				id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "live-" + format,
					Scopes: []string{"read:orders"}, Audiences: []string{iss}, TokenFormat: format})
				tok := token(t, iss, id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
				if format == "jwt" {
					ts.jwt = tok
				} else {
					ts.opq = tok
				}
			}
		})
	}

	// Node restart: live tokens stay accepted, and every watcher (default
	// settings) follows the restarted node: a revocation made after the
	// restart reaches its set through the event log (not only through
	// introspection). (No resync on a plain restart: see
	// TestSDKResyncsWhenStreamRecreated.)
	pos := map[*sdkPair]uint64{}
	for _, ts := range tenants {
		for _, p := range ts.sdks {
			pos[p] = p.w.Position()
		}
	}
	n = n.Restart(t)
	for _, ts := range tenants {
		for _, tok := range []string{ts.jwt, ts.opq} {
			checkFor(t, 60*time.Second, 10*time.Millisecond, func() error {
				for _, p := range ts.sdks {
					if err := p.accepted(tok); err != nil {
						return err
					}
				}
				return nil
			})
			if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: ts.tenant, Token: tok})); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 60*time.Second, 10*time.Millisecond, func() error {
				var errs []error
				for _, p := range ts.sdks {
					if err := p.rejected(tok); err != nil {
						errs = append(errs, fmt.Errorf("after the restart: %w (position %d, before the restart %d, stale %v, connected %v)",
							err, p.w.Position(), pos[p], p.w.Stale(), p.w.Connected()))
					} else if p.w.Position() <= pos[p] {
						errs = append(errs, fmt.Errorf("%s: rejected, but the watcher is still at its position from before the restart (%d)", p.name, pos[p]))
					}
				}
				return errors.Join(errs...)
			})
		}
		for _, p := range ts.sdks {
			if r := p.w.Rejected(); r != 0 {
				t.Errorf("%s: the watcher dropped %d events", p.name, r)
			}
			if p.w.Stale() {
				t.Errorf("%s: stale after following the restarted node", p.name)
			}
		}
	}
}
