package issuance

import (
	"context"
	"net/http"
	"strings"
	"time"
)

// Credential-stuffing protection (issue 13). Failed sign-ins and failed
// client authentications are counted in token buckets that go into debt on
// every failure, so the wait before the next attempt grows with the
// failures (a progressive delay), per:
//
//	account and source  tenant + username (or client id) + source subnet
//	source              client address
//
// An account is thus closed only to the networks that failed on it: a
// distributed attack cannot lock its owner out, and each attacking source
// meets its own budget. The buckets are shared between the nodes like the
// rate limits (ratelimit.go), so the counts are cluster-wide and survive the
// loss of a node (every other node holds them too).
const (
	// failuresPerAccountSource is the failure budget per minute of one
	// account from one source subnet.
	failuresPerAccountSource = 20
	// failuresPerSource is the failure budget per minute of one address
	// over every account.
	failuresPerSource = 120

	rlFailAccount = "fa"
	rlFailSource  = "fs"
)

func ctxClientIP(ctx context.Context) string {
	ip, _ := ctx.Value(clientIPKey{}).(string)
	return ip
}

func (s *Server) failureKeys(ctx context.Context, tenant, who string) []rlKey {
	ip := ctxClientIP(ctx)
	if s.rl == nil || ip == "" {
		return nil
	}
	return []rlKey{
		{rlFailAccount, failuresPerAccountSource, tenant + "\x00" + strings.ToLower(who) + "\x00" + subnetKey(ip)},
		{rlFailSource, failuresPerSource, ipKey(ip)},
	}
}

// failureGate reports whether an attempt for who may be checked at all; it
// takes nothing.
func (s *Server) failureGate(ctx context.Context, tenant, who string) (bool, time.Duration) {
	now := s.cfg.Now()
	for _, k := range s.failureKeys(ctx, tenant, who) {
		if ok, wait := s.rl.limiter(k.kind, k.perMinute).peek(k.key, now); !ok {
			return false, wait
		}
	}
	return true, 0
}

// recordFailure counts one failed attempt for who, here and (shared) on
// the other nodes.
func (s *Server) recordFailure(ctx context.Context, tenant, who string) {
	now := s.cfg.Now()
	for _, k := range s.failureKeys(ctx, tenant, who) {
		s.rl.limiter(k.kind, k.perMinute).consume(k.key, 1, now)
		s.rl.note(k)
	}
}

// note adds one to what is shared for k.
func (g *rateGuard) note(k rlKey) {
	g.mu.Lock()
	if g.share != nil && len(g.pending) < maxLimiterKeys {
		g.pending[k.kind+"|"+itoa(k.perMinute)+"|"+k.key]++
	}
	g.mu.Unlock()
}

// peek reports whether key has a token, without taking it.
func (l *keyedLimiter) peek(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		return true, 0
	}
	tok := b.lim.TokensAt(now)
	if tok >= 1 {
		return true, 0
	}
	return false, time.Duration((1 - tok) / float64(l.every) * float64(time.Second))
}

// signinAllowed is the gate of a sign-in post: the per-node attempt limit
// per address and username (Config.LoginAttemptsPerMinute; per username so
// that one account's attacker does not lock out everyone behind the same
// NAT) and the cluster-wide failure budgets.
func (s *Server) signinAllowed(r *http.Request, tenant, username string, now time.Time) bool {
	if !s.loginLimit.allow(clientIP(r)+"\x00"+strings.ToLower(username), now) {
		return false
	}
	ok, _ := s.failureGate(r.Context(), tenant, username)
	return ok
}
