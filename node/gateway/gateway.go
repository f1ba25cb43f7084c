// Package gateway is tally's policy enforcement point for API gateways: a
// forward-auth HTTP endpoint for nginx auth_request, Caddy forward_auth and
// Traefik ForwardAuth, and Envoy's ext_authz gRPC API, with the same
// decisions.
//
// A check takes the original request's method and URI (X-Original-Method
// and X-Original-URI from nginx, X-Forwarded-Method and X-Forwarded-Uri
// from Caddy and Traefik) and its Authorization header. It finds the route
// (the longest path prefix whose method matches; a path with no route is
// denied with 403), verifies the token locally (JWT signature or opaque
// seal, times, the revocation set including the token's exchange parents,
// client and user state — no call to the token service per request),
// checks a sender-constrained token's binding (sender.go: a DPoP proof of
// its key for the original request, or the client certificate it is bound
// to, as forwarded by the gateway), checks the route's scopes, applies the client's rate limit
// (429 with Retry-After), evaluates the tenant's CEL policies
// (grant_type "gateway"), and answers 200 with identity headers:
//
//	X-Tally-Subject, X-Tally-Client-Id, X-Tally-Scope, X-Tally-Tenant
//	(and X-Tally-Actor for delegated tokens)
//
// plus, when the route names a phantom audience, the phantom JWT in
// X-Tally-Phantom-Token and as "Authorization: Bearer <jwt>" for the
// gateway to forward to the service. Failures are 401 (no, invalid or
// revoked token) and 403 (insufficient_scope, no route, policy deny) with
// an RFC 6750 WWW-Authenticate challenge, 429 when rate limited, 503 when
// the checker cannot decide.
//
// Inside tally serve the checker verifies against the node's own replica
// (which is the revocation set, updated at the Raft index of the
// revocation); the standalone sidecar (tally gateway-auth) uses the
// resource-server SDK (package revocation): JWKS verification and a
// revocation set following the event log, with opaque tokens introspected
// and cached.
package gateway

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"

	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tallyauth/tally/dpop"
	"github.com/tallyauth/tally/issuance"
)

// Route maps requests to required scopes.
type Route struct {
	PathPrefix      string   `json:"path_prefix"`
	Method          string   `json:"method,omitempty"`
	Scopes          []string `json:"scopes"`
	PhantomAudience string   `json:"phantom_audience,omitempty"`
}

// RateLimit limits one client ("" for every client without its own).
type RateLimit struct {
	ClientID  string  `json:"client_id,omitempty"`
	PerSecond float64 `json:"per_second"`
	Burst     int     `json:"burst"`
}

// Rules are a tenant's gateway configuration at one version.
type Rules struct {
	Version    uint64      `json:"version"`
	Routes     []Route     `json:"routes"`
	RateLimits []RateLimit `json:"rate_limits,omitempty"`
}

// Identity is a verified token's identity.
type Identity struct {
	Subject, ClientID, Actor, JTI string
	Scopes                        []string
	ExpiresAt                     time.Time
	// Token is the verified token (for the phantom exchange); never logged.
	Token string
	// JKT and X5T are the token's binding (cnf.jkt, cnf.x5t#S256), ""
	// for a bearer token (sender.go).
	JKT, X5T string
}

// Errors of a Verify function.
var (
	// ErrInvalidToken: the token is malformed, expired, revoked or of
	// another issuer (401).
	ErrInvalidToken = errors.New("gateway: invalid token")
	// ErrUnavailable: the checker cannot decide now (503).
	ErrUnavailable = errors.New("gateway: cannot decide")
)

// Request is one check.
type Request struct {
	Tenant        string
	Method        string
	URI           string // path and query of the original request
	Authorization string // Bearer or DPoP scheme
	ClientIP      string
	Device        map[string]string
	// DPoP holds the original request's DPoP header values; URL is the
	// absolute URL the client addressed (the proof's htu; "" if the
	// gateway did not say); ClientCert is the client certificate the
	// gateway received, nil if none (sender.go).
	DPoP       []string
	URL        string
	ClientCert *x509.Certificate
}

// Decision is a check's answer.
type Decision struct {
	Status int
	// Headers to set on the answer (identity headers, WWW-Authenticate,
	// Retry-After).
	Headers http.Header
	// Reason is a short explanation (logged, and the body of a denial).
	Reason string
}

// Checker decides checks. Rules and Verify are required.
type Checker struct {
	// Rules returns the tenant's rules (ok false: unknown tenant).
	Rules func(tenant string) (Rules, bool)
	// Verify verifies a bearer token of the tenant; errors wrap
	// ErrInvalidToken or ErrUnavailable.
	Verify func(ctx context.Context, tenant, token string) (*Identity, error)
	// Phantom, if set, mints the phantom JWT for a route's audience.
	Phantom func(ctx context.Context, tenant string, id *Identity, audience string) (string, error)
	// Policy, if set, is evaluated on every check that passed the scopes.
	Policy issuance.PolicyEngine
	// Risk, if set, scores a check for the policy's risk, alerts and
	// tenant_alerts variables (the threat-detection hook, as
	// issuance.Config.Risk).
	Risk func(ctx context.Context, in issuance.PolicyInput) issuance.RiskSignal
	// Realm names the protection space in challenges.
	Realm string
	Now   func() time.Time
	// DPoPWindow is how old (by iat) a DPoP proof may be; default 60s.
	DPoPWindow time.Duration

	replayOnce sync.Once
	replay     *dpop.ReplayCache

	mu       sync.Mutex
	limiters map[limiterKey]*limiterEntry
}

type limiterKey struct{ tenant, client string }

type limiterEntry struct {
	version uint64
	lim     *rate.Limiter
}

// Status codes of a Decision besides 200.
const (
	statusUnauthorized = http.StatusUnauthorized
	statusForbidden    = http.StatusForbidden
)

// Check decides one request.
func (c *Checker) Check(ctx context.Context, req Request) Decision {
	rules, ok := c.Rules(req.Tenant)
	if !ok {
		return c.challenge(statusUnauthorized, "invalid_token", "unknown tenant", "")
	}
	path := req.URI
	if u, err := url.ParseRequestURI(req.URI); err == nil {
		path = u.Path
	} else if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if !strings.HasPrefix(path, "/") {
		return c.deny("no route for this request")
	}
	route, ok := match(rules.Routes, req.Method, path)
	if !ok {
		return c.deny("no route for this request")
	}
	token, sc, ok := credentials(req.Authorization)
	if !ok {
		d := c.challenge(statusUnauthorized, "", "", "")
		d.Reason = "missing bearer token"
		return d
	}
	id, err := c.Verify(ctx, req.Tenant, token)
	switch {
	case errors.Is(err, ErrInvalidToken):
		return c.challenge(statusUnauthorized, "invalid_token", "the access token is invalid, expired or revoked", "")
	case err != nil:
		h := http.Header{"Retry-After": {"5"}}
		return Decision{Status: http.StatusServiceUnavailable, Headers: h, Reason: "cannot verify tokens now"}
	}
	if d, ok := c.checkSender(req, token, sc, id); !ok {
		return d
	}
	for _, s := range route.Scopes {
		if !slices.Contains(id.Scopes, s) {
			return c.challenge(statusForbidden, "insufficient_scope", "the access token lacks a required scope", strings.Join(route.Scopes, " "))
		}
	}
	if l := c.limiter(req.Tenant, id.ClientID, rules); l != nil && !l.Allow() {
		return Decision{Status: http.StatusTooManyRequests, Headers: http.Header{"Retry-After": {"1"}}, Reason: "rate limit exceeded"}
	}
	if d, ok := c.checkPolicy(ctx, req, path, route, id); !ok {
		return d
	}
	return c.allow(ctx, req, route, id)
}

// checkPolicy evaluates the tenant's CEL policies, if any: a deny (not dry
// run) refuses the request; scopes the policy keeps narrow id.Scopes, and
// the route's scopes must survive that.
func (c *Checker) checkPolicy(ctx context.Context, req Request, path string, route Route, id *Identity) (Decision, bool) {
	if c.Policy != nil {
		in := issuance.PolicyInput{
			Tenant: req.Tenant, ClientID: id.ClientID, GrantType: "gateway", Subject: id.Subject, Actor: id.Actor,
			RequestedScopes: route.Scopes, GrantedScopes: id.Scopes, ClientIP: req.ClientIP, Time: c.now(),
			Method: req.Method, Path: path, Device: req.Device,
		}
		if c.Risk != nil {
			in = in.WithRisk(c.Risk(ctx, in))
		}
		pd, err := c.Policy.Evaluate(ctx, in)
		if err != nil {
			return Decision{Status: http.StatusServiceUnavailable, Headers: http.Header{"Retry-After": {"5"}}, Reason: "policy evaluation failed"}, false
		}
		if pd.Deny && !pd.DryRun {
			return c.challenge(statusForbidden, "insufficient_scope", "denied by policy: "+issuance.SafeDescription(pd.Reason), strings.Join(route.Scopes, " ")), false
		}
		if pd.Scopes != nil && !pd.DryRun {
			id.Scopes = slices.DeleteFunc(slices.Clone(id.Scopes), func(s string) bool { return !slices.Contains(pd.Scopes, s) })
			for _, s := range route.Scopes {
				if !slices.Contains(id.Scopes, s) {
					return c.challenge(statusForbidden, "insufficient_scope", "the policy narrowed away a required scope", strings.Join(route.Scopes, " ")), false
				}
			}
		}
	}
	return Decision{}, true
}

// allow is the allowed decision: the identity headers for the upstream,
// and the phantom token of the route, if it names an audience.
func (c *Checker) allow(ctx context.Context, req Request, route Route, id *Identity) Decision {
	h := http.Header{}
	h.Set("X-Tally-Tenant", req.Tenant)
	h.Set("X-Tally-Subject", id.Subject)
	h.Set("X-Tally-Client-Id", id.ClientID)
	h.Set("X-Tally-Scope", strings.Join(id.Scopes, " "))
	if id.Actor != "" {
		h.Set("X-Tally-Actor", id.Actor)
	}
	if route.PhantomAudience != "" && c.Phantom != nil {
		jwt, err := c.Phantom(ctx, req.Tenant, id, route.PhantomAudience)
		switch {
		case errors.Is(err, ErrInvalidToken):
			return c.challenge(statusUnauthorized, "invalid_token", "the access token is invalid, expired or revoked", "")
		case err != nil:
			return Decision{Status: http.StatusServiceUnavailable, Headers: http.Header{"Retry-After": {"5"}}, Reason: "phantom token unavailable"}
		}
		h.Set("X-Tally-Phantom-Token", jwt)
		h.Set("Authorization", "Bearer "+jwt)
	}
	return Decision{Status: http.StatusOK, Headers: h, Reason: "allowed"}
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// match finds the route with the longest prefix matching path (on a
// segment boundary) whose method is req's or any; a method-specific route
// wins over an any-method one of the same prefix.
func match(routes []Route, method, path string) (Route, bool) {
	best, bestLen, found := Route{}, -1, false
	for _, r := range routes {
		if r.Method != "" && r.Method != method {
			continue
		}
		p := r.PathPrefix
		if !strings.HasPrefix(path, p) {
			continue
		}
		if len(path) > len(p) && !strings.HasSuffix(p, "/") && path[len(p)] != '/' {
			continue // /orders matches /orders and /orders/1, not /ordersX
		}
		l := len(p) * 2
		if r.Method != "" {
			l++
		}
		if l > bestLen {
			best, bestLen, found = r, l, true
		}
	}
	return best, found
}

func (c *Checker) deny(reason string) Decision {
	d := c.challenge(statusForbidden, "insufficient_scope", reason, "")
	d.Reason = reason
	return d
}

// challenge builds an RFC 6750 §3 answer.
func (c *Checker) challenge(status int, code, desc, scope string) Decision {
	realm := c.Realm
	if realm == "" {
		realm = "tally"
	}
	v := `Bearer realm="` + issuance.SafeDescription(realm) + `"`
	if code != "" {
		v += `, error="` + code + `"`
	}
	if desc != "" {
		v += `, error_description="` + issuance.SafeDescription(desc) + `"`
	}
	if scope != "" {
		v += `, scope="` + issuance.SafeDescription(scope) + `"`
	}
	reason := desc
	if reason == "" {
		reason = http.StatusText(status)
	}
	return Decision{Status: status, Headers: http.Header{"Www-Authenticate": {v}}, Reason: reason}
}

// limiter returns the client's token bucket under the current rules (nil:
// not limited). Buckets are per node; a new rules version resets them.
func (c *Checker) limiter(tenant, client string, rules Rules) *rate.Limiter {
	var spec *RateLimit
	for i := range rules.RateLimits {
		l := &rules.RateLimits[i]
		if l.ClientID == client {
			spec = l
			break
		}
		if l.ClientID == "" && spec == nil {
			spec = l
		}
	}
	if spec == nil || spec.PerSecond <= 0 {
		return nil
	}
	k := limiterKey{tenant, client}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.limiters == nil {
		c.limiters = map[limiterKey]*limiterEntry{}
	}
	e := c.limiters[k]
	if e == nil || e.version != rules.Version {
		burst := spec.Burst
		if burst <= 0 {
			burst = 1
		}
		e = &limiterEntry{version: rules.Version, lim: rate.NewLimiter(rate.Limit(spec.PerSecond), burst)}
		c.limiters[k] = e
	}
	return e.lim
}

// ForwardAuth is the HTTP forward-auth endpoint. tenant gives the tenant
// of a request (the node uses the {tenant} path value; the sidecar a fixed
// one). The client IP is taken from X-Forwarded-For / X-Real-IP, and the
// client certificate from Client-Cert, only when the direct peer is in
// trusted (a gateway on loopback or the given networks), else the peer's
// address and no certificate. The original request's DPoP header is
// checked against its URL: X-Original-URL, or X-Forwarded-Proto,
// X-Forwarded-Host and the URI.
func (c *Checker) ForwardAuth(tenant func(*http.Request) string, trusted []netipPrefix) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method := firstNonEmpty(r.Header.Get("X-Original-Method"), r.Header.Get("X-Forwarded-Method"))
		uri := firstNonEmpty(r.Header.Get("X-Original-URI"), r.Header.Get("X-Forwarded-Uri"))
		if method == "" {
			method = http.MethodGet
		}
		if uri == "" {
			uri = "/"
		}
		authz := r.Header.Values("Authorization")
		a := ""
		if len(authz) == 1 {
			a = authz[0]
		}
		d := c.Check(r.Context(), Request{
			Tenant: tenant(r), Method: strings.ToUpper(method), URI: uri, Authorization: a,
			ClientIP: clientIP(r, trusted), Device: device(r, trusted),
			DPoP: r.Header.Values("DPoP"), URL: requestURL(r, uri), ClientCert: forwardedCert(r, trusted),
		})
		for k, v := range d.Headers {
			w.Header()[k] = v
		}
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(d.Status)
		if d.Status != http.StatusOK {
			w.Write([]byte(d.Reason + "\n"))
		}
	})
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func hostIP(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
