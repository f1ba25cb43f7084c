package issuance

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Client authentication methods beyond a shared secret (issue 11): RFC 7523
// / OIDC Core §9 private_key_jwt and RFC 8705 mutual TLS.
const (
	AuthMethodPrivateKeyJWT            = "private_key_jwt"
	AuthMethodTLSClientAuth            = "tls_client_auth"
	AuthMethodSelfSignedTLSClientAuth  = "self_signed_tls_client_auth"
	clientAssertionTypeJWTBearer       = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	paramClientAssertion               = "client_assertion"
	paramClientAssertionType           = "client_assertion_type"
	defaultClientCertHeader            = "Client-Cert"
	defaultMaxAssertionLifetime        = 5 * time.Minute
	defaultMaxFederatedLifetime        = 24 * time.Hour
	maxAssertionLen                    = 16 << 10
	defaultAssertionReplayCacheEntries = 100_000
)

// ClientAuth is a client's registered authentication methods (RFC 7591
// token_endpoint_auth_method names) and their parameters. Empty Methods
// means client_secret_basic and client_secret_post.
type ClientAuth struct {
	Methods      []string
	JWKS         []byte // JSON JWK Set of public keys
	JWKSURI      string
	TLSSubjectDN string
	TLSSANDNS    string
	TLSSANURI    string
}

// allows reports whether the client may authenticate with method.
func (a ClientAuth) allows(method string) bool {
	if len(a.Methods) == 0 {
		return method == AuthMethodClientSecretBasic || method == AuthMethodClientSecretPost
	}
	return slices.Contains(a.Methods, method)
}

// TenantTrust is what a tenant trusts besides client secrets: the CAs of
// tls_client_auth and external token issuers (workload identity
// federation). UpdatedAt versions it for caches.
type TenantTrust struct {
	ClientCAPEM []byte
	Federations []FederationTrust
	UpdatedAt   time.Time
}

// FederationTrust trusts tokens of an external issuer as client
// assertions. Keys come from JWKS, JWKSURI or, with neither, the issuer's
// discovery document. Subjects maps the token's sub to a client id.
type FederationTrust struct {
	Name     string
	Issuer   string
	JWKS     []byte
	JWKSURI  string
	Audience string
	Subjects map[string]string
}

// ErrAssertionReplayed is returned by an AssertionLedger for an assertion
// id that was already used.
var ErrAssertionReplayed = errors.New("issuance: client assertion already used")

// AssertionLedger makes client assertion ids single-use. Consume records
// (tenant, client, jti) until exp and returns ErrAssertionReplayed when it
// was recorded before — on any node, for a cluster-wide ledger.
type AssertionLedger interface {
	ConsumeAssertion(ctx context.Context, tenant, clientID, jti string, exp time.Time) error
}

// ZeroTrustConfig configures the issue-11 client authentication of a
// Server. The zero value works for a single process: assertion ids are
// remembered in memory, jwks_uri must be https on a public address, no
// proxy may forward client certificates.
type ZeroTrustConfig struct {
	// Assertions makes assertion ids single-use; nil: an in-memory ledger
	// of this process only.
	Assertions AssertionLedger
	// TrustedProxies may forward the client certificate in
	// ClientCertHeader (default "Client-Cert", RFC 9440; URL-escaped PEM
	// as nginx's $ssl_client_escaped_cert is accepted too). The header
	// from any other address is ignored.
	TrustedProxies   []netip.Prefix
	ClientCertHeader string
	// ClientCertificates says client certificates can reach the server:
	// its listener is TLS and requests them. With it, TrustedProxies or
	// MTLSBaseURL, discovery advertises tls_client_auth,
	// self_signed_tls_client_auth and certificate-bound tokens.
	ClientCertificates bool
	// MTLSBaseURL, if set, is a base URL where the OAuth endpoints are
	// served with client certificates requested; discovery lists them as
	// mtls_endpoint_aliases (RFC 8705 §5).
	MTLSBaseURL string
	// MaxAssertionLifetime bounds exp-now of a private_key_jwt assertion
	// (default 5m); MaxFederatedLifetime that of a federated platform
	// token (default 24h).
	MaxAssertionLifetime time.Duration
	MaxFederatedLifetime time.Duration
	// Fetch governs jwks_uri and discovery fetches.
	Fetch FetchPolicy
}

// clientCertFrom is the client certificate of the request (see
// withClientCert), or nil.
func clientCertFrom(ctx context.Context) *presentedCert {
	pc, _ := ctx.Value(certKey{}).(*presentedCert)
	if pc == nil || pc.cert == nil {
		return nil
	}
	return pc
}

// authenticateZT authenticates with a client assertion or a client
// certificate. It is the hook of authenticateClient for every credential
// that is not a secret.
func (s *Server) authenticateZT(ctx context.Context, tenant string, cc ClientCredentials, now time.Time) (Client, error) {
	if cc.Assertion != "" {
		return s.authenticateAssertion(ctx, tenant, cc, now)
	}
	return s.authenticateCert(ctx, tenant, cc, now)
}

// checkZTClient applies the checks every authenticated client passes.
func checkZTClient(c Client, tenant, method string) error {
	switch {
	case c.Tenant != tenant:
		return errInvalidClient("client authentication failed", errors.New("client of another tenant"))
	case c.Disabled:
		return errInvalidClient("client authentication failed", errors.New("client disabled"))
	case c.Public:
		return errInvalidClient("client authentication failed", errors.New("public client"))
	case !c.Auth.allows(method):
		return errInvalidClient("client authentication failed", errors.New("client may not use "+method))
	}
	return nil
}

// certAuthenticates reports whether a request without a secret should be
// authenticated by its client certificate: it carries one and the client
// is confidential (a public client stays a public client).
func (s *Server) certAuthenticates(ctx context.Context, tenant, id string) bool {
	if clientCertFrom(ctx) == nil {
		return false
	}
	c, err := s.st.Client(ctx, tenant, id)
	return err != nil || !c.Public
}

// ztState is the Server's issue-11 machinery.
type ztState struct {
	cfg    ZeroTrustConfig
	inline *jwksCache
	fetch  *fetcher
	pools  *caPools
	ledger AssertionLedger
}

func newZT(cfg ZeroTrustConfig) *ztState {
	if cfg.MaxAssertionLifetime <= 0 {
		cfg.MaxAssertionLifetime = defaultMaxAssertionLifetime
	}
	if cfg.MaxFederatedLifetime <= 0 {
		cfg.MaxFederatedLifetime = defaultMaxFederatedLifetime
	}
	cfg.MTLSBaseURL = strings.TrimRight(cfg.MTLSBaseURL, "/")
	z := &ztState{cfg: cfg, inline: &jwksCache{}, fetch: newFetcher(cfg.Fetch), pools: &caPools{}, ledger: cfg.Assertions}
	if z.ledger == nil {
		z.ledger = NewMemoryAssertionLedger(defaultAssertionReplayCacheEntries)
	}
	return z
}

// consume makes the assertion id single-use: a replay is invalid_client,
// a ledger failure temporarily_unavailable (fail closed).
func (z *ztState) consume(ctx context.Context, tenant, clientID, jti string, exp time.Time) error {
	err := z.ledger.ConsumeAssertion(ctx, tenant, clientID, jti, exp)
	switch {
	case errors.Is(err, ErrAssertionReplayed):
		return errInvalidClient("client authentication failed", errors.New("client assertion: jti already used"))
	case err != nil:
		return errUnavailable("assertion ledger unavailable", err)
	}
	return nil
}

// AssertionKey is the ledger key of an assertion id: SHA-256 of client id,
// a zero byte and jti (the jti itself is never stored).
func AssertionKey(clientID, jti string) [32]byte {
	h := sha256.New()
	h.Write([]byte(clientID))
	h.Write([]byte{0})
	h.Write([]byte(jti))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// MemoryAssertionLedger is an in-process AssertionLedger: single-use
// within one process only. When full it refuses new assertions (fail
// closed) until entries expire. A cluster wraps its Raft ledger with one
// as a local front (see node).
type MemoryAssertionLedger struct {
	mu  sync.Mutex
	max int
	m   map[string]map[[32]byte]time.Time // tenant → key → exp
	n   int
	Now func() time.Time
}

// NewMemoryAssertionLedger returns a ledger holding at most max ids.
func NewMemoryAssertionLedger(max int) *MemoryAssertionLedger {
	return &MemoryAssertionLedger{max: max, m: make(map[string]map[[32]byte]time.Time), Now: time.Now}
}

// Seen reports whether the id is recorded and unexpired.
func (l *MemoryAssertionLedger) Seen(tenant, clientID, jti string) bool {
	k := AssertionKey(clientID, jti)
	l.mu.Lock()
	defer l.mu.Unlock()
	exp, ok := l.m[tenant][k]
	return ok && l.Now().Before(exp)
}

// ConsumeAssertion implements AssertionLedger.
func (l *MemoryAssertionLedger) ConsumeAssertion(_ context.Context, tenant, clientID, jti string, exp time.Time) error {
	k := AssertionKey(clientID, jti)
	now := l.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.m[tenant][k]; ok && now.Before(old) {
		return ErrAssertionReplayed
	}
	if l.n >= l.max {
		l.prune(now)
		if l.n >= l.max {
			return errors.New("issuance: assertion ledger full")
		}
	}
	t := l.m[tenant]
	if t == nil {
		t = make(map[[32]byte]time.Time)
		l.m[tenant] = t
	}
	if _, ok := t[k]; !ok {
		l.n++
	}
	t[k] = exp
	return nil
}

func (l *MemoryAssertionLedger) prune(now time.Time) {
	for tn, t := range l.m {
		for k, exp := range t {
			if !now.Before(exp) {
				delete(t, k)
				l.n--
			}
		}
		if len(t) == 0 {
			delete(l.m, tn)
		}
	}
}

// ztMetadata is the issue-11 part of the authorization server metadata.
type ztMetadata struct {
	TokenEndpointAuthSigningAlgValuesSupported []string          `json:"token_endpoint_auth_signing_alg_values_supported"`
	TLSClientCertificateBoundAccessTokens      bool              `json:"tls_client_certificate_bound_access_tokens,omitempty"`
	MTLSEndpointAliases                        map[string]string `json:"mtls_endpoint_aliases,omitempty"`
}

func (s *Server) ztMetadata(iss, tenant string, flows bool) *ztMetadata {
	md := &ztMetadata{TokenEndpointAuthSigningAlgValuesSupported: assertionAlgs, TLSClientCertificateBoundAccessTokens: s.zt.mtls()}
	if b := s.zt.cfg.MTLSBaseURL; b != "" {
		base := b + "/t/" + url.PathEscape(tenant)
		md.MTLSEndpointAliases = map[string]string{
			"token_endpoint":         base + "/oauth2/token",
			"introspection_endpoint": base + "/oauth2/introspect",
			"revocation_endpoint":    base + "/oauth2/revoke",
		}
		if flows {
			md.MTLSEndpointAliases["userinfo_endpoint"] = base + "/oauth2/userinfo"
			md.MTLSEndpointAliases["device_authorization_endpoint"] = base + "/oauth2/device_authorization"
		}
	}
	_ = iss
	return md
}

// mtls reports whether client certificates can reach this server.
func (z *ztState) mtls() bool {
	return z.cfg.ClientCertificates || len(z.cfg.TrustedProxies) > 0 || z.cfg.MTLSBaseURL != ""
}

// supportedAuthMethods are the client authentication methods discovery
// lists: the certificate ones only when certificates can arrive.
func (s *Server) supportedAuthMethods() []string {
	if s.zt.mtls() {
		return authMethods
	}
	return authMethods[:3]
}
