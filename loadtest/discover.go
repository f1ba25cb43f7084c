package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxMetadataBytes bounds a metadata document read by Discover.
const maxMetadataBytes = 1 << 20

// Metadata is the part of an authorization server's metadata (RFC 8414
// section 2) that the load generator uses.
type Metadata struct {
	Issuer                            string   `json:"issuer"`
	TokenEndpoint                     string   `json:"token_endpoint,omitempty"`
	JWKSURI                           string   `json:"jwks_uri,omitempty"`
	ScopesSupported                   []string `json:"scopes_supported,omitempty"`
	ResponseTypesSupported            []string `json:"response_types_supported"`
	GrantTypesSupported               []string `json:"grant_types_supported,omitempty"`
	TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported,omitempty"`
}

// ErrNoTokenEndpoint is returned by Discover when the issuer publishes
// metadata without a token endpoint.
var ErrNoTokenEndpoint = errors.New("loadtest: issuer metadata has no token_endpoint")

// Discover fetches the metadata of issuer: first from the RFC 8414 section
// 3.1 URL, with /.well-known/oauth-authorization-server inserted between the
// host and the issuer's path, then, if that fails, from the OpenID Connect
// Discovery 1.0 section 4 URL, {issuer}/.well-known/openid-configuration.
// A document is accepted only if its issuer is identical to the one asked
// for (RFC 8414 section 3.3) and it names an absolute http(s) token
// endpoint. Each request times out after ten seconds or when ctx ends.
func Discover(ctx context.Context, issuer string) (Metadata, error) {
	return discover(ctx, &http.Client{Timeout: 10 * time.Second}, issuer)
}

func discover(ctx context.Context, client *http.Client, issuer string) (Metadata, error) {
	if err := validateIssuer(issuer); err != nil {
		return Metadata{}, err
	}
	oauthURL, oidcURL := metadataURLs(issuer)
	md, err1 := fetchMetadata(ctx, client, oauthURL, issuer)
	if err1 == nil {
		return md, nil
	}
	if ctx.Err() != nil {
		return Metadata{}, err1
	}
	md, err2 := fetchMetadata(ctx, client, oidcURL, issuer)
	if err2 == nil {
		return md, nil
	}
	return Metadata{}, fmt.Errorf("loadtest: no usable metadata for issuer %s: %w; %w", issuer, err1, err2)
}

// metadataURLs returns the RFC 8414 and the OpenID Connect metadata URLs of
// an issuer that validateIssuer accepted.
func metadataURLs(issuer string) (oauth, oidc string) {
	u, _ := url.Parse(issuer)
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	base := u.Scheme + "://" + u.Host
	return base + wellKnownOAuth + path, base + path + wellKnownOIDC
}

func fetchMetadata(ctx context.Context, client *http.Client, metaURL, issuer string) (Metadata, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metaURL, nil)
	if err != nil {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadataBytes+1))
	if err != nil {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Metadata{}, fmt.Errorf("GET %s: status %d", metaURL, resp.StatusCode)
	}
	if len(body) > maxMetadataBytes {
		return Metadata{}, fmt.Errorf("GET %s: document larger than %d bytes", metaURL, maxMetadataBytes)
	}
	var md Metadata
	if err := json.Unmarshal(body, &md); err != nil {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
	}
	if md.Issuer != issuer {
		return Metadata{}, fmt.Errorf("GET %s: metadata issuer %q is not %q", metaURL, md.Issuer, issuer)
	}
	if md.TokenEndpoint == "" {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, ErrNoTokenEndpoint)
	}
	if te, err := url.Parse(md.TokenEndpoint); err != nil || (te.Scheme != "http" && te.Scheme != "https") || te.Host == "" {
		return Metadata{}, fmt.Errorf("GET %s: token_endpoint %q is not an absolute http(s) URL", metaURL, md.TokenEndpoint)
	}
	return md, nil
}
