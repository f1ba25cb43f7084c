package issuance

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Config configures a Server. Start from DefaultConfig; BaseURL and KEK have
// no default.
type Config struct {
	// BaseURL is the public URL of the node's OAuth endpoints, e.g.
	// "http://127.0.0.1:8080". A tenant's issuer is BaseURL+"/t/"+tenant.
	BaseURL string
	// KEK decrypts tenant keys and hashes client secrets.
	KEK *KEK
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand supplies token ids and nonces; nil means crypto/rand.Reader. It
	// must be safe for concurrent use.
	Rand io.Reader
	// Logger receives request failures (with their Debug detail) and key
	// problems; nil discards.
	Logger *slog.Logger
	// Meter records the endpoint metrics; nil means a no-op meter.
	Meter metric.Meter
	// MaxBodyBytes bounds request bodies; default 16 KiB.
	MaxBodyBytes int64
	// JWKSMaxAge is the Cache-Control max-age of the JWKS; default 5m.
	JWKSMaxAge time.Duration
	// Leeway is the clock skew allowed when checking exp, nbf and iat;
	// default 30s.
	Leeway time.Duration
	// AccessTokenTTL is the access token lifetime of clients that set none;
	// default DefaultAccessTokenTTL.
	AccessTokenTTL time.Duration

	// Users and Grants enable the end-user flows: /authorize with its login
	// and consent pages, the authorization_code, refresh_token and device
	// grants, device authorization, the device page and userinfo. With
	// both nil only client credentials are served. Set both or neither.
	Users  Users
	Grants Grants
	// InsecureCookies drops the Secure attribute of the browser cookies
	// (dev mode on plain http).
	InsecureCookies bool
	// SessionTTL bounds a browser session; default 8h.
	SessionTTL time.Duration
	// CodeTTL is the lifetime of authorization codes; default 60s.
	CodeTTL time.Duration
	// IDTokenTTL is the lifetime of ID tokens; default 1h.
	IDTokenTTL time.Duration
	// RefreshTTL is the absolute lifetime of a refresh family; default 30
	// days. RefreshIdleTimeout ends a family unused that long; default 7
	// days, 0 disables.
	RefreshTTL         time.Duration
	RefreshIdleTimeout time.Duration
	// RefreshReuseInterval: presenting the just-superseded refresh token
	// again within this interval returns the same successor instead of
	// revoking the family. Default 0 (off); typical 2-10s.
	RefreshReuseInterval time.Duration
	// ConsentTTL is how long a remembered consent lasts; 0: until revoked.
	ConsentTTL time.Duration
	// DeviceCodeTTL and DevicePollInterval are RFC 8628 §3.2 expires_in
	// and interval; defaults 10m and 5s.
	DeviceCodeTTL      time.Duration
	DevicePollInterval time.Duration
	// UserCodeAttemptsPerMinute limits user-code entries per browser
	// session and per client IP (RFC 8628 §5.1); default 10.
	UserCodeAttemptsPerMinute int
	// LoginAttemptsPerMinute limits password attempts per client IP;
	// default 20.
	LoginAttemptsPerMinute int
	// DeviceLimits bounds device authorizations and polls per client IP
	// and per client; zero fields take DefaultDeviceLimits.
	DeviceLimits DeviceLimits
	// NodeID and Region label security events (refresh-token reuse).
	NodeID string
	Region string
	// ZeroTrust configures private_key_jwt, mutual TLS and workload
	// identity federation (clientauth_zt.go).
	ZeroTrust ZeroTrustConfig
	// DPoP configures DPoP proofs at the token endpoint (dpop.go).
	DPoP DPoPConfig
	// Policy, if set, decides every grant (contextual authorisation;
	// policy.go). Nil allows everything.
	Policy PolicyEngine
	// RateLimits bounds every public endpoint (ratelimit.go); zero fields
	// take DefaultRateLimits.
	RateLimits RateLimits
	// Risk, if set, scores a grant for the policies' risk, alerts and
	// tenant_alerts variables (the hook of threat detection; the node
	// answers from the security alerts, node/risk.go): called before every
	// policy evaluation whose input has no risk yet. It must be cheap.
	Risk func(ctx context.Context, in PolicyInput) RiskSignal
	// ScopeUse, if set, is told the scopes of every successful token
	// response (every grant type), after the response is decided: the
	// node's scope_first_use detection (node/scopes.go). It must not
	// block.
	ScopeUse func(ScopeUse)
	// ZTv2 reports whether every node that may be asked to read them
	// understands the values this release added late to issue 11, so it
	// may produce them: session cookies, login forms and authorization
	// codes sealed with the tenant's rotating sealing key
	// (seal_rotating.go) and refresh tokens of public clients bound to
	// their client certificate (cnf.go). Nil means yes.
	ZTv2 func(ctx context.Context) bool
}

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{
		Now:            time.Now,
		Rand:           rand.Reader,
		MaxBodyBytes:   16 << 10,
		JWKSMaxAge:     5 * time.Minute,
		Leeway:         30 * time.Second,
		AccessTokenTTL: DefaultAccessTokenTTL,

		SessionTTL:                8 * time.Hour,
		CodeTTL:                   60 * time.Second,
		IDTokenTTL:                time.Hour,
		RefreshTTL:                30 * 24 * time.Hour,
		RefreshIdleTimeout:        7 * 24 * time.Hour,
		DeviceCodeTTL:             10 * time.Minute,
		DevicePollInterval:        5 * time.Second,
		UserCodeAttemptsPerMinute: 10,
		LoginAttemptsPerMinute:    20,
	}
}

// Validate reports the first invalid field. Nil Now, Rand, Logger and Meter
// are valid (NewServer fills them in).
func (c Config) Validate() error {
	u, err := url.Parse(c.BaseURL)
	switch {
	case c.BaseURL == "":
		return errors.New("issuance: config: BaseURL is required")
	case err != nil:
		return fmt.Errorf("issuance: config: BaseURL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("issuance: config: BaseURL must be an http or https URL")
	case u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return errors.New("issuance: config: BaseURL must have a host and no user info, query or fragment")
	case strings.ContainsAny(c.BaseURL, "\" \\"):
		return errors.New("issuance: config: BaseURL must not contain quotes, spaces or backslashes")
	case c.KEK == nil:
		return errors.New("issuance: config: KEK is required")
	case c.MaxBodyBytes <= 0:
		return errors.New("issuance: config: MaxBodyBytes must be positive")
	case c.JWKSMaxAge < 0:
		return errors.New("issuance: config: JWKSMaxAge must not be negative")
	case c.Leeway < 0 || c.Leeway > 10*time.Minute:
		return errors.New("issuance: config: Leeway must be between 0 and 10m")
	case c.AccessTokenTTL < time.Second:
		return errors.New("issuance: config: AccessTokenTTL must be at least 1s")
	case (c.Users == nil) != (c.Grants == nil):
		return errors.New("issuance: config: set both Users and Grants, or neither")
	}
	if c.Users == nil {
		return nil
	}
	switch {
	case c.SessionTTL < time.Minute:
		return errors.New("issuance: config: SessionTTL must be at least 1m")
	case c.CodeTTL < time.Second || c.CodeTTL > 10*time.Minute:
		return errors.New("issuance: config: CodeTTL must be between 1s and 10m (RFC 6749 §4.1.2)")
	case c.IDTokenTTL < time.Second:
		return errors.New("issuance: config: IDTokenTTL must be at least 1s")
	case c.RefreshTTL < time.Minute || c.RefreshIdleTimeout < 0:
		return errors.New("issuance: config: RefreshTTL must be at least 1m and RefreshIdleTimeout not negative")
	case c.RefreshReuseInterval < 0 || c.RefreshReuseInterval > time.Minute:
		return errors.New("issuance: config: RefreshReuseInterval must be between 0 and 1m")
	case c.ConsentTTL < 0:
		return errors.New("issuance: config: ConsentTTL must not be negative")
	case c.DeviceCodeTTL < 10*time.Second || c.DevicePollInterval < time.Second:
		return errors.New("issuance: config: DeviceCodeTTL must be at least 10s and DevicePollInterval at least 1s")
	case c.UserCodeAttemptsPerMinute < 1 || c.LoginAttemptsPerMinute < 1:
		return errors.New("issuance: config: attempt limits must be at least 1 per minute")
	}
	return nil
}

// Server serves the OAuth 2.0 endpoints of every tenant in State. It is safe
// for concurrent use. Issuing client-credentials tokens, introspection, JWKS
// and discovery read State only; revocation writes through the Revoker.
type Server struct {
	cfg     Config
	st      State
	rv      Revoker
	keys    *keyring
	minter  *minter
	grants  map[string]GrantHandler
	metrics *metrics
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler

	// End-user flows; nil unless Config.Users and Config.Grants are set.
	users       Users
	grantW      Grants
	flow        *flowKeys
	dummyHash   PasswordHash
	loginLimit  *limiters
	codeIPLimit *limiters
	codeSLimit  *limiters
	device      *deviceGuard  // device_pace.go
	zt          *ztState      // clientauth_zt.go
	dpop        *dpopGuard    // dpop.go
	rl          *rateGuard    // ratelimit.go; nil when off
	alerts      alerter       // alerts.go
	hashSem     chan struct{} // stuffing.go: password checks in progress
}

// NewServer returns a Server reading st and revoking through rv.
func NewServer(cfg Config, st State, rv Revoker) (*Server, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Meter == nil {
		cfg.Meter = noop.NewMeterProvider().Meter("tally/issuance")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if st == nil || rv == nil {
		return nil, errors.New("issuance: NewServer: State and Revoker are required")
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	m, err := newMetrics(cfg.Meter)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, st: st, rv: rv, metrics: m, log: cfg.Logger}
	s.keys = newKeyring(cfg.KEK, cfg.Logger)
	if s.dpop, err = newDPoPGuard(cfg); err != nil {
		return nil, err
	}
	s.minter = &minter{st: st, keys: s.keys, rnd: cfg.Rand, issuer: s.Issuer}
	if cfg.Users != nil {
		if err := s.initFlows(); err != nil {
			return nil, err
		}
	}
	s.grants = s.grantHandlers()
	s.mux = http.NewServeMux()
	s.routes()
	s.zt = newZT(cfg.ZeroTrust)
	if !cfg.RateLimits.Off {
		s.rl = newRateGuard(cfg.RateLimits)
		if err := observeRateShare(cfg.Meter, s.rl); err != nil {
			return nil, err
		}
	}
	s.handler = s.withClientCert(s.guard(http.HandlerFunc(s.serve)))
	return s, nil
}

// Issuer returns the issuer identifier of a tenant (RFC 8414 §2):
// BaseURL + "/t/" + tenant, with the tenant path-escaped.
func (s *Server) Issuer(tenant string) string {
	return s.cfg.BaseURL + "/t/" + url.PathEscape(tenant)
}

// Handler returns the HTTP handler of every tenant's endpoints.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() {
	s.mux.HandleFunc("GET /t/{tenant}/.well-known/openid-configuration", s.handleDiscovery)
	s.mux.HandleFunc("GET /t/{tenant}/.well-known/oauth-authorization-server", s.handleDiscovery)
	s.mux.HandleFunc("GET /.well-known/oauth-authorization-server/t/{tenant}", s.handleDiscovery)
	s.mux.HandleFunc("GET /t/{tenant}/jwks.json", s.handleJWKS)
	s.mux.HandleFunc("POST /t/{tenant}/oauth2/token", s.handleToken)
	s.mux.HandleFunc("POST /t/{tenant}/oauth2/introspect", s.handleIntrospect)
	s.mux.HandleFunc("POST /t/{tenant}/oauth2/revoke", s.handleRevoke)
	if s.users != nil {
		s.flowRoutes()
	}
	s.mux.HandleFunc("/", s.handleUnrouted)
}

// serve is the outermost handler: it recovers panics into a 500
// server_error, the last resort that tests show no input reaches.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("issuance: panic in handler", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			s.writeError(w, r, newError(CodeServerError, http.StatusInternalServerError, "internal error", fmt.Errorf("panic: %v", p)))
		}
	}()
	s.mux.ServeHTTP(w, r)
}

var probeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// handleUnrouted answers requests no route matches: 405 with Allow when the
// path exists under another method, else 404, both as JSON errors.
func (s *Server) handleUnrouted(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range probeMethods {
		if m == r.Method {
			continue
		}
		probe := *r
		probe.Method = m
		if _, pattern := s.mux.Handler(&probe); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		s.writeError(w, r, newError(CodeInvalidRequest, http.StatusMethodNotAllowed, "method not allowed", nil))
		return
	}
	s.writeError(w, r, newError(CodeInvalidRequest, http.StatusNotFound, "not found", nil))
}

var errUnknownTenant = newError(CodeInvalidRequest, http.StatusNotFound, "unknown tenant", nil)

// tenant returns the enabled tenant named in the path. Unknown and disabled
// tenants are both 404 "unknown tenant".
func (s *Server) tenant(ctx context.Context, r *http.Request) (Tenant, error) {
	id := r.PathValue("tenant")
	t, err := s.st.Tenant(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return Tenant{}, errUnknownTenant
	case err != nil:
		return Tenant{}, errUnavailable("tenant lookup failed", err)
	case t.Disabled:
		return Tenant{}, errUnknownTenant
	}
	return t, nil
}

type wireError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// writeError is the one place protocol errors reach the wire: RFC 6749 §5.2
// JSON with Cache-Control: no-store, and for invalid_client a
// WWW-Authenticate challenge (RFC 6749 §5.2; we send it on every 401, not
// only when the client used Basic). Debug is logged, never sent.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := asError(err)
	level := slog.LevelDebug
	switch {
	case e.Status >= 500:
		level = slog.LevelError
	case e.Status == http.StatusUnauthorized:
		level = slog.LevelInfo
	}
	if s.log.Enabled(r.Context(), level) {
		s.log.Log(r.Context(), level, "issuance: request failed", "method", r.Method, "path", r.URL.Path,
			"status", e.Status, "error", e.Code, "description", e.Description, "debug", e.Debug)
	}
	h := w.Header()
	if e.Status == http.StatusUnauthorized {
		realm := s.cfg.BaseURL
		if t := r.PathValue("tenant"); t != "" {
			realm = s.Issuer(t)
		}
		h.Set("WWW-Authenticate", `Basic realm="`+realm+`"`)
	}
	if e.Status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	if n := (*dpopNonce)(nil); errors.As(e.Debug, &n) {
		h.Set("DPoP-Nonce", n.nonce)
	}
	if rl := (*RateLimited)(nil); e.Status == http.StatusTooManyRequests && errors.As(e.Debug, &rl) {
		h.Set("Retry-After", retryAfterSeconds(rl.RetryAfter))
	}
	body, _ := json.Marshal(wireError{Error: e.Code, Description: e.Description})
	writeJSON(w, e.Status, body, "no-store")
}

// writeJSON writes a JSON body. no-store responses also get Pragma: no-cache
// (RFC 6749 §5.1).
func writeJSON(w http.ResponseWriter, status int, body []byte, cacheControl string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", cacheControl)
	if cacheControl == "no-store" {
		h.Set("Pragma", "no-cache")
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// respond writes v as JSON; a value that fails to marshal (a bug) becomes
// a server_error rather than a panic.
func (s *Server) respond(w http.ResponseWriter, r *http.Request, status int, v any, cacheControl string) {
	body, err := json.Marshal(v)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("marshal response: %w", err))
		return
	}
	writeJSON(w, status, body, cacheControl)
}
