package node_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/revocation"
)

// TestDeleteTenantReachesSDKs (issue 16): once a tenant is deleted, SDKs
// following its event log over NATS and over Connect reject its JWTs
// (ReasonTenantDeleted) and its opaque tokens: the tenant-deleted SET is
// signed with the key its tombstone keeps and verified with the key the
// watcher cached (no resync), and a watcher that never cached one learns it
// through a resync. The rejection survives a watcher restart from its
// position file (before it connects) and a node restart (a new watcher
// resyncs from the tombstone); a verifier without a watcher rejects the
// tokens because the tenant's metadata answers 404.
func TestDeleteTenantReachesSDKs(t *testing.T) {
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.Listen, c.NATSListen = httpAddr, natsAddr
		c.RateLimits.Off = true
	}))
	ctx := context.Background()
	const tenant = "doomed"
	if _, err := n.Admin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: tenant})); err != nil {
		t.Fatal(err)
	}
	iss := n.Issuer(tenant)
	rsID, rsSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "rs"})
	jwtID, jwtSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "svc",
		Scopes: []string{"read:orders"}, Audiences: []string{iss}})
	opqID, opqSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: tenant, Name: "svc-opaque",
		Scopes: []string{"read:orders"}, Audiences: []string{iss}, TokenFormat: "opaque"})
	jwtTok := token(t, iss, jwtID, jwtSecret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
	opqTok := token(t, iss, opqID, opqSecret, oauth2.AuthStyleInHeader, "read:orders").AccessToken

	dir := t.TempDir()
	wc := revocation.WatcherConfig{Issuer: iss, Tenant: tenant, ServerURL: n.BaseURL(), ClientID: rsID, ClientSecret: rsSecret,
		MaxDisconnect: time.Minute}
	vc := revocation.Config{Issuer: iss, Audience: iss, ClientID: rsID, ClientSecret: rsSecret}
	connectNATS := func() revocation.WatcherConfig {
		nc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: n.NATSURL(), Tenant: tenant, ClientID: rsID, ClientSecret: rsSecret})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		c := wc
		c.NATS = nc
		return c
	}
	wcConnect, wcNATS := wc, connectNATS()
	wcConnect.PositionFile = filepath.Join(dir, "connect.json")
	wcNATS.PositionFile = filepath.Join(dir, "nats.json")
	sdks := []*sdkPair{startSDK(t, "connect", wcConnect, vc), startSDK(t, "nats", wcNATS, vc)}
	for _, tok := range []string{jwtTok, opqTok} {
		checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			for _, p := range sdks {
				if err := p.accepted(tok); err != nil {
					return err
				}
			}
			return nil
		})
	}
	// An event of the tenant, so that both watchers verify a SET and
	// cache the tenant's key.
	victim := token(t, iss, jwtID, jwtSecret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
	if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: tenant, Token: victim})); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, p := range sdks {
			if err := p.rejected(victim); err != nil {
				return err
			}
		}
		return nil
	})
	// A watcher that has verified no SET (synced after that event): it
	// cannot verify the tenant-deleted SET once the JWKS is gone.
	cold := startSDK(t, "nats-cold", connectNATS(), vc)
	sdks = append(sdks, cold)
	resyncs := map[*sdkPair]int64{}
	for _, p := range sdks {
		resyncs[p] = p.w.Resyncs()
	}

	if err := deleteTenant(ctx, n, tenant); err != nil {
		t.Fatal(err)
	}
	deleted := func(p *sdkPair, tok string) error {
		_, err := p.v.Verify(ctx, tok)
		if tok == jwtTok && revocation.ReasonOf(err) != revocation.ReasonTenantDeleted {
			return fmt.Errorf("%s: JWT of the deleted tenant: %v (%s), want %s", p.name, err, revocation.ReasonOf(err), revocation.ReasonTenantDeleted)
		}
		if !errors.Is(err, revocation.ErrRevoked) && !errors.Is(err, revocation.ErrInvalidToken) {
			return fmt.Errorf("%s: token of the deleted tenant: %v", p.name, err)
		}
		return nil
	}
	for _, tok := range []string{jwtTok, opqTok} {
		checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
			for _, p := range sdks {
				if p.w.Set().TenantDeleted() == 0 {
					return fmt.Errorf("%s: the set does not know the deletion", p.name)
				}
				if err := deleted(p, tok); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for _, p := range sdks {
		if r := p.w.Rejected(); r != 0 {
			t.Errorf("%s: %d events dropped", p.name, r)
		}
	}
	// The warm watchers verified the signed tenant-deleted event; the cold
	// one resynced.
	for _, p := range sdks[:2] {
		if p.w.Resyncs() != resyncs[p] {
			t.Errorf("%s: resynced (%d, before %d) instead of verifying the tenant-deleted event", p.name, p.w.Resyncs(), resyncs[p])
		}
	}
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if cold.w.Resyncs() == resyncs[cold] {
			return errors.New("the cold watcher did not resync")
		}
		return nil
	})

	// A verifier without a watcher: the tenant's metadata answers 404.
	bare, err := revocation.NewVerifier(revocation.Config{Issuer: iss, Audience: iss})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bare.Verify(ctx, jwtTok); revocation.ReasonOf(err) != revocation.ReasonTenantDeleted || !errors.Is(err, revocation.ErrRevoked) {
		t.Fatalf("verifier without a watcher: %v (%s)", err, revocation.ReasonOf(err))
	}

	// Watchers restarted from their position files reject the tokens
	// before they connect, and after.
	for i, wcf := range []revocation.WatcherConfig{wcConnect, wcNATS} {
		sdks[i].w.Stop()
		w, err := revocation.NewWatcher(wcf)
		if err != nil {
			t.Fatal(err)
		}
		vcw := vc
		vcw.Watcher = w
		v, err := revocation.NewVerifier(vcw)
		if err != nil {
			t.Fatal(err)
		}
		p := &sdkPair{name: sdks[i].name + " restarted", w: w, v: v}
		if err := deleted(p, jwtTok); err != nil {
			t.Fatalf("from the position file: %v", err)
		}
		w.Start()
		t.Cleanup(w.Stop)
		time.Sleep(200 * time.Millisecond) // let it try to connect: nothing may undo the deletion
		if err := deleted(p, jwtTok); err != nil {
			t.Fatalf("running again: %v", err)
		}
	}

	// Node restart: the tombstone survives, and a new watcher learns the
	// deletion from its resync.
	n = n.Restart(t)
	fresh, err := revocation.NewWatcher(wc)
	if err != nil {
		t.Fatal(err)
	}
	vcf := vc
	vcf.Watcher = fresh
	fv, err := revocation.NewVerifier(vcf)
	if err != nil {
		t.Fatal(err)
	}
	fresh.Start()
	t.Cleanup(fresh.Stop)
	p := &sdkPair{name: "new watcher after the node restart", w: fresh, v: fv}
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if fresh.Set().TenantDeleted() == 0 {
			return errors.New("the new watcher does not know the deletion")
		}
		return deleted(p, jwtTok)
	})
	// The restart did not bring the tenant back (only its tombstone).
	if _, ok := n.Raft().State().Tenant(tenant); ok {
		t.Fatal("tenant back after the restart")
	}
}
