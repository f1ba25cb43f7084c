package issuance

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metric names and attributes.
const (
	metricTokenRequests      = "tally.token.requests"
	metricTokenDuration      = "tally.token.duration"
	metricIntrospectRequests = "tally.introspection.requests"
	metricRevokeRequests     = "tally.revocation.requests"
	metricSigninFailures     = "tally.signin.failures"
	metricRateLimitRefusals  = "tally.ratelimit.refusals"
	metricRateLimitShared    = "tally.ratelimit.shared"

	attrGrantType = "grant_type"
	attrOutcome   = "outcome"
	attrBucket    = "bucket"
	attrDirection = "direction"

	outcomeOK       = "ok"
	outcomeActive   = "active"
	outcomeInactive = "inactive"

	// grantUnknown labels requests whose grant_type is missing or
	// unsupported, keeping attacker-chosen strings out of metric attributes.
	grantUnknown = "unknown"
)

type metrics struct {
	tokenRequests metric.Int64Counter
	tokenDuration metric.Float64Histogram
	introspects   metric.Int64Counter
	revokes       metric.Int64Counter
	signinFails   metric.Int64Counter
	rlRefusals    metric.Int64Counter
	// bucketAttrs are the attribute options of rlRefusals by bucket kind.
	bucketAttrs map[string]metric.MeasurementOption

	// attrs caches the attribute option of each (grant type, outcome)
	// pair, so that a request does not build and sort an attribute set.
	// Both values come from small fixed sets (grantUnknown, the OAuth
	// error codes), so the cache stays small.
	attrs sync.Map // attrKey → metric.MeasurementOption
}

type attrKey struct{ grantType, outcome string }

// option returns the cached attribute option for k (an empty grantType:
// the outcome alone).
func (m *metrics) option(k attrKey) metric.MeasurementOption {
	if o, ok := m.attrs.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	kvs := []attribute.KeyValue{attribute.String(attrOutcome, k.outcome)}
	if k.grantType != "" {
		kvs = append(kvs, attribute.String(attrGrantType, k.grantType))
	}
	o, _ := m.attrs.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(kvs...)))
	return o.(metric.MeasurementOption)
}

func newMetrics(m metric.Meter) (*metrics, error) {
	var (
		ms  metrics
		err error
	)
	if ms.tokenRequests, err = m.Int64Counter(metricTokenRequests,
		metric.WithDescription("Token endpoint requests by grant type and outcome (ok or the OAuth error code)."),
		metric.WithUnit("{request}")); err != nil {
		return nil, fmt.Errorf("issuance: metric %s: %w", metricTokenRequests, err)
	}
	if ms.tokenDuration, err = m.Float64Histogram(metricTokenDuration,
		metric.WithDescription("Token endpoint request duration."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)); err != nil {
		return nil, fmt.Errorf("issuance: metric %s: %w", metricTokenDuration, err)
	}
	if ms.introspects, err = m.Int64Counter(metricIntrospectRequests,
		metric.WithDescription("Introspection requests by outcome (active, inactive or the OAuth error code)."),
		metric.WithUnit("{request}")); err != nil {
		return nil, fmt.Errorf("issuance: metric %s: %w", metricIntrospectRequests, err)
	}
	if ms.revokes, err = m.Int64Counter(metricRevokeRequests,
		metric.WithDescription("Revocation requests by outcome (ok or the OAuth error code)."),
		metric.WithUnit("{request}")); err != nil {
		return nil, fmt.Errorf("issuance: metric %s: %w", metricRevokeRequests, err)
	}
	if ms.signinFails, err = m.Int64Counter(metricSigninFailures,
		metric.WithDescription("Failed end-user sign-ins (authorize and device pages) by reason: bad_credentials or rate_limited."),
		metric.WithUnit("{attempt}")); err != nil {
		return nil, fmt.Errorf("issuance: metric %s: %w", metricSigninFailures, err)
	}
	// Known reasons start at 0, so that a rate over them is defined
	// before the first failure.
	for _, reason := range []string{"bad_credentials", "rate_limited"} {
		ms.signinFails.Add(context.Background(), 0, ms.option(attrKey{outcome: reason}))
	}
	if ms.rlRefusals, err = m.Int64Counter(metricRateLimitRefusals,
		metric.WithDescription("Requests refused by a rate limit, by the bucket that refused: client, unknown_client, username, ip, subnet or tenant."),
		metric.WithUnit("{request}")); err != nil {
		return nil, fmt.Errorf("issuance: metric %s: %w", metricRateLimitRefusals, err)
	}
	ms.bucketAttrs = map[string]metric.MeasurementOption{}
	for _, kind := range []string{rlClient, rlUnknown, rlUsername, rlIP, rlSubnet, rlTenant} {
		o := metric.WithAttributeSet(attribute.NewSet(attribute.String(attrBucket, bucketName(kind))))
		ms.bucketAttrs[kind] = o
		ms.rlRefusals.Add(context.Background(), 0, o)
	}
	return &ms, nil
}

// rateLimited counts a request refused by the bucket of kind.
func (m *metrics) rateLimited(ctx context.Context, kind string) {
	if o, ok := m.bucketAttrs[kind]; ok {
		m.rlRefusals.Add(ctx, 1, o)
	}
}

// observeRateShare exports what g shared with the other nodes and took
// from them (tally.ratelimit.shared{direction=published|absorbed}).
func observeRateShare(m metric.Meter, g *rateGuard) error {
	published := metric.WithAttributeSet(attribute.NewSet(attribute.String(attrDirection, "published")))
	absorbed := metric.WithAttributeSet(attribute.NewSet(attribute.String(attrDirection, "absorbed")))
	_, err := m.Int64ObservableCounter(metricRateLimitShared,
		metric.WithDescription("Requests this node's rate-limit buckets let through and reported to the other nodes (published), and those the other nodes reported, taken out of this node's buckets (absorbed)."),
		metric.WithUnit("{request}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(g.published.Load(), published)
			o.Observe(g.absorbed.Load(), absorbed)
			return nil
		}))
	if err != nil {
		return fmt.Errorf("issuance: metric %s: %w", metricRateLimitShared, err)
	}
	return nil
}

// signinFailure counts a failed sign-in; reason is a fixed string.
func (m *metrics) signinFailure(ctx context.Context, reason string) {
	m.signinFails.Add(ctx, 1, m.option(attrKey{outcome: reason}))
}

func (m *metrics) token(ctx context.Context, grantType, outcome string, d time.Duration) {
	attrs := m.option(attrKey{grantType, outcome})
	m.tokenRequests.Add(ctx, 1, attrs)
	m.tokenDuration.Record(ctx, d.Seconds(), attrs)
}

func (m *metrics) introspect(ctx context.Context, outcome string) {
	m.introspects.Add(ctx, 1, m.option(attrKey{outcome: outcome}))
}

func (m *metrics) revoke(ctx context.Context, outcome string) {
	m.revokes.Add(ctx, 1, m.option(attrKey{outcome: outcome}))
}

// outcomeOf is the metric outcome of a failed request: its OAuth error code.
func outcomeOf(err error) string {
	return asError(err).Code
}
