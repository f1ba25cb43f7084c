package main

// tally loadtest: closed- and open-loop load against a token endpoint, the
// bare baseline endpoint, and the in-process comparison of both whose output
// goes into loadtest/BENCHMARKS.md. The measuring lives in package loadtest;
// this file reads flags and prints.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/localcluster"
)

const loadtestUsage = `tally loadtest — measure how fast a token endpoint issues tokens

Usage:
  tally loadtest client-credentials|introspect|refresh|authcode|mixed|revoke-propagation
        --target ISSUER_URL [--target …] [--client-id ID --client-secret SECRET]
        [--admin-server URL] [--mix name=weight,…]
        [--concurrency 32 | --rate N] [--duration 10s] [--requests N]
        [--warmup 1s] [--timeout 10s] [--output text|json]
        [--report FILE.html] [--compare BASE.json]
      Closed-loop load (--concurrency virtual clients) or, with --rate,
      open-loop load at N iterations/s with at most --concurrency in flight,
      latency measured from each iteration's scheduled start. Endpoints are
      discovered from each issuer's RFC 8414 / OpenID metadata (client-
      credentials also takes --token-url); several --target flags spread the
      load round-robin. Users, clients and token pools are created through
      the admin API when not given. "tally loadtest SCENARIO -h" for all flags.

  tally loadtest baseline [--listen 127.0.0.1:0] [--alg ES256|EdDSA]
        [--client-id ID] [--client-secret SECRET] [--scope S] [--output text|json]
      Serve the bare baseline token endpoint (form parsing, Basic client
      authentication, RFC 9068 JWT signing, JSON answer; nothing else) and
      print its issuer, token URL and client credentials, until interrupted.

  tally loadtest compare [--concurrency 32] [--duration 10s] [--warmup 1s]
        [--rounds 2] [--alg ES256|EdDSA] [--format jwt|opaque] [--output text|json]
        [--sides baseline|rate-limits] [--cpuprofile FILE]
      Start a real single tally node (in a temporary directory) and the
      baseline in this process, on loopback, and run the same closed-loop
      client_credentials load against each alternately (baseline, tally,
      baseline, tally, …), then print every run, both sides merged, the
      ratios tally/baseline of throughput and p99, and the throughput ratio
      of each round with their median. With --sides rate-limits
      the two sides are two real nodes, one with its rate limits off and
      one with every limit on (budgets far above the load, so every request
      passes every bucket): the ratio is what rate limiting costs.
      --cpuprofile writes a CPU profile of the rounds (go tool pprof).

  tally loadtest revoke-propagation --target ISSUER_URL --admin-server URL [flags as above]
      Revocations through the admin API of a running node or cluster, each
      timed until the resource-server SDK (over Connect) has it; a scenario
      like the others (also a part of --mix).

  tally loadtest revoke-propagation [--revocations 10000] [--transport nats|connect]
        [--verify-duration 5s] [--output text|json]
      Start a real single tally node and the resource-server SDK, revoke token
      ids one at a time and report the latency from each admin
      acknowledgement to the SDK's revocation set (p50/p99), then SDK local
      verification ops/s beside a bare golang-jwt verify.

  tally loadtest attack [--scenarios stuffing,spray,device-guess,introspect-guess,token-flood]
        [--nodes 3] [--duration 10s] [--attackers 8] [--sources 64] [--real-users 4]
        [--flood-limit 6000] [--output text|json]
      Start a real tally cluster in this process and run attack scenarios
      against every node at once beside real users of the same tenant:
      attempts throttled, time to the first throttle and to the first
      security alert, real users' success rate and p99 before and during the
      attack, a client's token budget overshoot across the nodes.

Exit status: 0 success, 1 the run failed or no request succeeded, 2 usage error.
`

// loadtestDefaultScope is the scope the baseline and compare clients get.
const loadtestDefaultScope = "read:orders"

func runLoadtest(ctx context.Context, args []string, e env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, loadtestUsage)
		return 2
	}
	switch args[0] {
	case loadtest.ScenarioClientCredentials, loadtest.ScenarioIntrospect, loadtest.ScenarioRefresh,
		loadtest.ScenarioAuthCode, loadtest.ScenarioMixed:
		return runLoadtestScenario(ctx, args[0], args[1:], e)
	case "baseline":
		return runLoadtestBaseline(ctx, args[1:], e)
	case "attack":
		return runLoadtestAttack(ctx, args[1:], e)
	case "compare":
		return runLoadtestCompare(ctx, args[1:], e)
	case "revoke-propagation":
		if loadtestHasTarget(args[1:]) {
			return runLoadtestScenario(ctx, args[0], args[1:], e)
		}
		return runLoadtestRevokePropagation(ctx, args[1:], e)
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, loadtestUsage)
		return 0
	default:
		fmt.Fprintf(e.stderr, "tally loadtest: unknown scenario %q\n\n%s", args[0], loadtestUsage)
		return 2
	}
}

// loadtestFlags is a flag set that prints its errors and usage to stderr.
func loadtestFlags(name string, e env) *flag.FlagSet {
	fs := flag.NewFlagSet("tally loadtest "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage of tally loadtest %s:\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// loadtestParse parses args, allowing no positional arguments. It returns
// the exit code to stop with, or -1 to go on.
func loadtestParse(fs *flag.FlagSet, args []string, e env) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

func loadtestCheckOutput(output string, e env, cmd string) bool {
	if output != "text" && output != "json" {
		fmt.Fprintf(e.stderr, "tally loadtest %s: --output must be text or json, not %q\n", cmd, output)
		return false
	}
	return true
}

// loadtestBaselineInfo is what "tally loadtest baseline" prints.
type loadtestBaselineInfo struct {
	Issuer       string `json:"issuer"`
	TokenURL     string `json:"token_url"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	Scope        string `json:"scope"`
	Alg          string `json:"alg"`
}

// loadtestBaselineServer is a running baseline endpoint.
type loadtestBaselineServer struct {
	info loadtestBaselineInfo
	srv  *http.Server
	done chan error
}

// startLoadtestBaseline serves the baseline on listen with the tenant-style
// issuer path /t/default, so its tokens carry an issuer of the same shape
// (and length, on the same host) as tally's.
func startLoadtestBaseline(listen, alg, clientID, clientSecret, scope string) (*loadtestBaselineServer, error) {
	key, err := loadtest.NewSigningKey(alg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	cfg := loadtest.DefaultBaselineConfig()
	cfg.Issuer = "http://" + ln.Addr().String() + "/t/default"
	cfg.ClientID, cfg.ClientSecret = clientID, clientSecret
	cfg.Scopes = strings.Fields(scope)
	cfg.Alg, cfg.Key = alg, key
	h, err := loadtest.NewBaseline(cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &loadtestBaselineServer{
		info: loadtestBaselineInfo{
			Issuer: cfg.Issuer, TokenURL: cfg.Issuer + "/oauth2/token",
			ClientID: clientID, ClientSecret: clientSecret, Scope: scope, Alg: alg,
		},
		// The same server limits as a tally node's.
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
		},
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// stop shuts the server down, waiting up to five seconds for requests.
func (s *loadtestBaselineServer) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

func runLoadtestBaseline(ctx context.Context, args []string, e env) int {
	fs := loadtestFlags("baseline", e)
	listen := fs.String("listen", "127.0.0.1:0", "host:port to listen on")
	alg := fs.String("alg", loadtest.AlgES256, "signing algorithm: ES256 or EdDSA")
	clientID := fs.String("client-id", "baseline", "the client id it accepts")
	clientSecret := fs.String("client-secret", "", "the client secret it accepts (default: a random one)")
	scope := fs.String("scope", loadtestDefaultScope, "the scopes the client may request (space-separated)")
	output := fs.String("output", "text", "text or json")
	if code := loadtestParse(fs, args, e); code >= 0 {
		return code
	}
	if !loadtestCheckOutput(*output, e, "baseline") {
		return 2
	}
	if *clientSecret == "" {
		*clientSecret = rand.Text()
	}
	s, err := startLoadtestBaseline(*listen, *alg, *clientID, *clientSecret, *scope)
	if err != nil {
		fmt.Fprintf(e.stderr, "tally loadtest baseline: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(s.info)
	} else {
		_, err = fmt.Fprintf(e.stdout, "baseline token endpoint (%s), serving until interrupted\n"+
			"issuer:        %s\ntoken url:     %s\nclient id:     %s\nclient secret: %s\nscope:         %s\n\n"+
			"tally loadtest client-credentials --target %s --client-id %s --client-secret %s\n",
			s.info.Alg, s.info.Issuer, s.info.TokenURL, s.info.ClientID, s.info.ClientSecret, s.info.Scope,
			s.info.Issuer, s.info.ClientID, s.info.ClientSecret)
	}
	if err != nil {
		s.stop()
		fmt.Fprintf(e.stderr, "tally loadtest baseline: %v\n", err)
		return 1
	}
	select {
	case <-ctx.Done():
	case err = <-s.done:
		fmt.Fprintf(e.stderr, "tally loadtest baseline: %v\n", err)
		return 1
	}
	if err := s.stop(); err != nil {
		fmt.Fprintf(e.stderr, "tally loadtest baseline: %v\n", err)
		return 1
	}
	return 0
}

// loadtestMachine describes where a comparison ran.
type loadtestMachine struct {
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model,omitempty"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	// LoadAvg is /proc/loadavg's 1, 5 and 15 minute load before the run:
	// other work on the machine skews the figures.
	LoadAvg string `json:"load_avg,omitempty"`
	Note    string `json:"note"`
}

func loadtestThisMachine() loadtestMachine {
	m := loadtestMachine{
		CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		Note: "server(s) and load generator run in one process and share these cores",
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

// loadtestComparison is what "tally loadtest compare --output json" prints.
type loadtestComparison struct {
	Date    time.Time       `json:"date"`
	Command string          `json:"command"`
	Machine loadtestMachine `json:"machine"`
	Alg     string          `json:"alg"`
	Format  string          `json:"format"`
	loadtest.Comparison
}

func runLoadtestCompare(ctx context.Context, args []string, e env) int {
	machine := loadtestThisMachine() // before the node adds its own load
	f, code := parseLoadtestCompare(args, e)
	if code >= 0 {
		return code
	}
	cfg := f.cfg
	fail := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "tally loadtest compare: "+format+"\n", a...)
		return 1
	}
	dir, err := os.MkdirTemp("", "tally-loadtest-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	stop, err := startCompareSides(ctx, dir, f, &cfg, e)
	defer stop()
	if err != nil {
		return fail("%v", err)
	}
	cfg.OnRun = func(round int, ep loadtest.Endpoint) {
		loadtestEndProgress(e, cfg.Load.Progress)
		fmt.Fprintf(e.stderr, "round %d/%d: %s (%s warm-up, %s)\n", round, cfg.Rounds, ep.Name, cfg.Load.Warmup, cfg.Load.Duration)
	}
	cfg.Load.Progress = loadtestProgress(e, "  ")

	stopProfile, err := startCPUProfile(f.cpuProfile)
	if err != nil {
		return fail("%v", err)
	}
	cmp, err := loadtest.Compare(ctx, cfg)
	if perr := stopProfile(); perr != nil && err == nil {
		err = perr
	}
	loadtestEndProgress(e, cfg.Load.Progress)
	res := loadtestComparison{
		Date:       time.Now().UTC().Truncate(time.Second),
		Command:    redactedCommand("tally loadtest compare", args),
		Machine:    machine,
		Alg:        f.alg,
		Format:     f.format,
		Comparison: cmp,
	}
	if werr := loadtestWrite(e, f.output, res, res.writeText); werr != nil {
		return fail("%v", werr)
	}
	if err != nil {
		return fail("stopped early: %v", err)
	}
	if cmp.Baseline.OK == 0 || cmp.Candidate.OK == 0 {
		return fail("a side had no successful request")
	}
	return 0
}

// loadtestCompareFlags are the settings of "tally loadtest compare".
type loadtestCompareFlags struct {
	cfg                 loadtest.CompareConfig
	alg, format, output string
	// sides is what is compared: compareBaseline (the bare baseline
	// against tally) or compareRateLimits (tally with its rate limits off
	// against the same with them on).
	sides string
	// cpuProfile, when set, is where the CPU profile of the recorded
	// rounds goes (both sides and the load generator share the process).
	cpuProfile string
}

// The --sides of "tally loadtest compare".
const (
	compareBaseline   = "baseline"
	compareRateLimits = "rate-limits"
)

// compareBudget is the per-minute budget of every bucket of the rate-limits
// side: far above any load one machine can send, so that every request
// passes every bucket and the comparison measures what the limiter costs,
// not what it refuses.
const compareBudget = 1_000_000_000

// startCPUProfile starts a CPU profile written to path ("": none); stop
// ends it and closes the file.
func startCPUProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

// parseLoadtestCompare reads and checks the flags; code is the exit code
// when the command must stop (help or a usage error), -1 otherwise.
func parseLoadtestCompare(args []string, e env) (f loadtestCompareFlags, code int) {
	def := loadtest.DefaultCompareConfig()
	fs := loadtestFlags("compare", e)
	concurrency := fs.Int("concurrency", def.Load.Concurrency, "closed-loop workers")
	duration := fs.Duration("duration", def.Load.Duration, "recorded time of each run")
	warmup := fs.Duration("warmup", def.Load.Warmup, "unrecorded warm-up before each run")
	rounds := fs.Int("rounds", def.Rounds, "runs of each side, alternating")
	fs.StringVar(&f.alg, "alg", loadtest.AlgES256, "signing algorithm of both sides: ES256 or EdDSA")
	fs.StringVar(&f.format, "format", "jwt", "tally's token format: jwt or opaque (the baseline always signs a JWT)")
	fs.StringVar(&f.output, "output", "text", "text or json")
	fs.StringVar(&f.sides, "sides", compareBaseline, "baseline: the bare baseline against tally (rate limits off); rate-limits: tally with rate limits off against tally with them on (budgets far above the load)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the rounds (both sides and the load generator, one process) to `FILE`, for go tool pprof")
	if code := loadtestParse(fs, args, e); code >= 0 {
		return f, code
	}
	if !loadtestCheckOutput(f.output, e, "compare") {
		return f, 2
	}
	if f.sides != compareBaseline && f.sides != compareRateLimits {
		fmt.Fprintf(e.stderr, "tally loadtest compare: --sides must be %s or %s\n", compareBaseline, compareRateLimits)
		return f, 2
	}
	if f.alg != loadtest.AlgES256 && f.alg != loadtest.AlgEdDSA {
		fmt.Fprintf(e.stderr, "tally loadtest compare: --alg must be %s or %s\n", loadtest.AlgES256, loadtest.AlgEdDSA)
		return f, 2
	}
	if f.format != "jwt" && f.format != "opaque" {
		fmt.Fprintln(e.stderr, "tally loadtest compare: --format must be jwt or opaque")
		return f, 2
	}
	f.cfg = def
	f.cfg.Load.Concurrency, f.cfg.Load.Duration, f.cfg.Load.Warmup, f.cfg.Rounds = *concurrency, *duration, *warmup, *rounds
	if *duration <= 0 {
		fmt.Fprintln(e.stderr, "tally loadtest compare: --duration must be positive")
		return f, 2
	}
	// Validate the load before starting anything.
	probe := loadtest.Endpoint{Name: "probe", TokenURL: "http://127.0.0.1/token", ClientID: "probe"}
	check := f.cfg
	check.Baseline, check.Candidate = probe, probe
	if err := check.Validate(); err != nil {
		fmt.Fprintf(e.stderr, "tally loadtest compare: %v\n", err)
		return f, 2
	}
	return f, -1
}

// startCompareSides starts a tally node in dir and the bare baseline, with
// one client both accept, sets cfg's endpoints and waits until both issue
// tokens. stop (never nil) stops what was started.
func startCompareSides(ctx context.Context, dir string, f loadtestCompareFlags, cfg *loadtest.CompareConfig, e env) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
	}
	if f.sides == compareRateLimits {
		for i, on := range []bool{false, true} {
			sub := filepath.Join(dir, fmt.Sprintf("node%d", i))
			ep, closeNode, err := startCompareNode(ctx, sub, f, on, e)
			if closeNode != nil {
				stops = append(stops, closeNode)
			}
			if err != nil {
				return stop, err
			}
			if on {
				cfg.Candidate = ep
			} else {
				cfg.Baseline = ep
			}
		}
		return stop, waitCompareSides(ctx, cfg)
	}
	ep, closeNode, err := startCompareNode(ctx, dir, f, false, e)
	if closeNode != nil {
		stops = append(stops, closeNode)
	}
	if err != nil {
		return stop, err
	}
	// The baseline accepts the same client id and secret, so both sides get
	// the same request bytes and sign claims of the same length.
	b, err := startLoadtestBaseline("127.0.0.1:0", f.alg, ep.ClientID, ep.ClientSecret, loadtestDefaultScope)
	if err != nil {
		return stop, fmt.Errorf("starting baseline: %w", err)
	}
	stops = append(stops, func() { _ = b.stop() })
	cfg.Baseline = loadtest.Endpoint{Name: "baseline", TokenURL: b.info.TokenURL, ClientID: ep.ClientID, ClientSecret: ep.ClientSecret, Scope: loadtestDefaultScope}
	cfg.Candidate = ep
	return stop, waitCompareSides(ctx, cfg)
}

// startCompareNode starts a real tally node on dir with a load client and
// returns it as a side of the comparison: with rateLimits, every rate limit
// is on with compareBudget per minute; without, the limiter is off (the
// comparison with the baseline measures the token service, not the
// limiter: one client from one address would meet its default budget).
func startCompareNode(ctx context.Context, dir string, f loadtestCompareFlags, rateLimits bool, e env) (loadtest.Endpoint, func(), error) {
	name := "tally"
	if f.sides == compareRateLimits {
		name = "tally rate limits off"
		if rateLimits {
			name = "tally rate limits on"
		}
	}
	fmt.Fprintf(e.stderr, "starting a tally node (%s) in %s …\n", name, dir)
	n, err := localcluster.StartDir(ctx, dir, localcluster.WithConfig(func(c *node.Config) {
		c.DefaultSigningAlg = f.alg
		c.RateLimits = issuance.RateLimits{Off: true}
		if rateLimits {
			c.RateLimits = issuance.RateLimits{PerClient: compareBudget, PerUnknownClient: compareBudget, PerUsername: compareBudget,
				PerIP: compareBudget, PerSubnet: compareBudget, PerTenant: compareBudget}
		}
	}))
	if err != nil {
		return loadtest.Endpoint{}, nil, fmt.Errorf("starting node: %w", err)
	}
	const tenant = "default"
	created, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant:                tenant,
		Name:                  "load",
		GrantTypes:            []string{"client_credentials"},
		Scopes:                []string{loadtestDefaultScope},
		TokenFormat:           f.format,
		AccessTokenTtlSeconds: int64(loadtest.DefaultBaselineConfig().TTL / time.Second),
	}))
	if err != nil {
		return loadtest.Endpoint{}, func() { n.Close() }, fmt.Errorf("creating the load client: %w", err)
	}
	return loadtest.Endpoint{Name: name, TokenURL: n.TokenURL(tenant), ClientID: created.Msg.Client.ClientId,
		ClientSecret: created.Msg.ClientSecret, Scope: loadtestDefaultScope}, func() { n.Close() }, nil
}

// waitCompareSides returns once both sides issue tokens: a fresh node may
// answer temporarily_unavailable for its first moments.
func waitCompareSides(ctx context.Context, cfg *loadtest.CompareConfig) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, ep := range []loadtest.Endpoint{cfg.Baseline, cfg.Candidate} {
		if err := loadtest.WaitForToken(wctx, ep); err != nil {
			return err
		}
	}
	return nil
}

func (r loadtestComparison) writeText(w io.Writer) error {
	m := r.Machine
	cpu := m.CPUModel
	if cpu == "" {
		cpu = "unknown CPU"
	}
	load := m.LoadAvg
	if load == "" {
		load = "unknown"
	}
	if _, err := fmt.Fprintf(w, "date:    %s\ncommand: %s\nmachine: %d cores (GOMAXPROCS %d), %s, %s %s/%s; %s\n"+
		"load:    %s (1/5/15 min load average before the run)\ntokens:  %s, tally format %s\n\n",
		r.Date.Format(time.RFC3339), r.Command, m.CPUs, m.GOMAXPROCS, cpu, m.GoVersion, m.OS, m.Arch, m.Note,
		load, r.Alg, r.Format); err != nil {
		return err
	}
	return r.Comparison.WriteText(w)
}

// loadtestWrite prints v as indented JSON, or with text.
func loadtestWrite(e env, output string, v any, text func(io.Writer) error) error {
	if output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return text(e.stdout)
}

// loadtestProgress returns a progress printer that rewrites one line on
// stderr, or nil when stderr is not a terminal.
func loadtestProgress(e env, indent string) func(loadtest.Progress) {
	f, ok := e.stderr.(*os.File)
	if !ok {
		return nil
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return func(p loadtest.Progress) {
		if p.Elapsed < 0 {
			fmt.Fprintf(f, "\r\033[K%swarming up", indent)
			return
		}
		rps := 0.0
		if s := p.Elapsed.Seconds(); s > 0 {
			rps = float64(p.OK) / s
		}
		fmt.Fprintf(f, "\r\033[K%s%5.1fs  %d requests  %d ok  %d failed  %.0f ok/s",
			indent, p.Elapsed.Seconds(), p.Requests, p.OK, p.Failed, rps)
	}
}

// loadtestEndProgress ends the progress line, if one is being drawn.
func loadtestEndProgress(e env, progress func(loadtest.Progress)) {
	if progress != nil {
		fmt.Fprint(e.stderr, "\r\033[K")
	}
}
