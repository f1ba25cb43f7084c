package revocation

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// allowedAlgs are the only JWS algorithms accepted (and each key accepts
// only its own).
var allowedAlgs = []string{"ES256", "EdDSA", "RS256"}

// Errors of Verify; test with errors.Is.
var (
	// ErrInvalidToken: malformed, badly signed, wrong typ/iss/aud, expired
	// or not yet valid, or inactive at introspection.
	ErrInvalidToken = errors.New("revocation: invalid token")
	// ErrRevoked: the token, its client or its subject is revoked, or its
	// tenant was deleted (ReasonTenantDeleted).
	ErrRevoked = errors.New("revocation: token revoked")
	// ErrStale: the revocation set cannot be trusted now and the policy is
	// to fail closed (or the introspection fallback failed).
	ErrStale = errors.New("revocation: revocation state is stale")
	// ErrUnavailable: the issuer's keys or introspection could not be
	// reached.
	ErrUnavailable = errors.New("revocation: issuer unavailable")
	// ErrInsufficientScope: the token lacks a required scope (Middleware).
	ErrInsufficientScope = errors.New("revocation: insufficient scope")
)

// StalePolicy says what Verify does while the Watcher is stale.
type StalePolicy int

const (
	// FailClosed rejects every token with ErrStale.
	FailClosed StalePolicy = iota
	// FallbackIntrospection asks the issuer's introspection endpoint
	// (needs ClientID and ClientSecret).
	FallbackIntrospection
)

// Config configures a Verifier. Issuer and Audience are required.
type Config struct {
	// Issuer is the tenant's issuer URL, e.g. http://127.0.0.1:8080/t/default.
	Issuer string
	// Audience is this resource server's identifier; a token's aud must
	// contain it.
	Audience string
	// HTTPClient for discovery, JWKS and introspection; default
	// http.DefaultClient.
	HTTPClient *http.Client
	// Leeway allowed on exp, nbf and iat; default 30s, at most 5m.
	Leeway time.Duration
	// Watcher, if set, supplies the revocation set; without it, JWTs are
	// checked for signature and claims only.
	Watcher *Watcher
	// StalePolicy applies while the Watcher is stale.
	StalePolicy StalePolicy
	// ClientID and ClientSecret authenticate to introspection (opaque
	// tokens and FallbackIntrospection); without them opaque tokens are
	// rejected.
	ClientID, ClientSecret string
	// IntrospectionCacheTTL bounds how long an introspection answer is
	// reused (never past the token's exp); revocation events drop entries
	// sooner. Default 1m.
	IntrospectionCacheTTL time.Duration
	// JWKSRefetchInterval rate-limits JWKS fetches for unknown kids;
	// default 10s.
	JWKSRefetchInterval time.Duration
	// OnReject, if set, is called for every rejected token with the
	// reason (see Reason) and the cause; it must be quick. The token
	// itself is not passed: it is a credential.
	OnReject func(ctx context.Context, reason Reason, err error)
	// Logger, if set, logs every rejection at debug level.
	Logger *slog.Logger
	Now    func() time.Time
	// ClientCertificate, if set, returns the client certificate of a
	// request for Middleware's certificate-binding check (mtls.go), e.g.
	// from a trusted proxy's header; default: the TLS connection's.
	ClientCertificate func(*http.Request) *x509.Certificate
	Meter             metric.Meter
	// DPoP configures the checks of DPoP-bound tokens (dpop.go).
	DPoP DPoPConfig
}

// Claims are what a verified access token says.
type Claims struct {
	Issuer    string
	Subject   string
	ClientID  string
	JTI       string
	Scopes    []string
	Audience  []string
	IssuedAt  time.Time
	NotBefore time.Time
	ExpiresAt time.Time
	// Introspected is true when the issuer's introspection endpoint
	// vouched for the token (opaque tokens, or the stale fallback).
	Introspected bool
	// Cnf is the token's confirmation claim (mtls.go): a certificate-bound
	// token has Cnf.X5TS256.
	Cnf Confirmation
	// JKT is the thumbprint of the DPoP key the token is bound to
	// (cnf.jkt, RFC 9449 §6), "" for a bearer token. VerifyRequest and
	// Middleware enforce it; Verify alone does not.
	JKT string
	// Parents are the jtis of the tokens this one was exchanged from (RFC
	// 8693 token exchange; claim parent_jti): a revoked parent revokes it.
	Parents []string
	// Actor is the subject of the RFC 8693 act claim (the party acting for
	// Subject), or "".
	Actor string
}

// HasScope reports whether the token carries scope.
func (c *Claims) HasScope(scope string) bool { return slices.Contains(c.Scopes, scope) }

// Verifier verifies access tokens of one issuer for one audience. Safe for
// concurrent use.
type Verifier struct {
	cfg   Config
	keys  *keyCache
	cache *introCache
	dpop  *dpopChecker // dpop.go
	mVer  metric.Int64Counter
	// outcomes holds the attribute option of each outcome, built once:
	// Verify is on every request's path.
	outcomes map[string]metric.AddOption
}

// NewVerifier returns a Verifier. It fetches nothing until the first Verify.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("revocation: Issuer and Audience are required")
	}
	if _, err := discoveryURL(cfg.Issuer); err != nil {
		return nil, err
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.Leeway < 0 || cfg.Leeway > 5*time.Minute {
		return nil, errors.New("revocation: Leeway must be between 0 and 5m")
	}
	if cfg.IntrospectionCacheTTL <= 0 {
		cfg.IntrospectionCacheTTL = time.Minute
	}
	if cfg.JWKSRefetchInterval <= 0 {
		cfg.JWKSRefetchInterval = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Meter == nil {
		cfg.Meter = noop.NewMeterProvider().Meter("tally/revocation")
	}
	if cfg.StalePolicy == FallbackIntrospection && cfg.ClientID == "" {
		return nil, errors.New("revocation: FallbackIntrospection needs ClientID and ClientSecret")
	}
	v := &Verifier{
		cfg:   cfg,
		keys:  newKeyCache(cfg.Issuer, cfg.HTTPClient, cfg.Now, cfg.JWKSRefetchInterval),
		cache: &introCache{m: map[[32]byte]introEntry{}},
		dpop:  newDPoPChecker(cfg),
	}
	var err error
	v.outcomes = map[string]metric.AddOption{}
	for _, o := range []string{"valid", "revoked", "stale", "unavailable", "invalid", "insufficient_scope"} {
		v.outcomes[o] = metric.WithAttributes(attribute.String("outcome", o))
	}
	if v.mVer, err = cfg.Meter.Int64Counter("tally.rs.verifications", metric.WithDescription("token verifications by outcome")); err != nil {
		return nil, err
	}
	if w := cfg.Watcher; w != nil {
		// Revocations stay in the set while this verifier still accepts
		// their tokens.
		w.noteLeeway(cfg.Leeway)
		w.OnEvent(func(typ string, d EventDetails) {
			switch typ {
			case EventKeyRotated:
				v.keys.invalidate()
			case EventTokenRevoked, EventClientDisabled, EventUserLocked, EventClientDeleted, EventUserDeleted:
				v.cache.drop(d)
			case EventTenantDeleted:
				v.keys.invalidate()
				v.cache.clear()
			}
		})
		w.OnResync(v.cache.clear)
	}
	return v, nil
}

func (v *Verifier) record(ctx context.Context, err error) {
	outcome := "valid"
	switch {
	case err == nil:
	case errors.Is(err, ErrRevoked):
		outcome = "revoked"
	case errors.Is(err, ErrStale):
		outcome = "stale"
	case errors.Is(err, ErrUnavailable):
		outcome = "unavailable"
	default:
		outcome = "invalid"
	}
	v.mVer.Add(ctx, 1, v.outcomes[outcome])
}

// Verify checks an access token: a JWT locally (RFC 9068 §4), anything else
// by introspection (RFC 7662). Then the revocation set: a revoked token,
// disabled client or locked subject is ErrRevoked. While the Watcher is
// stale it fails closed (ErrStale) or asks introspection, per StalePolicy.
// A rejection is a *RejectionError naming the Reason (ReasonOf); it wraps
// ErrInvalidToken, ErrRevoked, ErrStale or ErrUnavailable.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	c, err := v.verify(ctx, token)
	v.record(ctx, err)
	if err != nil {
		return nil, v.reject(ctx, err)
	}
	return c, nil
}

func (v *Verifier) verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" || len(token) > 16<<10 {
		return nil, fmt.Errorf("%w: empty or oversized", ErrInvalidToken)
	}
	if isOpaque(token) {
		return v.introspect(ctx, token)
	}
	if err := v.checkTenantDeleted(token); err != nil {
		return nil, err
	}
	c, err := v.verifyJWT(ctx, token)
	if err != nil {
		return nil, err
	}
	w := v.cfg.Watcher
	if w == nil {
		return c, nil
	}
	if w.Stale() {
		if v.cfg.StalePolicy == FallbackIntrospection {
			ic, err := v.introspect(ctx, token)
			if errors.Is(err, ErrUnavailable) {
				return nil, fmt.Errorf("%w: %w", ErrStale, err)
			}
			return ic, err
		}
		return nil, ErrStale
	}
	if err := v.checkSet(c); err != nil {
		return nil, err
	}
	// Within the leeway after exp, only a set that followed the stream
	// since before exp can vouch for the token.
	if !c.ExpiresAt.IsZero() && v.cfg.Now().After(c.ExpiresAt) && !w.vouchesAfterExpiry(c.ExpiresAt) {
		return nil, fmt.Errorf("%w: %w: expired, and the revocation set was resynced since", ErrInvalidToken, jwt.ErrTokenExpired)
	}
	return c, nil
}

// opaqueTokenPrefix starts tally's sealed opaque tokens:
// "tly1.<kid>.<ciphertext>" has two dots but is no JWT.
const opaqueTokenPrefix = "tly1."

// isOpaque reports whether token is not a compact JWS (RFC 7515 §7.1: three
// base64url parts, the header a JSON object, so "eyJ…"): tally's opaque
// tokens and any other issuer's go to introspection.
func isOpaque(token string) bool {
	return strings.HasPrefix(token, opaqueTokenPrefix) || strings.Count(token, ".") != 2
}

// errTenantDeletedRevoked is a token of a deleted tenant (ReasonTenantDeleted).
var errTenantDeletedRevoked = fmt.Errorf("%w: %w", ErrRevoked, errTenantDeleted)

// checkTenantDeleted rejects a JWT of this issuer issued at or before the
// deletion of the watcher's tenant, before anything else: a fact that
// holds for good, whether the set is stale or the keys reachable (the
// deleted tenant's JWKS answers 404). The claims are read unverified:
// only to reject.
func (v *Verifier) checkTenantDeleted(token string) error {
	w := v.cfg.Watcher
	if w == nil {
		return nil
	}
	until := w.Set().TenantDeleted()
	if until == 0 {
		return nil
	}
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &c); err != nil || c.Issuer != v.cfg.Issuer {
		return nil // left to verifyJWT
	}
	if c.IssuedAt == nil || c.IssuedAt.Unix() <= until {
		return errTenantDeletedRevoked
	}
	return nil
}

func (v *Verifier) checkSet(c *Claims) error {
	w := v.cfg.Watcher
	if w == nil {
		return nil
	}
	s := w.Set()
	if !c.IssuedAt.IsZero() && s.IssuedBeforeTenantDeleted(c.IssuedAt.Unix()) {
		return errTenantDeletedRevoked
	}
	if s.Revoked(c.JTI) || slices.ContainsFunc(c.Parents, s.Revoked) || s.ClientDisabled(c.ClientID) || s.SubjectLocked(c.Subject) ||
		(!c.IssuedAt.IsZero() && s.IssuedBeforeLock(c.Subject, c.IssuedAt.Unix())) ||
		(!c.IssuedAt.IsZero() && s.IssuedBeforeClientDeleted(c.ClientID, c.IssuedAt.Unix())) {
		return ErrRevoked
	}
	return nil
}

// accessClaims is the RFC 9068 §2.2 claim set.
type accessClaims struct {
	Issuer    string        `json:"iss"`
	Subject   string        `json:"sub"`
	Audience  Audience      `json:"aud"`
	ExpiresAt int64         `json:"exp"`
	IssuedAt  int64         `json:"iat"`
	NotBefore int64         `json:"nbf,omitempty"`
	ID        string        `json:"jti"`
	ClientID  string        `json:"client_id"`
	Scope     string        `json:"scope,omitempty"`
	Cnf       *Confirmation `json:"cnf,omitempty"` // mtls.go
	Parents   []string      `json:"parent_jti,omitempty"`
	Act       *struct {
		Subject string `json:"sub"`
	} `json:"act,omitempty"`
}

func nd(sec int64) *jwt.NumericDate {
	if sec == 0 {
		return nil
	}
	return jwt.NewNumericDate(time.Unix(sec, 0))
}

func (c *accessClaims) GetExpirationTime() (*jwt.NumericDate, error) { return nd(c.ExpiresAt), nil }
func (c *accessClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return nd(c.IssuedAt), nil }
func (c *accessClaims) GetNotBefore() (*jwt.NumericDate, error)      { return nd(c.NotBefore), nil }
func (c *accessClaims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *accessClaims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c *accessClaims) GetAudience() (jwt.ClaimStrings, error) {
	return jwt.ClaimStrings(c.Audience), nil
}

func actorOf(a *struct {
	Subject string `json:"sub"`
}) string {
	if a == nil {
		return ""
	}
	return a.Subject
}

func tsOrZero(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

func (v *Verifier) verifyJWT(ctx context.Context, token string) (*Claims, error) {
	var c accessClaims
	_, err := jwt.NewParser(
		jwt.WithValidMethods(allowedAlgs),
		jwt.WithIssuer(v.cfg.Issuer),
		jwt.WithAudience(v.cfg.Audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(v.cfg.Leeway),
		jwt.WithTimeFunc(v.cfg.Now),
	).ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		// RFC 9068 §4: typ must be at+jwt (or its full media type).
		typ, _ := t.Header["typ"].(string)
		if !strings.EqualFold(typ, "at+jwt") && !strings.EqualFold(typ, "application/at+jwt") {
			return nil, errors.New("typ is not at+jwt")
		}
		return keyFor(ctx, v.keys, t)
	})
	if err != nil {
		if errors.Is(err, errTenantDeleted) {
			return nil, fmt.Errorf("%w: %w", ErrRevoked, err)
		}
		if errors.Is(err, errKeysUnavailable) {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if c.ID == "" || c.ClientID == "" {
		return nil, fmt.Errorf("%w: jti or client_id missing", ErrInvalidToken)
	}
	return &Claims{
		Issuer: c.Issuer, Subject: c.Subject, ClientID: c.ClientID, JTI: c.ID,
		Scopes: strings.Fields(c.Scope), Audience: c.Audience,
		IssuedAt: tsOrZero(c.IssuedAt), NotBefore: tsOrZero(c.NotBefore), ExpiresAt: tsOrZero(c.ExpiresAt),
		Cnf:     cnfOrZero(c.Cnf),
		JKT:     c.Cnf.jkt(),
		Parents: c.Parents, Actor: actorOf(c.Act),
	}, nil
}

// keyFor finds the token's key by kid and pins the algorithm to the key's:
// the JWK's alg if it names one, else the one its type implies.
func keyFor(ctx context.Context, keys *keyCache, t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	if kid == "" {
		return nil, errors.New("no kid")
	}
	jwk, err := keys.key(ctx, kid)
	if errors.Is(err, errUnknownKid) || errors.Is(err, errTenantDeleted) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errKeysUnavailable, err)
	}
	alg := jwk.Algorithm
	if alg == "" {
		alg = algOf(jwk)
	}
	if t.Method == nil || t.Method.Alg() != alg {
		return nil, fmt.Errorf("alg %v does not match key %s (%s)", t.Header["alg"], kid, alg)
	}
	return jwk.Key, nil
}

func algOf(jwk jose.JSONWebKey) string {
	switch k := jwk.Key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return "ES256"
		}
	case ed25519.PublicKey:
		return "EdDSA"
	case *rsa.PublicKey:
		return "RS256"
	}
	return ""
}

// ----- introspection (RFC 7662) -----

type introEntry struct {
	c     *Claims
	until time.Time
}

// introCache keeps introspection answers for active tokens, keyed by the
// token's SHA-256; revocation events drop matching entries.
type introCache struct {
	mu sync.Mutex
	m  map[[32]byte]introEntry
}

const maxIntroEntries = 10000

func (c *introCache) get(k [32]byte, now time.Time) *Claims {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || !now.Before(e.until) {
		delete(c.m, k)
		return nil
	}
	return e.c
}

func (c *introCache) put(k [32]byte, e introEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxIntroEntries {
		for k := range c.m { // drop an arbitrary tenth
			delete(c.m, k)
			if len(c.m) < maxIntroEntries*9/10 {
				break
			}
		}
	}
	c.m[k] = e
}

func (c *introCache) drop(d EventDetails) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if (d.JTI != "" && e.c.JTI == d.JTI) ||
			(d.JTI == "" && d.ClientID != "" && e.c.ClientID == d.ClientID) ||
			(d.Subject != "" && d.JTI == "" && e.c.Subject == d.Subject) {
			delete(c.m, k)
		}
	}
}

func (c *introCache) clear() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

// Len is the number of cached introspection answers (for tests and metrics).
func (v *Verifier) introspectionCacheLen() int {
	v.cache.mu.Lock()
	defer v.cache.mu.Unlock()
	return len(v.cache.m)
}

type introResponse struct {
	Active   bool          `json:"active"`
	Scope    string        `json:"scope"`
	ClientID string        `json:"client_id"`
	Exp      int64         `json:"exp"`
	Iat      int64         `json:"iat"`
	Nbf      int64         `json:"nbf"`
	Sub      string        `json:"sub"`
	Aud      Audience      `json:"aud"`
	Iss      string        `json:"iss"`
	Jti      string        `json:"jti"`
	Cnf      *Confirmation `json:"cnf,omitempty"` // mtls.go
}

func (v *Verifier) introspect(ctx context.Context, token string) (*Claims, error) {
	if v.cfg.ClientID == "" {
		return nil, fmt.Errorf("%w: opaque token and no introspection credentials", ErrInvalidToken)
	}
	key := sha256.Sum256([]byte(token))
	now := v.cfg.Now()
	if c := v.cache.get(key, now); c != nil {
		if err := v.checkSet(c); err != nil {
			return nil, err
		}
		return c, nil
	}
	_, endpoint, err := v.keys.discover(ctx)
	if errors.Is(err, errTenantDeleted) {
		return nil, fmt.Errorf("%w: %w", ErrRevoked, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if endpoint == "" {
		return nil, fmt.Errorf("%w: issuer has no introspection endpoint", ErrUnavailable)
	}
	form := url.Values{"token": {token}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
	req.SetBasicAuth(url.QueryEscape(v.cfg.ClientID), url.QueryEscape(v.cfg.ClientSecret))
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: introspection: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		// The tenant's endpoints are gone with it.
		return nil, fmt.Errorf("%w: %w: introspection answers 404", ErrRevoked, errTenantDeleted)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocBytes))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: introspection: %s %v", ErrUnavailable, resp.Status, err)
	}
	var r introResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%w: introspection response: %w", ErrUnavailable, err)
	}
	if !r.Active {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, errInactive)
	}
	if r.Iss != "" && r.Iss != v.cfg.Issuer {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, errWrongIssuer)
	}
	if len(r.Aud) > 0 && !r.Aud.Contains(v.cfg.Audience) {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, errWrongAudience)
	}
	c := &Claims{
		Issuer: r.Iss, Subject: r.Sub, ClientID: r.ClientID, JTI: r.Jti,
		Scopes: strings.Fields(r.Scope), Audience: r.Aud,
		IssuedAt: tsOrZero(r.Iat), NotBefore: tsOrZero(r.Nbf), ExpiresAt: tsOrZero(r.Exp),
		Introspected: true,
		Cnf:          cnfOrZero(r.Cnf),
		JKT:          r.Cnf.jkt(),
	}
	until := now.Add(v.cfg.IntrospectionCacheTTL)
	if !c.ExpiresAt.IsZero() && c.ExpiresAt.Before(until) {
		until = c.ExpiresAt
	}
	v.cache.put(key, introEntry{c: c, until: until})
	if w := v.cfg.Watcher; w != nil && !w.Stale() {
		if err := v.checkSet(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ----- net/http -----

type claimsKey struct{}

// ClaimsFromContext returns the claims Middleware stored for the request.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// Middleware returns net/http middleware that admits requests whose Bearer
// token (RFC 6750 §2.1) verifies and carries every required scope. It
// answers 401 with WWW-Authenticate error="invalid_token" for a missing,
// invalid or revoked token (RFC 6750 §3.1), 403 error="insufficient_scope"
// naming the scopes, and 503 when it cannot decide (stale revocation state,
// issuer unreachable). The handler finds the claims with ClaimsFromContext.
func (v *Verifier) Middleware(requiredScopes ...string) func(http.Handler) http.Handler {
	scope := strings.Join(requiredScopes, " ")
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := v.VerifyRequest(r) // dpop.go: Bearer or DPoP
			switch {
			case errors.Is(err, errNoToken):
				w.Header().Set("WWW-Authenticate", `Bearer realm="`+v.cfg.Audience+`"`)
				w.Header().Add("WWW-Authenticate", v.dpop.challenge("", ""))
				http.Error(w, "missing bearer token", http.StatusUnauthorized)
				return
			case v.dpopChallenged(w, err):
				return
			case errors.Is(err, ErrStale) || errors.Is(err, ErrUnavailable):
				w.Header().Set("Retry-After", "5")
				http.Error(w, "cannot verify tokens now: "+ReasonOf(err).Description(), http.StatusServiceUnavailable)
				return
			case err != nil:
				// RFC 6750 §3: error_description says why, in words.
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+ReasonOf(err).Description()+`"`)
				http.Error(w, "invalid token: "+ReasonOf(err).Description(), http.StatusUnauthorized)
				return
			}
			if err := v.checkRequestBinding(r, c); err != nil { // mtls.go, RFC 8705 §3
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+ReasonCertBinding.Description()+`"`)
				http.Error(w, "invalid token: "+ReasonCertBinding.Description(), http.StatusUnauthorized)
				return
			}
			for _, s := range requiredScopes {
				if !c.HasScope(s) {
					v.mVer.Add(r.Context(), 1, v.outcomes["insufficient_scope"])
					_ = v.reject(r.Context(), fmt.Errorf("%w: %s", ErrInsufficientScope, s))
					w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope", error_description="`+
						ReasonScope.Description()+`", scope="`+scope+`"`)
					http.Error(w, "insufficient scope", http.StatusForbidden)
					return
				}
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, c)))
		})
	}
}
