package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/tallyauth/tally/node"
	"net/http"
	"os"
	"time"

	"connectrpc.com/connect"
	"github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tallyauth/tally/loadtest"
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
	const tenant = "default"
	const audience = "https://orders.example"
	created, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: tenant, Name: "orders-api", Scopes: []string{"read:orders"}, Audiences: []string{audience},
	}))
	if err != nil {
		return fail("creating the client: %v", err)
	}
	id, secret := created.Msg.Client.ClientId, created.Msg.ClientSecret
	issuer := n.Issuer(tenant)

	wc := revocation.WatcherConfig{Issuer: issuer, Tenant: tenant, ServerURL: n.BaseURL(), ClientID: id, ClientSecret: secret}
	if *transport == "nats" {
		nc, err := revocation.ConnectNATS(revocation.NATSConfig{URLs: n.NATSURL(), Tenant: tenant, ClientID: id, ClientSecret: secret})
		if err != nil {
			return fail("nats: %v", err)
		}
		defer nc.Close()
		wc.NATS = nc
	}
	w, err := revocation.NewWatcher(wc)
	if err != nil {
		return fail("%v", err)
	}
	v, err := revocation.NewVerifier(revocation.Config{Issuer: issuer, Audience: audience, Watcher: w})
	if err != nil {
		return fail("%v", err)
	}
	w.Start()
	defer w.Stop()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = w.WaitSynced(wctx)
	cancel()
	if err != nil {
		return fail("the SDK did not sync: %v", err)
	}

	fmt.Fprintf(e.stderr, "revoking %d token ids, one at a time, over %s …\n", *count, *transport)
	rep, err := loadtest.RunRevokePropagation(ctx, loadtest.RevokePropagationConfig{
		Admin: n.Admin, Tenant: tenant, Watcher: w, Revocations: *count,
		Progress: func(done int) { fmt.Fprintf(e.stderr, "  %d\n", done) },
	})
	if err != nil {
		return fail("%v", err)
	}

	var vr *loadtest.VerifyReport
	if *verifyFor > 0 {
		cc := clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: n.TokenURL(tenant), Scopes: []string{"read:orders"}}
		tok, err := cc.Token(ctx)
		if err != nil {
			return fail("token: %v", err)
		}
		resp, err := http.Get(issuer + "/jwks.json")
		if err != nil {
			return fail("jwks: %v", err)
		}
		var jwks jose.JSONWebKeySet
		err = json.NewDecoder(resp.Body).Decode(&jwks)
		resp.Body.Close()
		if err != nil {
			return fail("jwks: %v", err)
		}
		fmt.Fprintf(e.stderr, "verifying for %s each: SDK, then bare golang-jwt …\n", *verifyFor)
		r, err := loadtest.RunVerifyCompare(ctx, v, jwks, issuer, tok.AccessToken, *verifyFor)
		if err != nil {
			return fail("%v", err)
		}
		r.RevokedSet = w.Set().Len()
		vr = &r
	}

	if *output == "json" {
		out := map[string]any{"transport": *transport, "propagation": map[string]any{
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
	fmt.Fprintf(e.stdout, "revocation propagation (%s, single node, %d revocations in %s):\n", *transport, rep.Revocations, rep.Elapsed.Round(time.Millisecond))
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
