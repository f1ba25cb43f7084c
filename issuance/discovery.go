package issuance

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/tallyauth/tally/dpop"
)

// discoveryMaxAge is the Cache-Control max-age of discovery documents.
const discoveryMaxAge = "public, max-age=300"

// metadata is the authorization server metadata of a tenant. It lists only
// what exists:
//
//   - Without the end-user flows (no Users configured) there is no
//     authorization endpoint and response_types_supported is the empty
//     list; the OpenID fields are absent.
//   - With them: response_type code only, PKCE S256 only, the iss
//     authorization response parameter (RFC 9207 §3), public subjects,
//     ID tokens signed with the tenant's algorithms, userinfo, device
//     authorization (RFC 8628 §4) and the OIDC scopes the server gives a
//     meaning to (clients may have more).
type metadata struct {
	Issuer                                    string   `json:"issuer"`
	AuthorizationEndpoint                     string   `json:"authorization_endpoint,omitempty"`
	TokenEndpoint                             string   `json:"token_endpoint"`
	JWKSURI                                   string   `json:"jwks_uri"`
	IntrospectionEndpoint                     string   `json:"introspection_endpoint"`
	RevocationEndpoint                        string   `json:"revocation_endpoint"`
	ResponseTypesSupported                    []string `json:"response_types_supported"`
	GrantTypesSupported                       []string `json:"grant_types_supported"`
	TokenEndpointAuthMethodsSupported         []string `json:"token_endpoint_auth_methods_supported"`
	IntrospectionEndpointAuthMethodsSupported []string `json:"introspection_endpoint_auth_methods_supported"`
	RevocationEndpointAuthMethodsSupported    []string `json:"revocation_endpoint_auth_methods_supported"`

	UserinfoEndpoint                           string   `json:"userinfo_endpoint,omitempty"`
	DeviceAuthorizationEndpoint                string   `json:"device_authorization_endpoint,omitempty"`
	ScopesSupported                            []string `json:"scopes_supported,omitempty"`
	ResponseModesSupported                     []string `json:"response_modes_supported,omitempty"`
	SubjectTypesSupported                      []string `json:"subject_types_supported,omitempty"`
	IDTokenSigningAlgValuesSupported           []string `json:"id_token_signing_alg_values_supported,omitempty"`
	CodeChallengeMethodsSupported              []string `json:"code_challenge_methods_supported,omitempty"`
	AuthorizationResponseIssParameterSupported bool     `json:"authorization_response_iss_parameter_supported,omitempty"`
	ClaimsSupported                            []string `json:"claims_supported,omitempty"`
	PromptValuesSupported                      []string `json:"prompt_values_supported,omitempty"`

	*ztMetadata                                 // clientauth_zt.go
	DPoPSigningAlgValuesSupported      []string `json:"dpop_signing_alg_values_supported,omitempty"`
	PushedAuthorizationRequestEndpoint string   `json:"pushed_authorization_request_endpoint,omitempty"`
	RequirePushedAuthorizationRequests bool     `json:"require_pushed_authorization_requests,omitempty"`
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
	md := metadata{
		Issuer:                            iss,
		TokenEndpoint:                     iss + "/oauth2/token",
		JWKSURI:                           iss + "/jwks.json",
		IntrospectionEndpoint:             iss + "/oauth2/introspect",
		RevocationEndpoint:                iss + "/oauth2/revoke",
		ResponseTypesSupported:            []string{},
		GrantTypesSupported:               grants,
		TokenEndpointAuthMethodsSupported: s.supportedAuthMethods(),
		IntrospectionEndpointAuthMethodsSupported: s.supportedAuthMethods(),
		RevocationEndpointAuthMethodsSupported:    s.supportedAuthMethods(),
		DPoPSigningAlgValuesSupported:             dpop.SigningAlgs,
	}
	if s.users != nil {
		md.AuthorizationEndpoint = iss + "/oauth2/authorize"
		md.UserinfoEndpoint = iss + "/oauth2/userinfo"
		md.DeviceAuthorizationEndpoint = iss + "/oauth2/device_authorization"
		md.ResponseTypesSupported = []string{"code"}
		md.ResponseModesSupported = []string{"query"}
		md.ScopesSupported = []string{ScopeOpenID, ScopeProfile, ScopeEmail, ScopeOfflineAccess}
		md.SubjectTypesSupported = []string{"public"}
		md.IDTokenSigningAlgValuesSupported = jwtAlgs
		if slices.Contains(jwtAlgs, t.SigningAlg) {
			md.IDTokenSigningAlgValuesSupported = []string{t.SigningAlg}
		}
		md.CodeChallengeMethodsSupported = []string{"S256"}
		md.AuthorizationResponseIssParameterSupported = true
		md.ClaimsSupported = []string{"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "azp",
			"name", "preferred_username", "email", "email_verified"}
		md.PromptValuesSupported = []string{"none", "login", "consent"}
		// Public clients authenticate with client_id only (RFC 8414 §2).
		md.TokenEndpointAuthMethodsSupported = append(slices.Clone(s.supportedAuthMethods()), "none")
		md.RevocationEndpointAuthMethodsSupported = md.TokenEndpointAuthMethodsSupported
		s.parMetadata(&md, t) // par.go
	}
	md.ztMetadata = s.ztMetadata(iss, t.ID, md.UserinfoEndpoint != "")
	s.respond(w, r, http.StatusOK, md, discoveryMaxAge)
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
