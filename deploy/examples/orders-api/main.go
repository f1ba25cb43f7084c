// Command orders-api is an example resource server: it protects GET /orders
// with the scope read:orders, verifying tally access tokens locally with the
// revocation SDK and following revocations over NATS JetStream (or, without
// --nats-url, over the node's Connect stream).
//
//	go run ./deploy/examples/orders-api \
//	    --issuer http://127.0.0.1:8080/t/default --server http://127.0.0.1:8080 \
//	    --client-id "$ID" --audience https://orders.example --nats-url "$TALLY_NATS_URL"
//
// The client secret comes from ORDERS_CLIENT_SECRET (never a flag, so it
// stays out of process listings). The same client authenticates to NATS
// (user = client id, password = secret); --nats-url takes every node's URL,
// comma-separated, and --nats-ca the cluster CA for tls:// URLs. Besides the
// connection that follows the stream, orders-api holds one connection to
// each of those servers for live revocations (revocation.ConnectNATSEach),
// so a revoked token is refused within milliseconds also while a node
// restarts.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tallyauth/tally/revocation"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "orders-api:", err)
		os.Exit(1)
	}
}

// run parses the flags, follows the tenant's revocations until the
// revocation set is synced and serves GET /orders and GET /healthz on
// --listen until SIGINT or SIGTERM.
func run() error {
	issuer := flag.String("issuer", "http://127.0.0.1:8080/t/default", "the tenant's issuer")
	server := flag.String("server", "http://127.0.0.1:8080", "a tally node's base URL (events API, resync)")
	tenant := flag.String("tenant", "default", "the tenant")
	audience := flag.String("audience", "https://orders.example", "this API's identifier: tokens' aud must contain it")
	clientID := flag.String("client-id", "", "a confidential client of the tenant, for the events API and introspection (secret in ORDERS_CLIENT_SECRET)")
	natsURL := flag.String("nats-url", os.Getenv("TALLY_NATS_URL"), "NATS URLs of the event log, comma-separated (TALLY_NATS_URL); empty follows the Connect stream")
	natsCA := flag.String("nats-ca", "", "PEM file of the cluster CA, for tls:// NATS URLs")
	listen := flag.String("listen", "127.0.0.1:9090", "host:port to serve on")
	position := flag.String("position-file", "", "file that keeps the revocation set across restarts")
	failOpen := flag.Bool("fallback-introspection", false, "when the revocation set is stale, ask introspection instead of refusing tokens")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	secret := os.Getenv("ORDERS_CLIENT_SECRET")
	if *clientID == "" || secret == "" {
		return fmt.Errorf("--client-id and ORDERS_CLIENT_SECRET are required")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	wc := revocation.WatcherConfig{
		Issuer: *issuer, Tenant: *tenant, ServerURL: *server,
		ClientID: *clientID, ClientSecret: secret,
		PositionFile: *position, Logger: log,
	}
	if *natsURL != "" {
		closeNATS, err := connectNATS(&wc, revocation.NATSConfig{
			URLs: *natsURL, Tenant: *tenant, ClientID: *clientID, ClientSecret: secret, CAFile: *natsCA, Name: "orders-api",
		})
		if err != nil {
			return err
		}
		defer closeNATS()
	}
	w, err := revocation.NewWatcher(wc)
	if err != nil {
		return err
	}
	policy := revocation.FailClosed
	if *failOpen {
		policy = revocation.FallbackIntrospection
	}
	v, err := revocation.NewVerifier(revocation.Config{
		Issuer: *issuer, Audience: *audience, Watcher: w, StalePolicy: policy,
		ClientID: *clientID, ClientSecret: secret,
		Logger: log, // rejections at debug level
		OnReject: func(ctx context.Context, reason revocation.Reason, _ error) {
			log.InfoContext(ctx, "token rejected", "reason", string(reason))
		},
	})
	if err != nil {
		return err
	}
	w.Start()
	defer w.Stop() // saves the position file
	// Serve only with a trusted revocation set; wrong credentials fail here.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = w.WaitSynced(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("revocation set not synced: %w", err)
	}
	log.Info("serving", "addr", *listen, "issuer", *issuer)
	return serve(ctx, *listen, ordersHandler(v, w))
}

// connectNATS connects to the NATS servers of nc for wc: one connection
// that follows the stream (wc.NATS) and, for live revocations, one to each
// server (wc.LiveNATS), so that they keep coming while the main connection
// moves to another server. It returns the function that closes them all.
func connectNATS(wc *revocation.WatcherConfig, nc revocation.NATSConfig) (closeAll func(), err error) {
	conn, err := revocation.ConnectNATS(nc)
	if err != nil {
		return nil, err
	}
	live, err := revocation.ConnectNATSEach(nc)
	if err != nil {
		conn.Close()
		return nil, err
	}
	wc.NATS, wc.LiveNATS = conn, live
	return func() {
		for i := len(live) - 1; i >= 0; i-- {
			live[i].Close()
		}
		conn.Close()
	}, nil
}

// ordersHandler serves GET /orders, for tokens that v accepts with the
// scope read:orders, and GET /healthz, which is 503 while w's revocation
// set is stale.
func ordersHandler(v *revocation.Verifier, w *revocation.Watcher) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /orders", v.Middleware("read:orders")(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		c, _ := revocation.ClaimsFromContext(r.Context())
		rw.Header().Set("Content-Type", "application/json")
		json.NewEncoder(rw).Encode(map[string]any{
			"client_id": c.ClientID,
			"orders":    []map[string]any{{"id": "o-1001", "total": "42.00"}, {"id": "o-1002", "total": "7.50"}},
		})
	})))
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		if w.Stale() {
			http.Error(rw, "revocation state stale", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ok")
	})
	return mux
}

// serve serves h on addr until ctx ends, then shuts the server down,
// giving requests in flight 5 s.
func serve(ctx context.Context, addr string, h http.Handler) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}
