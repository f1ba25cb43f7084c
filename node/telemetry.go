package node

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// telemetry owns this node's OpenTelemetry providers: metrics exported in
// Prometheus format at /metrics (a registry of its own, so several nodes in
// one process do not collide), and traces over OTLP/HTTP when configured.
type telemetry struct {
	registry *prometheus.Registry
	meters   *sdkmetric.MeterProvider
	tracers  *sdktrace.TracerProvider // nil when tracing is off
	meter    metric.Meter
	tracer   trace.Tracer
	prop     propagation.TextMapPropagator
}

func newTelemetry(ctx context.Context, cfg Config) (*telemetry, error) {
	res := resource.NewSchemaless(
		semconv.ServiceName("tally"),
		attribute.String("tally.node_id", cfg.NodeID),
		attribute.String("tally.region", cfg.Region),
	)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	t := &telemetry{
		registry: reg,
		meters:   mp,
		meter:    mp.Meter("github.com/tallyauth/tally"),
		tracer:   noop.NewTracerProvider().Tracer(""),
		prop:     propagation.TraceContext{},
	}
	if cfg.OTLPEndpoint != "" {
		endpoint := cfg.OTLPEndpoint
		if !strings.Contains(endpoint, "://") {
			endpoint = "http://" + endpoint
		}
		te, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
		if err != nil {
			return nil, errors.Join(err, mp.Shutdown(ctx))
		}
		t.tracers = sdktrace.NewTracerProvider(sdktrace.WithBatcher(te), sdktrace.WithResource(res))
		t.tracer = t.tracers.Tracer("github.com/tallyauth/tally")
	}
	return t, nil
}

func (t *telemetry) metricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// traced wraps h in a server span per request, continuing a W3C trace
// context from the caller. With tracing off it returns h unchanged.
func (t *telemetry) traced(h http.Handler) http.Handler {
	if t.tracers == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := t.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := t.tracer.Start(ctx, r.Method+" "+r.URL.Path, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
		defer span.End()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

func (t *telemetry) shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var errs []error
	if t.tracers != nil {
		errs = append(errs, t.tracers.Shutdown(ctx))
	}
	errs = append(errs, t.meters.Shutdown(ctx))
	return errors.Join(errs...)
}
