package localcluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/raft"
)

// TB is the part of testing.TB that the test conveniences (Restart,
// CreateClient) use; this package does not import testing.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// FastRaft sets Raft timeouts short enough for quick elections
// (300 ms heartbeat and election timeouts, 150 ms lease, 5 ms commit
// timeout, 5 s apply timeout) and a 3 s write timeout.
func FastRaft(c *node.Config) {
	prev := c.RaftTuning
	c.RaftTuning = func(rc *raft.Config) {
		rc.HeartbeatTimeout = 300 * time.Millisecond
		rc.ElectionTimeout = 300 * time.Millisecond
		rc.LeaderLeaseTimeout = 150 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
		rc.ApplyTimeout = 5 * time.Second
		if prev != nil {
			prev(rc)
		}
	}
	c.WriteTimeout = 3 * time.Second
}

// Option changes the node's configuration before it starts.
type Option func(*node.Config)

// WithConfig applies f to the configuration.
func WithConfig(f func(*node.Config)) Option { return Option(f) }

// Node is a running node and an admin client for it.
type Node struct {
	*node.Node
	DataDir    string
	AdminToken string
	Admin      adminv1connect.AdminServiceClient
	// ClusterAdmin is the operators' cluster API of this node.
	ClusterAdmin clusterv1connect.ClusterAdminServiceClient

	cancel context.CancelFunc
	done   chan error
	opts   []Option
}

// StartDir starts a node on dir (created if missing) and waits until it is
// ready. Close stops it.
func StartDir(ctx context.Context, dir string, opts ...Option) (*Node, error) {
	cfg := node.DefaultConfig()
	cfg.Dev = true
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftBind = "127.0.0.1:0"
	cfg.NATSListen = "127.0.0.1:0"
	cfg.ShutdownTimeout = 5 * time.Second
	// No free-space watermark: a machine with a small TMPDIR must not
	// refuse writes; disk tests set MinFreeDisk themselves.
	cfg.MinFreeDisk = 0
	for _, o := range opts {
		o(&cfg)
	}
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	if os.Getenv("TALLY_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	nd, err := node.New(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	tok, err := os.ReadFile(dir + "/admin-token")
	if cfg.AdminToken != "" {
		tok, err = []byte(cfg.AdminToken), nil
	}
	if err != nil {
		nd.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	n := &Node{Node: nd, DataDir: dir, AdminToken: strings.TrimSpace(string(tok)), cancel: cancel, done: make(chan error, 1), opts: opts}
	n.Admin = adminv1connect.NewAdminServiceClient(http.DefaultClient, n.URL(), connect.WithInterceptors(bearer(n.AdminToken)))
	n.ClusterAdmin = clusterv1connect.NewClusterAdminServiceClient(http.DefaultClient, n.URL(), connect.WithInterceptors(bearer(n.AdminToken)))
	go func() { n.done <- nd.Run(rctx) }()
	if err := n.waitReady(ctx, 30*time.Second); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("localcluster: node at %s not ready after %s (last error %v)", n.URL(), timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close stops the node and waits for it; it is safe to call more than once.
func (n *Node) Close() error {
	if n.cancel == nil {
		return nil
	}
	n.cancel()
	n.cancel = nil
	return <-n.done
}

// Restart stops the node and starts a new one on the same data directory
// (with new ports).
func (n *Node) Restart(tb TB) *Node {
	tb.Helper()
	if err := n.Close(); err != nil {
		tb.Fatalf("stopping node: %v", err)
	}
	m, err := StartDir(context.Background(), n.DataDir, n.opts...)
	if err != nil {
		tb.Fatalf("restarting node: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// URL is the node's own HTTP address as a URL (http://host:port). It
// differs from BaseURL when the node is configured with the cluster's
// issuer: admin calls and readiness go here.
func (n *Node) URL() string { return "http://" + n.Addr() }

// TokenURL is a tenant's token endpoint.
func (n *Node) TokenURL(tenant string) string { return n.Issuer(tenant) + "/oauth2/token" }

// CreateClient registers a client in tenant and returns its id and secret.
func (n *Node) CreateClient(tb TB, req *adminv1.CreateClientRequest) (id, secret string) {
	tb.Helper()
	resp, err := n.Admin.CreateClient(context.Background(), connect.NewRequest(req))
	if err != nil {
		tb.Fatalf("creating client: %v", err)
	}
	return resp.Msg.Client.ClientId, resp.Msg.ClientSecret
}

// bearer adds the admin credential to unary and streaming calls.
func bearer(token string) connect.Interceptor { return bearerInterceptor("Bearer " + token) }

type bearerInterceptor string

func (b bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", string(b))
		return next(ctx, req)
	}
}

func (b bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", string(b))
		return conn
	}
}

func (b bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
