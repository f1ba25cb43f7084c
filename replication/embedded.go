package replication

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process NATS server with JetStream.
type EmbeddedConfig struct {
	// Listen is host:port for NATS clients; port 0 picks a free one.
	Listen string
	// StoreDir holds JetStream's files.
	StoreDir string
	// ServerName names the server; in a NATS cluster every server needs its
	// own (tally uses the node id). Defaults to "tally".
	ServerName string
	// StartTimeout bounds how long Start waits for the server to accept
	// clients.
	StartTimeout time.Duration
	Logger       *slog.Logger

	// ClusterListen, if set, is the host:port of this server's route
	// listener: the embedded servers of a tally cluster form one NATS
	// cluster (JetStream clustered, streams replicated across servers).
	ClusterListen string
	// ClusterName names the NATS cluster, the same on every server;
	// default "tally".
	ClusterName string
	// ClusterAdvertise, if set, is the host:port other servers reach this
	// server's route listener at (behind NAT or a proxy); they learn it
	// from each other.
	ClusterAdvertise string
	// Routes are the host:port route listeners of the other servers.
	Routes []string
	// RoutePassword authenticates routes in both directions (user
	// RouteUser); required with ClusterListen.
	RoutePassword string
	// RouteTLS, if set, secures routes in both directions: it is used to
	// accept and to dial, so it must present a certificate and verify the
	// peer's on both sides.
	RouteTLS *tls.Config
	// ClientTLS, if set, is required of every client connection.
	ClientTLS *tls.Config

	// NodePassword is the password of NodeUser, the user tally nodes
	// connect as. Required unless AllowAnonymous.
	NodePassword string
	// ResourceServers authenticates every other user; nil admits only
	// nodes.
	ResourceServers ResourceServerAuth
	// Stream is the event stream the permissions refer to; default
	// "TALLY_EVENTS".
	Stream string
	// RevalidateInterval is how often live resource-server connections are
	// checked again (Revalidate also does it at once); default 1s.
	RevalidateInterval time.Duration
	// AllowAnonymous turns authentication off: only for tests of this
	// package and of tools that need a bare JetStream server.
	AllowAnonymous bool
}

// DefaultEmbeddedConfig is the single-machine default: 127.0.0.1:4222.
func DefaultEmbeddedConfig() EmbeddedConfig {
	return EmbeddedConfig{
		Listen: "127.0.0.1:4222", ServerName: "tally", StartTimeout: 10 * time.Second,
		ClusterName: "tally", Stream: "TALLY_EVENTS", RevalidateInterval: time.Second,
	}
}

// Validate reports a configuration that cannot start.
func (c EmbeddedConfig) Validate() error {
	if _, _, err := splitHostPort(c.Listen); err != nil {
		return fmt.Errorf("replication: nats listen address %q: %w", c.Listen, err)
	}
	if c.StoreDir == "" {
		return errors.New("replication: nats store dir is required")
	}
	if c.StartTimeout <= 0 {
		return errors.New("replication: nats start timeout must be positive")
	}
	if c.NodePassword == "" && !c.AllowAnonymous {
		return errors.New("replication: the embedded nats server needs a node password (or AllowAnonymous)")
	}
	if c.ClusterListen != "" {
		if _, _, err := splitHostPort(c.ClusterListen); err != nil {
			return fmt.Errorf("replication: nats cluster listen address %q: %w", c.ClusterListen, err)
		}
		if c.RoutePassword == "" {
			return errors.New("replication: a nats cluster needs a route password")
		}
		if c.ServerName == "" || strings.ContainsAny(c.ServerName, " \t\r\n") {
			return errors.New("replication: a nats cluster needs a server name without spaces")
		}
	} else if len(c.Routes) > 0 {
		return errors.New("replication: nats routes need a cluster listen address")
	}
	for _, r := range c.Routes {
		if _, _, err := splitHostPort(r); err != nil {
			return fmt.Errorf("replication: nats route %q: %w", r, err)
		}
	}
	return nil
}

// Embedded is a running in-process NATS server.
type Embedded struct {
	srv      *server.Server
	storeDir string
	auth     *authenticator
	stop     chan struct{}
	wg       sync.WaitGroup
}

// StartEmbedded starts a NATS server with JetStream and waits until it
// accepts clients. JetStream syncs every write to disk (SyncAlways): the
// server's default syncs periodically and can lose acknowledged messages
// when the machine crashes.
//
// Unless AllowAnonymous, the server requires authentication (its INFO says
// auth_required): NodeUser with NodePassword gets NodePermissions, a
// confidential client accepted by ResourceServers gets
// ResourceServerPermissions, anyone else is refused.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.ServerName == "" {
		cfg.ServerName = "tally"
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = "tally"
	}
	if cfg.Stream == "" {
		cfg.Stream = "TALLY_EVENTS"
	}
	if cfg.RevalidateInterval <= 0 {
		cfg.RevalidateInterval = time.Second
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, port, _ := splitHostPort(cfg.Listen)
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Clean(cfg.StoreDir),
		SyncAlways: true,
		NoSigs:     true,
		NoLog:      cfg.Logger == nil,
	}
	if port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	if cfg.ClientTLS != nil {
		opts.TLS = true
		opts.TLSConfig = cfg.ClientTLS
		opts.TLSTimeout = 2
	}
	e := &Embedded{stop: make(chan struct{}), storeDir: filepath.Clean(cfg.StoreDir)}
	if !cfg.AllowAnonymous {
		e.auth = &authenticator{nodePass: cfg.NodePassword, rs: cfg.ResourceServers, stream: cfg.Stream, conns: map[uint64]func() bool{}, wake: make(chan struct{}, 1)}
		opts.CustomClientAuthentication = e.auth
	}
	if cfg.ClusterListen != "" {
		chost, cport, _ := splitHostPort(cfg.ClusterListen)
		if cport == 0 {
			cport = server.RANDOM_PORT
		}
		opts.Cluster = server.ClusterOpts{
			Name: cfg.ClusterName, Host: chost, Port: cport,
			Username: RouteUser, Password: cfg.RoutePassword,
			TLSConfig: cfg.RouteTLS, TLSTimeout: 2,
			Advertise: cfg.ClusterAdvertise,
		}
		for _, r := range cfg.Routes {
			opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", User: url.UserPassword(RouteUser, cfg.RoutePassword), Host: r})
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("replication: nats: %w", err)
	}
	logger := slog.New(slog.DiscardHandler)
	if cfg.Logger != nil {
		logger = cfg.Logger.With("component", "nats")
	}
	fatal := make(chan string, 1)
	srv.SetLoggerV2(natsLogger{l: logger, fatal: fatal}, false, false, false)
	srv.Start()
	if err := awaitReady(srv, fatal, cfg.Listen, cfg.StartTimeout); err != nil {
		srv.Shutdown()
		return nil, err
	}
	e.srv = srv
	if e.auth != nil {
		e.wg.Add(1)
		go e.revalidateLoop(cfg.RevalidateInterval)
	}
	return e, nil
}

// ClientURL is the nats:// (or tls://) URL clients connect to.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// ClientAddr is the host:port the server accepts clients on.
func (e *Embedded) ClientAddr() string { return e.srv.Addr().String() }

// ClusterAddr is the route listener's address, nil without a cluster.
func (e *Embedded) ClusterAddr() *net.TCPAddr { return e.srv.ClusterAddr() }

// Ready reports whether the server accepts clients and JetStream is on.
func (e *Embedded) Ready() bool {
	return e.srv.Running() && e.srv.JetStreamEnabled()
}

// RestartJetStream enables JetStream again after the server disabled it
// (nats-server turns JetStream off for good when a write fails for lack of
// disk space). Call it once space is back; it is a no-op while JetStream is
// on. In a cluster the server rejoins the JetStream meta group and its
// stream replicas catch up from the others.
func (e *Embedded) RestartJetStream() error {
	if !e.srv.Running() || e.srv.JetStreamEnabled() {
		return nil
	}
	return e.srv.EnableJetStream(&server.JetStreamConfig{StoreDir: e.storeDir})
}

// Server is the NATS server, for tests and diagnostics.
func (e *Embedded) Server() *server.Server { return e.srv }

// Revalidate checks every live resource-server connection again soon (a
// client was disabled or its secrets changed) and closes those no longer
// allowed. It never blocks.
func (e *Embedded) Revalidate() {
	if e.auth == nil {
		return
	}
	select {
	case e.auth.wake <- struct{}{}:
	default:
	}
}

// Shutdown stops the server and waits for it to finish.
func (e *Embedded) Shutdown() {
	select {
	case <-e.stop:
	default:
		close(e.stop)
	}
	e.wg.Wait()
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

func (e *Embedded) revalidateLoop(every time.Duration) {
	defer e.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		case <-e.auth.wake:
		}
		for _, cid := range e.auth.revoked(func(cid uint64) bool { return e.srv.GetClient(cid) != nil }) {
			e.srv.DisconnectClientByID(cid)
		}
	}
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

// awaitReady waits until srv accepts clients (and routes). A listener that
// cannot bind fails at once with the server's message, wrapping
// syscall.EADDRINUSE when the port is taken, so a caller can tell a busy
// port (and retry) from a server that is merely slow.
func awaitReady(srv *server.Server, fatal <-chan string, listen string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case msg := <-fatal:
			if strings.Contains(msg, "address already in use") {
				return fmt.Errorf("replication: nats: %s: %w", msg, syscall.EADDRINUSE)
			}
			return fmt.Errorf("replication: nats: %s", msg)
		default:
		}
		if srv.ReadyForConnections(25 * time.Millisecond) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication: nats did not accept clients on %s within %s", listen, timeout)
		}
	}
}

// natsLogger routes the NATS server's log into slog; a fatal message (a
// listener that could not bind) also goes to fatal, without blocking.
type natsLogger struct {
	l     *slog.Logger
	fatal chan<- string
}

func (n natsLogger) Noticef(format string, v ...any) { n.l.Info(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	n.l.Error(msg)
	select {
	case n.fatal <- msg:
	default:
	}
}
func (n natsLogger) Errorf(format string, v ...any) { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any) {}
