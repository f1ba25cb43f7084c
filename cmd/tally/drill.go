package main

// tally drill failover|partition: break a cluster under load and check that
// no acknowledged write was lost (loadtest.RunDrill).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/localcluster"
)

const drillUsage = `Usage:
  tally drill failover        [flags]   kill the leader (or --graceful: transfer leadership) under load
  tally drill partition       [flags]   isolate a node or a region under load
  tally drill rolling-restart [flags]   restart every node in turn under load, followers first

By default the drill starts its own cluster in this process (--nodes, on
loopback, in a temporary directory). With --server URL it drills a running
cluster: the members come from the cluster status (admin API), their HTTP
URLs from --node ID=URL or TALLY_NODES, and the fault from your commands,
run with /bin/sh -c, {node} and {region} substituted:

  tally drill failover --server $TALLY_SERVER \
      --kill-cmd 'docker kill {node}' --restart-cmd 'docker start {node}'
  tally drill partition --server $TALLY_SERVER --isolate node3 \
      --partition-cmd 'docker network disconnect {region} {node}' \
      --heal-cmd 'docker network connect --alias {node}.{region} {region} {node}'
  tally drill rolling-restart --server $TALLY_SERVER \
      --kill-cmd 'docker stop -t 20 {node}' --restart-cmd 'docker start {node}'

Templates for Docker Compose, Kubernetes and systemd: deploy/drill/.
Each drill ends with PASS or FAIL; a violated invariant exits with 1.

Run "tally drill <drill> -h" for the flags.
`

func runDrill(ctx context.Context, args []string, e env) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, drillUsage)
		return 2
	}
	switch args[0] {
	case "failover", "partition", "rolling-restart":
		return runDrillKind(ctx, args[0], args[1:], e)
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, drillUsage)
		return 0
	default:
		fmt.Fprintf(e.stderr, "tally drill: unknown drill %q\n\n%s", args[0], drillUsage)
		return 2
	}
}

// drillFlags are the flags of both drills.
type drillFlags struct {
	kind         string
	graceful     bool
	isolate      string
	nodes        int
	regions      string
	profile      string
	dataDir      string
	server       string
	adminToken   string
	tenant       string
	clientID     string
	clientSecret string
	output       string
	report       string
	cfg          loadtest.DrillConfig

	// Against a running cluster (--server).
	nodeURLs     []string
	target       string
	killCmd      string
	restartCmd   string
	partitionCmd string
	healCmd      string
	readyTimeout time.Duration
}

func runDrillKind(ctx context.Context, kind string, args []string, e env) int {
	f := drillFlags{kind: kind, cfg: loadtest.DefaultDrillConfig()}
	fs := f.flagSet(e)
	if code := loadtestParse(fs, args, e); code >= 0 {
		return code
	}
	if f.output != "text" && f.output != "json" {
		fmt.Fprintf(e.stderr, "tally drill %s: --output must be text or json, not %q\n", kind, f.output)
		return 2
	}
	if f.clientSecret == "" {
		f.clientSecret = e.getenv("TALLY_CLIENT_SECRET")
	}
	if f.adminToken == "" {
		f.adminToken = strings.TrimSpace(e.getenv("TALLY_ADMIN_TOKEN"))
	}
	f.cfg.Name = kind
	if f.output == "text" {
		f.cfg.Event = func(ev loadtest.DrillEvent) {
			fmt.Fprintf(e.stderr, "%8.3fs  %s\n", ev.At.Seconds(), ev.Name)
		}
	}

	var rep loadtest.DrillReport
	var err error
	if f.server != "" {
		rep, err = drillRemote(ctx, f, e)
	} else {
		if f.nodes < 3 || f.nodes > 9 {
			fmt.Fprintf(e.stderr, "tally drill %s: --nodes must be in [3, 9]\n", kind)
			return 2
		}
		if f.profile != "fast" && f.profile != "lan" && f.profile != "wan" {
			fmt.Fprintf(e.stderr, "tally drill %s: --raft-profile must be lan, wan or fast\n", kind)
			return 2
		}
		rep, err = drillLocal(ctx, f, e)
	}
	return writeDrillResult(e, f, args, rep, err)
}

// flagSet defines the flags of "tally drill KIND" on f.
func (f *drillFlags) flagSet(e env) *flag.FlagSet {
	kind := f.kind
	fs := flag.NewFlagSet("tally drill "+kind, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	switch kind {
	case "failover":
		fs.BoolVar(&f.graceful, "graceful", false, "transfer leadership instead of killing the leader")
		fs.StringVar(&f.target, "target", "leader", "with --server: what to kill: leader, follower, a member id, or region:NAME")
	case "partition":
		fs.StringVar(&f.isolate, "isolate", "follower", "what to cut off: follower, leader, a node id (node1), or region:NAME")
	}
	fs.Func("node", "with --server: a member's HTTP base `ID=URL` (or URL: the id is read from its /metrics); repeatable; default TALLY_NODES (URLs separated by spaces)", func(v string) error {
		f.nodeURLs = append(f.nodeURLs, v)
		return nil
	})
	fs.StringVar(&f.killCmd, "kill-cmd", "", "with --server: `command` that kills (failover) or stops (rolling-restart) {node} in {region}")
	fs.StringVar(&f.restartCmd, "restart-cmd", "", "with --server: `command` that starts {node} again")
	fs.StringVar(&f.partitionCmd, "partition-cmd", "", "with --server: `command` that cuts {node} in {region} off from the other nodes")
	fs.StringVar(&f.healCmd, "heal-cmd", "", "with --server: `command` that undoes --partition-cmd")
	fs.DurationVar(&f.readyTimeout, "ready-timeout", 2*time.Minute, "with --server: bound on the wait for a restarted or healed node's /readyz")
	fs.IntVar(&f.nodes, "nodes", 3, "voters of the cluster the drill starts")
	fs.StringVar(&f.regions, "regions", "east,west", "region labels, assigned to the started nodes in turn")
	fs.StringVar(&f.profile, "raft-profile", "lan", "Raft timing of the started cluster: lan, wan, or fast (300 ms timeouts)")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory for the started cluster (default: a temporary one, removed after)")
	fs.StringVar(&f.server, "server", "", "drill a running cluster through this admin API `URL` (a node or the front door) instead")
	fs.StringVar(&f.adminToken, "admin-token", "", "admin bearer token for --server (env TALLY_ADMIN_TOKEN)")
	fs.StringVar(&f.tenant, "tenant", node.DefaultTenant, "tenant of the load (with --server)")
	fs.StringVar(&f.clientID, "client-id", "", "client_credentials client for the load (with --server; default: one created through the admin API)")
	fs.StringVar(&f.clientSecret, "client-secret", "", "its secret (env TALLY_CLIENT_SECRET)")
	fs.DurationVar(&f.cfg.Before, "before", f.cfg.Before, "load before the fault")
	fs.DurationVar(&f.cfg.FaultFor, "fault-for", f.cfg.FaultFor, "time from the fault to the heal (restart, end of the partition)")
	fs.DurationVar(&f.cfg.After, "after", f.cfg.After, "load after the heal")
	fs.IntVar(&f.cfg.IssueWorkers, "issue-workers", f.cfg.IssueWorkers, "client-credentials workers")
	fs.IntVar(&f.cfg.WriteWorkers, "write-workers", f.cfg.WriteWorkers, "revocation workers")
	fs.DurationVar(&f.cfg.MaxStale, "max-stale", f.cfg.MaxStale, "staleness bound of the nodes (set on the started cluster)")
	fs.DurationVar(&f.cfg.StaleGrace, "stale-grace", f.cfg.StaleGrace, "slack past --max-stale before an isolated node that still issues is a violation")
	fs.DurationVar(&f.cfg.VerifyTimeout, "verify-timeout", f.cfg.VerifyTimeout, "bound on the wait for every node to show every acknowledged write")
	fs.StringVar(&f.output, "output", "text", "text or json")
	fs.StringVar(&f.report, "report", "", "also write a self-contained HTML report (latency and throughput over time, the drill's events marked) to `FILE`")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage of tally drill %s:\n", kind)
		fs.PrintDefaults()
	}
	return fs
}

// writeDrillResult reports the drill's outcome (err from drillRemote or
// drillLocal) as --output and --report say and returns the exit code.
func writeDrillResult(e env, f drillFlags, args []string, rep loadtest.DrillReport, err error) int {
	kind := f.kind
	var usage *adminUsageError
	if errors.As(err, &usage) {
		fmt.Fprintf(e.stderr, "tally drill %s: %v\n", kind, err)
		return 2
	}
	if err != nil && !errors.Is(err, loadtest.ErrDrillFailed) {
		fmt.Fprintf(e.stderr, "tally drill %s: %v\n", kind, err)
		return 1
	}
	if f.report != "" {
		if werr := writeDrillHTML(f.report, "tally drill "+strings.Join(append([]string{kind}, args...), " "), rep); werr != nil {
			fmt.Fprintf(e.stderr, "tally drill %s: %v\n", kind, werr)
			return 1
		}
	}
	if f.output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if werr := enc.Encode(rep); werr != nil {
			return 1
		}
	} else if werr := rep.WriteText(e.stdout); werr != nil {
		return 1
	}
	if err != nil {
		return 1
	}
	return 0
}

// drillLocal starts a cluster in this process and drills it.
func drillLocal(ctx context.Context, f drillFlags, e env) (loadtest.DrillReport, error) {
	dir := f.dataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "tally-drill-")
		if err != nil {
			return loadtest.DrillReport{}, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	regions := strings.Split(f.regions, ",")
	if slices.Contains(regions, "") {
		return loadtest.DrillReport{}, usagef("--regions holds an empty label")
	}
	// Rate limits off: the drill's load comes from one client on one
	// address, more than a client's budget on a fast machine.
	ccfg := localcluster.Config{Dir: dir, Nodes: f.nodes, Regions: regions, Profile: f.profile, MaxStale: f.cfg.MaxStale, RateLimitsOff: true}
	if f.kind == "partition" {
		if _, err := partitionGroup(ccfg, -1, f.isolate); err != nil {
			return loadtest.DrillReport{}, err
		}
	}
	if f.output == "text" {
		fmt.Fprintf(e.stderr, "starting %d nodes in %s …\n", f.nodes, dir)
	}
	c, err := localcluster.Start(ctx, ccfg)
	if err != nil {
		return loadtest.DrillReport{}, fmt.Errorf("starting the cluster: %w", err)
	}
	defer c.Close()
	l, err := c.Leader(ctx, 30*time.Second)
	if err != nil {
		return loadtest.DrillReport{}, err
	}
	resp, err := c.Node(l).Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: node.DefaultTenant, Name: "drill", AccessTokenTtlSeconds: 3600,
	}))
	if err != nil {
		return loadtest.DrillReport{}, fmt.Errorf("creating the drill client: %w", err)
	}
	if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
		return loadtest.DrillReport{}, err
	}
	cfg := f.cfg
	cfg.Nodes = localDrillNodes(c)
	cfg.ClientID, cfg.ClientSecret = resp.Msg.Client.ClientId, resp.Msg.ClientSecret
	switch {
	case f.kind == "failover" && f.graceful:
		cfg.Plan = func(ctx context.Context) (loadtest.Fault, error) { return localTransfer(ctx, c) }
	case f.kind == "failover":
		cfg.Plan = func(ctx context.Context) (loadtest.Fault, error) { return localKill(ctx, c) }
	case f.kind == "rolling-restart":
		cfg.Steps = c.Len()
		done := map[int]bool{}
		cfg.Plan = func(ctx context.Context) (loadtest.Fault, error) { return localRollingStep(ctx, c, done) }
	default:
		cfg.Plan = func(ctx context.Context) (loadtest.Fault, error) { return localPartition(ctx, c, f.isolate) }
	}
	return loadtest.RunDrill(ctx, cfg)
}

// localRollingStep plans the restart of the next node not restarted yet,
// the leader last.
func localRollingStep(ctx context.Context, c *localcluster.Cluster, done map[int]bool) (loadtest.Fault, error) {
	l, err := c.Leader(ctx, 10*time.Second)
	if err != nil {
		return loadtest.Fault{}, err
	}
	next := -1
	for i := range c.Len() {
		if !done[i] && (next < 0 || next == l) {
			next = i
		}
	}
	if next < 0 {
		return loadtest.Fault{}, errors.New("every node was restarted already")
	}
	done[next] = true
	id := c.ID(next)
	what := id
	if next == l {
		what = "leader " + id
	}
	return loadtest.Fault{
		Event:     what + " stopped",
		Down:      []string{id},
		Inject:    func(context.Context) error { c.Kill(next); return nil },
		HealEvent: id + " restarted and ready",
		Heal:      func(ctx context.Context) error { return c.Restart(ctx, next) },
	}, nil
}

// localKill plans a hard kill of the current leader, healed by a restart
// on the same data directory and ports.
func localKill(ctx context.Context, c *localcluster.Cluster) (loadtest.Fault, error) {
	l, err := c.Leader(ctx, 10*time.Second)
	if err != nil {
		return loadtest.Fault{}, err
	}
	id := c.ID(l)
	return loadtest.Fault{
		Event: "leader " + id + " killed",
		Down:  []string{id},
		Inject: func(context.Context) error {
			c.Kill(l)
			return nil
		},
		HealEvent: id + " restarted",
		Heal:      func(ctx context.Context) error { return c.Restart(ctx, l) },
	}, nil
}

// localTransfer plans a leadership transfer through the admin API of a
// follower (Raft picks the most caught-up voter).
func localTransfer(ctx context.Context, c *localcluster.Cluster) (loadtest.Fault, error) {
	l, err := c.Leader(ctx, 10*time.Second)
	if err != nil {
		return loadtest.Fault{}, err
	}
	f := c.Node((l + 1) % c.Len())
	return loadtest.Fault{
		Event: "leadership of " + c.ID(l) + " transferred",
		Inject: func(ctx context.Context) error {
			_, err := f.ClusterAdmin.TransferLeadership(ctx, connect.NewRequest(&clusterv1.TransferLeadershipRequest{}))
			return err
		},
	}, nil
}

// partitionGroup resolves --isolate to the node indexes cut off: a
// follower, the leader (l), a node id, or every node of region:NAME.
func partitionGroup(cfg localcluster.Config, l int, isolate string) ([]int, error) {
	id := func(i int) string { return fmt.Sprintf("node%d", i) }
	switch {
	case isolate == "follower":
		if l < 0 {
			return nil, nil
		}
		return []int{(l + 1) % cfg.Nodes}, nil
	case isolate == "leader":
		if l < 0 {
			return nil, nil
		}
		return []int{l}, nil
	case strings.HasPrefix(isolate, "region:"):
		var out []int
		for i := range cfg.Nodes {
			if cfg.Regions[i%len(cfg.Regions)] == strings.TrimPrefix(isolate, "region:") {
				out = append(out, i)
			}
		}
		if len(out) == 0 || len(out) == cfg.Nodes {
			return nil, usagef("--isolate %s: the region must hold some but not all nodes", isolate)
		}
		return out, nil
	default:
		for i := range cfg.Nodes {
			if id(i) == isolate {
				return []int{i}, nil
			}
		}
		return nil, usagef("--isolate %q: want follower, leader, a node id (node0…node%d) or region:NAME", isolate, cfg.Nodes-1)
	}
}

// localPartition plans a partition of the --isolate group from the rest.
// The side without a majority of the voters is the one expected to fail
// closed.
func localPartition(ctx context.Context, c *localcluster.Cluster, isolate string) (loadtest.Fault, error) {
	l, err := c.Leader(ctx, 10*time.Second)
	if err != nil {
		return loadtest.Fault{}, err
	}
	group, err := partitionGroup(c.Config(), l, isolate)
	if err != nil {
		return loadtest.Fault{}, err
	}
	in := map[int]bool{}
	var groupIDs, rest []string
	for _, i := range group {
		in[i] = true
		groupIDs = append(groupIDs, c.ID(i))
	}
	for i := range c.Len() {
		if !in[i] {
			rest = append(rest, c.ID(i))
		}
	}
	minority := groupIDs
	if 2*len(groupIDs) > c.Len() {
		minority = rest
	}
	return loadtest.Fault{
		Event:    fmt.Sprintf("%s (%s) cut off from %s", isolate, strings.Join(groupIDs, ","), strings.Join(rest, ",")),
		Isolated: minority,
		Inject: func(context.Context) error {
			c.Net.Partition(c.IDs(), groupIDs...)
			return nil
		},
		HealEvent: "partition healed",
		Heal: func(context.Context) error {
			c.Net.Heal()
			return nil
		},
	}, nil
}

// writeDrillHTML writes the drill's load and events as an HTML report.
func writeDrillHTML(path, title string, rep loadtest.DrillReport) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := loadtest.WriteHTML(out, title, rep.Load); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
