// Command tally is the one binary of tally: it serves a node, administers a
// cluster, and runs load tests and drills against it.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// env abstracts the process environment so commands are testable.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

const usage = `tally — OAuth 2.0 / OpenID Connect token service

Usage:
  tally serve [flags]        run a node (tally serve --dev for a local single node)
  tally front [flags]        the one-issuer front door: a proxy over a cluster's nodes
  tally admin <command> ...  administer tenants, clients, keys and revocations
  tally loadtest <scenario>  run a load test against an issuer
  tally drill <drill>        break a cluster under load: failover, partition, rolling-restart
  tally healthcheck          exit 0 if a node answers /readyz (container HEALTHCHECK)
  tally gateway-auth [flags] forward-auth / Envoy ext_authz sidecar for an API gateway
  tally version              print the version

Run "tally <command> -h" for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand and returns the process exit code:
// 0 success, 1 failure, 2 usage error.
func run(ctx context.Context, args []string, e env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], e)
	case "front":
		return runFront(ctx, args[1:], e)
	case "admin":
		return runAdmin(ctx, args[1:], e)
	case "loadtest":
		return runLoadtest(ctx, args[1:], e)
	case "drill":
		return runDrill(ctx, args[1:], e)
	case "healthcheck":
		return runHealthcheck(ctx, args[1:], e)
	case "gateway-auth":
		return runGatewayAuth(ctx, args[1:], e) // gateway_auth.go
	case "version", "--version", "-version":
		fmt.Fprintf(e.stdout, "tally %s\n", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, usage)
		return 0
	default:
		fmt.Fprintf(e.stderr, "tally: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
