package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/oauth2"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/proctest"
	"github.com/tallyauth/tally/revocation"
)

// viaNode sends requests for the cluster's one issuer to a node, as the
// front door or DNS would.
type viaNode struct {
	issuerHost string
	node       func() string // host:port of the node to use
}

func (v viaNode) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == v.issuerHost {
		r = r.Clone(r.Context())
		r.URL.Host = v.node()
		r.Host = ""
	}
	return http.DefaultTransport.RoundTrip(r)
}

type adminBearer string

func (b adminBearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}
func (b adminBearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (b adminBearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// TestSDKWithRealProcesses (issues 9 and 16) runs the SDK against three
// real `tally serve` processes: JWT and opaque tokens verify; an
// unknown-kid SET after a key rotation with no publish delay is applied,
// not dropped; after the event stream is recreated from empty (every
// node's JetStream store wiped), a watcher restarted from its position
// file resyncs instead of waiting beyond the new stream's head.
func TestSDKWithRealProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := proctest.Start(t, proctest.Options{})
	ctx := context.Background()
	iu, err := url.Parse(c.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	node0 := c.Node(0)
	hc := &http.Client{Transport: viaNode{issuerHost: iu.Host, node: func() string { return fmt.Sprintf("127.0.0.1:%d", node0.Ports.HTTP) }}}
	admin := adminv1connect.NewAdminServiceClient(http.DefaultClient, node0.URL(), connect.WithInterceptors(adminBearer(c.AdminToken)))
	client := func(name, format string) (string, string) {
		t.Helper()
		var resp *connect.Response[adminv1.CreateClientResponse]
		checkFor(t, 30*time.Second, 50*time.Millisecond, func() error { // the default tenant appears once a leader is elected
			var err error
			resp, err = admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: name,
				Scopes: []string{"read:orders"}, Audiences: []string{ordersAPI}, TokenFormat: format}))
			return err
		})
		return resp.Msg.Client.ClientId, resp.Msg.ClientSecret
	}
	revoke := func(jti string) {
		t.Helper()
		if _, err := admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Jti: jti,
			ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})); err != nil {
			t.Fatal(err)
		}
	}
	iss := c.Issuer + "/t/default"
	rsID, rsSecret := client("orders-api", "")
	wc := revocation.WatcherConfig{Issuer: iss, Tenant: "default", ServerURL: node0.URL(), HTTPClient: hc,
		ClientID: rsID, ClientSecret: rsSecret, PositionFile: filepath.Join(t.TempDir(), "position.json"),
		JWKSRefetchInterval: time.Hour}
	vc := revocation.Config{Issuer: iss, Audience: ordersAPI, HTTPClient: hc, ClientID: rsID, ClientSecret: rsSecret}
	sdk := startSDK(t, "connect", wc, vc)

	for _, format := range []string{"jwt", "opaque"} {
		id, secret := client(format, format)
		tok := token(t, node0.URL()+"/t/default", id, secret, oauth2.AuthStyleInHeader, "read:orders").AccessToken
		if err := sdk.accepted(tok); err != nil {
			t.Fatalf("%s: %v", format, err)
		}
	}

	revoke("warm") // the watcher now holds a fresh JWKS
	checkFor(t, 10*time.Second, 5*time.Millisecond, revokedBy("warm", sdk))
	zero := int64(0)
	for range 2 {
		if _, err := admin.RotateKeys(ctx, connect.NewRequest(&adminv1.RotateKeysRequest{Tenant: "default", PublishDelaySeconds: &zero})); err != nil {
			t.Fatal(err)
		}
	}
	revoke("after-rotation")
	checkFor(t, 30*time.Second, 10*time.Millisecond, revokedBy("after-rotation", sdk))
	if r := sdk.w.Rejected(); r != 0 {
		t.Fatalf("%d events dropped after the rotation", r)
	}

	sdk.w.Stop()
	for _, p := range c.Nodes() {
		p.Stop()
	}
	for _, p := range c.Nodes() {
		if err := os.RemoveAll(filepath.Join(p.DataDir, "nats")); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range c.Nodes() {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitReady(90 * time.Second)
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		_, err := admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Jti: "after-wipe",
			ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))}))
		return err
	})
	again := startSDK(t, "restarted", wc, vc)
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if again.w.Resyncs() < 1 {
			return errors.New("restarted from a position of the old stream without resyncing")
		}
		return revokedBy("after-wipe", again)()
	})
	revoke("after-wipe-2")
	checkFor(t, 30*time.Second, 10*time.Millisecond, revokedBy("after-wipe-2", again))
	if !again.w.Set().Revoked("after-rotation") {
		t.Fatal("a revocation from before the wipe is missing after the resync")
	}
}
