package main

// tally loadtest client-credentials | introspect | refresh | authcode | mixed:
// the scenario loads of package loadtest against one or more issuers, with
// their set-up (clients, users, token pools) through the admin API or from
// pre-made credentials, and their reports (table, JSON, HTML, comparison
// with an earlier JSON report).

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/revocation"
)

const loadtestScenarioUsage = `Usage: tally loadtest SCENARIO --target ISSUER_URL [--target ISSUER_URL …] [flags]

Scenarios:
  client-credentials  client_credentials token requests (RFC 6749 §4.4)
  introspect          introspection (RFC 7662) of a pre-minted pool of tokens
  refresh             each virtual client rotates its own refresh-token chain
  authcode            a whole authorization code grant with PKCE per iteration
  revoke-propagation  revocations through the admin API, each until the resource-server SDK
                      (following the event log over Connect) has it
  mixed               several at once by weight: --mix client-credentials=70,introspect=20,refresh=10

Endpoints are discovered from each issuer's RFC 8414 / OpenID metadata, so
client-credentials and introspect work against any standards-compliant
issuer. Several --target flags spread the iterations round-robin.

Credentials: client-credentials and introspect use --client-id and
--client-secret (env TALLY_CLIENT_SECRET; introspect wants a client whose
tokens are opaque or one allowed to introspect). refresh and authcode use a
public client (--public-client-id, --redirect-uri) and users (--user
NAME:PASSWORD, repeatable). revoke-propagation needs the admin API, and its
SDK authenticates as the --client-id client. Whatever is not given is created through the
admin API of --admin-server (env TALLY_SERVER) with the admin token
(--admin-token, TALLY_ADMIN_TOKEN or TALLY_ADMIN_TOKEN_FILE).

Closed loop: --concurrency virtual clients. Open loop: --rate N iterations/s
(latency from each scheduled start; --concurrency bounds those in flight).
Reports: a table (or --output json), --report FILE.html (self-contained),
--compare BASE.json (ratios against an earlier --output json).

Flags:
`

// userFlag collects --user NAME:PASSWORD values.
type userFlag []loadtest.User

func (u *userFlag) String() string { return fmt.Sprintf("%d users", len(*u)) }

func (u *userFlag) Set(v string) error {
	name, pw, ok := strings.Cut(v, ":")
	if !ok || name == "" || pw == "" {
		return fmt.Errorf("want NAME:PASSWORD")
	}
	*u = append(*u, loadtest.User{Username: name, Password: pw})
	return nil
}

// stringsFlag collects a repeatable string flag.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

// loadtestScenarioNames are the scenarios runLoadtestScenario runs.
var loadtestScenarioNames = []string{
	loadtest.ScenarioClientCredentials, loadtest.ScenarioIntrospect, loadtest.ScenarioRefresh,
	loadtest.ScenarioAuthCode, loadtest.ScenarioRevokePropagation, loadtest.ScenarioMixed,
}

// loadtestHasTarget reports whether args name a --target: revoke-propagation
// with one loads that issuer; without, it starts its own node
// (runLoadtestRevokePropagation).
func loadtestHasTarget(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		for _, f := range []string{"-target", "--target"} {
			if a == f || strings.HasPrefix(a, f+"=") {
				return true
			}
		}
	}
	return false
}

// loadtestResultOutput is what --output json prints: the result, and the
// ratios when --compare was given.
type loadtestResultOutput struct {
	Command string `json:"command"`
	loadtest.Result
	Compare []loadtest.Ratio `json:"compare,omitempty"`
}

func runLoadtestScenario(ctx context.Context, name string, args []string, e env) int {
	def := loadtest.DefaultRunConfig()
	fs := loadtestFlags(name, e)
	fs.Usage = func() { fmt.Fprint(e.stderr, loadtestScenarioUsage); fs.PrintDefaults() }
	var targets stringsFlag
	var users userFlag
	fs.Var(&targets, "target", "issuer `URL` (repeatable: round-robin)")
	tokenURL := fs.String("token-url", "", "client-credentials only: token endpoint `URL` (skips discovery)")
	clientID := fs.String("client-id", "", "confidential client id (client-credentials, introspect)")
	clientSecret := fs.String("client-secret", "", "its secret (env TALLY_CLIENT_SECRET)")
	scope := fs.String("scope", "", "scope of client_credentials requests")
	mix := fs.String("mix", "", "mixed: `name=weight,…`")
	pool := fs.Int("pool", 1000, "introspect: tokens minted before the run")
	publicID := fs.String("public-client-id", "", "refresh, authcode: public client id")
	redirectURI := fs.String("redirect-uri", "", "refresh, authcode: its registered redirect URI")
	fs.Var(&users, "user", "refresh, authcode: `NAME:PASSWORD` of a user (repeatable)")
	nUsers := fs.Int("users", 0, "refresh, authcode: users to create through the admin API, each signed in once (default: one per virtual client, at most 10; tally allows 20 password attempts a minute per client IP)")
	flowScope := fs.String("flow-scope", loadtest.DefaultFlowScope, "refresh, authcode: scope requested at the authorization endpoint")
	adminServer := fs.String("admin-server", "", "admin API base `URL` for set-up (env TALLY_SERVER)")
	adminToken := fs.String("admin-token", "", "admin token (env TALLY_ADMIN_TOKEN, TALLY_ADMIN_TOKEN_FILE)")
	tenant := fs.String("tenant", "default", "tenant of what is created for the run")
	concurrency := fs.Int("concurrency", def.Concurrency, "closed-loop virtual clients; with --rate, the bound on iterations in flight")
	rate := fs.Float64("rate", 0, "open-loop arrival rate in iterations/s (0: closed loop)")
	duration := fs.Duration("duration", def.Duration, "recorded time after the warm-up (0: until --requests)")
	requests := fs.Int64("requests", 0, "stop after this many recorded iterations (0: until --duration)")
	warmup := fs.Duration("warmup", def.Warmup, "unrecorded warm-up")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of one HTTP request")
	output := fs.String("output", "text", "text or json")
	htmlOut := fs.String("report", "", "write a self-contained HTML report to `FILE`")
	compareWith := fs.String("compare", "", "print ratios against the earlier --output json `FILE`")
	if code := loadtestParse(fs, args, e); code >= 0 {
		return code
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "tally loadtest %s: "+format+"\n", append([]any{name}, a...)...)
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "tally loadtest %s: "+format+"\n", append([]any{name}, a...)...)
		return 1
	}
	if !loadtestCheckOutput(*output, e, name) {
		return 2
	}
	if *clientSecret == "" && e.getenv != nil {
		*clientSecret = e.getenv("TALLY_CLIENT_SECRET")
	}
	cfg := def
	cfg.Concurrency, cfg.Rate, cfg.Duration, cfg.Requests, cfg.Warmup = *concurrency, *rate, *duration, *requests, *warmup
	if err := cfg.Validate(); err != nil {
		return usage("%v", err)
	}
	if *timeout <= 0 || *pool < 1 || *nUsers < 0 {
		return usage("--timeout and --pool must be positive, --users not negative")
	}

	// Which scenarios run, and so what they need.
	parts := []loadtest.MixEntry{{Scenario: name, Weight: 1}}
	if name == loadtest.ScenarioMixed {
		if *mix == "" {
			return usage("--mix is required, e.g. --mix client-credentials=70,introspect=20,refresh=10")
		}
		var err error
		if parts, err = loadtest.ParseMix(*mix); err != nil {
			return usage("%v", err)
		}
		for _, p := range parts {
			if p.Scenario == loadtest.ScenarioMixed || !slices.Contains(loadtestScenarioNames, p.Scenario) {
				return usage("unknown scenario %q in --mix", p.Scenario)
			}
		}
	} else if *mix != "" {
		return usage("--mix is for the mixed scenario")
	}
	needs := map[string]bool{}
	for _, p := range parts {
		needs[p.Scenario] = true
	}
	needRevoke := needs[loadtest.ScenarioRevokePropagation]
	needConfidential := needs[loadtest.ScenarioClientCredentials] || needs[loadtest.ScenarioIntrospect] || needRevoke
	needFlow := needs[loadtest.ScenarioRefresh] || needs[loadtest.ScenarioAuthCode]
	if *tokenURL != "" && (name != loadtest.ScenarioClientCredentials || len(targets) > 0) {
		return usage("--token-url is for client-credentials without --target")
	}
	if len(targets) == 0 && *tokenURL == "" {
		return usage("--target is required")
	}
	premadeFlow := *publicID != "" || *redirectURI != "" || len(users) > 0
	if needFlow && premadeFlow && (*publicID == "" || *redirectURI == "" || len(users) == 0) {
		return usage("pre-made user-flow credentials need --public-client-id, --redirect-uri and at least one --user")
	}

	// The admin API, built only if something must be created or revoked.
	if *adminServer == "" && e.getenv != nil {
		*adminServer = e.getenv("TALLY_SERVER")
	}
	if needRevoke && *adminServer == "" {
		return usage("revoke-propagation needs --admin-server (or TALLY_SERVER)")
	}
	var admin adminv1connect.AdminServiceClient
	adminAPI := func() (adminv1connect.AdminServiceClient, error) {
		if admin != nil {
			return admin, nil
		}
		g := newAdminGlobals()
		g.server, g.token = *adminServer, *adminToken
		if g.server == "" {
			return nil, usagef("give the credentials, or --admin-server (or TALLY_SERVER) to create them")
		}
		s, err := newAdminSession(g, e)
		if err != nil {
			return nil, err
		}
		admin, err = s.client()
		return admin, err
	}

	// Targets.
	var tgs []loadtest.Target
	if *tokenURL != "" {
		tgs = []loadtest.Target{{Issuer: *tokenURL, TokenURL: *tokenURL}}
	}
	for _, t := range targets {
		tg, err := loadtest.DiscoverTarget(ctx, t)
		if err != nil {
			return fail("%v", err)
		}
		tgs = append(tgs, tg)
	}
	cfg.Target = strings.Join(targets, ",")
	if cfg.Target == "" {
		cfg.Target = *tokenURL
	}

	// Credentials.
	if needConfidential && *clientID == "" {
		api, err := adminAPI()
		if err != nil {
			return fail("no --client-id: %v", err)
		}
		format := "jwt"
		if needs[loadtest.ScenarioIntrospect] {
			format = "opaque"
		}
		req := &adminv1.CreateClientRequest{Tenant: *tenant, Name: "loadtest-" + name, GrantTypes: []string{"client_credentials"}, TokenFormat: format}
		if *scope != "" {
			req.Scopes = strings.Fields(*scope)
		}
		c, err := api.CreateClient(ctx, connect.NewRequest(req))
		if err != nil {
			return fail("creating the confidential client: %v", err)
		}
		*clientID, *clientSecret = c.Msg.Client.ClientId, c.Msg.ClientSecret
		fmt.Fprintf(e.stderr, "created client %s (%s tokens) in tenant %s\n", *clientID, format, *tenant)
	}
	var flow loadtest.UserFlow
	if needFlow {
		if premadeFlow {
			flow = loadtest.UserFlow{ClientID: *publicID, RedirectURI: *redirectURI, Users: users, Scope: *flowScope, Timeout: *timeout}
		} else {
			api, err := adminAPI()
			if err != nil {
				return fail("no --public-client-id and --user: %v", err)
			}
			n := *nUsers
			if n == 0 {
				n = min(cfg.Concurrency, 10)
			}
			fmt.Fprintf(e.stderr, "creating %d users and a public client in tenant %s …\n", n, *tenant)
			if flow, err = loadtest.SetupUserFlow(ctx, api, *tenant, n); err != nil {
				return fail("%v", err)
			}
			flow.Timeout = *timeout
			if *flowScope != loadtest.DefaultFlowScope {
				flow.Scope = *flowScope
			}
		}
	}

	// Scenarios.
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	build := func(sc string) (loadtest.Scenario, error) {
		switch sc {
		case loadtest.ScenarioClientCredentials:
			return loadtest.NewClientCredentialsScenario(tgs, *clientID, *clientSecret, *scope, *timeout)
		case loadtest.ScenarioIntrospect:
			fmt.Fprintf(e.stderr, "minting %d tokens to introspect …\n", *pool)
			toks, err := loadtest.MintTokens(ctx, tgs, *clientID, *clientSecret, *scope, *pool)
			if err != nil {
				return nil, err
			}
			return loadtest.NewIntrospectScenario(tgs, *clientID, *clientSecret, toks, *timeout)
		case loadtest.ScenarioRefresh:
			return loadtest.NewRefreshScenario(tgs, flow)
		case loadtest.ScenarioRevokePropagation:
			api, err := adminAPI()
			if err != nil {
				return nil, err
			}
			wc := revocation.WatcherConfig{Issuer: tgs[0].Issuer, Tenant: *tenant, ServerURL: *adminServer, ClientID: *clientID, ClientSecret: *clientSecret}
			for _, t := range tgs[1:] {
				wc.SETIssuers = append(wc.SETIssuers, t.Issuer)
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			rp, err := loadtest.NewRevokePropagationScenario(wctx, api, *tenant, wc, *timeout)
			if err != nil {
				return nil, err
			}
			closers = append(closers, rp.Close)
			return rp, nil
		default:
			return loadtest.NewAuthCodeScenario(tgs, flow)
		}
	}
	var sc loadtest.Scenario
	if name == loadtest.ScenarioMixed {
		var ws []loadtest.WeightedScenario
		for _, p := range parts {
			s, err := build(p.Scenario)
			if err != nil {
				return fail("%s: %v", p.Scenario, err)
			}
			ws = append(ws, loadtest.WeightedScenario{Scenario: s, Weight: p.Weight})
		}
		m, err := loadtest.NewMixedScenario(ws)
		if err != nil {
			return fail("%v", err)
		}
		sc = m
	} else {
		s, err := build(name)
		if err != nil {
			return fail("%v", err)
		}
		sc = s
	}

	var base *loadtest.Result
	if *compareWith != "" {
		f, err := os.Open(*compareWith)
		if err != nil {
			return usage("--compare: %v", err)
		}
		b, err := loadtest.ReadResult(f)
		f.Close()
		if err != nil {
			return usage("--compare %s: %v", *compareWith, err)
		}
		base = &b
	}

	cfg.Progress = loadtestProgress(e, "")
	fmt.Fprintf(e.stderr, "preparing %d virtual clients …\n", cfg.Concurrency)
	res, runErr := loadtest.Run(ctx, cfg, sc)
	loadtestEndProgress(e, cfg.Progress)
	if runErr != nil && res.Report.Scenario == "" {
		return fail("%v", runErr)
	}
	out := loadtestResultOutput{Command: redactedCommand("tally loadtest "+name, args), Result: res}
	if base != nil {
		out.Compare = loadtest.CompareResults(*base, res)
	}
	if err := loadtestWrite(e, *output, out, out.writeText); err != nil {
		return fail("%v", err)
	}
	if *htmlOut != "" {
		if err := writeLoadtestHTML(*htmlOut, out.Command, res); err != nil {
			return fail("--report: %v", err)
		}
		fmt.Fprintf(e.stderr, "wrote %s\n", *htmlOut)
	}
	if runErr != nil {
		return fail("stopped early: %v", runErr)
	}
	if res.Report.OK == 0 {
		return fail("no iteration succeeded")
	}
	return 0
}

func (o loadtestResultOutput) writeText(w io.Writer) error {
	reports := append([]loadtest.Report{o.Report}, o.Parts()...)
	if err := loadtest.WriteTable(w, reports...); err != nil {
		return err
	}
	for _, ev := range o.Events {
		if _, err := fmt.Fprintf(w, "event at %.3fs: %s\n", ev.AtMS/1000, ev.Label); err != nil {
			return err
		}
	}
	if o.Compare != nil {
		if _, err := fmt.Fprintln(w, "\nagainst the base report (current / base):"); err != nil {
			return err
		}
		return loadtest.WriteRatios(w, o.Compare)
	}
	return nil
}

// writeLoadtestHTML writes the HTML report to path, replacing it only once
// complete.
func writeLoadtestHTML(path, title string, res loadtest.Result) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := loadtest.WriteHTML(f, title, res); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}
