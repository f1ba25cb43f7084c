package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/tallyauth/tally/node"
)

const serveUsage = `Usage: tally serve [flags]

Runs one tally node. Every flag has an environment equivalent: --data-dir is
TALLY_DATA_DIR, --listen is TALLY_LISTEN, and so on; a flag on the command
line wins over the environment, which wins over --config FILE (JSON, keys in
snake_case; TALLY_CONFIG). TALLY_KEK (base64) and TALLY_ADMIN_TOKEN give the
key-encryption key and the admin credential directly.

  tally serve --dev     a complete single node on loopback: embedded NATS,
                        ./data, generated key-encryption key and admin
                        credential (./data/kek, ./data/admin-token)
  tally serve --config deploy/local/node1.json
                        one node of a cluster (see make cluster)

Flags:
`

// runServe parses flags and the environment into a node.Config and runs the
// node until ctx is cancelled (SIGINT/SIGTERM).
func runServe(ctx context.Context, args []string, e env) int {
	cfg := node.DefaultConfig()
	logLevel := "info"
	checkOnly := false
	fs := serveFlagSet(&cfg, &logLevel, &checkOnly)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprint(e.stderr, serveUsage)
		fs.PrintDefaults()
	}
	if code, ok := parseServeSettings(fs, args, e); !ok {
		return code
	}
	tenantRateLimitDefaults(&cfg.RateLimits) // serve_threat.go
	if v := e.getenv("TALLY_KEK"); v != "" && cfg.KEKFile == "" {
		kek, err := node.DecodeKEK([]byte(v), "TALLY_KEK")
		if err != nil {
			fmt.Fprintf(e.stderr, "tally serve: %v\n", err)
			return 2
		}
		cfg.KEK = kek
	}
	if v := e.getenv("TALLY_ADMIN_TOKEN"); v != "" && cfg.AdminTokenFile == "" {
		cfg.AdminToken = v
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(e.stderr, "tally serve: --log-level: %v\n", err)
		return 2
	}
	logger := slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	if checkOnly {
		return checkServeConfig(cfg, fs, e)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(e.stderr, "tally serve: %v\n", err)
		return 2
	}
	n, err := node.New(ctx, cfg, logger)
	if err != nil {
		logger.Error("starting node", "err", err)
		return 1
	}
	if err := n.Run(ctx); err != nil {
		logger.Error("node stopped with an error", "err", err)
		return 1
	}
	logger.Info("stopped")
	return 0
}

// parseServeSettings sets the flags of fs from, in rising precedence, the
// configuration file (--config or TALLY_CONFIG), the environment and the
// command line. ok false: exit with code.
func parseServeSettings(fs *flag.FlagSet, args []string, e env) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "tally serve: unexpected argument %q\n", fs.Arg(0))
		return 2, false
	}
	cmdline := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { cmdline[f.Name] = true })
	configPath := fs.Lookup("config").Value.String()
	if configPath == "" {
		configPath = e.getenv("TALLY_CONFIG")
	}
	if configPath != "" {
		if err := applyServeFile(fs, configPath, cmdline); err != nil {
			fmt.Fprintf(e.stderr, "tally serve: --config: %v\n", err)
			return 2, false
		}
	}
	if err := applyEnv(fs, e.getenv, cmdline); err != nil {
		fmt.Fprintf(e.stderr, "tally serve: %v\n", err)
		return 2, false
	}
	return 0, true
}

// serveFlagSet is the flag set of tally serve, writing into cfg, the log
// level and the --check-config switch. Every flag has a TALLY_ environment
// variable (applyEnv) and, except --config and --check-config, a
// configuration file key (applyServeFile).
func serveFlagSet(cfg *node.Config, logLevel *string, checkOnly *bool) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.String("config", "", "JSON configuration `file` (keys are the flag names in snake_case; see deploy/local); flags and environment override it")
	fs.BoolVar(&cfg.Dev, "dev", cfg.Dev, "single node on loopback; generate the key-encryption key and admin credential in the data dir")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the Raft log, state, snapshots and NATS files")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "host:port of the OAuth endpoints and Connect services (HTTP/1.1 and h2c)")
	fs.StringVar(&cfg.Issuer, "issuer", cfg.Issuer, "the cluster's one public base URL, the same on every node; tenant issuers are {issuer}/t/{tenant} (required; --dev derives http://{listen})")
	fs.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "this node's id in the Raft cluster")
	fs.StringVar(&cfg.Region, "region", cfg.Region, "this node's region label")
	fs.StringVar(&cfg.RaftBind, "raft-bind", cfg.RaftBind, "host:port of the cluster port: Raft and the internal cluster service, over mutual TLS")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", cfg.RaftAdvertise, "host:port peers dial for the cluster port (default: --raft-bind)")
	fs.Var(peersFlag{&cfg.Peers}, "peers", "initial voters of a new cluster, the same on each: `id=host:port,...` including this node")
	fs.StringVar(&cfg.Join, "join", cfg.Join, "cluster address (host:port) of any member to join through, for a node not in --peers")
	fs.BoolVar(&cfg.Nonvoter, "nonvoter", cfg.Nonvoter, "join as a non-voter (replicates and serves, does not vote)")
	fs.StringVar(&cfg.RaftProfile, "raft-profile", cfg.RaftProfile, "Raft timing: lan (voters in one region) or wan (voters across regions)")
	fs.DurationVar(&cfg.RefreshTTL, "refresh-ttl", cfg.RefreshTTL, "absolute lifetime of a refresh-token family")
	fs.DurationVar(&cfg.RefreshIdleTimeout, "refresh-idle-timeout", cfg.RefreshIdleTimeout, "a refresh-token family unused this long ends (0: no idle limit)")
	fs.BoolVar(&cfg.DPoPRequireNonce, "dpop-nonce", cfg.DPoPRequireNonce, "require DPoP server nonces (RFC 9449 section 8) at the token endpoint")
	fs.DurationVar(&cfg.RefreshReuseInterval, "refresh-reuse-interval", cfg.RefreshReuseInterval, "within this interval the just-superseded refresh token returns the same successor instead of revoking the family (0: off; typical 2s-10s)")
	fs.DurationVar(&cfg.MaxStale, "max-stale", cfg.MaxStale, "staleness bound: without contact from a Raft leader for longer, OAuth endpoints answer temporarily_unavailable and /readyz fails")
	fs.DurationVar(&cfg.MaxClockSkew, "max-clock-skew", cfg.MaxClockSkew, "a node whose clock is further than this from the voters' median refuses writes, is not ready and hands off leadership (0: off)")
	fs.StringVar(&cfg.LeaderRegion, "leader-region", cfg.LeaderRegion, "region the Raft leader should be in (same on every node); a leader elsewhere hands over to a healthy voter there")
	fs.StringVar(&cfg.TLSDir, "tls-dir", cfg.TLSDir, "directory with ca.pem, node.pem, node-key.pem (tally admin cluster node-cert); default: a single node generates them in the data dir")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", cfg.WriteTimeout, "bound on a write (forwarding to the leader included); no leader within it: temporarily unavailable")
	fs.Var(byteSizeFlag{&cfg.MinFreeDisk}, "min-free-disk", "free-space watermark of the data file system (`bytes`, KiB/MiB/GiB suffix): below it the node refuses writes and reports not ready, but keeps issuing tokens (0: off)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", cfg.NATSListen, `host:port of the embedded NATS server ("" disables it)`)
	natsClusterFlags(fs, cfg)
	eventFlags(fs, &cfg.Events)
	threatFlags(fs, &cfg.RateLimits) // serve_threat.go
	fs.DurationVar(&cfg.AlertTravelWindow, "alert-travel-window", cmp.Or(cfg.AlertTravelWindow, node.DefaultAlertTravelWindow), "a refresh family rotated in two regions less than this apart raises refresh_impossible_travel (negative: off)")
	fs.DurationVar(&cfg.AlertRiskWindow, "alert-risk-window", cmp.Or(cfg.AlertRiskWindow, node.DefaultAlertRiskWindow), "how long a security alert counts in the policies' risk, alerts and tenant_alerts (negative: off)")
	fs.StringVar(&cfg.SIEMFile, "siem-file", cfg.SIEMFile, "write security and audit events as JSON lines (OCSF-aligned) to this `file` (\"-\": stdout)")
	fs.StringVar(&cfg.SIEMSyslog, "siem-syslog", cfg.SIEMSyslog, "send the same events as RFC 5424 syslog messages over TLS (see --siem-syslog-protocol) to this `host:port`")
	fs.StringVar(&cfg.SIEMSyslogCAFile, "siem-syslog-ca", cfg.SIEMSyslogCAFile, "PEM `file` of the CA that signed the syslog server's certificate (default: the system roots)")
	fs.StringVar(&cfg.SIEMSyslogProtocol, "siem-syslog-protocol", cmp.Or(cfg.SIEMSyslogProtocol, "tls"), "syslog transport: tls (RFC 5425, no acknowledgement) or relp (RELP over TLS: each message acknowledged, unacknowledged ones sent again after a reconnect)")
	fs.StringVar(&cfg.SIEMSyslogCertFile, "siem-syslog-cert", cfg.SIEMSyslogCertFile, "PEM client certificate `file` presented to the syslog server (mutual TLS; with --siem-syslog-key)")
	fs.StringVar(&cfg.SIEMSyslogKeyFile, "siem-syslog-key", cfg.SIEMSyslogKeyFile, "PEM private key `file` of --siem-syslog-cert")
	ztFlags(fs, &cfg.ZeroTrust) // serve_ztauth.go
	fs.StringVar(&cfg.KEKFile, "kek-file", cfg.KEKFile, "file with the 32-byte key-encryption key (raw or base64)")
	fs.StringVar(&cfg.AdminTokenFile, "admin-token-file", cfg.AdminTokenFile, "file with the admin credential")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", cfg.MetricsListen, "serve /metrics on this host:port instead of on --listen")
	fs.StringVar(&cfg.MetricsTokenFile, "metrics-token-file", cfg.MetricsTokenFile, "`file` with a bearer token that /metrics then requires")
	fs.StringVar(&cfg.AdminListen, "admin-listen", cfg.AdminListen, "serve the admin and cluster-admin APIs on this host:port instead of on --listen")
	fs.StringVar(&cfg.AdminTLSCertFile, "admin-tls-cert", cfg.AdminTLSCertFile, "PEM certificate `file` of the admin listener (TLS)")
	fs.StringVar(&cfg.AdminTLSKeyFile, "admin-tls-key", cfg.AdminTLSKeyFile, "PEM private key `file` of the admin listener")
	fs.StringVar(&cfg.AdminClientCAFile, "admin-client-ca", cfg.AdminClientCAFile, "PEM `file` of the CA whose client certificates the admin listener requires (mutual TLS)")
	fs.BoolVar(checkOnly, "check-config", false, "validate the configuration (flags, environment, config file, TLS, key and credential files) and exit without starting")
	fs.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", cfg.OTLPEndpoint, "export traces over OTLP/HTTP to this URL (e.g. http://127.0.0.1:4318)")
	fs.DurationVar(&cfg.JWKSMaxAge, "jwks-max-age", cfg.JWKSMaxAge, "Cache-Control max-age of JWKS responses")
	fs.DurationVar(&cfg.KeyPublishDelay, "key-publish-delay", cfg.KeyPublishDelay, "how long a rotated key is published before it signs (default: the JWKS max-age)")
	fs.DurationVar(&cfg.SweepInterval, "sweep-interval", cfg.SweepInterval, "how often the leader starts removing expired records (revocations, keys, codes, families, events)")
	fs.StringVar(&cfg.DefaultSigningAlg, "signing-alg", cfg.DefaultSigningAlg, "signing algorithm of new tenants: ES256, EdDSA or RS256")
	fs.StringVar(logLevel, "log-level", *logLevel, "debug, info, warn or error")
	return fs
}

// checkServeConfig is --check-config: validate and report, do not start.
func checkServeConfig(cfg node.Config, fs *flag.FlagSet, e env) int {
	if err := node.CheckConfig(cfg); err != nil {
		fmt.Fprintf(e.stderr, "tally serve: --check-config: %v\n", err)
		return 2
	}
	for _, name := range unknownEnv(fs, os.Environ()) {
		fmt.Fprintf(e.stderr, "tally serve: --check-config: warning: %s is not a setting of tally serve (misspelt?)\n", name)
	}
	fmt.Fprintf(e.stdout, "tally serve: configuration of node %s is valid\n", cfg.NodeID)
	return 0
}

// applyEnv sets every flag not given on the command line (cmdline) from
// its environment variable: --data-dir from TALLY_DATA_DIR, and so on.
func applyEnv(fs *flag.FlagSet, getenv func(string) string, cmdline map[string]bool) error {
	set := cmdline
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, serr)
			}
		}
	})
	return err
}

// clientEnv are TALLY_* variables of the other commands (tally admin,
// make cluster's exports), not settings of tally serve.
var clientEnv = map[string]bool{
	"TALLY_KEK": true, "TALLY_ADMIN_TOKEN": true, "TALLY_CONFIG": true,
	"TALLY_SERVER": true, "TALLY_ISSUER_BASE": true, "TALLY_NODES": true,
}

// unknownEnv lists the TALLY_* variables of environ that no flag reads:
// likely misspelt settings, which would otherwise be ignored silently.
func unknownEnv(fs *flag.FlagSet, environ []string) []string {
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { known[envName(f.Name)] = true })
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "TALLY_") && !known[name] && !clientEnv[name] {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func envName(flagName string) string {
	return "TALLY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
