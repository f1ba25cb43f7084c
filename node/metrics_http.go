package node

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Endpoint labels of tally_http_requests_total: a fixed set, so that the
// label's cardinality does not depend on what clients send (tenant ids and
// unknown paths never become label values).
const (
	routeToken = iota
	routeAuthorize
	routeLogin
	routeUserinfo
	routeDeviceAuth
	routeDevice
	routeIntrospection
	routeRevocation
	routeJWKS
	routeDiscovery
	routeAdmin
	routeClusterAdmin
	routeEvents
	routeProbe
	routeOther
	numRoutes
)

var routeNames = [numRoutes]string{
	"token", "authorize", "login", "userinfo", "device_authorization", "device", "introspection", "revocation",
	"jwks", "discovery", "admin", "cluster_admin", "events", "probe", "other",
}

// routeOf maps a request to its endpoint without allocating. A POST to
// the authorization endpoint is the sign-in (and consent) form: "login".
func routeOf(method, path string) int {
	if rest, ok := strings.CutPrefix(path, "/t/"); ok {
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			return routeOther
		}
		switch rest[i:] {
		case "/oauth2/token":
			return routeToken
		case "/oauth2/authorize":
			if method == http.MethodPost {
				return routeLogin
			}
			return routeAuthorize
		case "/oauth2/userinfo":
			return routeUserinfo
		case "/oauth2/device_authorization":
			return routeDeviceAuth
		case "/device":
			return routeDevice
		case "/oauth2/introspect":
			return routeIntrospection
		case "/oauth2/revoke":
			return routeRevocation
		case "/jwks.json":
			return routeJWKS
		case "/.well-known/openid-configuration", "/.well-known/oauth-authorization-server":
			return routeDiscovery
		}
		return routeOther
	}
	switch {
	case strings.HasPrefix(path, "/tally.admin."):
		return routeAdmin
	case strings.HasPrefix(path, "/tally.cluster."):
		return routeClusterAdmin
	case strings.HasPrefix(path, "/tally.events."):
		return routeEvents
	case strings.HasPrefix(path, "/.well-known/"):
		return routeDiscovery
	case path == "/healthz" || path == "/readyz" || path == "/metrics":
		return routeProbe
	}
	return routeOther
}

var statusClasses = [...]string{"1xx", "1xx", "2xx", "3xx", "4xx", "5xx"}

// httpOptions are the attribute sets of every (endpoint, status class) and
// endpoint, built once.
// They are kept as ready slices: passing a slice with ... to Add and Record
// allocates nothing.
type httpOptions struct {
	requests [numRoutes][len(statusClasses)][]metric.AddOption
	duration [numRoutes][]metric.RecordOption
}

func newHTTPOptions() *httpOptions {
	o := &httpOptions{}
	for r, name := range routeNames {
		ep := attribute.String("endpoint", name)
		for c, class := range statusClasses {
			o.requests[r][c] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(ep, attribute.String("code", class)))}
		}
		o.duration[r] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(ep))}
	}
	return o
}

// statusWriter remembers the status code; pooled, so that a request costs
// no allocation for it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush keeps streaming responses (Connect server streams) working.
func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var statusWriters = sync.Pool{New: func() any { return new(statusWriter) }}

// instrument counts and times every request by endpoint and status class.
func (m *nodeMetrics) instrument(next http.Handler) http.Handler {
	if m == nil {
		return next
	}
	opts := newHTTPOptions()
	ctx := context.Background()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := statusWriters.Get().(*statusWriter)
		sw.ResponseWriter, sw.status = w, 0
		defer func() {
			route := routeOf(r.Method, r.URL.Path)
			status := sw.status
			sw.ResponseWriter = nil
			statusWriters.Put(sw)
			if status == 0 {
				status = http.StatusOK
			}
			class := min(max(status/100, 1), 5)
			m.httpRequests.Add(ctx, 1, opts.requests[route][class]...)
			m.httpDuration.Record(ctx, time.Since(start).Seconds(), opts.duration[route]...)
		}()
		next.ServeHTTP(sw, r)
	})
}

// validateMetricsListen checks Config.MetricsListen (kept out of
// Config.Validate, which many branches extend; New and CheckConfig call
// it).
func validateMetricsListen(c Config) error {
	if c.MetricsListen == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
		return fmt.Errorf("node: metrics listen address %q: %w", c.MetricsListen, err)
	}
	return nil
}

// metricsServer serves /metrics alone on Config.MetricsListen.
type metricsServer struct {
	ln  net.Listener
	srv *http.Server
	wg  sync.WaitGroup
}

// listenMetrics binds the separate metrics listener (nil when
// MetricsListen is empty).
func (n *Node) listenMetrics() (*metricsServer, error) {
	if n.cfg.MetricsListen == "" {
		return nil, nil
	}
	if err := validateMetricsListen(n.cfg); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", n.cfg.MetricsListen)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", n.metricsEndpoint())
	return &metricsServer{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}}, nil
}

func (s *metricsServer) serve() {
	if s == nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.srv.Serve(s.ln)
	}()
}

func (s *metricsServer) close() error {
	if s == nil {
		return nil
	}
	err := s.srv.Close()
	s.ln.Close()
	s.wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// MetricsAddr is the address of the separate metrics listener, or "" when
// /metrics is served on the public listener.
func (n *Node) MetricsAddr() string {
	if n.metricsSrv == nil {
		return ""
	}
	return n.metricsSrv.ln.Addr().String()
}

// loadMetricsToken reads Config.MetricsTokenFile ("" when unset).
func loadMetricsToken(cfg Config) (string, error) {
	if cfg.MetricsTokenFile == "" {
		return "", nil
	}
	raw, err := os.ReadFile(cfg.MetricsTokenFile)
	if err != nil {
		return "", fmt.Errorf("node: metrics token: %w", err)
	}
	tok := strings.TrimSpace(string(raw))
	if len(tok) < 16 {
		return "", fmt.Errorf("node: metrics token in %s is shorter than 16 characters", cfg.MetricsTokenFile)
	}
	return tok, nil
}

// metricsEndpoint is the /metrics handler: behind the metrics token when
// one is configured (401 with WWW-Authenticate otherwise; the token is
// compared in constant time).
func (n *Node) metricsEndpoint() http.Handler {
	h := n.tel.metricsHandler()
	if n.metricsToken == "" {
		return h
	}
	want := []byte("Bearer " + n.metricsToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tally-metrics"`)
			http.Error(w, "metrics need the metrics token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
