package issuance

import (
	"context"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Anonymous device traffic (RFC 8628 §5.2 "Device Code Brute Forcing",
// §3.5 polling).
//
// The device authorization endpoint takes public clients by client_id
// alone and every request stores a device code (a Raft write), so it is
// rate limited per client IP and per client. Device polls are answered
// from the local replica when they can be: a poll for an unknown, expired,
// denied or already redeemed code, a poll that is too early, and a poll of
// a code the user has not approved yet change nothing in the cluster and
// write nothing. Only a poll of an approved code proposes a command (it
// redeems the code once, cluster-wide). Polls are also limited per IP and
// per client; over the limit a known device code gets slow_down, anything
// else 429 with Retry-After.
//
// Pacing (RFC 8628 §3.5). "interval" is the minimum time between polls,
// and on slow_down "the interval MUST be increased by 5 seconds for this
// and all subsequent requests". The node answering a poll keeps, in
// memory, the time of the last poll of each device code it answered and
// the interval it holds that code's client to. With I0 the advertised
// interval, I the held interval (I0 at first), gap the time since the
// previous poll and j the jitter allowance (a quarter of I0, at most 1 s):
//
//   - gap < I0 - j: the client polls faster than it was ever told to:
//     slow_down, and I grows by 5 s (up to I0 + maxSlowDownGrowth).
//   - I0 - j <= gap < I - j: slow_down, I unchanged. The client polls at
//     or above the advertised interval but has not caught up with I yet;
//     a compliant client adds 5 s now and catches up.
//   - gap >= I - j: answered (pending, denied, tokens).
//
// I grows only on polls faster than the advertised interval, so a client
// that starts at I0 and adds 5 s per slow_down it receives (x/oauth2's
// DeviceAccessToken) reaches I after finitely many slow_downs, whatever
// happened before, and then is answered at every poll. Growing I on every
// slow_down (as the FSM did) keeps a client that missed one slow_down 5 s
// behind for ever.
//
// The pacing state is per node. A client that spreads its polls over n
// nodes is held to the interval per node, so it may poll up to n times as
// often as the interval says; those extra polls are local reads (no Raft
// write, no quorum), still limited per IP and per client, and they cannot
// redeem a code twice or early: redemption is one command, applied once,
// and only for a code the user approved. The device code itself is 256
// random bits, so polling faster gives no guessing advantage.

// maxSlowDownGrowth bounds how far too-fast polls may push a device code's
// held interval past the advertised one (12 slow_downs).
const maxSlowDownGrowth = time.Minute

// slowDownStep is RFC 8628 §3.5's "increased by 5 seconds".
const slowDownStep = 5 * time.Second

// pollJitter is how much sooner than the interval a poll may arrive and
// still be on time: a quarter of the interval, at most 1 s. (The FSM uses
// the same rule for a poll that reaches it.)
func pollJitter(interval time.Duration) time.Duration { return min(interval/4, time.Second) }

// DeviceCodeReader is an optional capability of Users: a local read of a
// device code by the SHA-256 of the device code. When Users implements it,
// polls that change nothing are answered without a Grants write.
type DeviceCodeReader interface {
	// DeviceCodeByHash returns ErrNotFound for an unknown code.
	DeviceCodeByHash(ctx context.Context, tenant string, codeHash []byte) (DeviceCode, error)
}

// pace is one device code's polling state on this node.
type pace struct {
	last     time.Time
	interval time.Duration
	expires  time.Time
}

// devicePacer holds the pacing state of the device codes this node
// answered polls for, forgetting each when its code expires.
type devicePacer struct {
	mu        sync.Mutex
	m         map[string]*pace
	max       int
	lastPrune time.Time
}

func newDevicePacer(max int) *devicePacer {
	return &devicePacer{m: make(map[string]*pace), max: max}
}

// paceVerdict is what pacing decides for one poll.
type paceVerdict int

const (
	paceOnTime  paceVerdict = iota
	paceCatchUp             // slow_down, the held interval is unchanged
	paceTooFast             // slow_down, the held interval grew
)

// poll records a poll of the code key at now and judges it. base is the
// advertised interval, expires the code's expiry.
func (p *devicePacer) poll(key string, base time.Duration, expires, now time.Time) paceVerdict {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.m[key]
	if e == nil {
		if len(p.m) >= p.max || now.Sub(p.lastPrune) > time.Minute {
			p.prune(now)
		}
		if len(p.m) >= p.max {
			return paceOnTime // full of live codes: answer, unpaced (still rate limited)
		}
		p.m[key] = &pace{last: now, interval: base, expires: expires}
		return paceOnTime
	}
	gap := now.Sub(e.last)
	e.last = now
	j := pollJitter(base)
	switch {
	case gap < base-j:
		e.interval = min(e.interval+slowDownStep, base+maxSlowDownGrowth)
		return paceTooFast
	case gap < e.interval-j:
		return paceCatchUp
	}
	return paceOnTime
}

// forget drops a code's state (redeemed).
func (p *devicePacer) forget(key string) {
	p.mu.Lock()
	delete(p.m, key)
	p.mu.Unlock()
}

func (p *devicePacer) prune(now time.Time) {
	p.lastPrune = now
	for k, e := range p.m {
		if !now.Before(e.expires) {
			delete(p.m, k)
		}
	}
}

// keyedLimiter is a token bucket per key (client IP, client id) with
// bounded memory: a key idle long enough for its bucket to refill is
// forgotten (a new bucket for it is the same), and when max keys are
// busy, new keys are refused until some go idle.
type keyedLimiter struct {
	mu        sync.Mutex
	every     rate.Limit
	burst     int
	idle      time.Duration
	max       int
	m         map[string]*keyedBucket
	lastPrune time.Time
	// keys is len(m), readable without the lock (peek of an empty
	// limiter takes no lock).
	keys atomic.Int64
	// kind and perMinute name a rate guard's limiter (ratelimit.go);
	// counted are its buckets holding tokens taken since the last share
	// flush (keyedBucket.shared).
	kind      string
	perMinute int
	counted   []*keyedBucket
}

type keyedBucket struct {
	lim  *rate.Limiter
	seen time.Time
	// key and shared: the tokens taken here since the last share flush
	// (allowCounted), for the other nodes of the cluster.
	key    string
	shared int
}

func newKeyedLimiter(perMinute, burst, max int) *keyedLimiter {
	every := rate.Limit(float64(perMinute) / 60)
	idle := time.Duration(float64(burst) / float64(every) * float64(time.Second))
	return &keyedLimiter{every: every, burst: burst, idle: idle, max: max, m: make(map[string]*keyedBucket)}
}

// allow takes one token for key at now; when there is none it returns
// false and how long until there is.
func (l *keyedLimiter) allow(key string, now time.Time) (bool, time.Duration) {
	return l.allowCounted(key, now, false)
}

// allowCounted is allow that, with count, also keeps the token taken for
// the next share flush (takeCounted).
func (l *keyedLimiter) allowCounted(key string, now time.Time, count bool) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		if len(l.m) >= l.max || now.Sub(l.lastPrune) > l.idle {
			l.prune(now)
		}
		if len(l.m) >= l.max {
			return false, l.idle
		}
		b = l.add(key)
	}
	b.seen = now
	if b.lim.AllowN(now, 1) {
		// The common case, without a Reservation to allocate.
		if count {
			l.countShared(b, 1)
		}
		return true, 0
	}
	r := b.lim.ReserveN(now, 1)
	d := r.DelayFrom(now)
	r.CancelAt(now)
	return false, max(d, time.Nanosecond)
}

// countShared keeps n tokens taken from b for the next share flush; l.mu
// is held.
func (l *keyedLimiter) countShared(b *keyedBucket, n int) {
	if b.shared == 0 {
		l.counted = append(l.counted, b)
	}
	b.shared += n
}

// add makes key's bucket; l.mu is held.
func (l *keyedLimiter) add(key string) *keyedBucket {
	b := &keyedBucket{lim: rate.NewLimiter(l.every, l.burst), key: key}
	l.m[key] = b
	l.keys.Store(int64(len(l.m)))
	return b
}

// takeCounted hands out and resets the tokens taken with count since the
// last call, by key.
func (l *keyedLimiter) takeCounted(into func(key string, n int)) {
	l.mu.Lock()
	counted := l.counted
	l.counted = nil
	for _, b := range counted {
		into(b.key, b.shared)
		b.shared = 0
	}
	l.mu.Unlock()
}

func (l *keyedLimiter) prune(now time.Time) {
	l.lastPrune = now
	for k, b := range l.m {
		if now.Sub(b.seen) >= l.idle {
			delete(l.m, k)
		}
	}
	l.keys.Store(int64(len(l.m)))
}

// ipKey is the rate-limit key of a client address: the address itself for
// IPv4, its /64 for IPv6 (one host usually holds a whole /64).
func ipKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Is4() || a.Is4In6() {
		return ip
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// DeviceLimits bounds anonymous device traffic per client IP and per
// client, in requests per minute; the burst is a quarter of a minute's
// worth (at least 1).
type DeviceLimits struct {
	AuthorizationsPerIP     int
	AuthorizationsPerClient int
	PollsPerIP              int
	PollsPerClient          int
}

// DefaultDeviceLimits: a device polling every 5 s makes 12 polls a minute,
// so 120 per IP leaves room for ten devices behind one address; a public
// client (one app on many devices) gets a hundred times that.
func DefaultDeviceLimits() DeviceLimits {
	return DeviceLimits{AuthorizationsPerIP: 20, AuthorizationsPerClient: 600, PollsPerIP: 120, PollsPerClient: 12000}
}

// withDefaults fills fields that are not positive from DefaultDeviceLimits.
func (d DeviceLimits) withDefaults() DeviceLimits {
	def := DefaultDeviceLimits()
	for _, f := range []struct {
		v   *int
		def int
	}{
		{&d.AuthorizationsPerIP, def.AuthorizationsPerIP}, {&d.AuthorizationsPerClient, def.AuthorizationsPerClient},
		{&d.PollsPerIP, def.PollsPerIP}, {&d.PollsPerClient, def.PollsPerClient},
	} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
	return d
}

// deviceGuard is the per-node state that bounds device traffic.
type deviceGuard struct {
	authIP, authClient *keyedLimiter
	pollIP, pollClient *keyedLimiter
	pacer              *devicePacer
}

// maxLimiterKeys bounds each limiter's memory (about 100 bytes a key).
const maxLimiterKeys = 100_000

func newDeviceGuard(l DeviceLimits) *deviceGuard {
	burst := func(perMinute int) int { return max(perMinute/4, 1) }
	return &deviceGuard{
		authIP:     newKeyedLimiter(l.AuthorizationsPerIP, burst(l.AuthorizationsPerIP), maxLimiterKeys),
		authClient: newKeyedLimiter(l.AuthorizationsPerClient, burst(l.AuthorizationsPerClient), maxLimiterKeys),
		pollIP:     newKeyedLimiter(l.PollsPerIP, burst(l.PollsPerIP), maxLimiterKeys),
		pollClient: newKeyedLimiter(l.PollsPerClient, burst(l.PollsPerClient), maxLimiterKeys),
		pacer:      newDevicePacer(maxLimiterKeys),
	}
}

// allowBoth takes a token from both limiters (the IP's first); the wait is
// the longer one when either refuses.
func allowBoth(ipLim, clientLim *keyedLimiter, ip, client string, now time.Time) (bool, time.Duration) {
	if ok, d := ipLim.allow(ipKey(ip), now); !ok {
		return false, d
	}
	if ok, d := clientLim.allow(client, now); !ok {
		return false, d
	}
	return true, 0
}

// RateLimited is the Debug cause of a 429 answer; RetryAfter becomes the
// Retry-After header.
type RateLimited struct{ RetryAfter time.Duration }

func (e *RateLimited) Error() string { return "rate limited for " + e.RetryAfter.String() }

// retryAfterSeconds renders a wait as Retry-After seconds (at least 1).
func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}
