package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// FrontDoorConfig configures a FrontDoor.
type FrontDoorConfig struct {
	// Backends are the nodes' base URLs (http://host:port), each serving
	// the same issuer.
	Backends []string
	// CheckEvery is how often each backend's GET /readyz is asked
	// (default 500ms); CheckTimeout bounds one check (default 1s).
	CheckEvery   time.Duration
	CheckTimeout time.Duration
	// Transport carries proxied requests and health checks; nil means a
	// transport of its own.
	Transport http.RoundTripper
	// Logger receives backend state changes and proxy errors.
	Logger *slog.Logger
}

// FrontDoor is the "one issuer" front door of a cluster: a reverse proxy
// that spreads requests round-robin over the backends whose GET /readyz
// answers 200 (over all of them while none does, so that each node still
// answers for itself, e.g. temporarily_unavailable), and retries a request
// that failed to reach a backend once on another backend when that is
// safe: the method is idempotent, or the request never reached the
// backend (the dial failed, or its body was not read). Responses stream
// through unbuffered (Connect server streams). It sets X-Forwarded-For,
// -Host and -Proto from the connection it accepted, replacing any the
// client sent. It stands in, locally, for GeoDNS or a load balancer in
// front of regional nodes. Safe for concurrent use.
type FrontDoor struct {
	cfg      FrontDoorConfig
	log      *slog.Logger
	backends []*backend
	next     atomic.Uint64
	proxy    *httputil.ReverseProxy
	rt       http.RoundTripper
	checker  *http.Client
}

type backend struct {
	url     *url.URL
	healthy atomic.Bool
}

// NewFrontDoor checks cfg and builds a front door; Run keeps its view of
// the backends' health.
func NewFrontDoor(cfg FrontDoorConfig) (*FrontDoor, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("node: front door: at least one backend is required")
	}
	if cfg.CheckEvery <= 0 {
		cfg.CheckEvery = 500 * time.Millisecond
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &FrontDoor{cfg: cfg, log: cfg.Logger}
	seen := map[string]bool{}
	for _, b := range cfg.Backends {
		u, err := url.Parse(strings.TrimSuffix(b, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("node: front door: backend %q: want http(s)://host:port", b)
		}
		if seen[u.String()] {
			return nil, fmt.Errorf("node: front door: backend %q listed twice", b)
		}
		seen[u.String()] = true
		f.backends = append(f.backends, &backend{url: u})
	}
	f.rt = cfg.Transport
	if f.rt == nil {
		f.rt = &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: time.Minute,
		}
	}
	f.checker = &http.Client{Transport: f.rt, Timeout: cfg.CheckTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The backend is chosen per attempt (retrying transport); the
			// URL here only carries the path and query.
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "backend.invalid"
			pr.Out.Host = ""
			pr.SetXForwarded()
		},
		Transport:     &retryTransport{f: f},
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(f.log.Handler(), slog.LevelWarn),
		ErrorHandler:  f.unavailable,
	}
	return f, nil
}

// ServeHTTP proxies r to a backend.
func (f *FrontDoor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.proxy.ServeHTTP(w, r)
}

// Healthy lists the backends whose last health check passed.
func (f *FrontDoor) Healthy() []string {
	var out []string
	for _, b := range f.backends {
		if b.healthy.Load() {
			out = append(out, b.url.String())
		}
	}
	return out
}

// Run checks every backend's /readyz every CheckEvery until ctx ends.
func (f *FrontDoor) Run(ctx context.Context) {
	t := time.NewTicker(f.cfg.CheckEvery)
	defer t.Stop()
	for {
		f.checkAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckNow checks every backend once (Run does it periodically).
func (f *FrontDoor) CheckNow(ctx context.Context) { f.checkAll(ctx) }

func (f *FrontDoor) checkAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, b := range f.backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.setHealth(b, f.check(ctx, b))
		}()
	}
	wg.Wait()
}

func (f *FrontDoor) check(ctx context.Context, b *backend) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url.String()+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := f.checker.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz: %s", resp.Status)
	}
	return nil
}

func (f *FrontDoor) setHealth(b *backend, err error) {
	if was := b.healthy.Swap(err == nil); was != (err == nil) {
		if err == nil {
			f.log.Info("backend healthy", "backend", b.url.String())
		} else {
			f.log.Warn("backend unhealthy", "backend", b.url.String(), "err", err)
		}
	}
}

// pick returns the next backend round-robin, preferring healthy ones and
// skipping avoid; nil if there is none left.
func (f *FrontDoor) pick(avoid *backend) *backend {
	n := uint64(len(f.backends))
	start := f.next.Add(1)
	var fallback *backend
	for i := range n {
		b := f.backends[(start+i)%n]
		if b == avoid {
			continue
		}
		if b.healthy.Load() {
			return b
		}
		if fallback == nil {
			fallback = b
		}
	}
	return fallback
}

// unavailable answers a request no backend took, as an OAuth error (RFC
// 6749 §5.2 temporarily_unavailable).
func (f *FrontDoor) unavailable(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client went away
	}
	f.log.Warn("no backend answered", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Retry-After", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, `{"error":"temporarily_unavailable","error_description":"no tally node could be reached"}`+"\n")
}

// retryTransport sends a proxied request to a backend chosen per attempt
// and retries once on another backend when the first attempt failed
// without a response and a retry is safe.
type retryTransport struct{ f *FrontDoor }

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body *trackedBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &trackedBody{ReadCloser: req.Body}
		req.Body = body
	}
	first := t.f.pick(nil)
	resp, err := t.try(req, first)
	if err == nil || req.Context().Err() != nil {
		return resp, err
	}
	t.f.setHealth(first, err) // until the next check says otherwise
	if !retrySafe(req, body, err) {
		return nil, err
	}
	second := t.f.pick(first)
	if second == nil {
		return nil, err
	}
	t.f.log.Info("retrying on another backend", "method", req.Method, "path", req.URL.Path, "failed", first.url.String(), "err", err)
	return t.try(req, second)
}

func (t *retryTransport) try(req *http.Request, b *backend) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = b.url.Scheme, b.url.Host
	out.Host = ""
	return t.f.rt.RoundTrip(out)
}

// retrySafe reports whether a request that got no response may be sent
// again: nothing of it reached the backend (the dial failed, or it has a
// body the transport never read, so the backend cannot have acted on it),
// or its method is idempotent (RFC 9110 §9.2.2) and its body, if any, was
// not consumed.
func retrySafe(req *http.Request, body *trackedBody, err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return body == nil || !body.read.Load()
	}
	if body != nil {
		return !body.read.Load()
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// trackedBody records whether a request body was read.
type trackedBody struct {
	io.ReadCloser
	read atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.ReadCloser.Read(p)
}

// Close is a no-op until the request is done: the transport closes the
// body of a failed attempt, and a retry sends it again. The proxy closes
// the inbound body itself.
func (b *trackedBody) Close() error { return nil }
