package issuance

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// discoveryMaxAge is the Cache-Control max-age of discovery documents.
const discoveryMaxAge = "public, max-age=300"

// metadata is the authorization server metadata of a tenant. It lists only
// what exists today:
//
//   - RFC 8414 §2 requires response_types_supported; with no authorization
//     endpoint the honest value is the empty list.
//   - OpenID Connect Discovery 1.0 §3 also requires authorization_endpoint,
//     subject_types_supported and id_token_signing_alg_values_supported;
//     they are added together with the authorization endpoint and ID tokens,
//     not before.
//   - scopes_supported is omitted: the allowed scopes are per client.
type metadata struct {
	Issuer                                    string   `json:"issuer"`
	TokenEndpoint                             string   `json:"token_endpoint"`
	JWKSURI                                   string   `json:"jwks_uri"`
	IntrospectionEndpoint                     string   `json:"introspection_endpoint"`
	RevocationEndpoint                        string   `json:"revocation_endpoint"`
	ResponseTypesSupported                    []string `json:"response_types_supported"`
	GrantTypesSupported                       []string `json:"grant_types_supported"`
	TokenEndpointAuthMethodsSupported         []string `json:"token_endpoint_auth_methods_supported"`
	IntrospectionEndpointAuthMethodsSupported []string `json:"introspection_endpoint_auth_methods_supported"`
	RevocationEndpointAuthMethodsSupported    []string `json:"revocation_endpoint_auth_methods_supported"`
}

// handleDiscovery serves the tenant's metadata at all three locations:
// OpenID Connect Discovery 1.0 §4 (issuer + "/.well-known/openid-configuration"),
// RFC 8414 §3.1 (well-known segment inserted before the issuer's path) and the
// appended form some clients use.
func (s *Server) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	t, err := s.tenant(r.Context(), r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	iss := s.Issuer(t.ID)
	grants := make([]string, 0, len(s.grants))
	for g := range s.grants {
		grants = append(grants, g)
	}
	slices.Sort(grants)
	s.respond(w, r, http.StatusOK, metadata{
		Issuer:                            iss,
		TokenEndpoint:                     iss + "/oauth2/token",
		JWKSURI:                           iss + "/jwks.json",
		IntrospectionEndpoint:             iss + "/oauth2/introspect",
		RevocationEndpoint:                iss + "/oauth2/revoke",
		ResponseTypesSupported:            []string{},
		GrantTypesSupported:               grants,
		TokenEndpointAuthMethodsSupported: authMethods,
		IntrospectionEndpointAuthMethodsSupported: authMethods,
		RevocationEndpointAuthMethodsSupported:    authMethods,
	}, discoveryMaxAge)
}

// handleJWKS serves the tenant's JWK Set (RFC 7517 §5): every signing key
// that has not expired, including pending ones (so resource servers know a
// key before it signs) and retired ones (so tokens they signed keep
// verifying until the key expires). Sealing keys never appear. It carries an
// ETag and answers a matching If-None-Match with 304 (RFC 9110 §13.1.2).
func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	t, err := s.tenant(r.Context(), r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	set, err := s.keys.get(r.Context(), s.st, t.ID)
	if err != nil {
		s.writeError(w, r, errUnavailable("keys unavailable", err))
		return
	}
	body, etag := set.published(s.cfg.Now())
	h := w.Header()
	h.Set("ETag", etag)
	cc := "public, max-age=" + strconv.FormatInt(int64(s.cfg.JWKSMaxAge.Seconds()), 10)
	if etagMatches(r.Header.Values("If-None-Match"), etag) {
		h.Set("Cache-Control", cc)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	writeJSON(w, http.StatusOK, body, cc)
}

// etagMatches implements the weak comparison of If-None-Match (RFC 9110
// §13.1.2).
func etagMatches(headers []string, etag string) bool {
	for _, h := range headers {
		for tag := range strings.SplitSeq(h, ",") {
			tag = strings.TrimSpace(tag)
			if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
				return true
			}
		}
	}
	return false
}
