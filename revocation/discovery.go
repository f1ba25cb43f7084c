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
// (RFC 8414 §3.3), unless an option (ThroughNode) says otherwise; accept,
// if not nil, may refuse it for what it lacks.
func Discover(ctx context.Context, client *http.Client, issuer string, accept func(Metadata) error, opts ...DiscoverOption) (Metadata, error) {
	var cfg discoverConfig
	for _, o := range opts {
		o(&cfg)
	}
	check := func(md *Metadata) error {
		if md.Issuer != issuer {
			return fmt.Errorf("metadata issuer %q is not %q", md.Issuer, issuer)
		}
		return nil
	}
	if cfg.throughNode {
		check = func(md *Metadata) error { return throughNode(issuer, md) }
	}
	oauthURL, oidcURL, err := MetadataURLs(issuer)
	if err != nil {
		return Metadata{}, err
	}
	md, err1 := fetchMetadata(ctx, client, oauthURL, check, accept)
	if err1 == nil {
		return md, nil
	}
	if ctx.Err() != nil {
		return Metadata{}, err1
	}
	md, err2 := fetchMetadata(ctx, client, oidcURL, check, accept)
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

// DiscoverOption changes how Discover accepts a document.
type DiscoverOption func(*discoverConfig)

type discoverConfig struct {
	throughNode bool
}

// ThroughNode makes Discover read the metadata through one node of a
// cluster that serves a single issuer URL for all its nodes (a front door
// or load balancer in front of them: every node's metadata names that
// issuer). The issuer passed to Discover is then the node's URL with the
// tenant's path; a document is accepted if the issuer it names is an
// http(s) URL with the same path (only the origin differs, or none), and
// the document keeps that issuer (the tokens' iss) while its token,
// introspection, revocation and authorization endpoints on the issuer's
// origin are moved to the node's, so that requests go to the node asked
// for. Load generators and probes use it; a verifier never should.
func ThroughNode() DiscoverOption {
	return func(c *discoverConfig) { c.throughNode = true }
}

// throughNode checks md as ThroughNode says, read from node, and moves its
// endpoints to node's origin.
func throughNode(node string, md *Metadata) error {
	nu, err := url.Parse(node)
	if err != nil {
		return err
	}
	iu, err := url.Parse(md.Issuer)
	if err != nil || (iu.Scheme != "http" && iu.Scheme != "https") || iu.Host == "" ||
		strings.TrimSuffix(iu.EscapedPath(), "/") != strings.TrimSuffix(nu.EscapedPath(), "/") {
		return fmt.Errorf("metadata issuer %q is not an issuer of the same path as %q", md.Issuer, node)
	}
	from, to := iu.Scheme+"://"+iu.Host+"/", nu.Scheme+"://"+nu.Host+"/"
	for _, e := range []*string{&md.TokenEndpoint, &md.IntrospectionEndpoint, &md.RevocationEndpoint, &md.AuthorizationEndpoint} {
		if strings.HasPrefix(*e, from) {
			*e = to + strings.TrimPrefix(*e, from)
		}
	}
	return nil
}

// statusError is a metadata or JWKS response other than 200.
type statusError struct {
	url  string
	code int
}

func (e *statusError) Error() string { return fmt.Sprintf("GET %s: status %d", e.url, e.code) }

// fetchMetadata reads one metadata document; check validates (and may
// adjust) its issuer, then accept, if not nil, may refuse it.
func fetchMetadata(ctx context.Context, client *http.Client, metaURL string, check func(*Metadata) error, accept func(Metadata) error) (Metadata, error) {
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
	if err := check(&md); err != nil {
		return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
	}
	if accept != nil {
		if err := accept(md); err != nil {
			return Metadata{}, fmt.Errorf("GET %s: %w", metaURL, err)
		}
	}
	return md, nil
}
