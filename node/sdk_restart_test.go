package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestSDKFollowsNodeRestartInEveryTenant (regression, issue 16 matrix):
// watchers of several tenants (the default one and two others), over NATS
// and over Connect, with the SDK's default settings (StreamCheckInterval,
// IdleTimeout, MaxDisconnect, ConnectNATS's reconnects), keep following a
// node across a plain restart: a revocation made after the restart reaches
// every set through the event log (the set's position moves past the one
// from before the restart), and no watcher is stale afterwards. The
// watchers are started by this test, not by a subtest: a watcher stopped
// by a subtest's cleanup is not following anything and is only stale after
// MaxDisconnect (the cause of the matrix's "known failure").
func TestSDKFollowsNodeRestartInEveryTenant(t *testing.T) {
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) { c.Listen, c.NATSListen = httpAddr, natsAddr }))
	ctx := context.Background()
	type tenantSDK struct {
		tenant string
		sdks   []*sdkPair
	}
	var all []tenantSDK
	for _, tenant := range []string{"default", "r-one", "r-two"} {
		if tenant != "default" {
			if _, err := n.Admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: tenant})); err != nil {
				t.Fatal(err)
			}
		}
		iss := n.Issuer(tenant)
		rsID, rsSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "rs"})
		wc := revocation.WatcherConfig{Issuer: iss, Tenant: tenant, ServerURL: n.BaseURL(), ClientID: rsID, ClientSecret: rsSecret}
		vc := revocation.Config{Issuer: iss, Audience: iss, ClientID: rsID, ClientSecret: rsSecret}
		nc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: n.NATSURL(), Tenant: tenant, ClientID: rsID, ClientSecret: rsSecret})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		wcN := wc
		wcN.NATS = nc
		all = append(all, tenantSDK{tenant: tenant,
			sdks: []*sdkPair{startSDK(t, tenant+"/connect", wc, vc), startSDK(t, tenant+"/nats", wcN, vc)}})
	}
	revoke := func(tenant, jti string) {
		t.Helper()
		if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
			Tenant: tenant, Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		})); err != nil {
			t.Fatal(err)
		}
	}
	// Each tenant has a position in the stream before the restart.
	for _, ts := range all {
		revoke(ts.tenant, ts.tenant+"-before")
		checkFor(t, 30*time.Second, 10*time.Millisecond, revokedBy(ts.tenant+"-before", ts.sdks...))
	}
	pos := map[*sdkPair]uint64{}
	for _, ts := range all {
		for _, p := range ts.sdks {
			pos[p] = p.w.Position()
		}
	}

	n = n.Restart(t)
	for _, ts := range all {
		revoke(ts.tenant, ts.tenant+"-after")
	}
	for _, ts := range all {
		checkFor(t, 60*time.Second, 10*time.Millisecond, func() error {
			var errs []error
			for _, p := range ts.sdks {
				switch {
				case !p.w.Set().Revoked(ts.tenant + "-after"):
					errs = append(errs, fmt.Errorf("%s: the revocation after the restart is not in the set (position %d, before the restart %d, stale %v, connected %v)",
						p.name, p.w.Position(), pos[p], p.w.Stale(), p.w.Connected()))
				case p.w.Position() <= pos[p]:
					errs = append(errs, fmt.Errorf("%s: revoked (live subject?) but the stream position did not move past %d", p.name, pos[p]))
				case !p.w.Connected():
					errs = append(errs, fmt.Errorf("%s: not connected", p.name))
				}
			}
			return errors.Join(errs...)
		})
		for _, p := range ts.sdks {
			if p.w.Stale() {
				t.Errorf("%s: stale after following the restarted node", p.name)
			}
			if r := p.w.Rejected(); r != 0 {
				t.Errorf("%s: the watcher dropped %d events", p.name, r)
			}
		}
	}
}
