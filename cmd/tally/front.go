package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tallyauth/tally/node"
)

const frontUsage = `Usage: tally front --listen ADDR --backend URL [--backend URL ...]

Runs the "one issuer" front door of a cluster: a reverse proxy on ADDR that
spreads requests round-robin over the nodes whose GET /readyz answers 200
(checked every 500ms), retries a request that could not reach a node once
on another node when that is safe (idempotent, or nothing was sent), and
streams responses through. Every node is started with --issuer set to the
front door's URL, so a token any node issued is honoured by every node.
It is the local stand-in for GeoDNS or a load balancer (make cluster runs
it on 127.0.0.1:8080).

Flags:
`

// backendsFlag is a repeatable --backend URL (commas also separate).
type backendsFlag []string

func (b *backendsFlag) String() string { return strings.Join(*b, ",") }

func (b *backendsFlag) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*b = append(*b, part)
		}
	}
	return nil
}

// runFront runs the front door until ctx is cancelled (SIGINT/SIGTERM),
// then shuts down gracefully.
func runFront(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("front", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(e.stderr, frontUsage)
		fs.PrintDefaults()
	}
	listen := fs.String("listen", "127.0.0.1:8080", "host:port to serve on")
	var backends backendsFlag
	fs.Var(&backends, "backend", "a node's base `URL` (http://host:port); repeat for every node")
	every := fs.Duration("check-every", 500*time.Millisecond, "how often each node's /readyz is checked")
	grace := fs.Duration("shutdown-timeout", 5*time.Second, "how long requests in flight may finish on SIGTERM")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "tally front: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(e.stderr, "tally front: --log-level: %v\n", err)
		return 2
	}
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		fmt.Fprintf(e.stderr, "tally front: --listen %q: %v\n", *listen, err)
		return 2
	}
	logger := slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	fd, err := node.NewFrontDoor(node.FrontDoorConfig{Backends: backends, CheckEvery: *every, Logger: logger})
	if err != nil {
		fmt.Fprintf(e.stderr, "tally front: %v\n", err)
		return 2
	}
	return serveFront(ctx, fd, *listen, *grace, backends, logger)
}

// serveFront serves the front door on listen, checking its nodes, until
// ctx is cancelled, then shuts down within grace.
func serveFront(ctx context.Context, fd *node.FrontDoor, listen string, grace time.Duration, backends backendsFlag, logger *slog.Logger) int {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		logger.Error("listen", "err", err)
		return 1
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		fd.Run(cctx)
	}()
	srv := &http.Server{
		Handler:           fd,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// HTTP/1.1 and h2c, like a node.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("front door serving", "addr", ln.Addr().String(), "backends", []string(backends))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	sctx, scancel := context.WithTimeout(context.Background(), grace)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Streams outlive the grace period: cut them.
		_ = srv.Close()
	}
	cancel()
	<-checked
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		logger.Error("front door stopped with an error", "err", serveErr)
		return 1
	}
	logger.Info("stopped")
	return 0
}
