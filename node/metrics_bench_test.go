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
