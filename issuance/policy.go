package issuance

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// PolicyInput is what a contextual authorisation policy decides from, on
// every grant (token endpoint, exchange), at the authorization endpoint
// (grant_type authorization_code, before the code is issued; Method and
// Path are the authorization request's) and at the gateway check. Network
// and device attributes come only from headers of a trusted proxy; the
// caller fills them in.
type PolicyInput struct {
	Tenant          string
	ClientID        string
	GrantType       string // "gateway" at the gateway check
	Subject         string
	Actor           string
	RequestedScopes []string
	GrantedScopes   []string
	Audience        []string
	ClientIP        string
	Time            time.Time
	// Gateway check: the original request.
	Method, Path string
	// Device posture asserted by a trusted proxy or device agent in
	// X-Device-* headers (empty when not asserted; devicePosture), and what
	// the Config.Risk hook reported (zero without one): the risk score and
	// the kinds of the active security alerts that name this request's
	// client, user or source network (Alerts) or its whole tenant
	// (TenantAlerts).
	Device       map[string]string
	Risk         float64
	Alerts       []string
	TenantAlerts []string
	// User attributes, when the subject is a user of the tenant.
	User map[string]string
}

// RiskSignal is what a Config.Risk hook reports about a request: a score
// (the policies' risk) and the kinds of the security alerts behind it.
type RiskSignal struct {
	// Score is 0 (nothing known against the request) to 1.
	Score float64
	// Alerts are the kinds of the active alerts naming the request's
	// client, user or source network; TenantAlerts those naming only its
	// tenant. Each sorted, without repeats.
	Alerts, TenantAlerts []string
}

// WithRisk is in with the signal's score and alerts.
func (in PolicyInput) WithRisk(r RiskSignal) PolicyInput {
	in.Risk, in.Alerts, in.TenantAlerts = r.Score, r.Alerts, r.TenantAlerts
	return in
}

// PolicyDecision is a policy's outcome.
type PolicyDecision struct {
	// Deny refuses the grant or request, with Reason.
	Deny   bool
	Reason string
	// Scopes, when non-nil, narrows the granted scopes to this set.
	Scopes []string
	// Version is the policy version that decided (0: no policy).
	Version uint64
	// DryRun: the decision was logged, not enforced.
	DryRun bool
	// Impersonate: a token exchange with an actor_token may issue its
	// token without the act claim (RFC 8693 §1.1 impersonation; off unless
	// a policy allows it).
	Impersonate bool
}

// PolicyEngine evaluates the policies of a tenant and client. It must be
// cheap on the hot path (policies compiled once per version). Evaluate
// errors are a failure to decide (the grant is refused as unavailable).
type PolicyEngine interface {
	Evaluate(ctx context.Context, in PolicyInput) (PolicyDecision, error)
}

// narrow applies the decision's scope narrowing to scope.
func (d PolicyDecision) narrow(scope []string) []string {
	if d.Scopes == nil || d.DryRun {
		return scope
	}
	return slices.DeleteFunc(slices.Clone(scope), func(s string) bool { return !slices.Contains(d.Scopes, s) })
}

// decide runs the configured policy engine; no engine allows everything.
// A deny (not in dry run) is invalid_grant naming the policy's reason.
func (s *Server) decide(ctx context.Context, in PolicyInput) (PolicyDecision, error) {
	if s.cfg.Policy == nil {
		return PolicyDecision{}, nil
	}
	if s.cfg.Risk != nil && in.Risk == 0 && in.Alerts == nil && in.TenantAlerts == nil {
		in = in.WithRisk(s.cfg.Risk(ctx, in))
	}
	d, err := s.cfg.Policy.Evaluate(ctx, in)
	if err != nil {
		return PolicyDecision{}, errUnavailable("policy evaluation failed", err)
	}
	if d.Deny && !d.DryRun {
		return d, newError(CodeInvalidGrant, http.StatusBadRequest, "denied by policy: "+SafeDescription(d.Reason), nil)
	}
	return d, nil
}

// SafeDescription keeps only the characters RFC 6749 §5.2 allows in
// error_description (and RFC 6750 in a quoted header value), bounded.
func SafeDescription(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 200; i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// decideUserGrant evaluates the policy for an end-user grant
// (authorization_code, refresh_token, device code) just before its tokens
// are minted: a deny refuses the grant (the code or refresh rotation
// already recorded stays spent), a narrowing applies to the access token
// and the response's scope.
func (s *Server) decideUserGrant(ctx context.Context, gr GrantRequest, iss *userIssue, u *User) error {
	if s.cfg.Policy == nil {
		return nil
	}
	in := PolicyInput{Tenant: gr.Tenant.ID, ClientID: gr.Client.ID, Subject: u.ID, GrantedScopes: iss.scopes,
		Audience: iss.access.Audience, ClientIP: gr.ClientIP, Time: gr.Now, Device: gr.Device,
		User: map[string]string{"username": u.Username, "email": u.Email, "name": u.Name}}
	if gr.Request != nil {
		in.GrantType, in.RequestedScopes = gr.Request.GrantType, gr.Request.Scope
	}
	d, err := s.decide(ctx, in)
	if err != nil {
		return err
	}
	iss.scopes = d.narrow(iss.scopes)
	iss.access.Scope = d.narrow(iss.access.Scope)
	return nil
}

// decideAuthorize evaluates the policy at the authorization endpoint, once
// the user is signed in and has consented and before the code is issued,
// so that a deny reaches the user's browser (the client gets access_denied
// at its redirect URI, RFC 6749 §4.1.2.1) and a narrowing is what the code
// carries. The token endpoint evaluates the policy again when the code is
// redeemed (decideUserGrant): the policy may also look at the client's
// backend there. It reports whether to go on; otherwise it has answered.
func (s *Server) decideAuthorize(w http.ResponseWriter, r *http.Request, t Tenant, c Client, p *pending, u *User, now time.Time) bool {
	if s.cfg.Policy == nil {
		return true
	}
	d, err := s.decide(r.Context(), PolicyInput{Tenant: t.ID, ClientID: c.ID, GrantType: GrantAuthorizationCode, Subject: u.ID,
		RequestedScopes: p.Scopes, GrantedScopes: p.Scopes, ClientIP: clientIP(r), Time: now, Method: r.Method, Path: r.URL.Path,
		Device: s.devicePosture(r),
		User:   map[string]string{"username": u.Username, "email": u.Email, "name": u.Name}})
	if err != nil {
		e := asError(err)
		if e.Status >= http.StatusInternalServerError {
			s.authzFail(w, r, t, p, redirErr(CodeTemporarilyUnavailable, "the request could not be decided now, try again"))
		} else {
			s.authzFail(w, r, t, p, redirErr(CodeAccessDenied, e.Description))
		}
		return false
	}
	p.Scopes = d.narrow(p.Scopes)
	return true
}

// maxDeviceAttrs bounds the asserted device attributes.
const maxDeviceAttrs = 16

// devicePosture is the device posture a trusted proxy or device agent
// asserted in X-Device-* headers (lower-cased names without the prefix),
// believed only from a peer in RateLimits.TrustedProxies or
// ZeroTrust.TrustedProxies; nil otherwise.
func (s *Server) devicePosture(r *http.Request) map[string]string {
	var m map[string]string
	for k, v := range r.Header {
		rest, ok := strings.CutPrefix(k, "X-Device-")
		if !ok || len(v) != 1 || rest == "" {
			continue
		}
		if m == nil {
			if !s.peerTrusted(r) {
				return nil
			}
			m = map[string]string{}
		}
		if len(m) < maxDeviceAttrs {
			m[strings.ToLower(rest)] = v[0]
		}
	}
	return m
}

// peerTrusted reports whether r's direct peer is a configured trusted proxy.
func (s *Server) peerTrusted(r *http.Request) bool {
	a, err := netip.ParseAddr(peerIP(r))
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, set := range [][]netip.Prefix{s.cfg.RateLimits.TrustedProxies, s.zt.cfg.TrustedProxies} {
		for _, p := range set {
			if p.Contains(a) {
				return true
			}
		}
	}
	return false
}
