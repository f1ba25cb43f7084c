package issuance

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Security alerts (issue 13): detectors on the request path that turn a
// pattern of abuse into an alert the node records in Raft and announces on
// the event log and the SIEM feed (node/alerts.go). Each detector is a
// failure budget in the rate guard (ratelimit.go), shared between the
// nodes like the rate limits, so the counts are cluster-wide:
//
//	credential_stuffing  failed sign-ins and client authentications: per
//	                     source address (failures_per_source), per account
//	                     and source subnet (failures_per_account_source),
//	                     per tenant (failures_per_tenant, RateLimits.AlertFailures)
//	token_guessing       introspection of tokens that are not tokens of the
//	                     tenant at all (malformed, forged), per client
//	                     (RateLimits.AlertIntrospectMisses)
//	user_code_guessing   device user codes that match no pending code, per
//	                     tenant (RateLimits.AlertUserCodeMisses)
//	rate_limit_exceeded  a request refused by a rate limit: the bucket that
//	                     refused (client, unknown_client, username, ip,
//	                     subnet, tenant)
//
// A fifth kind, refresh_new_network, is not raised here: each refresh
// rotation hands the store the client's network (Rotation.Network) and the
// store raises it when the family's network changes (raft/apply_alert.go).
// The node feeds the active alerts back into the contextual policies
// (Config.Risk; node/risk.go).
//
// An alert fires when its budget is spent, and again at most once a minute
// per alert key on each node (and once a minute per key cluster-wide: the
// FSM keeps the keys it announced this minute). A node raises at most
// alertsPerSecond alerts; beyond that they are counted (AlertsDropped),
// never queued without bound. Alerts carry no secret, token, password or
// username: a client id, a user id, an address or subnet.

// ScopeUse is a successful token response's scopes, for the
// scope_first_use detection (Config.ScopeUse): the node compares them with
// the client's replicated scope history and records the new ones
// (node/scopes.go, raft op 142). Source is the client's network (IPv4 /24
// or IPv6 /64), like a refresh family's.
type ScopeUse struct {
	Tenant, ClientID, GrantType, Source string
	Scopes                              []string
}

// observeScopes hands a successful token response's scopes to
// Config.ScopeUse, for the authenticated client.
func (s *Server) observeScopes(r *http.Request, tenant, client, grantType string, resp *TokenResponse) {
	if s.cfg.ScopeUse == nil || resp == nil || resp.Scope == "" || tenant == "" || client == "" {
		return
	}
	s.cfg.ScopeUse(ScopeUse{Tenant: tenant, ClientID: client, GrantType: grantType, Source: familyNetwork(clientIP(r)),
		Scopes: strings.Fields(resp.Scope)})
}

// Alert kinds.
const (
	AlertCredentialStuffing = "credential_stuffing"
	AlertTokenGuessing      = "token_guessing"
	AlertUserCodeGuessing   = "user_code_guessing"
	AlertRateLimitExceeded  = "rate_limit_exceeded"
)

// SecurityAlert is one detection.
type SecurityAlert struct {
	Kind     string
	Tenant   string
	ClientID string
	// Subject is a user id, never a username.
	Subject string
	// Source is an address or a subnet.
	Source string
	// Signal is the budget or bucket that fired.
	Signal string
	// Count is what the signal counted within Window when it fired.
	Count  int
	Window time.Duration
}

// Default alert thresholds, per minute (RateLimits.Alert*).
const (
	DefaultAlertFailures         = 60
	DefaultAlertIntrospectMisses = 300
	DefaultAlertUserCodeMisses   = 30

	rlFailTenant      = "ft"
	rlGuessToken      = "fg"
	rlGuessUserCode   = "fd"
	rlGuessSource     = "fe"
	alertsPerSecond   = 20
	alertDedupeWindow = time.Minute
	maxAlertKeys      = 10000
)

// alerter holds a node's alert sink and its per-node de-duplication.
type alerter struct {
	mu      sync.Mutex
	sink    func(SecurityAlert)
	last    map[string]time.Time
	lim     *rate.Limiter
	dropped atomic.Int64
}

// SetAlertSink sets where the alerts go (the node proposes them). Without
// a sink, or with the rate limits off, no alert is raised.
func (s *Server) SetAlertSink(sink func(SecurityAlert)) {
	s.alerts.mu.Lock()
	s.alerts.sink = sink
	s.alerts.mu.Unlock()
}

// AlertsDropped is how many alerts this node did not raise because it
// raised alertsPerSecond already.
func (s *Server) AlertsDropped() int64 { return s.alerts.dropped.Load() }

// raise hands a to the sink unless the same alert went out from this node
// within alertDedupeWindow.
func (s *Server) raise(a SecurityAlert) {
	now := s.cfg.Now()
	key := a.Kind + "\x00" + a.Tenant + "\x00" + a.ClientID + "\x00" + a.Subject + "\x00" + a.Source + "\x00" + a.Signal
	s.alerts.mu.Lock()
	sink := s.alerts.sink
	if sink == nil {
		s.alerts.mu.Unlock()
		return
	}
	if t, ok := s.alerts.last[key]; ok && now.Sub(t) < alertDedupeWindow {
		s.alerts.mu.Unlock()
		return
	}
	if s.alerts.lim == nil {
		s.alerts.lim = rate.NewLimiter(alertsPerSecond, alertsPerSecond)
		s.alerts.last = map[string]time.Time{}
	}
	if !s.alerts.lim.AllowN(now, 1) {
		s.alerts.mu.Unlock()
		s.alerts.dropped.Add(1)
		return
	}
	if len(s.alerts.last) >= maxAlertKeys {
		for k, t := range s.alerts.last {
			if now.Sub(t) >= alertDedupeWindow {
				delete(s.alerts.last, k)
			}
		}
		if len(s.alerts.last) >= maxAlertKeys {
			clear(s.alerts.last)
		}
	}
	s.alerts.last[key] = now
	s.alerts.mu.Unlock()
	s.log.Warn("issuance: security alert", "kind", a.Kind, "tenant", a.Tenant, "client_id", a.ClientID, "sub", a.Subject,
		"source", a.Source, "signal", a.Signal, "count", a.Count)
	sink(a)
}

// countToward takes one from a failure budget (shared with the other
// nodes) and reports whether the budget is spent.
func (s *Server) countToward(k rlKey) bool {
	if s.rl == nil || k.perMinute <= 0 || k.key == "" {
		return false
	}
	now := s.cfg.Now()
	l := s.rl.limiter(k.kind, k.perMinute)
	l.consume(k.key, 1, now, s.rl.sharing.Load())
	ok, _ := l.peek(k.key, now)
	return !ok
}

// introspectMiss counts an introspection of something that is no token
// of the tenant, by clientID.
func (s *Server) introspectMiss(ctx context.Context, tenant, clientID string) {
	if s.rl == nil {
		return
	}
	per := s.rl.limits(tenant).AlertIntrospectMisses
	if s.countToward(rlKey{rlGuessToken, per, tenant + "\x00" + clientID}) {
		s.raise(SecurityAlert{Kind: AlertTokenGuessing, Tenant: tenant, ClientID: clientID, Source: ctxClientIP(ctx),
			Signal: "introspection_misses_per_client", Count: per, Window: time.Minute})
	}
}

// userCodeGate reports whether the client address may look up another
// user code: its misses (userCodeMiss), counted cluster-wide, stay within
// Config.UserCodeAttemptsPerMinute. (The per-node limits per address and
// browser come first; this one holds when the guesses are spread over the
// nodes.)
func (s *Server) userCodeGate(ctx context.Context) bool {
	ip := ctxClientIP(ctx)
	if s.rl == nil || ip == "" {
		return true
	}
	ok, _ := s.rl.limiter(rlGuessSource, s.cfg.UserCodeAttemptsPerMinute).peek(ipKey(ip), s.cfg.Now())
	return ok
}

// userCodeMiss counts a device user code that matched no pending code,
// typed by user (an id) at the tenant's verification page.
func (s *Server) userCodeMiss(ctx context.Context, tenant, user string) {
	if s.rl == nil {
		return
	}
	if ip := ctxClientIP(ctx); ip != "" {
		s.countToward(rlKey{rlGuessSource, s.cfg.UserCodeAttemptsPerMinute, ipKey(ip)})
	}
	per := s.rl.limits(tenant).AlertUserCodeMisses
	if s.countToward(rlKey{rlGuessUserCode, per, tenant}) {
		s.raise(SecurityAlert{Kind: AlertUserCodeGuessing, Tenant: tenant, Subject: user, Source: ctxClientIP(ctx),
			Signal: "user_code_misses_per_tenant", Count: per, Window: time.Minute})
	}
}

// rateLimited raises the alert of a request a rate limit refused.
func (s *Server) rateLimited(tenant, kind, clientID, ip string) {
	a := SecurityAlert{Kind: AlertRateLimitExceeded, Tenant: tenant, Window: time.Minute, Signal: bucketName(kind)}
	lim := s.rl.limits(tenant)
	switch kind {
	case rlClient:
		a.ClientID, a.Count = clientID, lim.PerClient
	case rlUnknown:
		a.Source, a.Count = ipKey(ip), lim.PerUnknownClient
	case rlUsername:
		a.Source, a.Count = subnetKey(ip), lim.PerUsername
	case rlIP:
		a.Source, a.Count = ipKey(ip), lim.PerIP
	case rlSubnet:
		a.Source, a.Count = subnetKey(ip), lim.PerSubnet
	case rlTenant:
		a.Count = lim.PerTenant
	default:
		return
	}
	s.raise(a)
}

// bucketName names a request bucket's kind in alerts (the signal of
// rate_limit_exceeded) and metrics; "" for other kinds.
func bucketName(kind string) string {
	switch kind {
	case rlClient:
		return "client"
	case rlUnknown:
		return "unknown_client"
	case rlUsername:
		return "username"
	case rlIP:
		return "ip"
	case rlSubnet:
		return "subnet"
	case rlTenant:
		return "tenant"
	}
	return ""
}
