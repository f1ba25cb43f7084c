package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tallyauth/tally/revocation"
)

// Metadata is an authorization server's metadata as the SDK's discovery
// client reads it (revocation.Metadata, RFC 8414 section 2).
type Metadata = revocation.Metadata

// ErrNoTokenEndpoint is returned by Discover when the issuer publishes
// metadata without a token endpoint.
var ErrNoTokenEndpoint = errors.New("loadtest: issuer metadata has no token_endpoint")

// Discover fetches the metadata of issuer with the SDK's discovery client
// (revocation.Discover): first from the RFC 8414 section 3.1 URL, then from
// the OpenID Connect Discovery 1.0 section 4 URL. A document is accepted
// only if its issuer is identical to the one asked for (RFC 8414 section
// 3.3) and it names an absolute http(s) token endpoint. Each request times
// out after ten seconds or when ctx ends.
func Discover(ctx context.Context, issuer string) (Metadata, error) {
	return discover(ctx, &http.Client{Timeout: 10 * time.Second}, issuer)
}

// discover is Discover with the client and the SDK's options (DiscoverTarget
// passes revocation.ThroughNode for one node of a cluster).
func discover(ctx context.Context, client *http.Client, issuer string, opts ...revocation.DiscoverOption) (Metadata, error) {
	if err := validateIssuer(issuer); err != nil {
		return Metadata{}, err
	}
	md, err := revocation.Discover(ctx, client, issuer, func(md Metadata) error {
		if md.TokenEndpoint == "" {
			return ErrNoTokenEndpoint
		}
		if !absoluteHTTP(md.TokenEndpoint) {
			return fmt.Errorf("token_endpoint %q is not an absolute http(s) URL", md.TokenEndpoint)
		}
		return nil
	}, opts...)
	if err != nil {
		return Metadata{}, fmt.Errorf("loadtest: %w", err)
	}
	return md, nil
}
