package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/localcluster"
	"github.com/tallyauth/tally/revocation"
)

const revokePropagationUsage = `Usage: tally loadtest revoke-propagation [--revocations 10000]
        [--transport nats|connect] [--verify-duration 5s] [--output text|json]

Starts a real single tally node (temporary directory, embedded NATS, all on
loopback) and a resource-server SDK watcher in this process, then revokes
--revocations token ids one after another through the admin API and records,
for each, the time from the admin call's acknowledgement to the moment the
SDK's revocation set has it (HdrHistogram). Then it measures the SDK's local
JWT verification (Verify, revocation check included) beside a bare
golang-jwt verification of the same token and key, for --verify-duration
each, with GOMAXPROCS workers.
`

func runLoadtestRevokePropagation(ctx context.Context, args []string, e env) int {
	fs := loadtestFlags("revoke-propagation", e)
	fs.Usage = func() { fmt.Fprint(e.stderr, revokePropagationUsage); fs.PrintDefaults() }
	count := fs.Int("revocations", 10000, "revocations to make")
	transport := fs.String("transport", "nats", "how the SDK follows the event log: nats or connect")
	verifyFor := fs.Duration("verify-duration", 5*time.Second, "how long each verification measurement runs (0 skips it)")
	output := fs.String("output", "text", "text or json")
	if code := loadtestParse(fs, args, e); code >= 0 {
		return code
	}
	if !loadtestCheckOutput(*output, e, "revoke-propagation") {
		return 2
	}
	if *count < 1 || (*transport != "nats" && *transport != "connect") {
		fmt.Fprintln(e.stderr, "tally loadtest revoke-propagation: --revocations must be positive and --transport nats or connect")
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "tally loadtest revoke-propagation: "+format+"\n", a...)
		return 1
	}
	dir, err := os.MkdirTemp("", "tally-loadtest-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(e.stderr, "starting a tally node in %s …\n", dir)
	// Rate limits off: the load comes from one client on one address.
	n, err := localcluster.StartDir(ctx, dir, localcluster.WithConfig(func(c *node.Config) { c.RateLimits.Off = true }))
	if err != nil {
		return fail("starting node: %v", err)
	}
	defer n.Close()
	sdk, err := startRevokeSDK(ctx, n, *transport)
	if sdk != nil {
		defer sdk.stop()
	}
	if err != nil {
		return fail("%v", err)
	}

	fmt.Fprintf(e.stderr, "revoking %d token ids, one at a time, over %s …\n", *count, *transport)
	rep, err := loadtest.RunRevokePropagation(ctx, loadtest.RevokePropagationConfig{
		Admin: n.Admin, Tenant: revokeTenant, Watcher: sdk.w, Revocations: *count,
		Progress: func(done int) { fmt.Fprintf(e.stderr, "  %d\n", done) },
	})
	if err != nil {
		return fail("%v", err)
	}

	var vr *loadtest.VerifyReport
	if *verifyFor > 0 {
		if vr, err = sdk.verifyCompare(ctx, n, *verifyFor, e); err != nil {
			return fail("%v", err)
		}
	}
	return printRevokePropagation(e, *output, *transport, rep, vr)
}

// The tenant and audience of the revoke-propagation node's client.
const (
	revokeTenant   = "default"
	revokeAudience = "https://orders.example"
)

// revokeSDK is the SDK side of revoke-propagation: a client of the node,
// and the watcher and verifier that use it.
type revokeSDK struct {
	id, secret, issuer string
	w                  *revocation.Watcher
	v                  *revocation.Verifier
	closers            []func()
}

func (s *revokeSDK) stop() {
	for _, c := range slices.Backward(s.closers) {
		c()
	}
}

// startRevokeSDK creates the client and starts a watcher over transport
// (nats or connect) and a verifier; it returns once the watcher is synced.
// A non-nil result must be stopped, also with an error.
func startRevokeSDK(ctx context.Context, n *localcluster.Node, transport string) (*revokeSDK, error) {
	created, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: revokeTenant, Name: "orders-api", Scopes: []string{"read:orders"}, Audiences: []string{revokeAudience},
	}))
	if err != nil {
		return nil, fmt.Errorf("creating the client: %w", err)
	}
	s := &revokeSDK{id: created.Msg.Client.ClientId, secret: created.Msg.ClientSecret, issuer: n.Issuer(revokeTenant)}
	wc := revocation.WatcherConfig{Issuer: s.issuer, Tenant: revokeTenant, ServerURL: n.BaseURL(), ClientID: s.id, ClientSecret: s.secret}
	if transport == "nats" {
		nc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: n.NATSURL(), Tenant: revokeTenant, ClientID: s.id, ClientSecret: s.secret})
		if err != nil {
			return s, fmt.Errorf("nats: %w", err)
		}
		s.closers = append(s.closers, nc.Close)
		wc.NATS = nc
	}
	if s.w, err = revocation.NewWatcher(wc); err != nil {
		return s, err
	}
	if s.v, err = revocation.NewVerifier(revocation.Config{Issuer: s.issuer, Audience: revokeAudience, Watcher: s.w}); err != nil {
		return s, err
	}
	s.w.Start()
	s.closers = append(s.closers, s.w.Stop)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.w.WaitSynced(wctx); err != nil {
		return s, fmt.Errorf("the SDK did not sync: %w", err)
	}
	return s, nil
}

// verifyCompare measures the SDK's Verify against bare golang-jwt on a
// fresh token of the client, each for d.
func (s *revokeSDK) verifyCompare(ctx context.Context, n *localcluster.Node, d time.Duration, e env) (*loadtest.VerifyReport, error) {
	cc := clientcredentials.Config{ClientID: s.id, ClientSecret: s.secret, TokenURL: n.TokenURL(revokeTenant), Scopes: []string{"read:orders"}}
	tok, err := cc.Token(ctx)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	resp, err := http.Get(s.issuer + "/jwks.json")
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	var jwks jose.JSONWebKeySet
	err = json.NewDecoder(resp.Body).Decode(&jwks)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	fmt.Fprintf(e.stderr, "verifying for %s each: SDK, then bare golang-jwt …\n", d)
	r, err := loadtest.RunVerifyCompare(ctx, s.v, jwks, s.issuer, tok.AccessToken, d)
	if err != nil {
		return nil, err
	}
	r.RevokedSet = s.w.Set().Len()
	return &r, nil
}

// printRevokePropagation writes the figures as text or JSON; it returns
// the exit code.
func printRevokePropagation(e env, output, transport string, rep loadtest.RevokeReport, vr *loadtest.VerifyReport) int {
	if output == "json" {
		out := map[string]any{"transport": transport, "propagation": map[string]any{
			"revocations": rep.Revocations, "p50_ms": ms(rep.P50), "p90_ms": ms(rep.P90), "p99_ms": ms(rep.P99),
			"p999_ms": ms(rep.P999), "max_ms": ms(rep.Max), "mean_ms": ms(rep.Mean), "before_ack": rep.BeforeAck,
			"elapsed_s": rep.Elapsed.Seconds(), "from_call_p50_ms": ms(rep.FromCallP50), "from_call_p99_ms": ms(rep.FromCallP99),
		}}
		if vr != nil {
			out["verify"] = vr
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return 1
		}
		return 0
	}
	fmt.Fprintf(e.stdout, "revocation propagation (%s, single node, %d revocations in %s):\n", transport, rep.Revocations, rep.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(e.stdout, "  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  mean %s  (before ack: %d)\n",
		rep.P50, rep.P90, rep.P99, rep.P999, rep.Max, rep.Mean.Round(time.Microsecond), rep.BeforeAck)
	fmt.Fprintf(e.stdout, "  from the start of the admin call: p50 %s  p99 %s\n", rep.FromCallP50, rep.FromCallP99)
	if vr != nil {
		fmt.Fprintf(e.stdout, "local verification (%s, %d workers, revocation set of %d):\n", vr.Alg, vr.Workers, vr.RevokedSet)
		fmt.Fprintf(e.stdout, "  SDK Verify %.0f ops/s, bare golang-jwt %.0f ops/s, ratio %.3f\n", vr.SDKOps, vr.BareOps, vr.Ratio)
	}
	return 0
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
