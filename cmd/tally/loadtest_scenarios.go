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

// scenarioCmd is one "tally loadtest SCENARIO" invocation: its flags,
// then what its steps (plan, set-up, build, run, report) derive.
type scenarioCmd struct {
	name string
	args []string
	e    env

	targets                                      stringsFlag
	users                                        userFlag
	tokenURL, clientID, clientSecret, scope, mix string
	publicID, redirectURI, flowScope             string
	adminServer, adminToken, tenant              string
	output, htmlOut, compareWith                 string
	pool, nUsers                                 int
	timeout                                      time.Duration
	cfg                                          loadtest.RunConfig
	parts                                        []loadtest.MixEntry
	needs                                        map[string]bool
	tgs                                          []loadtest.Target
	flow                                         loadtest.UserFlow
	admin                                        adminv1connect.AdminServiceClient
	closers                                      []func()
}

func runLoadtestScenario(ctx context.Context, name string, args []string, e env) int {
	c := &scenarioCmd{name: name, args: args, e: e}
	if code := c.parse(); code >= 0 {
		return code
	}
	if code := c.plan(); code >= 0 {
		return code
	}
	defer func() {
		for _, f := range c.closers {
			f()
		}
	}()
	if err := c.discover(ctx); err != nil {
		return c.fail("%v", err)
	}
	if code := c.credentials(ctx); code >= 0 {
		return code
	}
	sc, err := c.scenario(ctx)
	if err != nil {
		return c.fail("%v", err)
	}
	return c.run(ctx, sc)
}

func (c *scenarioCmd) usage(format string, a ...any) int {
	fmt.Fprintf(c.e.stderr, "tally loadtest %s: "+format+"\n", append([]any{c.name}, a...)...)
	return 2
}

func (c *scenarioCmd) fail(format string, a ...any) int {
	fmt.Fprintf(c.e.stderr, "tally loadtest %s: "+format+"\n", append([]any{c.name}, a...)...)
	return 1
}

// parse reads the flags and the environment; a code >= 0 ends the command.
func (c *scenarioCmd) parse() int {
	e := c.e
	def := loadtest.DefaultRunConfig()
	fs := loadtestFlags(c.name, e)
	fs.Usage = func() { fmt.Fprint(e.stderr, loadtestScenarioUsage); fs.PrintDefaults() }
	fs.Var(&c.targets, "target", "issuer `URL` (repeatable: round-robin)")
	fs.StringVar(&c.tokenURL, "token-url", "", "client-credentials only: token endpoint `URL` (skips discovery)")
	fs.StringVar(&c.clientID, "client-id", "", "confidential client id (client-credentials, introspect)")
	fs.StringVar(&c.clientSecret, "client-secret", "", "its secret (env TALLY_CLIENT_SECRET)")
	fs.StringVar(&c.scope, "scope", "", "scope of client_credentials requests")
	fs.StringVar(&c.mix, "mix", "", "mixed: `name=weight,…`")
	fs.IntVar(&c.pool, "pool", 1000, "introspect: tokens minted before the run")
	fs.StringVar(&c.publicID, "public-client-id", "", "refresh, authcode: public client id")
	fs.StringVar(&c.redirectURI, "redirect-uri", "", "refresh, authcode: its registered redirect URI")
	fs.Var(&c.users, "user", "refresh, authcode: `NAME:PASSWORD` of a user (repeatable)")
	fs.IntVar(&c.nUsers, "users", 0, "refresh, authcode: users to create through the admin API, each signed in once (default: one per virtual client, at most 10; tally allows 20 password attempts a minute per client IP)")
	fs.StringVar(&c.flowScope, "flow-scope", loadtest.DefaultFlowScope, "refresh, authcode: scope requested at the authorization endpoint")
	fs.StringVar(&c.adminServer, "admin-server", "", "admin API base `URL` for set-up (env TALLY_SERVER)")
	fs.StringVar(&c.adminToken, "admin-token", "", "admin token (env TALLY_ADMIN_TOKEN, TALLY_ADMIN_TOKEN_FILE)")
	fs.StringVar(&c.tenant, "tenant", "default", "tenant of what is created for the run")
	concurrency := fs.Int("concurrency", def.Concurrency, "closed-loop virtual clients; with --rate, the bound on iterations in flight")
	rate := fs.Float64("rate", 0, "open-loop arrival rate in iterations/s (0: closed loop)")
	duration := fs.Duration("duration", def.Duration, "recorded time after the warm-up (0: until --requests)")
	requests := fs.Int64("requests", 0, "stop after this many recorded iterations (0: until --duration)")
	warmup := fs.Duration("warmup", def.Warmup, "unrecorded warm-up")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "timeout of one HTTP request")
	fs.StringVar(&c.output, "output", "text", "text or json")
	fs.StringVar(&c.htmlOut, "report", "", "write a self-contained HTML report to `FILE`")
	fs.StringVar(&c.compareWith, "compare", "", "print ratios against the earlier --output json `FILE`")
	if code := loadtestParse(fs, c.args, e); code >= 0 {
		return code
	}
	if !loadtestCheckOutput(c.output, e, c.name) {
		return 2
	}
	if c.clientSecret == "" && e.getenv != nil {
		c.clientSecret = e.getenv("TALLY_CLIENT_SECRET")
	}
	if c.adminServer == "" && e.getenv != nil {
		c.adminServer = e.getenv("TALLY_SERVER")
	}
	c.cfg = def
	c.cfg.Concurrency, c.cfg.Rate, c.cfg.Duration, c.cfg.Requests, c.cfg.Warmup = *concurrency, *rate, *duration, *requests, *warmup
	if err := c.cfg.Validate(); err != nil {
		return c.usage("%v", err)
	}
	if c.timeout <= 0 || c.pool < 1 || c.nUsers < 0 {
		return c.usage("--timeout and --pool must be positive, --users not negative")
	}
	return -1
}

// premadeFlow reports whether user-flow credentials were given.
func (c *scenarioCmd) premadeFlow() bool {
	return c.publicID != "" || c.redirectURI != "" || len(c.users) > 0
}

// plan decides which scenarios run, and so what they need; a code >= 0
// ends the command.
func (c *scenarioCmd) plan() int {
	c.parts = []loadtest.MixEntry{{Scenario: c.name, Weight: 1}}
	if c.name == loadtest.ScenarioMixed {
		if c.mix == "" {
			return c.usage("--mix is required, e.g. --mix client-credentials=70,introspect=20,refresh=10")
		}
		var err error
		if c.parts, err = loadtest.ParseMix(c.mix); err != nil {
			return c.usage("%v", err)
		}
		for _, p := range c.parts {
			if p.Scenario == loadtest.ScenarioMixed || !slices.Contains(loadtestScenarioNames, p.Scenario) {
				return c.usage("unknown scenario %q in --mix", p.Scenario)
			}
		}
	} else if c.mix != "" {
		return c.usage("--mix is for the mixed scenario")
	}
	c.needs = map[string]bool{}
	for _, p := range c.parts {
		c.needs[p.Scenario] = true
	}
	if c.tokenURL != "" && (c.name != loadtest.ScenarioClientCredentials || len(c.targets) > 0) {
		return c.usage("--token-url is for client-credentials without --target")
	}
	if len(c.targets) == 0 && c.tokenURL == "" {
		return c.usage("--target is required")
	}
	if c.needFlow() && c.premadeFlow() && (c.publicID == "" || c.redirectURI == "" || len(c.users) == 0) {
		return c.usage("pre-made user-flow credentials need --public-client-id, --redirect-uri and at least one --user")
	}
	if c.needs[loadtest.ScenarioRevokePropagation] && c.adminServer == "" {
		return c.usage("revoke-propagation needs --admin-server (or TALLY_SERVER)")
	}
	return -1
}

func (c *scenarioCmd) needFlow() bool {
	return c.needs[loadtest.ScenarioRefresh] || c.needs[loadtest.ScenarioAuthCode]
}

func (c *scenarioCmd) needConfidential() bool {
	return c.needs[loadtest.ScenarioClientCredentials] || c.needs[loadtest.ScenarioIntrospect] || c.needs[loadtest.ScenarioRevokePropagation]
}

// adminAPI is the admin API client, built only if something must be
// created or revoked.
func (c *scenarioCmd) adminAPI() (adminv1connect.AdminServiceClient, error) {
	if c.admin != nil {
		return c.admin, nil
	}
	g := newAdminGlobals()
	g.server, g.token = c.adminServer, c.adminToken
	if g.server == "" {
		return nil, usagef("give the credentials, or --admin-server (or TALLY_SERVER) to create them")
	}
	s, err := newAdminSession(g, c.e)
	if err != nil {
		return nil, err
	}
	c.admin, err = s.client()
	return c.admin, err
}

// discover finds the targets' endpoints.
func (c *scenarioCmd) discover(ctx context.Context) error {
	if c.tokenURL != "" {
		c.tgs = []loadtest.Target{{Issuer: c.tokenURL, TokenURL: c.tokenURL}}
	}
	for _, t := range c.targets {
		tg, err := loadtest.DiscoverTarget(ctx, t)
		if err != nil {
			return err
		}
		c.tgs = append(c.tgs, tg)
	}
	c.cfg.Target = strings.Join(c.targets, ",")
	if c.cfg.Target == "" {
		c.cfg.Target = c.tokenURL
	}
	return nil
}

// credentials creates the confidential client and the user flow's public
// client and users that were not given; a code >= 0 ends the command.
func (c *scenarioCmd) credentials(ctx context.Context) int {
	if c.needConfidential() && c.clientID == "" {
		api, err := c.adminAPI()
		if err != nil {
			return c.fail("no --client-id: %v", err)
		}
		format := "jwt"
		if c.needs[loadtest.ScenarioIntrospect] {
			format = "opaque"
		}
		req := &adminv1.CreateClientRequest{Tenant: c.tenant, Name: "loadtest-" + c.name, GrantTypes: []string{"client_credentials"}, TokenFormat: format}
		if c.scope != "" {
			req.Scopes = strings.Fields(c.scope)
		}
		cl, err := api.CreateClient(ctx, connect.NewRequest(req))
		if err != nil {
			return c.fail("creating the confidential client: %v", err)
		}
		c.clientID, c.clientSecret = cl.Msg.Client.ClientId, cl.Msg.ClientSecret
		fmt.Fprintf(c.e.stderr, "created client %s (%s tokens) in tenant %s\n", c.clientID, format, c.tenant)
	}
	if !c.needFlow() {
		return -1
	}
	if c.premadeFlow() {
		c.flow = loadtest.UserFlow{ClientID: c.publicID, RedirectURI: c.redirectURI, Users: c.users, Scope: c.flowScope, Timeout: c.timeout}
		return -1
	}
	api, err := c.adminAPI()
	if err != nil {
		return c.fail("no --public-client-id and --user: %v", err)
	}
	n := c.nUsers
	if n == 0 {
		n = min(c.cfg.Concurrency, 10)
	}
	fmt.Fprintf(c.e.stderr, "creating %d users and a public client in tenant %s …\n", n, c.tenant)
	if c.flow, err = loadtest.SetupUserFlow(ctx, api, c.tenant, n); err != nil {
		return c.fail("%v", err)
	}
	c.flow.Timeout = c.timeout
	if c.flowScope != loadtest.DefaultFlowScope {
		c.flow.Scope = c.flowScope
	}
	return -1
}

// build makes one scenario.
func (c *scenarioCmd) build(ctx context.Context, sc string) (loadtest.Scenario, error) {
	switch sc {
	case loadtest.ScenarioClientCredentials:
		return loadtest.NewClientCredentialsScenario(c.tgs, c.clientID, c.clientSecret, c.scope, c.timeout)
	case loadtest.ScenarioIntrospect:
		fmt.Fprintf(c.e.stderr, "minting %d tokens to introspect …\n", c.pool)
		toks, err := loadtest.MintTokens(ctx, c.tgs, c.clientID, c.clientSecret, c.scope, c.pool)
		if err != nil {
			return nil, err
		}
		return loadtest.NewIntrospectScenario(c.tgs, c.clientID, c.clientSecret, toks, c.timeout)
	case loadtest.ScenarioRefresh:
		return loadtest.NewRefreshScenario(c.tgs, c.flow)
	case loadtest.ScenarioRevokePropagation:
		api, err := c.adminAPI()
		if err != nil {
			return nil, err
		}
		wc := revocation.WatcherConfig{Issuer: c.tgs[0].Issuer, Tenant: c.tenant, ServerURL: c.adminServer, ClientID: c.clientID, ClientSecret: c.clientSecret}
		for _, t := range c.tgs[1:] {
			wc.SETIssuers = append(wc.SETIssuers, t.Issuer)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		rp, err := loadtest.NewRevokePropagationScenario(wctx, api, c.tenant, wc, c.timeout)
		if err != nil {
			return nil, err
		}
		c.closers = append(c.closers, rp.Close)
		return rp, nil
	default:
		return loadtest.NewAuthCodeScenario(c.tgs, c.flow)
	}
}

// scenario is the scenario to run: the one named, or the mix.
func (c *scenarioCmd) scenario(ctx context.Context) (loadtest.Scenario, error) {
	if c.name != loadtest.ScenarioMixed {
		return c.build(ctx, c.name)
	}
	var ws []loadtest.WeightedScenario
	for _, p := range c.parts {
		s, err := c.build(ctx, p.Scenario)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Scenario, err)
		}
		ws = append(ws, loadtest.WeightedScenario{Scenario: s, Weight: p.Weight})
	}
	return loadtest.NewMixedScenario(ws)
}

// run runs sc and writes the reports.
func (c *scenarioCmd) run(ctx context.Context, sc loadtest.Scenario) int {
	e := c.e
	var base *loadtest.Result
	if c.compareWith != "" {
		f, err := os.Open(c.compareWith)
		if err != nil {
			return c.usage("--compare: %v", err)
		}
		b, err := loadtest.ReadResult(f)
		f.Close()
		if err != nil {
			return c.usage("--compare %s: %v", c.compareWith, err)
		}
		base = &b
	}
	cfg := c.cfg
	cfg.Progress = loadtestProgress(e, "")
	fmt.Fprintf(e.stderr, "preparing %d virtual clients …\n", cfg.Concurrency)
	res, runErr := loadtest.Run(ctx, cfg, sc)
	loadtestEndProgress(e, cfg.Progress)
	if runErr != nil && res.Report.Scenario == "" {
		return c.fail("%v", runErr)
	}
	out := loadtestResultOutput{Command: redactedCommand("tally loadtest "+c.name, c.args), Result: res}
	if base != nil {
		out.Compare = loadtest.CompareResults(*base, res)
	}
	if err := loadtestWrite(e, c.output, out, out.writeText); err != nil {
		return c.fail("%v", err)
	}
	if c.htmlOut != "" {
		if err := writeLoadtestHTML(c.htmlOut, out.Command, res); err != nil {
			return c.fail("--report: %v", err)
		}
		fmt.Fprintf(e.stderr, "wrote %s\n", c.htmlOut)
	}
	if runErr != nil {
		return c.fail("stopped early: %v", runErr)
	}
	if res.Report.OK == 0 {
		return c.fail("no iteration succeeded")
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
