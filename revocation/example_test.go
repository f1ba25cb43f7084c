package revocation_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tallyauth/tally/revocation"
)

// A resource server that verifies tokens locally and follows revocations
// over NATS JetStream, resyncing from the node when it must.
func Example() {
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	w, err := revocation.NewWatcher(revocation.WatcherConfig{
		Issuer:       "http://127.0.0.1:8080/t/default",
		Tenant:       "default",
		ServerURL:    "http://127.0.0.1:8080",
		ClientID:     "orders-api",
		ClientSecret: "…",
		NATS:         nc,
		PositionFile: "/var/lib/orders-api/revocations.json",
	})
	if err != nil {
		log.Fatal(err)
	}
	v, err := revocation.NewVerifier(revocation.Config{
		Issuer:   "http://127.0.0.1:8080/t/default",
		Audience: "https://orders.example",
		Watcher:  w,
		// Opaque tokens are introspected with the same client.
		ClientID: "orders-api", ClientSecret: "…",
		OnReject: func(_ context.Context, reason revocation.Reason, err error) {
			log.Printf("token rejected: %s: %v", reason, err)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	w.Start()
	defer w.Stop() // saves the position
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil { // serve only with a trusted set
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /orders", v.Middleware("read:orders")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := revocation.ClaimsFromContext(r.Context())
		fmt.Fprintf(w, "orders of %s\n", c.ClientID)
	})))
	log.Fatal(http.ListenAndServe("127.0.0.1:9090", mux))
}

// Verify checks one token without the middleware; a revoked token is
// ErrRevoked.
func ExampleVerifier_Verify() {
	v, err := revocation.NewVerifier(revocation.Config{Issuer: "http://127.0.0.1:8080/t/default", Audience: "https://orders.example"})
	if err != nil {
		log.Fatal(err)
	}
	_, err = v.Verify(context.Background(), "not-a-token")
	fmt.Println(err)
	fmt.Println(revocation.ReasonOf(err), "-", revocation.ReasonOf(err).Description())
	// Output:
	// revocation: invalid token: opaque token and no introspection credentials
	// malformed - the access token is malformed
}

// Subject names the NATS subject an event type is published on.
func ExampleSubject() {
	fmt.Println(revocation.Subject("default", revocation.EventTokenRevoked))
	fmt.Println(revocation.Subject("default", revocation.EventKeyRotated))
	// Output:
	// tally.default.revocation.token
	// tally.default.security.key_rotated
}
