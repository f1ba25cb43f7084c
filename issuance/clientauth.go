package issuance

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client authentication methods (RFC 8414 §2 names; RFC 6749 §2.3.1).
const (
	AuthMethodClientSecretBasic = "client_secret_basic"
	AuthMethodClientSecretPost  = "client_secret_post"
)

// authMethods are the client authentication methods of every endpoint that
// authenticates clients (token, introspection, revocation).
var authMethods = []string{AuthMethodClientSecretBasic, AuthMethodClientSecretPost,
	AuthMethodPrivateKeyJWT, AuthMethodTLSClientAuth, AuthMethodSelfSignedTLSClientAuth} // clientauth_zt.go

// ClientCredentials are the credentials a request presented, before they
// are checked. Method is AuthMethodClientSecretBasic, AuthMethodClientSecretPost
// or empty when no secret was presented. String, GoString and LogValue
// redact Secret.
type ClientCredentials struct {
	Method string
	ID     string
	Secret string
	// Assertion is an RFC 7523 client assertion (private_key_jwt or a
	// federated platform token; Method is then AuthMethodPrivateKeyJWT).
	Assertion string
}

// String implements fmt.Stringer without the secret.
func (c ClientCredentials) String() string {
	return "ClientCredentials{Method:" + c.Method + " ID:" + c.ID + " Secret:[redacted]}"
}

// GoString implements fmt.GoStringer without the secret.
func (c ClientCredentials) GoString() string { return c.String() }

// LogValue implements slog.LogValuer without the secret.
func (c ClientCredentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("method", c.Method), slog.String("client_id", c.ID))
}

// maxCredentialLen bounds client ids and secrets; generated ones are far
// shorter.
const maxCredentialLen = 512

// readClientCredentials extracts client credentials from the Authorization
// header (client_secret_basic) or the form (client_secret_post), RFC 6749
// §2.3.1. In Basic, id and secret are form-urlencoded before base64
// (RFC 6749 §2.3.1, Appendix B), so they are decoded here. Using both methods
// at once is invalid_request (RFC 6749 §2.3: a client MUST NOT use more than
// one authentication method per request); a client_id form parameter next to
// Basic is allowed only if it names the same client. Basic with an empty
// password only identifies the client (as a public client's client_id
// parameter does) and carries no Method. An Authorization header
// that is not a well-formed Basic credential is invalid_client (401).
func readClientCredentials(h http.Header, form url.Values) (ClientCredentials, error) {
	formID, formSecret := form.Get(paramClientID), form.Get(paramClientSecret)
	authz := h.Values("Authorization")
	if form.Has(paramClientAssertion) || form.Has(paramClientAssertionType) {
		return readClientAssertion(authz, form) // clientauth_jwt.go
	}
	switch {
	case len(authz) > 1:
		return ClientCredentials{}, errInvalidRequest("more than one Authorization header")
	case len(authz) == 1:
		id, secret, err := parseBasic(authz[0])
		if err != nil {
			return ClientCredentials{}, err
		}
		if formSecret != "" {
			return ClientCredentials{}, errInvalidRequest("more than one client authentication method")
		}
		if formID != "" && formID != id {
			return ClientCredentials{}, errInvalidRequest("client_id does not match the Authorization header")
		}
		if secret == "" {
			// "client_id:" with no password identifies a public client
			// (golang.org/x/oauth2 sends it first by default); it proves
			// nothing, so it counts as no authentication: a confidential
			// client still fails with invalid_client.
			return ClientCredentials{ID: id}, nil
		}
		return ClientCredentials{Method: AuthMethodClientSecretBasic, ID: id, Secret: secret}, nil
	case formSecret != "":
		if len(formID) > maxCredentialLen || len(formSecret) > maxCredentialLen {
			return ClientCredentials{}, errInvalidClient("client authentication failed", errors.New("credential too long"))
		}
		return ClientCredentials{Method: AuthMethodClientSecretPost, ID: formID, Secret: formSecret}, nil
	default:
		return ClientCredentials{ID: formID}, nil
	}
}

func parseBasic(header string) (id, secret string, err error) {
	scheme, payload, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", "", errInvalidClient("unsupported authentication scheme", nil)
	}
	payload = strings.TrimLeft(payload, " ")
	if len(payload) > 4*maxCredentialLen {
		return "", "", errInvalidClient("malformed Basic credentials", errors.New("credential too long"))
	}
	raw, derr := base64.StdEncoding.DecodeString(payload)
	if derr != nil {
		return "", "", errInvalidClient("malformed Basic credentials", errors.New("bad base64"))
	}
	encID, encSecret, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", errInvalidClient("malformed Basic credentials", errors.New("no colon"))
	}
	// The unescape errors quote the offending bytes, which may be part of
	// the secret: keep them out of Debug (it is logged).
	var uerr error
	if id, uerr = url.QueryUnescape(encID); uerr != nil {
		return "", "", errInvalidClient("malformed Basic credentials", errors.New("bad escape in client id"))
	}
	if secret, uerr = url.QueryUnescape(encSecret); uerr != nil {
		return "", "", errInvalidClient("malformed Basic credentials", errors.New("bad escape in client secret"))
	}
	return id, secret, nil
}

// dummySecretHash is compared against when the client does not exist, so an
// unknown client id costs the same as a wrong secret.
var dummySecretHash = []SecretHash{{Hash: make([]byte, 32)}}

// authenticateClient checks presented credentials against the tenant's
// clients. Only enabled confidential clients with a matching, unexpired
// secret pass; every failure is the same 401 invalid_client on the wire
// (RFC 6749 §5.2), with the reason in Debug. A State failure other than
// ErrNotFound is 503 temporarily_unavailable.
func (s *Server) authenticateClient(ctx context.Context, tenant string, cc ClientCredentials, now time.Time) (Client, error) {
	if cc.Assertion != "" || (cc.Method == "" && cc.ID != "" && clientCertFrom(ctx) != nil) {
		return s.authenticateZT(ctx, tenant, cc, now) // clientauth_zt.go
	}
	if cc.ID == "" {
		return Client{}, errInvalidClient("client authentication failed", errors.New("no client credentials"))
	}
	if cc.Method == "" {
		return Client{}, errInvalidClient("client authentication failed", errors.New("no client secret presented"))
	}
	if ok, wait := s.failureGate(ctx, tenant, cc.ID); !ok {
		return Client{}, newError("rate_limited", http.StatusTooManyRequests, "too many failed authentications, retry later", &RateLimited{RetryAfter: wait})
	}
	c, err := s.authClient(ctx, tenant, cc, now)
	if e := (*Error)(nil); errors.As(err, &e) && e.Code == CodeInvalidClient {
		s.recordFailure(ctx, tenant, cc.ID, "", true)
	}
	return c, err
}

// authClient checks the client credentials (authenticateClient without the
// failure budgets).
func (s *Server) authClient(ctx context.Context, tenant string, cc ClientCredentials, now time.Time) (Client, error) {
	c, err := s.st.Client(ctx, tenant, cc.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		s.cfg.KEK.VerifySecret(Client{Secrets: dummySecretHash}, cc.Secret, now)
		return Client{}, errInvalidClient("client authentication failed", errors.New("unknown client"))
	case err != nil:
		return Client{}, errUnavailable("client lookup failed", err)
	}
	ok := s.cfg.KEK.VerifySecret(c, cc.Secret, now)
	switch {
	case !ok:
		return Client{}, errInvalidClient("client authentication failed", errors.New("wrong or expired secret"))
	case c.Tenant != tenant || c.ID != cc.ID:
		return Client{}, errInvalidClient("client authentication failed", errors.New("client of another tenant"))
	case c.Disabled:
		return Client{}, errInvalidClient("client authentication failed", errors.New("client disabled"))
	case c.Public:
		return Client{}, errInvalidClient("client authentication failed", errors.New("public client"))
	case !c.Auth.allows(cc.Method):
		return Client{}, errInvalidClient("client authentication failed", errors.New("client may not use "+cc.Method))
	}
	return c, nil
}

// AuthenticateClientSecret is the client authentication of the endpoints
// outside this package that take a client's id and secret (the events API
// with HTTP Basic, the embedded NATS server with user and password): the
// same check as the token, introspection and revocation endpoints — the
// tenant must exist and be enabled, the client must be an enabled
// confidential client of it with a matching, unexpired secret — with the
// same constant work for an unknown client. Every failure is an *Error
// with code invalid_client (401), except a disabled or unknown tenant
// (404, as on the token endpoint) and a State failure (503
// temporarily_unavailable).
func (s *Server) AuthenticateClientSecret(ctx context.Context, tenant, id, secret string) (Client, error) {
	now := s.cfg.Now()
	t, err := s.st.Tenant(ctx, tenant)
	switch {
	case errors.Is(err, ErrNotFound) || (err == nil && t.Disabled):
		// Same work as a client check, so a missing tenant is not faster.
		s.cfg.KEK.VerifySecret(Client{Secrets: dummySecretHash}, secret, now)
		return Client{}, errUnknownTenant
	case err != nil:
		return Client{}, errUnavailable("tenant lookup failed", err)
	}
	if len(id) > maxCredentialLen || len(secret) > maxCredentialLen {
		return Client{}, errInvalidClient("client authentication failed", errors.New("credential too long"))
	}
	cc := ClientCredentials{ID: id, Secret: secret}
	if secret != "" {
		cc.Method = AuthMethodClientSecretBasic
	}
	return s.authenticateClient(ctx, tenant, cc, now)
}

// AuthenticateBasic reads HTTP Basic client credentials (RFC 6749 §2.3.1,
// form-encoded id and secret) from an Authorization header value and
// checks them with AuthenticateClientSecret. A header that is not a
// well-formed Basic credential is invalid_client.
func (s *Server) AuthenticateBasic(ctx context.Context, tenant, authorization string) (Client, error) {
	id, secret, err := parseBasic(authorization)
	if err != nil {
		return Client{}, err
	}
	return s.AuthenticateClientSecret(ctx, tenant, id, secret)
}
