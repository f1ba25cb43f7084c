package issuance

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Rate limits on the public endpoints (issue 13).
//
// Every request under /t/{tenant}/ takes one token from each of these
// buckets, most specific first, and stops at the first empty one (so a
// refused request does not drain the broader budgets):
//
//	username  tenant + username + source subnet, for sign-in posts
//	client    tenant + client id, for a client the tenant knows (a public
//	          client, which anyone may name: + source subnet)
//	unknown   client IP, for requests naming a client the tenant does not know
//	ip        client IP (IPv4 address, IPv6 /64)
//	subnet    IPv4 /24, IPv6 /48
//	tenant    tenant
//
// An attack through one client or on one account empties that client's or
// account's bucket and stops there: the other clients and users behind the
// same address (an egress NAT) keep the IP budget, which is sized for many
// of them. Guessing client ids meets the small "unknown" budget of its
// address. A refusal is 429 with Retry-After; the device grant's poll gets
// its own error, slow_down (RFC 8628 §3.5), with the same status and header.
//
// The client IP is the connection's peer unless the peer is a trusted proxy
// (RateLimits.TrustedProxies): then it is the right-most X-Forwarded-For
// address that is not itself a trusted proxy. X-Forwarded-For from any
// other peer is ignored.
//
// Cluster-wide budgets: each node enforces the budgets in memory and, when
// Server.SetRateShare is wired (the node shares over its embedded NATS),
// publishes what it let through every RateShareInterval and takes what the
// other nodes let through out of its own buckets. A client spreading its
// requests over N nodes therefore meets its limit within one interval: the
// overshoot is at most (N-1) × rate × RateShareInterval plus the other
// nodes' bursts.

// RateLimits are budgets in requests per minute; the burst is a tenth of a
// minute's worth. Zero fields take DefaultRateLimits; negative ones turn
// that bucket off.
type RateLimits struct {
	PerClient        int
	PerUnknownClient int
	PerUsername      int
	PerIP            int
	PerSubnet        int
	PerTenant        int
	// Alert thresholds per minute and tenant (alerts.go): failed sign-ins
	// and client authentications, introspections of non-tokens per
	// client, device user codes matching nothing.
	AlertFailures         int
	AlertIntrospectMisses int
	AlertUserCodeMisses   int
	// AlertTravelWindow is a tenant's impossible-travel window
	// (refresh_impossible_travel, issue 13), read by the node when it
	// proposes a refresh rotation (node/grants.go), not by this package:
	// meaningful in Tenants only, where 0 takes the node's
	// --alert-travel-window (node.Config.AlertTravelWindow) and a negative
	// value turns the detection off for the tenant. Like the other
	// thresholds it is node configuration, not replicated: give every
	// node the same value.
	AlertTravelWindow time.Duration
	// Off turns the guard off entirely.
	Off bool
	// TrustedProxies are the peers whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// Tenants overrides the budgets of some tenants (Off and
	// TrustedProxies of an override are ignored).
	Tenants map[string]RateLimits
}

// DefaultRateLimits are sized for an egress NAT in front of many busy
// services: 2000 requests a second per address, 1000 per client, 20000 per
// tenant, 30 sign-in posts a minute per account, one request a second per
// address naming unknown clients.
func DefaultRateLimits() RateLimits {
	return RateLimits{PerClient: 60000, PerUnknownClient: 60, PerUsername: 30, PerIP: 120000, PerSubnet: 600000, PerTenant: 1200000,
		AlertFailures: DefaultAlertFailures, AlertIntrospectMisses: DefaultAlertIntrospectMisses, AlertUserCodeMisses: DefaultAlertUserCodeMisses}
}

func (l RateLimits) withDefaults() RateLimits {
	d := DefaultRateLimits()
	for _, f := range []struct{ v, def *int }{
		{&l.PerClient, &d.PerClient}, {&l.PerUnknownClient, &d.PerUnknownClient}, {&l.PerUsername, &d.PerUsername},
		{&l.PerIP, &d.PerIP}, {&l.PerSubnet, &d.PerSubnet}, {&l.PerTenant, &d.PerTenant},
		{&l.AlertFailures, &d.AlertFailures}, {&l.AlertIntrospectMisses, &d.AlertIntrospectMisses}, {&l.AlertUserCodeMisses, &d.AlertUserCodeMisses},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return l
}

// RateShareInterval is how often a node publishes what it let through.
const RateShareInterval = 200 * time.Millisecond

// bucket kinds, the first element of a shared key.
const (
	rlClient   = "c"
	rlUnknown  = "u"
	rlUsername = "n"
	rlIP       = "i"
	rlSubnet   = "s"
	rlTenant   = "t"
)

// rateGuard holds the buckets of one node.
type rateGuard struct {
	cfg     RateLimits
	proxies []netip.Prefix
	mu      sync.Mutex
	// sets is read without the lock on every request and replaced (a
	// copy with the new limiter) under it: limiters are made rarely.
	sets atomic.Pointer[map[limiterName]*keyedLimiter]
	// buckets are the request budgets of tenants without an override
	// (defaults) and of those with one (tenants), made once.
	defaults *tenantBuckets
	tenants  map[string]*tenantBuckets
	// failAccount and failSource are the failure budgets every client
	// authentication and sign-in checks (stuffing.go failureGate).
	failAccount, failSource *keyedLimiter
	// share publishes what the buckets counted (keyedBucket.shared);
	// sharing mirrors share != nil for the request path.
	share   func(map[string]int)
	sharing atomic.Bool
	// absorbed counts the requests other nodes reported (AbsorbRates),
	// published those this node reported to them (flush).
	absorbed, published atomic.Int64
}

// tenantBuckets are the limiters of one set of budgets (RateLimits), in
// the order a request takes them; nil where that budget is off.
type tenantBuckets struct {
	lim                                         RateLimits
	username, client, unknown, ip, subnet, tent *keyedLimiter
}

func newRateGuard(cfg RateLimits) *rateGuard {
	g := &rateGuard{cfg: cfg.withDefaults(), proxies: cfg.TrustedProxies}
	g.sets.Store(&map[limiterName]*keyedLimiter{})
	g.defaults = g.bucketsOf(g.cfg)
	g.tenants = make(map[string]*tenantBuckets, len(cfg.Tenants))
	for t, l := range cfg.Tenants {
		g.tenants[t] = g.bucketsOf(l.withDefaults())
	}
	g.failAccount = g.limiter(rlFailAccount, failuresPerAccountSource)
	g.failSource = g.limiter(rlFailSource, failuresPerSource)
	return g
}

func (g *rateGuard) bucketsOf(l RateLimits) *tenantBuckets {
	get := func(kind string, perMinute int) *keyedLimiter {
		if perMinute <= 0 {
			return nil
		}
		return g.limiter(kind, perMinute)
	}
	return &tenantBuckets{lim: l, username: get(rlUsername, l.PerUsername), client: get(rlClient, l.PerClient),
		unknown: get(rlUnknown, l.PerUnknownClient), ip: get(rlIP, l.PerIP), subnet: get(rlSubnet, l.PerSubnet), tent: get(rlTenant, l.PerTenant)}
}

// buckets returns the request budgets of tenant.
func (g *rateGuard) buckets(tenant string) *tenantBuckets {
	if t, ok := g.tenants[tenant]; ok {
		return t
	}
	return g.defaults
}

// limits returns the budgets of tenant.
func (g *rateGuard) limits(tenant string) RateLimits {
	return g.buckets(tenant).lim
}

// limiterName names one of a guard's limiters: a kind of key and its
// budget per minute.
type limiterName struct {
	kind      string
	perMinute int
}

func (g *rateGuard) limiter(kind string, perMinute int) *keyedLimiter {
	name := limiterName{kind, perMinute}
	if l := (*g.sets.Load())[name]; l != nil {
		return l
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	sets := *g.sets.Load()
	if l := sets[name]; l != nil {
		return l
	}
	burst := max(perMinute/10, 1)
	if strings.HasPrefix(kind, "f") {
		burst = perMinute // failure budgets (stuffing.go): a minute's worth at once
	}
	l := newKeyedLimiter(perMinute, burst, maxLimiterKeys)
	l.kind, l.perMinute = kind, perMinute
	next := make(map[limiterName]*keyedLimiter, len(sets)+1)
	maps.Copy(next, sets)
	next[name] = l
	g.sets.Store(&next)
	return l
}

// rlKey is one bucket a request takes a token from.
type rlKey struct {
	kind      string
	perMinute int
	key       string
}

// bucketTake is one token a request takes: from key's bucket of l.
type bucketTake struct {
	l   *keyedLimiter
	key string
}

// take takes one token from each bucket in order; on the first refusal it
// returns the wait and the kind that refused. What it takes is shared with
// the other nodes (at the next flush) when sharing is on.
func (g *rateGuard) take(takes []bucketTake, now time.Time) (bool, time.Duration, string) {
	count := g.sharing.Load()
	for _, t := range takes {
		if t.l == nil || t.key == "" {
			continue
		}
		if ok, d := t.l.allowCounted(t.key, now, count); !ok {
			return false, d, t.l.kind
		}
	}
	return true, 0, ""
}

// flush hands what the buckets counted since the last flush to the share.
func (g *rateGuard) flush() {
	g.mu.Lock()
	share := g.share
	g.mu.Unlock()
	if share == nil {
		return
	}
	p := map[string]int{}
	for _, l := range *g.sets.Load() {
		l.takeCounted(func(key string, n int) {
			p[sharedKey(l.kind, l.perMinute, key)] += n
		})
	}
	if len(p) > 0 {
		share(p)
		var n int64
		for _, c := range p {
			n += int64(c)
		}
		g.published.Add(n)
	}
}

// sharedKey names a bucket on the share: kind|perMinute|key.
func sharedKey(kind string, perMinute int, key string) string {
	return kind + "|" + strconv.Itoa(perMinute) + "|" + key
}

// absorb takes what other nodes let through out of this node's buckets.
func (g *rateGuard) absorb(counts map[string]int, now time.Time) {
	for k, n := range counts {
		parts := strings.SplitN(k, "|", 3)
		if len(parts) != 3 || n <= 0 {
			continue
		}
		per, err := strconv.Atoi(parts[1])
		if err != nil || per <= 0 || per > 1e9 {
			continue // not a budget this guard would make
		}
		g.limiter(parts[0], per).consume(parts[2], n, now, false)
		g.absorbed.Add(int64(n))
	}
}

// RatesAbsorbed is how many requests other nodes reported to this node's
// rate limiter so far.
func (s *Server) RatesAbsorbed() int64 {
	if s.rl == nil {
		return 0
	}
	return s.rl.absorbed.Load()
}

// consume takes n tokens for key, going into debt (a later request waits
// for the refill) rather than refusing; with count, they are also kept for
// the next share flush.
func (l *keyedLimiter) consume(key string, n int, now time.Time, count bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		if len(l.m) >= l.max {
			return
		}
		b = l.add(key)
	}
	b.seen = now
	b.lim.ReserveN(now, min(n, l.burst))
	if count {
		l.countShared(b, n)
	}
}

// SetRateShare wires cluster-wide budgets: publish is called every
// RateShareInterval with the counts this node let through (opaque keys),
// and the node passes the counts other nodes published to AbsorbRates. It
// runs until ctx ends.
func (s *Server) SetRateShare(ctx context.Context, publish func(map[string]int)) {
	if s.rl == nil {
		return
	}
	s.rl.mu.Lock()
	s.rl.share = publish
	s.rl.sharing.Store(publish != nil)
	s.rl.mu.Unlock()
	go func() {
		t := time.NewTicker(RateShareInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				// Nothing flushes any more: stop counting for it.
				s.rl.sharing.Store(false)
				return
			case <-t.C:
				s.rl.flush()
			}
		}
	}()
}

// AbsorbRates takes counts another node let through out of this node's
// budgets.
func (s *Server) AbsorbRates(counts map[string]int) {
	if s.rl != nil {
		s.rl.absorb(counts, s.cfg.Now())
	}
}

type clientIPKey struct{}

// guardInfo is what the guard learned of a request's source, kept in its
// context under clientIPKey.
type guardInfo struct {
	ip     string // the client address (realIP)
	ipKey  string // ipKey(ip)
	subnet string // subnetKey(ip)
}

func newGuardInfo(ip string) *guardInfo {
	return &guardInfo{ip: ip, ipKey: ipKey(ip), subnet: subnetKey(ip)}
}

// ctxGuardInfo is the guardInfo in ctx, nil when the guard is off.
func ctxGuardInfo(ctx context.Context) *guardInfo {
	gi, _ := ctx.Value(clientIPKey{}).(*guardInfo)
	return gi
}

// realIP is the client address of r: the peer, or for a trusted proxy
// peer the right-most untrusted X-Forwarded-For address.
func (g *rateGuard) realIP(r *http.Request) string {
	peer := peerIP(r)
	if len(g.proxies) == 0 {
		return peer
	}
	a, err := netip.ParseAddr(peer)
	if err != nil || !g.trusted(a) {
		return peer
	}
	hops := r.Header.Values("X-Forwarded-For")
	var list []string
	for _, h := range hops {
		for _, p := range strings.Split(h, ",") {
			list = append(list, strings.TrimSpace(p))
		}
	}
	for i := len(list) - 1; i >= 0; i-- {
		h, err := netip.ParseAddr(list[i])
		if err != nil {
			return peer // a malformed hop: believe no one beyond it
		}
		h = h.Unmap()
		if !g.trusted(h) {
			return h.String()
		}
	}
	return peer
}

func (g *rateGuard) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range g.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func peerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return strings.TrimSpace(host)
}

// familyNetwork is the IPv4 /24 or IPv6 /64 of ip, the network a refresh
// family records on each rotation (Rotation.Network); "" for no address.
func familyNetwork(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ""
	}
	a = a.Unmap()
	bits := 24
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p.String()
}

// subnetKey is the IPv4 /24 or IPv6 /48 of ip.
func subnetKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is4() {
		// The /24 as netip.Prefix.String writes it, in one allocation.
		var buf [len("255.255.255.0/24")]byte
		b := a.As4()
		out := strconv.AppendUint(buf[:0], uint64(b[0]), 10)
		out = append(out, '.')
		out = strconv.AppendUint(out, uint64(b[1]), 10)
		out = append(out, '.')
		out = strconv.AppendUint(out, uint64(b[2]), 10)
		out = append(out, ".0/24"...)
		return string(out)
	}
	p, _ := a.Prefix(48)
	return p.String()
}

// guard wraps the issuance handler with the cross-site form check and the
// rate limits.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.sameOriginForm(r) {
			s.log.Info("issuance: cross-site form post refused", "path", r.URL.Path, "origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
			s.writeError(w, r, newError(CodeInvalidRequest, http.StatusForbidden, "cross-site form post", nil))
			return
		}
		if s.rl == nil {
			next.ServeHTTP(w, r)
			return
		}
		gi := newGuardInfo(s.rl.realIP(r))
		ip := gi.ip
		r = r.WithContext(context.WithValue(r.Context(), clientIPKey{}, gi))
		tenant, ok := tenantOfPath(r.URL.Path)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		tb := s.rl.buckets(tenant)
		clientID, username := s.requestParties(r)
		ipk, subnet := gi.ipKey, gi.subnet
		takes := make([]bucketTake, 0, 5)
		if username != "" && tb.username != nil {
			// Per account and source network: a distributed attack on
			// one account cannot lock its owner out from their own
			// network (each attacking source meets its own budget). It
			// comes first: a sign-in refused here takes nothing from the
			// client's budget, which the account's other users share.
			takes = append(takes, bucketTake{tb.username, tenant + "\x00" + strings.ToLower(username) + "\x00" + subnet})
		}
		if clientID != "" && (tb.client != nil || tb.unknown != nil) {
			if public, err := s.clientPublic(r.Context(), tenant, clientID); err == nil {
				if tb.client != nil {
					key := tenant + "\x00" + clientID
					if public {
						// Anyone may name a public client (no secret):
						// its budget is per source network, so that a
						// flood of its sign-in pages from one network
						// does not lock out the app's users elsewhere.
						key += "\x00" + subnet
					}
					takes = append(takes, bucketTake{tb.client, key})
				}
			} else {
				takes = append(takes, bucketTake{tb.unknown, ipk})
			}
		}
		takes = append(takes, bucketTake{tb.ip, ipk}, bucketTake{tb.subnet, subnet}, bucketTake{tb.tent, tenant})
		if ok, wait, kind := s.rl.take(takes, s.cfg.Now()); !ok {
			s.log.Debug("issuance: rate limited", "bucket", kind, "tenant", tenant, "path", r.URL.Path)
			s.rateLimited(tenant, kind, clientID, ip)
			s.metrics.rateLimited(r.Context(), kind)
			e := newError("rate_limited", http.StatusTooManyRequests, "too many requests, retry later", &RateLimited{RetryAfter: wait})
			if s.requestGrant(r) == GrantDeviceCode {
				e = errRateLimited(wait)
			}
			s.writeError(w, r, e)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ClientPublicity is an optional cheaper way for a State to say whether a
// client exists and is public (the guard asks it on every request that
// names a client); without it the guard reads the whole Client.
type ClientPublicity interface {
	ClientPublic(ctx context.Context, tenant, id string) (bool, error)
}

// clientPublic reports whether tenant's client id is public; ErrNotFound
// (or another error) when the tenant does not know it.
func (s *Server) clientPublic(ctx context.Context, tenant, id string) (bool, error) {
	if p, ok := s.st.(ClientPublicity); ok {
		return p.ClientPublic(ctx, tenant, id)
	}
	c, err := s.st.Client(ctx, tenant, id)
	return c.Public, err
}

// sameOriginForm reports whether a browser form post to the sign-in,
// consent or device pages comes from this server's own pages: a
// Sec-Fetch-Site of cross-site, or an Origin other than the issuer's, is
// refused (issue 13; the CSRF cookie remains the first defence). Requests
// without either header (non-browser clients) pass.
func (s *Server) sameOriginForm(r *http.Request) bool {
	if r.Method != http.MethodPost || !signInPath(r.URL.Path) {
		return true
	}
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" || origin == "null" {
		return true
	}
	base, err := url.Parse(s.cfg.BaseURL)
	o, err2 := url.Parse(origin)
	if err != nil || err2 != nil {
		return false
	}
	return strings.EqualFold(o.Scheme, base.Scheme) && strings.EqualFold(o.Host, base.Host)
}

// tenantOfPath returns the tenant of a /t/{tenant}/... path.
func tenantOfPath(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, "/t/")
	if !ok {
		return "", false
	}
	t, _, _ := strings.Cut(rest, "/")
	if t == "" || len(t) > 63 {
		return "", false
	}
	return t, true
}

// requestParties reads the client id (Basic credentials, or client_id of
// the query or form body) and the username of a sign-in post. The form
// body is read ahead (within MaxBodyBytes, and put back) only where it
// may name one of them: no client id was found before it, or the path is
// a sign-in page.
func (s *Server) requestParties(r *http.Request) (clientID, username string) {
	if h := r.Header.Get("Authorization"); h != "" {
		clientID = basicClientID(h)
	}
	if clientID == "" && r.URL.RawQuery != "" {
		clientID = r.URL.Query().Get("client_id")
	}
	signIn := signInPath(r.URL.Path)
	if clientID != "" && !signIn {
		return clientID, ""
	}
	body, ok := s.formBody(r)
	if !ok {
		return clientID, ""
	}
	formID, user, _, ok := partiesOfForm(string(body))
	if !ok {
		return clientID, ""
	}
	if clientID == "" {
		clientID = formID
	}
	if signIn {
		username = user
	}
	return clientID, username
}

// requestGrant is the grant_type of a form post ("" for none).
func (s *Server) requestGrant(r *http.Request) string {
	body, ok := s.formBody(r)
	if !ok {
		return ""
	}
	_, _, grant, ok := partiesOfForm(string(body))
	if !ok {
		return ""
	}
	return grant
}

// signInPath reports whether p is a page that takes sign-in posts (a
// username and password form).
func signInPath(p string) bool {
	return strings.HasSuffix(p, "/oauth2/authorize") || strings.HasSuffix(p, "/device")
}

// formBody reads the body of a form post ahead, within MaxBodyBytes, and
// puts it back for the handler (a replayBody, which readForm takes without
// copying); ok is false for no form body, or one too long or unreadable.
func (s *Server) formBody(r *http.Request) (body []byte, ok bool) {
	if r.Method != http.MethodPost || r.Body == nil || r.Body == http.NoBody {
		return nil, false
	}
	if rb, read := r.Body.(*replayBody); read && rb.off == 0 {
		return rb.b, rb.err == nil && int64(len(rb.b)) <= s.cfg.MaxBodyBytes
	}
	// The media type, as mime.ParseMediaType would name it, without
	// parsing the parameters (readForm checks the header in full).
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	if !strings.EqualFold(strings.TrimSpace(ct), formMediaType) {
		return nil, false
	}
	body, err := readUpTo(r.Body, s.cfg.MaxBodyBytes+1)
	r.Body.Close()
	r.Body = &replayBody{b: body, err: err}
	return body, err == nil && int64(len(body)) <= s.cfg.MaxBodyBytes
}

// basicClientID is the client id of HTTP Basic credentials (RFC 6749
// §2.3.1: form-urlencoded, then base64), "" when header holds none. Only
// the part before the colon is decoded, four characters at a time, so the
// secret is never copied; a malformed header may still name an id here
// (the handler's parseBasic refuses it).
func basicClientID(header string) string {
	scheme, payload, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return ""
	}
	payload = strings.TrimLeft(payload, " ")
	if strings.IndexByte(payload, '\n') >= 0 || strings.IndexByte(payload, '\r') >= 0 {
		// base64.StdEncoding skips line breaks anywhere: decode it all.
		raw, err := base64.StdEncoding.DecodeString(payload)
		enc, _, ok := strings.Cut(string(raw), ":")
		if err != nil || !ok || len(enc) > maxCredentialLen {
			return ""
		}
		return unescapeID([]byte(enc))
	}
	// Decode 64 characters (48 bytes) at a time until the colon: one
	// chunk holds most ids, and what follows the colon is never kept.
	var id [maxCredentialLen]byte
	n := 0
	for len(payload) >= 4 {
		var src [64]byte
		var dst [48]byte
		k := copy(src[:], payload[:min(len(payload), len(src))&^3])
		payload = payload[k:]
		m, err := base64.StdEncoding.Decode(dst[:], src[:k])
		if err != nil {
			return ""
		}
		colon := bytes.IndexByte(dst[:m], ':')
		end := m
		if colon >= 0 {
			end = colon
		}
		if n+end > len(id) {
			return ""
		}
		n += copy(id[n:], dst[:end])
		clear(dst[:])
		if colon >= 0 {
			return unescapeID(id[:n])
		}
	}
	return ""
}

func unescapeID(b []byte) string {
	if bytes.IndexByte(b, '%') < 0 && bytes.IndexByte(b, '+') < 0 {
		return string(b)
	}
	v, err := url.QueryUnescape(string(b))
	if err != nil {
		return ""
	}
	return v
}

// readUpTo reads body until EOF or limit bytes, as
// io.ReadAll(io.LimitReader(body, limit)) would.
func readUpTo(body io.Reader, limit int64) ([]byte, error) {
	b := make([]byte, 0, min(limit, 512))
	for int64(len(b)) < limit {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		end := min(int64(cap(b)), limit)
		n, err := body.Read(b[len(b):end])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
	return b, nil
}

// partiesOfForm returns the first client_id, username and grant_type of a
// form body, as url.ParseQuery and Get would, without building the whole
// map (the limiter reads every request's body before the handler parses
// it again); ok is false where url.ParseQuery would fail.
func partiesOfForm(body string) (clientID, username, grant string, ok bool) {
	var seen [3]bool
	for body != "" {
		var pair string
		pair, body, _ = strings.Cut(body, "&")
		if strings.Contains(pair, ";") {
			return "", "", "", false
		}
		if pair == "" {
			continue
		}
		key, value, _ := strings.Cut(pair, "=")
		if strings.ContainsAny(key, "%+") {
			k, err := url.QueryUnescape(key)
			if err != nil {
				return "", "", "", false
			}
			key = k
		}
		var i int
		switch key {
		case "client_id":
			i = 0
		case "username":
			i = 1
		case "grant_type":
			i = 2
		default:
			if strings.Contains(value, "%") {
				if _, err := url.QueryUnescape(value); err != nil {
					return "", "", "", false
				}
			}
			continue
		}
		v, err := url.QueryUnescape(value)
		if err != nil {
			return "", "", "", false
		}
		if seen[i] {
			continue
		}
		seen[i] = true
		switch i {
		case 0:
			clientID = v
		case 1:
			username = v
		case 2:
			grant = v
		}
	}
	return clientID, username, grant, true
}

// replayBody is a request body the guard read ahead (within
// MaxBodyBytes+1): it replays the bytes, then the read error (nil: EOF).
// readForm takes the bytes as they are instead of reading them again.
type replayBody struct {
	b   []byte
	off int
	err error
}

func (r *replayBody) Read(p []byte) (int, error) {
	if r.off < len(r.b) {
		n := copy(p, r.b[r.off:])
		r.off += n
		return n, nil
	}
	if r.err != nil {
		return 0, r.err
	}
	return 0, io.EOF
}

func (r *replayBody) Close() error { return nil }

// readAllLimited reads body up to limit bytes, as
// io.ReadAll(io.LimitReader(body, limit)) does, taking the bytes of a
// replayBody nobody has read yet without copying them.
func readAllLimited(body io.Reader, limit int64) ([]byte, error) {
	if rb, ok := body.(*replayBody); ok && rb.off == 0 && rb.err == nil && int64(len(rb.b)) <= limit {
		rb.off = len(rb.b)
		return rb.b, nil
	}
	return readUpTo(body, limit)
}
