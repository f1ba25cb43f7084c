package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Metadata is the part of an authorization server's metadata (RFC 8414
// §2; OpenID Connect Discovery 1.0 §3) that tally's clients use.
type Metadata struct {
	Issuer                            string   `json:"issuer"`
	AuthorizationEndpoint             string   `json:"authorization_endpoint,omitempty"`
	TokenEndpoint                     string   `json:"token_endpoint,omitempty"`
	JWKSURI                           string   `json:"jwks_uri,omitempty"`
	IntrospectionEndpoint             string   `json:"introspection_endpoint,omitempty"`
	RevocationEndpoint                string   `json:"revocation_endpoint,omitempty"`
	ScopesSupported                   []string `json:"scopes_supported,omitempty"`
	ResponseTypesSupported            []string `json:"response_types_supported"`
	GrantTypesSupported               []string `json:"grant_types_supported,omitempty"`
	TokenEndpointAuthMethodsSupported []string `json:"token_endpoint_auth_methods_supported,omitempty"`
}

// MetadataURLs returns the metadata URLs of an http(s) issuer: the RFC
// 8414 §3.1 one (/.well-known/oauth-authorization-server between the host
// and the issuer's path) and the OpenID Connect Discovery 1.0 §4 one
// ({issuer}/.well-known/openid-configuration).
func MetadataURLs(issuer string) (oauth, oidc string, err error) {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", "", fmt.Errorf("revocation: issuer %q is not an http(s) URL", issuer)
	}
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	base := u.Scheme + "://" + u.Host
	return base + "/.well-known/oauth-authorization-server" + path, base + path + "/.well-known/openid-configuration", nil
}

// Discover is the one discovery client of tally's SDK and tools: it reads
// the issuer's metadata from the RFC 8414 URL, and if that fails from the
// OpenID Connect one (MetadataURLs). A document is accepted only if it is
// JSON of at most 1 MiB whose issuer is identical to the one asked for
// (RFC 8414 §3.3); accept, if not nil, may refuse it for what it lacks.
func Discover(ctx context.Context, client *http.Client, issuer string, accept func(Metadata) error) (Metadata, error) {
	oauthURL, oidcURL, err := MetadataURLs(issuer)
	if err != nil {
		return Metadata{}, err
	}
	md, err1 := fetchMetadata(ctx, client, oauthURL, issuer, accept)
	if err1 == nil {
		return md, nil
	}
	if ctx.Err() != nil {
		return Metadata{}, err1
	}
	md, err2 := fetchMetadata(ctx, client, oidcURL, issuer, accept)
	if err2 == nil {
		return md, nil
	}
	var s1, s2 *statusError
	if errors.As(err1, &s1) && errors.As(err2, &s2) && s1.code == http.StatusNotFound && s2.code == http.StatusNotFound {
		// Both 404: the issuer does not know the tenant (deleted, or
		// never created): errTenantDeleted, which the Verifier reports
		// as ReasonTenantDeleted.
		return Metadata{}, fmt.Errorf("no metadata for issuer %s: %w: %w; %w", issuer, errTenantDeleted, err1, err2)
	}
	return Metadata{}, fmt.Errorf("no usable metadata for issuer %s: %w; %w", issuer, err1, err2)
}

// statusError is a metadata or JWKS response other than 200.
type statusError struct {
	url  string
	code int
}

func (e *statusError) Error() string { return fmt.Sprintf("GET %s: status %d", e.url, e.code) }

func fetchMetadata(ctx context.Context, client *http.Client, metaURL, issuer string, accept func(Metadata) error) (Metadata, error) {
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocBytes+1))
	if err != nil {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Metadata{}, &statusError{url: metaURL, code: resp.StatusCode}
	}
	if len(body) > maxDocBytes {
		return Metadata{}, fmt.Errorf("GET %s: document larger than %d bytes", metaURL, maxDocBytes)
	}
	var md Metadata
	if err := json.Unmarshal(body, &md); err != nil {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
	}
	if md.Issuer != issuer {
		return Metadata{}, fmt.Errorf("GET %s: metadata issuer %q is not %q", metaURL, md.Issuer, issuer)
	}
	if accept != nil {
		if err := accept(md); err != nil {
			return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
		}
	}
	return md, nil
}
