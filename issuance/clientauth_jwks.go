package issuance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// FetchPolicy governs how the server fetches a client's jwks_uri and a
// federated issuer's discovery document and JWKS (SSRF guards and limits).
type FetchPolicy struct {
	// AllowHTTP permits http:// URLs (dev only); otherwise https only.
	AllowHTTP bool
	// AllowPrivate permits connecting to loopback, private, link-local,
	// CGNAT, unique-local and unspecified addresses. The check is on the
	// address actually dialled, after DNS, so a public name that resolves
	// to a private address is refused too. Redirects are never followed.
	AllowPrivate bool
	// Timeout bounds one fetch (connect to last byte); default 5s.
	Timeout time.Duration
	// MaxBytes bounds a response body; default 64 KiB.
	MaxBytes int64
	// MinRefetch is the least time between two fetches of one URL when a
	// kid is unknown; default 30s. MinCache and MaxCache clamp the
	// Cache-Control max-age (default 1m and 24h; 5m when absent).
	MinRefetch time.Duration
	MinCache   time.Duration
	MaxCache   time.Duration
	// RootCAs verifies https servers; nil: the system roots.
	RootCAs *x509.CertPool
}

func (p FetchPolicy) withDefaults() FetchPolicy {
	if p.Timeout <= 0 {
		p.Timeout = 5 * time.Second
	}
	if p.MaxBytes <= 0 {
		p.MaxBytes = 64 << 10
	}
	if p.MinRefetch <= 0 {
		p.MinRefetch = 30 * time.Second
	}
	if p.MinCache <= 0 {
		p.MinCache = time.Minute
	}
	if p.MaxCache <= 0 {
		p.MaxCache = 24 * time.Hour
	}
	return p
}

// fetchError is a failure to obtain a key set; it is reported as
// invalid_client (the client's registration is what fails).
type fetchError struct{ err error }

func (e *fetchError) Error() string { return e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

var (
	errFetchPrivate  = errors.New("address is not public")
	errFetchRedirect = errors.New("redirects are not followed")
	errFetchTooLarge = errors.New("response too large")
	errFetchScheme   = errors.New("URL must be https")
)

// publicAddr reports whether a is an address a fetch may connect to
// without AllowPrivate.
func publicAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsMulticast() || a.IsUnspecified() || a.IsInterfaceLocalMulticast() {
		return false
	}
	for _, p := range blockedPrefixes {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

var blockedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // CGNAT
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"), // NAT64 can reach private IPv4
	netip.MustParsePrefix("2001:db8::/32"),
}

type jwksEntry struct {
	mu      sync.Mutex
	set     *jose.JSONWebKeySet
	jwksURI string // discovery entries: the issuer's jwks_uri
	expires time.Time
	fetched time.Time
	err     error
}

// fetcher fetches and caches key sets by URL.
type fetcher struct {
	pol    FetchPolicy
	client *http.Client
	mu     sync.Mutex
	m      map[string]*jwksEntry
}

func newFetcher(pol FetchPolicy) *fetcher {
	pol = pol.withDefaults()
	d := &net.Dialer{Timeout: pol.Timeout}
	if !pol.AllowPrivate {
		d.Control = func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil || !publicAddr(ap.Addr()) {
				return errFetchPrivate
			}
			return nil
		}
	}
	tr := &http.Transport{
		Proxy:                 nil, // never via an environment proxy: the dial check must see the real peer
		DialContext:           d.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pol.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   pol.Timeout,
		ResponseHeaderTimeout: pol.Timeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       time.Minute,
	}
	return &fetcher{pol: pol, m: make(map[string]*jwksEntry), client: &http.Client{
		Transport:     tr,
		Timeout:       pol.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return errFetchRedirect },
	}}
}

func (f *fetcher) entry(key string) *jwksEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.m[key]
	if e == nil {
		if len(f.m) > 10000 {
			f.m = make(map[string]*jwksEntry)
		}
		e = &jwksEntry{}
		f.m[key] = e
	}
	return e
}

// get fetches uri (bounded by the policy) and returns the body and its
// cache lifetime.
func (f *fetcher) get(ctx context.Context, uri string) ([]byte, time.Duration, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Host == "" || u.User != nil {
		return nil, 0, &fetchError{fmt.Errorf("bad URL")}
	}
	if u.Scheme != "https" && !(f.pol.AllowHTTP && u.Scheme == "http") {
		return nil, 0, &fetchError{errFetchScheme}
	}
	ctx, cancel := context.WithTimeout(ctx, f.pol.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, &fetchError{err}
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, 0, &fetchError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, &fetchError{fmt.Errorf("status %d", resp.StatusCode)}
	}
	if resp.ContentLength > f.pol.MaxBytes {
		return nil, 0, &fetchError{errFetchTooLarge}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.pol.MaxBytes+1))
	if err != nil {
		return nil, 0, &fetchError{err}
	}
	if int64(len(body)) > f.pol.MaxBytes {
		return nil, 0, &fetchError{errFetchTooLarge}
	}
	return body, f.maxAge(resp.Header.Get("Cache-Control")), nil
}

// maxAge is the cache lifetime a Cache-Control header asks for, clamped.
func (f *fetcher) maxAge(cc string) time.Duration {
	d := 5 * time.Minute
	for part := range strings.SplitSeq(cc, ",") {
		part = strings.TrimSpace(strings.ToLower(part))
		if part == "no-store" || part == "no-cache" {
			d = 0
		}
		if v, ok := strings.CutPrefix(part, "max-age="); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 && n < 1<<31 {
				d = time.Duration(n) * time.Second
			}
		}
	}
	return min(max(d, f.pol.MinCache), f.pol.MaxCache)
}

// jwks returns the key set at uri: from the cache while it is fresh and,
// when kid is given, holds kid; else fetched again — but an unknown kid
// refetches at most once per MinRefetch, so a stream of made-up kids costs
// no more than that.
func (f *fetcher) jwks(ctx context.Context, uri, kid string, refetch bool, now time.Time) (*jose.JSONWebKeySet, error) {
	if uri == "" {
		return nil, &fetchError{errors.New("no keys registered")}
	}
	e := f.entry("jwks " + uri)
	e.mu.Lock()
	defer e.mu.Unlock()
	fresh := e.set != nil && now.Before(e.expires)
	if fresh && (kid == "" || !refetch || len(e.set.Key(kid)) > 0) {
		return e.set, nil
	}
	if !e.fetched.IsZero() && now.Sub(e.fetched) < f.pol.MinRefetch && (e.set != nil || e.err != nil) {
		if e.set != nil {
			return e.set, nil
		}
		return nil, e.err
	}
	body, ttl, err := f.get(ctx, uri)
	e.fetched = now
	if err != nil {
		e.err = err
		if fresh {
			return e.set, nil
		}
		return nil, err
	}
	set, perr := ParseClientJWKS(body)
	if perr != nil {
		e.err = &fetchError{perr}
		return nil, e.err
	}
	e.set, e.expires, e.err = set, now.Add(ttl), nil
	return set, nil
}

// discoveredJWKSURI returns the jwks_uri of issuer's OpenID discovery
// document (whose issuer must be issuer), cached like a key set.
func (f *fetcher) discoveredJWKSURI(ctx context.Context, issuer string, now time.Time) (string, error) {
	e := f.entry("disc " + issuer)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.jwksURI != "" && now.Before(e.expires) {
		return e.jwksURI, nil
	}
	if !e.fetched.IsZero() && now.Sub(e.fetched) < f.pol.MinRefetch {
		if e.jwksURI != "" {
			return e.jwksURI, nil
		}
		return "", e.err
	}
	e.fetched = now
	body, ttl, err := f.get(ctx, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		e.err = err
		return "", err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || doc.Issuer != issuer || doc.JWKSURI == "" {
		e.err = &fetchError{errors.New("discovery document malformed or of another issuer")}
		return "", e.err
	}
	e.jwksURI, e.expires, e.err = doc.JWKSURI, now.Add(ttl), nil
	return doc.JWKSURI, nil
}
