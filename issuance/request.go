package issuance

import (
	"mime"
	"net/http"
	"net/url"
	"slices"
)

// TokenRequest is a token endpoint request (RFC 6749 §3.2), parsed once from
// the form body and headers by the token endpoint. Grant handlers read it,
// never the raw form; a grant that needs more parameters adds typed fields
// here and to parseTokenRequest.
type TokenRequest struct {
	// GrantType is the grant_type parameter (RFC 6749 §4.4.2), never empty.
	GrantType string
	// Scope is the requested scope (RFC 6749 §3.3), in request order without
	// duplicates. ScopeRequested is false when the parameter was absent or
	// empty (RFC 6749 §3.1: an empty parameter is an omitted one).
	Scope          []string
	ScopeRequested bool
	// Resources are the RFC 8707 resource indicators: absolute URIs without
	// fragment, in request order without duplicates.
	Resources []string
	// Client holds the presented client credentials, not yet checked.
	Client ClientCredentials
	// Code, RedirectURI and CodeVerifier are the authorization_code grant's
	// parameters (RFC 6749 §4.1.3, RFC 7636 §4.5).
	Code         string
	RedirectURI  string
	CodeVerifier string
	// RefreshToken is the refresh_token grant's parameter (RFC 6749 §6).
	RefreshToken string
	// DeviceCode is the device grant's parameter (RFC 8628 §3.4).
	DeviceCode string
	// Exchange holds the token exchange parameters (RFC 8693 §2.1).
	Exchange ExchangeParams
}

// Parameter names (RFC 6749 §4.4.2, RFC 8707 §2, RFC 7662 §2.1, RFC 7009 §2.1).
const (
	paramGrantType     = "grant_type"
	paramScope         = "scope"
	paramResource      = "resource"
	paramClientID      = "client_id"
	paramClientSecret  = "client_secret"
	paramToken         = "token"
	paramTokenTypeHint = "token_type_hint"
)

const formMediaType = "application/x-www-form-urlencoded"

// knownParams may be named in error descriptions; other parameter names come
// from the client and are never echoed.
var knownParams = []string{
	paramGrantType, paramScope, paramResource, paramClientID, paramClientSecret,
	paramToken, paramTokenTypeHint, "code", "redirect_uri", "code_verifier",
	"refresh_token", "device_code", "audience", "client_assertion", "client_assertion_type",
	paramSubjectToken, paramSubjectTokenType, paramActorToken, paramActorTokenType, paramRequestedTokenType,
}

// readForm reads the urlencoded body of an OAuth endpoint request.
//
//   - Content-Type must be application/x-www-form-urlencoded (parameters
//     such as charset are allowed) — RFC 6749 §4.4.2, RFC 7662 §2.1.
//   - The body is bounded by maxBody; a larger body is invalid_request.
//   - No parameter may be repeated (RFC 6749 §3.2), except those listed in
//     multi (RFC 8707 resource).
//   - Parameters without a value are dropped (RFC 6749 §3.1).
//   - The query string is ignored, but client credentials in it are refused
//     (RFC 6749 §2.3.1: they MUST NOT be included in the request URI).
func readForm(r *http.Request, maxBody int64, multi ...string) (url.Values, error) {
	if cts := r.Header.Values("Content-Type"); len(cts) != 1 {
		return nil, errInvalidRequest("content type must be " + formMediaType)
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != formMediaType {
		return nil, errInvalidRequest("content type must be " + formMediaType)
	}
	if r.URL != nil && r.URL.RawQuery != "" {
		q, _ := url.ParseQuery(r.URL.RawQuery)
		if q.Has(paramClientSecret) {
			return nil, errInvalidRequest("client credentials must not be sent in the query")
		}
	}
	if r.ContentLength > maxBody {
		return nil, errInvalidRequest("request body too large")
	}
	var body []byte
	if r.Body != nil {
		body, err = readAllLimited(r.Body, maxBody+1)
		if err != nil {
			return nil, newError(CodeInvalidRequest, http.StatusBadRequest, "request body could not be read", err)
		}
		if int64(len(body)) > maxBody {
			return nil, errInvalidRequest("request body too large")
		}
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, newError(CodeInvalidRequest, http.StatusBadRequest, "malformed form body", err)
	}
	for k, v := range vals {
		if len(v) > 1 && !slices.Contains(multi, k) {
			if slices.Contains(knownParams, k) {
				return nil, errInvalidRequest("parameter " + k + " included more than once")
			}
			return nil, errInvalidRequest("request parameter included more than once")
		}
		v = slices.DeleteFunc(v, func(s string) bool { return s == "" })
		if len(v) == 0 {
			delete(vals, k)
		} else {
			vals[k] = v
		}
	}
	return vals, nil
}

// parseTokenRequest parses a token endpoint request: the form (readForm),
// the client credentials (readClientCredentials), grant_type, scope and
// resource. Errors are *Error.
func parseTokenRequest(r *http.Request, maxBody int64) (*TokenRequest, error) {
	form, err := readForm(r, maxBody, paramResource, paramAudience)
	if err != nil {
		return nil, err
	}
	cc, err := readClientCredentials(r.Header, form)
	if err != nil {
		return nil, err
	}
	req := &TokenRequest{GrantType: form.Get(paramGrantType), Client: cc,
		Code: form.Get("code"), RedirectURI: form.Get("redirect_uri"), CodeVerifier: form.Get("code_verifier"),
		RefreshToken: form.Get("refresh_token"), DeviceCode: form.Get("device_code"),
		Exchange: parseExchangeParams(form)}
	if req.GrantType == "" {
		return nil, errInvalidRequest("missing grant_type")
	}
	if s := form.Get(paramScope); s != "" {
		scope, err := ParseScope(s)
		if err != nil {
			return nil, errInvalidScope("malformed scope")
		}
		req.Scope, req.ScopeRequested = scope, true
	}
	for _, res := range form[paramResource] {
		if !validResource(res) {
			return nil, errInvalidTarget("resource must be an absolute URI without a fragment")
		}
		if !slices.Contains(req.Resources, res) {
			req.Resources = append(req.Resources, res)
		}
	}
	return req, nil
}

// validResource implements RFC 8707 §2: an absolute URI (RFC 3986 §4.3)
// without a fragment component.
func validResource(s string) bool {
	if len(s) > 2048 {
		return false
	}
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || u.Fragment != "" || u.RawFragment != "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= 0x20 || c >= 0x7f || c == '#' {
			return false
		}
	}
	return true
}
