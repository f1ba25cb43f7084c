package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/localcluster"
)

const attackUsage = `Usage: tally loadtest attack [--scenarios stuffing,spray,device-guess,introspect-guess,token-flood]
        [--nodes 3] [--duration 10s] [--extend 0s] [--attackers 8] [--sources 64] [--real-users 4]
        [--flood-limit 6000] [--output text|json]
       tally loadtest attack --target NODE_URL [--target NODE_URL …] [--admin-server URL]
        [--admin-token TOKEN | --admin-token-file FILE] [same flags]

Without --target, starts a real tally cluster in this process (--nodes nodes on loopback,
rate limits on, the load generator trusted as the nodes' proxy so that
X-Forwarded-For carries the attacking and real addresses, a SIEM feed on
node0) and runs each attack scenario against every node at once:

  stuffing          wrong passwords for many accounts (half exist) from --sources
                    addresses in many /24 subnets
  spray             wrong passwords for one account from --sources addresses while
                    its owner signs in from their own address
  device-guess      a signed-in attacker guessing device user codes (RFC 8628 §5.1)
  introspect-guess  random tokens at the introspection endpoint with a resource
                    server's credentials (token guessing)
  token-flood       one client asking for tokens as fast as it can on every node,
                    against a cluster-wide budget of --flood-limit a minute, while
                    another client of the tenant takes tokens from the same address

With --target, drills an already-deployed cluster instead, talking only
HTTP to it: each --target is one node's base URL (the attack and the real
users spread over them), the admin API of --admin-server (default: the first
target; env TALLY_SERVER) with the admin token (--admin-token, env
TALLY_ADMIN_TOKEN or TALLY_ADMIN_TOKEN_FILE) creates a tenant of its own for
the drill (--tenant, default attack-drill-<random>) with its users and
clients, and the drill deletes that tenant afterwards. The nodes must trust
this machine as a proxy (tally serve --trusted-proxies) for the attacking
addresses to count, --flood-limit must be the cluster's per-client budget
(default there: tally's default, 60000 a minute), and alerts are read from
the tenant's event log (EventsService.WatchRevocations on the first target),
timed when the drill receives them.

Each scenario runs the real users alone for --duration, then the attack
beside them for --duration (with --extend, each phase goes on past
--duration, by at most --extend, until the real users finished an attempt
and the attack was throttled and its alert seen: for a slow or loaded
machine; the figures are then over the phases' actual length), and
reports side by side: the real users'
success rate and p50/p99 before and during the attack; the attacker's
attempts, throttled answers, answers on the merits, successes; the time
from the attack's start to its first throttled answer and to the first
security alert about it in the SIEM feed; for token-flood the tokens
granted per minute against the budget and the overshoot.

Flags:
`

// runLoadtestAttack is tally loadtest attack (attackUsage): it drills the
// deployed cluster at --target (runRemoteAttack) or, without --target, a
// cluster it starts itself (runLocalAttack).
func runLoadtestAttack(ctx context.Context, args []string, e env) int {
	o, code := parseAttackFlags(args, e)
	if code >= 0 {
		return code
	}
	cmdline := "tally loadtest attack " + strings.Join(redactArgs(args), " ")
	if len(o.targets) > 0 {
		return runRemoteAttack(ctx, e, o.admin, o.targets, o.tenant, o.scenarios, o.floodLimit, cmdline, o.output, func(cfg *loadtest.AttackConfig) {
			cfg.Duration, cfg.Extend, cfg.Attackers, cfg.RealUsers, cfg.Sources = o.duration, o.extend, o.attackers, o.realUsers, o.sources
		})
	}
	return runLocalAttack(ctx, e, o, cmdline)
}

// attackOptions are the flags of tally loadtest attack, parsed and checked
// by parseAttackFlags.
type attackOptions struct {
	scenarios  []string // --scenarios, split at the commas
	nodes      int
	duration   time.Duration
	extend     time.Duration
	attackers  int
	sources    int
	realUsers  int
	floodLimit int
	output     string
	targets    []string      // --target: drill a deployed cluster
	admin      *adminGlobals // --admin-server, --admin-token, --admin-token-file
	tenant     string        // --tenant
}

// parseAttackFlags parses and checks the flags of tally loadtest attack.
// With --target and without --flood-limit, the flood limit is the
// default per-client rate limit. A code of 0 or more is the exit code to
// stop with (--help, or a usage error already reported on e.stderr); -1
// means go on.
func parseAttackFlags(args []string, e env) (attackOptions, int) {
	fs := loadtestFlags("attack", e)
	fs.Usage = func() { fmt.Fprint(e.stderr, attackUsage); fs.PrintDefaults() }
	scenarios := fs.String("scenarios", strings.Join(loadtest.AttackScenarios, ","), "comma-separated attack scenarios")
	nodes := fs.Int("nodes", 3, "cluster size")
	duration := fs.Duration("duration", 10*time.Second, "length of each phase (real users alone, then under attack)")
	extend := fs.Duration("extend", 0, "let each phase run past --duration, by at most this much, until the real users finished an attempt and the attack was throttled and its alert seen (0: fixed phases)")
	attackers := fs.Int("attackers", 8, "concurrent attacking requests")
	sources := fs.Int("sources", 64, "attacking addresses (eight per /24)")
	realUsers := fs.Int("real-users", 4, "concurrent real users")
	floodLimit := fs.Int("flood-limit", 6000, "token-flood: the flooding client's budget, requests per minute")
	output := fs.String("output", "text", "text or json")
	var targetURLs stringsFlag
	fs.Var(&targetURLs, "target", "base `URL` of a node of a deployed cluster to drill (repeatable); without it the command starts its own cluster")
	g := newAdminGlobals()
	fs.StringVar(&g.server, "admin-server", "", "with --target: admin API base `URL` (env TALLY_SERVER; default: the first --target)")
	fs.StringVar(&g.token, "admin-token", "", "with --target: admin token (env TALLY_ADMIN_TOKEN)")
	fs.StringVar(&g.tokenFile, "admin-token-file", "", "with --target: `file` holding the admin token (env TALLY_ADMIN_TOKEN_FILE)")
	drillTenant := fs.String("tenant", "", "with --target: the drill's own tenant, created and deleted (default attack-drill-<random>)")
	if code := loadtestParse(fs, args, e); code >= 0 {
		return attackOptions{}, code
	}
	floodSet := false
	fs.Visit(func(f *flag.Flag) { floodSet = floodSet || f.Name == "flood-limit" })
	if len(targetURLs) > 0 && !floodSet {
		*floodLimit = issuance.DefaultRateLimits().PerClient
	}
	if !loadtestCheckOutput(*output, e, "attack") {
		return attackOptions{}, 2
	}
	list := strings.Split(*scenarios, ",")
	for _, s := range list {
		if !slices.Contains(loadtest.AttackScenarios, s) {
			fmt.Fprintf(e.stderr, "tally loadtest attack: unknown scenario %q (want %s)\n", s, strings.Join(loadtest.AttackScenarios, ", "))
			return attackOptions{}, 2
		}
	}
	if *nodes < 1 || *nodes > 7 || *duration <= 0 || *extend < 0 || *attackers < 1 || *sources < 1 || *realUsers < 1 || *floodLimit < 10 {
		fmt.Fprintln(e.stderr, "tally loadtest attack: --nodes 1..7; --extend not negative; --duration, --attackers, --sources, --real-users positive; --flood-limit at least 10")
		return attackOptions{}, 2
	}
	return attackOptions{
		scenarios: list, nodes: *nodes, attackers: *attackers, sources: *sources, realUsers: *realUsers, floodLimit: *floodLimit,
		duration: *duration, extend: *extend, output: *output, targets: targetURLs, admin: g, tenant: *drillTenant,
	}, -1
}

// runLocalAttack starts its own cluster of o.nodes nodes in a temporary
// directory (startAttackCluster), prepares the default tenant for the
// attacks and runs o's scenarios against every node, with node 0's SIEM
// file as the alert feed. The directory is removed afterwards.
func runLocalAttack(ctx context.Context, e env, o attackOptions, cmdline string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "tally loadtest attack: "+format+"\n", a...)
		return 1
	}
	dir, err := os.MkdirTemp("", "tally-attack-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	siemPath := filepath.Join(dir, "siem.jsonl")
	const tenant = "default"
	fmt.Fprintf(e.stderr, "starting a %d-node tally cluster in %s …\n", o.nodes, dir)
	cl, err := startAttackCluster(ctx, dir, o.nodes, tenant, o.floodLimit, siemPath)
	if err != nil {
		return fail("%v", err)
	}
	defer cl.Close()
	prep, err := attackPrepare(ctx, cl.Node(0).Admin, tenant)
	if err != nil {
		return fail("%v", err)
	}
	if err := cl.WaitConverged(ctx, 30*time.Second); err != nil {
		return fail("%v", err)
	}
	var targets []loadtest.Target
	for i := range o.nodes {
		base := cl.Node(i).URL() + "/t/" + tenant
		targets = append(targets, loadtest.Target{Issuer: base, TokenURL: base + "/oauth2/token", IntrospectURL: base + "/oauth2/introspect", AuthorizeURL: base + "/oauth2/authorize"})
	}
	feed := &siemFeed{path: siemPath}
	cfg := prep
	cfg.Targets, cfg.FloodPerMinute, cfg.Alerted = targets, o.floodLimit, feed.alerted
	cfg.Duration, cfg.Extend, cfg.Attackers, cfg.RealUsers, cfg.Sources, cfg.Timeout = o.duration, o.extend, o.attackers, o.realUsers, o.sources, 10*time.Second
	return runAttackScenarios(ctx, e, cfg, o.scenarios, attackOutput{Command: cmdline, Nodes: o.nodes}, o.output)
}

// startAttackCluster starts a local cluster of nodes nodes in dir (fast
// profile, three regions) whose rate limits trust 127.0.0.1 as a proxy
// and give tenant's clients floodLimit requests per minute; node 0 writes
// the SIEM file siemPath. The nodes' embedded NATS servers form one
// cluster: the rate limits and failure counts are shared over it.
func startAttackCluster(ctx context.Context, dir string, nodes int, tenant string, floodLimit int, siemPath string) (*localcluster.Cluster, error) {
	natsClients, err := freeLoopbackAddrs(2 * nodes)
	if err != nil {
		return nil, err
	}
	natsRoutes, natsClients := natsClients[nodes:], natsClients[:nodes]
	cl, err := localcluster.Start(ctx, localcluster.Config{
		Dir: dir, Nodes: nodes, Regions: []string{"eu-west", "us-east", "ap-south"}, Profile: "fast", MaxStale: 5 * time.Second,
		NodeOptions: []localcluster.Option{func(c *node.Config) {
			c.RateLimits = issuance.RateLimits{
				TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
				Tenants:        map[string]issuance.RateLimits{tenant: {PerClient: floodLimit}},
			}
			var i int
			fmt.Sscanf(c.NodeID, "node%d", &i)
			c.NATSListen, c.NATSClusterListen = natsClients[i], natsRoutes[i]
			c.NATSRoutes = nil
			for j, r := range natsRoutes {
				if j != i {
					c.NATSRoutes = append(c.NATSRoutes, r)
				}
			}
			if i == 0 {
				c.SIEMFile = siemPath
			}
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("starting the cluster: %w", err)
	}
	return cl, nil
}

// runAttackScenarios runs each scenario of list with cfg and writes out.
func runAttackScenarios(ctx context.Context, e env, cfg loadtest.AttackConfig, list []string, out attackOutput, output string) int {
	for _, s := range list {
		fmt.Fprintf(e.stderr, "scenario %s: %s of real users alone, then %s under attack …\n", s, cfg.Duration, cfg.Duration)
		if cfg.Extend > 0 {
			fmt.Fprintf(e.stderr, "  (each phase extended by at most %s until the attack was throttled and detected)\n", cfg.Extend)
		}
		r, err := loadtest.RunAttack(ctx, s, cfg)
		if err != nil {
			fmt.Fprintf(e.stderr, "tally loadtest attack: %s: %v\n", s, err)
			return 1
		}
		out.Results = append(out.Results, r)
	}
	if err := loadtestWrite(e, output, out, out.writeText); err != nil {
		fmt.Fprintf(e.stderr, "tally loadtest attack: %v\n", err)
		return 1
	}
	return 0
}

// attackPrepare creates in tenant, through admin, what the scenarios
// need: the public client and 48 real users, the attacker's own account,
// and three confidential clients (orders-api, billing-api, runaway-batch).
func attackPrepare(ctx context.Context, admin adminv1connect.AdminServiceClient, tenant string) (loadtest.AttackConfig, error) {
	flow, err := loadtest.SetupUserFlow(ctx, admin, tenant, 1)
	if err != nil {
		return loadtest.AttackConfig{}, err
	}
	// The other real users, created eight at a time (each is a password
	// hash and a Raft write).
	more := make([]loadtest.User, 47)
	errs := make([]error, len(more))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range more {
		more[i] = loadtest.User{Username: fmt.Sprintf("%s-u%d", flow.Users[0].Username, i), Password: flow.Users[0].Password + fmt.Sprint(i)}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = retryUnavailable(ctx, func() error {
				_, err := admin.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{Tenant: tenant, Username: more[i].Username, Password: more[i].Password, Name: "Load Test"}))
				return err
			})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return loadtest.AttackConfig{}, fmt.Errorf("creating a user: %w", err)
		}
	}
	flow.Users = append(flow.Users, more...)
	attacker := loadtest.User{Username: "mallory-" + strings.ToLower(flow.ClientID[len(flow.ClientID)-6:]), Password: "correct horse battery staple " + flow.ClientID}
	if err := retryUnavailable(ctx, func() error {
		_, err := admin.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{Tenant: tenant, Username: attacker.Username, Password: attacker.Password, Name: "Mallory"}))
		return err
	}); err != nil {
		return loadtest.AttackConfig{}, fmt.Errorf("creating the attacker's account: %w", err)
	}
	newClient := func(name string) (loadtest.ClientCreds, error) {
		var c *connect.Response[adminv1.CreateClientResponse]
		err := retryUnavailable(ctx, func() (err error) {
			c, err = admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: tenant, Name: name, GrantTypes: []string{"client_credentials"}, Scopes: []string{"read:orders"}, Audiences: []string{"https://orders.example"}}))
			return err
		})
		if err != nil {
			return loadtest.ClientCreds{}, fmt.Errorf("creating client %s: %w", name, err)
		}
		return loadtest.ClientCreds{ID: c.Msg.Client.ClientId, Secret: c.Msg.ClientSecret}, nil
	}
	cfg := loadtest.AttackConfig{Flow: flow, Attacker: attacker}
	for _, c := range []struct {
		name string
		to   *loadtest.ClientCreds
	}{{"orders-api", &cfg.Client}, {"billing-api", &cfg.Bystander}, {"runaway-batch", &cfg.Flooder}} {
		if *c.to, err = newClient(c.name); err != nil {
			return loadtest.AttackConfig{}, err
		}
	}
	return cfg, nil
}

// retryUnavailable calls f until it does not fail with Unavailable or
// DeadlineExceeded (a cluster between leaders, or too slow for the
// write's deadline), at most five times, a second apart. A retry that
// finds AlreadyExists counts as done: the names are this run's own, so an
// earlier attempt was applied after all.
func retryUnavailable(ctx context.Context, f func() error) error {
	var err error
	for i := range 5 {
		err = f()
		if i > 0 && connect.CodeOf(err) == connect.CodeAlreadyExists {
			return nil
		}
		if c := connect.CodeOf(err); c != connect.CodeUnavailable && c != connect.CodeDeadlineExceeded {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
	return err
}

// redactArgs is args with the value of --admin-token replaced: the report
// repeats the command line and must not carry a secret.
func redactArgs(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		name, _, eq := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "admin-token" || !strings.HasPrefix(a, "-") {
			continue
		}
		if eq {
			out[i] = a[:strings.Index(a, "=")+1] + "REDACTED"
		} else if i+1 < len(out) {
			out[i+1] = "REDACTED"
		}
	}
	return out
}

// freeLoopbackAddrs returns n loopback addresses with ports free now.
func freeLoopbackAddrs(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

type attackOutput struct {
	Command string `json:"command"`
	Nodes   int    `json:"nodes"`
	// Tenant is the drill's own tenant (--target), deleted after the run.
	Tenant  string                  `json:"tenant,omitempty"`
	Results []loadtest.AttackResult `json:"results"`
}

func (o attackOutput) writeText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "nodes: %d\n", o.Nodes)
	fmt.Fprintln(tw, "scenario\tattempts\tthrottled\tchecked\tsucceeded\tchecked/source/min\tfirst throttle s\talert s\treal users ok before\tduring\tp99 ms before\tduring")
	fig := func(u loadtest.UserFigures) string { return fmt.Sprintf("%d/%d", u.OK, u.Attempts) }
	for _, r := range o.Results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.1f\t%s\t%s\t%s\t%s\t%.1f\t%.1f\n", r.Scenario, r.Attempts, r.Throttled, r.Checked, r.Succeeded,
			r.CheckedPerSourceMinute, secs(r.FirstThrottleSeconds), secs(r.AlertSeconds), fig(r.Baseline), fig(r.Users), r.Baseline.P99Ms, r.Users.P99Ms)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range o.Results {
		for _, u := range []struct {
			what string
			f    map[string]int64
		}{{"real users before the attack", r.Baseline.Failures}, {"real users during the attack", r.Users.Failures}} {
			if len(u.f) > 0 {
				fmt.Fprintf(w, "%s: %s failed: %v\n", r.Scenario, u.what, u.f)
			}
		}
		if r.Victim != nil {
			fmt.Fprintf(w, "%s: the attacked account's owner signed in %d of %d times during the attack (p99 %.1f ms; failed: %v)\n", r.Scenario, r.Victim.OK, r.Victim.Attempts, r.Victim.P99Ms, r.Victim.Failures)
		}
		if r.LimitPerMinute > 0 {
			fmt.Fprintf(w, "%s: budget %d/min; granted %.0f/min over the attack (overshoot %+.1f%% incl. %d bursts of %d), %.0f/min in its second half (%+.1f%%)\n",
				r.Scenario, r.LimitPerMinute, r.GrantedPerMinute, 100*r.Overshoot, r.Targets, r.BurstAllowancePerTarget, r.SteadyGrantedPerMinute, 100*r.SteadyOvershoot)
		}
	}
	return nil
}

func secs(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// siemFeed reads the SIEM JSON lines of node0 for security alerts.
type siemFeed struct {
	path string
	mu   sync.Mutex
}

// alerted reports the time of the first alert of kind at or after since.
func (f *siemFeed) alerted(_ context.Context, kind string, since time.Time) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	file, err := os.Open(f.path)
	if err != nil {
		return time.Time{}, false
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev struct {
			Time     int64          `json:"time"`
			Unmapped map[string]any `json:"unmapped"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		at := time.UnixMilli(ev.Time)
		if k, _ := ev.Unmapped["alert"].(string); k == kind && !at.Before(since.Truncate(time.Millisecond)) {
			return at, true
		}
	}
	return time.Time{}, false
}
