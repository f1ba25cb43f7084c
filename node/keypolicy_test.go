package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestKeyPolicyRotatesKeys: with a key policy, the leader of a 3-node
// cluster rotates the tenant's keys by itself: the new keys are pending
// for at least the JWKS max-age, the old ones retire when the new ones
// become current and stay published for the longest token lifetime plus
// the JWKS max-age. Durations are shortened; assertions are on the key
// records, never on how fast it happens.
func TestKeyPolicyRotatesKeys(t *testing.T) {
	t.Cleanup(node.SetKeyPolicyTimingForTest(50*time.Millisecond, time.Second))
	const maxAge = time.Second
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(nodetest.FastRaft, nodetest.WithConfig(func(cfg *node.Config) {
		cfg.JWKSMaxAge = maxAge
		cfg.KeyPublishDelay = 0
	})))
	ctx := context.Background()
	admin := c.Node(1).Admin // any node: the RPC is forwarded to the leader
	before, err := admin.ListKeys(ctx, connect.NewRequest(&adminv1.ListKeysRequest{Tenant: "default"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetKeyPolicy(ctx, connect.NewRequest(&adminv1.SetKeyPolicyRequest{Tenant: "default", RotateEverySeconds: 2})); err != nil {
		t.Fatal(err)
	}
	got, err := admin.GetKeyPolicy(ctx, connect.NewRequest(&adminv1.GetKeyPolicyRequest{Tenant: "default"}))
	if err != nil {
		t.Fatal(err)
	}
	if p := got.Msg.Policy; p.RotateEverySeconds != 2 || p.SealRotateEverySeconds != 2 || p.NextRotationAt == nil {
		t.Fatalf("policy %v", p)
	}
	// Wait for two rotations (at least 3 signing keys).
	var keys []*adminv1.Key
	nodetest.CheckFor(t, nodetest.Timeout, 100*time.Millisecond, func() error {
		res, err := c.Node(2).Admin.ListKeys(ctx, connect.NewRequest(&adminv1.ListKeysRequest{Tenant: "default"}))
		if err != nil {
			return err
		}
		keys = res.Msg.Keys
		if n := countUse(keys, "sig"); n < len(before.Msg.Keys)/2+2 {
			return fmt.Errorf("%d signing keys", n)
		}
		return nil
	})
	slices.SortStableFunc(keys, func(a, b *adminv1.Key) int { return a.CreatedAt.AsTime().Compare(b.CreatedAt.AsTime()) })
	for _, use := range []string{"sig", "seal"} {
		var prev *adminv1.Key
		for _, k := range keys {
			if k.Use != use {
				continue
			}
			if prev != nil {
				pending := k.NotBefore.AsTime().Sub(k.CreatedAt.AsTime())
				if pending < maxAge {
					t.Errorf("%s key %s pending %s, want at least the JWKS max-age %s", use, k.Kid, pending, maxAge)
				}
				if !prev.RetiredAt.AsTime().Equal(k.NotBefore.AsTime()) {
					t.Errorf("%s key %s retired at %v, want when %s became current (%v)", use, prev.Kid, prev.RetiredAt.AsTime(), k.Kid, k.NotBefore.AsTime())
				}
				if kept := prev.ExpiresAt.AsTime().Sub(prev.RetiredAt.AsTime()); kept < node.MaxAccessTokenTTL+maxAge {
					t.Errorf("%s key %s published %s after retirement, want at least %s", use, prev.Kid, kept, node.MaxAccessTokenTTL+maxAge)
				}
			}
			prev = k
		}
	}
	// Turning the policy off stops the rotations.
	if _, err := admin.SetKeyPolicy(ctx, connect.NewRequest(&adminv1.SetKeyPolicyRequest{Tenant: "default"})); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetKeyPolicy(ctx, connect.NewRequest(&adminv1.SetKeyPolicyRequest{Tenant: "default", RotateEverySeconds: -1})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("negative interval: %v", err)
	}
}

func countUse(keys []*adminv1.Key, use string) int {
	n := 0
	for _, k := range keys {
		if k.Use == use {
			n++
		}
	}
	return n
}
