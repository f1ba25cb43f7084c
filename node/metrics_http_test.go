package node

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// BenchmarkInstrument is the per-request cost of the HTTP metrics
// middleware around a handler that does nothing (compare Bare).
func BenchmarkInstrument(b *testing.B) {
	exp, err := otelprom.New(otelprom.WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		b.Fatal(err)
	}
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)).Meter("bench")
	m := &nodeMetrics{}
	if m.httpRequests, err = meter.Int64Counter(metricHTTPRequests); err != nil {
		b.Fatal(err)
	}
	if m.httpDuration, err = meter.Float64Histogram(metricHTTPDuration); err != nil {
		b.Fatal(err)
	}
	noop := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	r := httptest.NewRequest(http.MethodPost, "/t/default/oauth2/token", nil)
	w := httptest.NewRecorder()
	b.Run("Bare", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			noop.ServeHTTP(w, r)
		}
	})
	h := m.instrument(noop)
	b.Run("Instrumented", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(w, r)
		}
	})
}

func TestRouteOf(t *testing.T) {
	for _, tc := range []struct{ method, path, want string }{
		{"POST", "/t/acme/oauth2/token", "token"},
		{"GET", "/t/acme/oauth2/authorize", "authorize"},
		{"POST", "/t/acme/oauth2/authorize", "login"},
		{"GET", "/t/acme/oauth2/userinfo", "userinfo"},
		{"POST", "/t/acme/oauth2/device_authorization", "device_authorization"},
		{"POST", "/t/acme/device", "device"},
		{"POST", "/t/acme/oauth2/introspect", "introspection"},
		{"POST", "/t/acme/oauth2/revoke", "revocation"},
		{"GET", "/t/acme/jwks.json", "jwks"},
		{"GET", "/t/acme/.well-known/openid-configuration", "discovery"},
		{"GET", "/.well-known/oauth-authorization-server/t/acme", "discovery"},
		{"POST", "/tally.admin.v1.AdminService/CreateClient", "admin"},
		{"POST", "/tally.cluster.v1.ClusterAdminService/Status", "cluster_admin"},
		{"POST", "/tally.events.v1.EventsService/WatchRevocations", "events"},
		{"GET", "/readyz", "probe"},
		{"GET", "/t/acme/oauth2/token/extra", "other"},
		{"GET", "/t/acme", "other"},
		{"GET", "/anything/an/attacker/sends", "other"},
	} {
		if got := routeNames[routeOf(tc.method, tc.path)]; got != tc.want {
			t.Errorf("%s %s: %s, want %s", tc.method, tc.path, got, tc.want)
		}
	}
}
