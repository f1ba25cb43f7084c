package issuance

import (
	"context"
	"errors"
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
	// failuresPerSourceUnderAttack is the failure budget per minute of
	// one address while its tenant is under attack (the tenant's failures
	// spent RateLimits.AlertFailures): a distributed attack whose sources
	// each stay under failuresPerSource then meets this one, while real
	// users, who rarely fail, never count toward it.
	failuresPerSourceUnderAttack = 10
	// failuresPerSubnetUnderAttack is the same per source subnet (IPv4
	// /24, IPv6 /48): a botnet's many addresses in few networks.
	failuresPerSubnetUnderAttack = 30

	rlFailAccount      = "fa"
	rlFailSource       = "fs"
	rlFailSourceAttack = "fx"
	rlFailSubnetAttack = "fy"
	// failuresPerAccountAlert is how many failures of one account, from
	// anywhere, within a minute raise an alert (a spray on the account);
	// it never refuses anything.
	failuresPerAccountAlert = 30
	rlFailAccountAll        = "fu"
)

// ctxClientIP is the client address the guard found, "" when it is off.
func ctxClientIP(ctx context.Context) string {
	if gi := ctxGuardInfo(ctx); gi != nil {
		return gi.ip
	}
	return ""
}

func (s *Server) failureKeys(ctx context.Context, tenant, who string) ([]rlKey, *guardInfo) {
	gi := ctxGuardInfo(ctx)
	if s.rl == nil || gi == nil || gi.ip == "" {
		return nil, nil
	}
	return []rlKey{
		{rlFailAccount, failuresPerAccountSource, failureAccountKey(tenant, who, gi.subnet)},
		{rlFailSource, failuresPerSource, gi.ipKey},
	}, gi
}

// failureAccountKey is the key of who's failures from subnet.
func failureAccountKey(tenant, who, subnet string) string {
	return tenant + "\x00" + strings.ToLower(who) + "\x00" + subnet
}

// underAttack reports whether tenant's failures spent its alert budget
// (RateLimits.AlertFailures) within the last minute, cluster-wide.
func (s *Server) underAttack(tenant string, now time.Time) bool {
	per := s.rl.limits(tenant).AlertFailures
	if per <= 0 {
		return false
	}
	ok, _ := s.rl.limiter(rlFailTenant, per).peek(tenant, now)
	return !ok
}

// failureGate reports whether an attempt for who may be checked at all; it
// takes nothing. While the tenant is under attack, an address that failed
// failuresPerSourceUnderAttack times, or a subnet that failed
// failuresPerSubnetUnderAttack times, within the last minute waits too.
func (s *Server) failureGate(ctx context.Context, tenant, who string) (bool, time.Duration) {
	gi := ctxGuardInfo(ctx)
	if s.rl == nil || gi == nil || gi.ip == "" {
		return true, 0
	}
	now := s.cfg.Now()
	account := s.rl.failAccount
	if account.keys.Load() > 0 { // no key to build when no account failed lately
		if ok, wait := account.peek(failureAccountKey(tenant, who, gi.subnet), now); !ok {
			return false, wait
		}
	}
	if ok, wait := s.rl.failSource.peek(gi.ipKey, now); !ok {
		return false, wait
	}
	if s.underAttack(tenant, now) {
		for _, k := range []rlKey{{rlFailSourceAttack, failuresPerSourceUnderAttack, gi.ipKey},
			{rlFailSubnetAttack, failuresPerSubnetUnderAttack, gi.subnet}} {
			if ok, wait := s.rl.limiter(k.kind, k.perMinute).peek(k.key, now); !ok {
				return false, wait
			}
		}
	}
	return true, 0
}

// recordFailure counts one failed attempt for who (a username, or the
// client id when client is set), here and (shared) on the other nodes,
// and raises a credential_stuffing alert when a budget is spent (alerts.go).
// subject is the user id when the username names a user.
func (s *Server) recordFailure(ctx context.Context, tenant, who, subject string, client bool) {
	keys, gi := s.failureKeys(ctx, tenant, who)
	if len(keys) == 0 {
		return
	}
	clientID := ""
	if client {
		clientID, subject = who, ""
	}
	signals := []SecurityAlert{
		{Signal: "failures_per_account_source", ClientID: clientID, Subject: subject, Source: gi.subnet, Count: failuresPerAccountSource},
		{Signal: "failures_per_source", Source: gi.ipKey, Count: failuresPerSource},
	}
	per := s.rl.limits(tenant).AlertFailures
	keys = append(keys, rlKey{rlFailTenant, per, tenant}, rlKey{rlFailSourceAttack, failuresPerSourceUnderAttack, gi.ipKey},
		rlKey{rlFailSubnetAttack, failuresPerSubnetUnderAttack, gi.subnet}, rlKey{rlFailRecent, 1, gi.ipKey},
		rlKey{rlFailAccountAll, failuresPerAccountAlert, tenant + "\x00" + strings.ToLower(who)})
	signals = append(signals, SecurityAlert{Signal: "failures_per_tenant", Count: per}, SecurityAlert{}, SecurityAlert{}, SecurityAlert{},
		SecurityAlert{Signal: "failures_per_account", ClientID: clientID, Subject: subject, Count: failuresPerAccountAlert})
	for i, k := range keys {
		if s.countToward(k) && signals[i].Signal != "" {
			a := signals[i]
			a.Kind, a.Tenant, a.Window = AlertCredentialStuffing, tenant, time.Minute
			s.raise(a)
		}
	}
}

// peek reports whether key has a token, without taking it.
func (l *keyedLimiter) peek(key string, now time.Time) (bool, time.Duration) {
	if l.keys.Load() == 0 {
		return true, 0 // no bucket at all (the usual case of the failure budgets)
	}
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

// Password checks are the expensive part of a sign-in (argon2id: tens of
// milliseconds of CPU and 19 MiB each), so a stuffing attack spread over
// many sources, each under its failure budgets, can still take every core
// and starve everything else, real users' sign-ins included. A node runs
// at most GOMAXPROCS/2 password checks at once (at least one). A source
// with a failure in the last minute (cluster-wide, rlFailRecent) only gets
// a free slot and is otherwise told to wait ("Too many attempts"); a
// source without one queues for a slot (up to hashWait), ahead of the
// failing ones: the attack cannot crowd out the users who know their
// passwords.
const (
	hashWait     = 5 * time.Second
	rlFailRecent = "fz"
)

var errHashBusy = errors.New("too many password checks in progress")

// acquireHash takes a password-check slot for the request's source.
func (s *Server) acquireHash(ctx context.Context) (release func(), ok bool) {
	release = func() { <-s.hashSem }
	select {
	case s.hashSem <- struct{}{}:
		return release, true
	default:
	}
	ip := ctxClientIP(ctx)
	if s.rl != nil && ip != "" {
		if clean, _ := s.rl.limiter(rlFailRecent, 1).peek(ipKey(ip), s.cfg.Now()); !clean {
			return nil, false
		}
	}
	t := time.NewTimer(hashWait)
	defer t.Stop()
	select {
	case s.hashSem <- struct{}{}:
		return release, true
	case <-ctx.Done():
	case <-t.C:
	}
	return nil, false
}
