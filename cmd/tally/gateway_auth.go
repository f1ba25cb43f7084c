package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tallyauth/tally/node/gateway"
)

const gatewayAuthUsage = `tally gateway-auth — a standalone forward-auth / ext_authz sidecar for an API gateway

Usage:
  tally gateway-auth --issuer URL --server URL --audience A --client-id ID [flags]

It verifies access tokens locally with the resource-server SDK (JWKS and a
revocation set following the event log; opaque tokens by cached
introspection) and their binding (a DPoP-bound token needs the DPoP scheme and
a proof for the URL the gateway forwards; a certificate-bound one the
Client-Cert a trusted gateway forwards), applies the tenant's gateway routes, rate limits and CEL
policies (fetched from {issuer}/gateway/rules every --rules-every), and answers
  GET /gateway/check                         nginx auth_request, Caddy forward_auth, Traefik ForwardAuth
  envoy.service.auth.v3.Authorization/Check  Envoy ext_authz (gRPC, h2c)
The gateway's client (allowed the token-exchange grant) authenticates it; its
secret comes from TALLY_GATEWAY_CLIENT_SECRET.

Flags:
`

func runGatewayAuth(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("gateway-auth", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(e.stderr, gatewayAuthUsage)
		fs.PrintDefaults()
	}
	issuer := fs.String("issuer", "", "the tenant's issuer `URL`, e.g. http://127.0.0.1:8080/t/default")
	server := fs.String("server", "", "a node's base `URL` for the event stream (default: the issuer's origin)")
	tenant := fs.String("tenant", "default", "the tenant")
	audience := fs.String("audience", "", "the `audience` tokens presented at the gateway must carry")
	clientID := fs.String("client-id", "", "the gateway's confidential client `id`")
	listen := fs.String("listen", "127.0.0.1:9191", "host:port to serve on")
	rulesEvery := fs.Duration("rules-every", 5*time.Second, "how often the rules are fetched")
	trusted := fs.String("trusted-proxies", "127.0.0.0/8,::1/128", "comma-separated `networks` whose X-Forwarded-For / X-Real-IP / X-Device-* / Client-Cert headers are believed")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	secret := e.getenv("TALLY_GATEWAY_CLIENT_SECRET")
	if *issuer == "" || *audience == "" || *clientID == "" || secret == "" {
		fmt.Fprintln(e.stderr, "tally gateway-auth: --issuer, --audience, --client-id and TALLY_GATEWAY_CLIENT_SECRET are required")
		return 2
	}
	if *server == "" {
		if i := strings.Index(*issuer, "/t/"); i > 0 {
			*server = (*issuer)[:i]
		}
	}
	nets, err := gateway.ParseTrusted(strings.Split(*trusted, ","))
	if err != nil {
		fmt.Fprintf(e.stderr, "tally gateway-auth: --trusted-proxies: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(e.stderr, nil))
	sc, err := gateway.NewSidecar(gateway.SidecarConfig{Issuer: strings.TrimSuffix(*issuer, "/"), Tenant: *tenant, ServerURL: *server,
		Audience: *audience, ClientID: *clientID, ClientSecret: secret, RulesInterval: *rulesEvery, Logger: log})
	if err != nil {
		fmt.Fprintf(e.stderr, "tally gateway-auth: %v\n", err)
		return 2
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = sc.Start(sctx)
	cancel()
	if err != nil {
		fmt.Fprintf(e.stderr, "tally gateway-auth: %v\n", err)
		return 1
	}
	defer sc.Stop()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(e.stderr, "tally gateway-auth: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: sc.Handler(nets), ReadHeaderTimeout: 5 * time.Second}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() {
		<-ctx.Done()
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(c)
	}()
	log.Info("gateway-auth serving", "addr", ln.Addr().String(), "issuer", *issuer)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(e.stderr, "tally gateway-auth: %v\n", err)
		return 1
	}
	return 0
}
