package replication

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process NATS server with JetStream.
type EmbeddedConfig struct {
	// Listen is host:port for NATS clients; port 0 picks a free one.
	Listen string
	// StoreDir holds JetStream's files.
	StoreDir string
	// ServerName names the server in a future NATS cluster; defaults to
	// "tally".
	ServerName string
	// StartTimeout bounds how long Start waits for the server to accept
	// clients.
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// DefaultEmbeddedConfig is the single-machine default: 127.0.0.1:4222.
func DefaultEmbeddedConfig() EmbeddedConfig {
	return EmbeddedConfig{Listen: "127.0.0.1:4222", ServerName: "tally", StartTimeout: 10 * time.Second}
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
	return nil
}

// Embedded is a running in-process NATS server.
type Embedded struct {
	srv *server.Server
}

// StartEmbedded starts a NATS server with JetStream and waits until it
// accepts clients. JetStream syncs every write to disk (SyncAlways): the
// server's default syncs periodically and can lose acknowledged messages
// when the machine crashes.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.ServerName == "" {
		cfg.ServerName = "tally"
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
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("replication: nats: %w", err)
	}
	if cfg.Logger != nil {
		srv.SetLoggerV2(natsLogger{cfg.Logger.With("component", "nats")}, false, false, false)
	}
	srv.Start()
	if !srv.ReadyForConnections(cfg.StartTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("replication: nats did not accept clients on %s within %s", cfg.Listen, cfg.StartTimeout)
	}
	return &Embedded{srv: srv}, nil
}

// ClientURL is the nats:// URL clients connect to.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Ready reports whether the server accepts clients and JetStream is on.
func (e *Embedded) Ready() bool {
	return e.srv.Running() && e.srv.JetStreamEnabled()
}

// Shutdown stops the server and waits for it to finish.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
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

// natsLogger routes the NATS server's log into slog.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) { n.l.Info(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Errorf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any)  {}
