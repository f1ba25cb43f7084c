package main

// tally drill against a running cluster: the nodes come from the cluster
// status of --server, their HTTP URLs from --node / TALLY_NODES, and the
// fault from the operator's commands (--kill-cmd, --restart-cmd,
// --partition-cmd, --heal-cmd, with {node} and {region} substituted), run
// with /bin/sh -c. A killed or healed node counts as back once its /readyz
// answers 200.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/loadtest"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/node/localcluster"
)

// remoteNode is one member of the drilled cluster.
type remoteNode struct {
	id, region, url string
}

// remoteCluster is the running cluster a drill talks to.
type remoteCluster struct {
	f     drillFlags
	e     env
	hc    *http.Client
	auth  connect.ClientOption
	admin []string // admin API base URLs to try, --server first
	nodes []remoteNode
}

// parseNodeFlags reads --node values (ID=URL or URL) and, without any,
// TALLY_NODES (URLs separated by spaces or commas).
func parseNodeFlags(values []string, e env) (map[string]string, []string, error) {
	byID := map[string]string{}
	var anon []string
	if len(values) == 0 {
		values = strings.FieldsFunc(e.getenv("TALLY_NODES"), func(r rune) bool { return r == ' ' || r == ',' || r == '\n' || r == '\t' })
	}
	for _, v := range values {
		id, u, ok := strings.Cut(v, "=")
		if !ok || strings.Contains(id, "/") {
			id, u = "", v
		}
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return nil, nil, usagef("--node %q: want ID=URL or URL (an absolute http(s) URL)", v)
		}
		u = strings.TrimRight(u, "/")
		if id == "" {
			anon = append(anon, u)
		} else {
			byID[id] = u
		}
	}
	return byID, anon, nil
}

// nodeIDOf asks the node at base which node it is: the tally_node_id label
// of target_info on its /metrics.
func nodeIDOf(ctx context.Context, hc *http.Client, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "target_info{") {
			continue
		}
		if _, rest, ok := strings.Cut(line, `tally_node_id="`); ok {
			if id, _, ok := strings.Cut(rest, `"`); ok && id != "" {
				return id, nil
			}
		}
	}
	return "", fmt.Errorf("%s/metrics names no tally_node_id: give --node ID=%s", base, base)
}

func newRemoteCluster(ctx context.Context, f drillFlags, e env) (*remoteCluster, error) {
	base, err := url.Parse(f.server)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, usagef("--server %q is not an absolute http(s) URL", f.server)
	}
	if f.adminToken == "" {
		return nil, usagef("--server needs the admin token: --admin-token or TALLY_ADMIN_TOKEN")
	}
	byID, anon, err := parseNodeFlags(f.nodeURLs, e)
	if err != nil {
		return nil, err
	}
	c := &remoteCluster{f: f, e: e, hc: &http.Client{Timeout: 30 * time.Second}, auth: connect.WithInterceptors(bearerAuth("Bearer " + f.adminToken))}
	c.admin = []string{strings.TrimRight(f.server, "/")}
	for _, u := range anon {
		id, err := nodeIDOf(ctx, c.hc, u)
		if err != nil {
			return nil, err
		}
		byID[id] = u
	}
	st, err := c.status(ctx)
	if err != nil {
		return nil, fmt.Errorf("cluster status: %w", err)
	}
	for _, m := range st.Members {
		u, ok := byID[m.Id]
		if !ok {
			// The member's own address, when it is one we can dial.
			h, _, _ := strings.Cut(m.HttpAddress, ":")
			if m.HttpAddress == "" || h == "" || h == "[" || strings.HasPrefix(m.HttpAddress, "0.0.0.0:") || strings.HasPrefix(m.HttpAddress, "[::]:") {
				return nil, usagef("no URL for member %s (it reports %q): give --node %s=URL or TALLY_NODES", m.Id, m.HttpAddress, m.Id)
			}
			u = base.Scheme + "://" + m.HttpAddress
		}
		delete(byID, m.Id)
		c.nodes = append(c.nodes, remoteNode{id: m.Id, region: m.Region, url: u})
		c.admin = append(c.admin, u)
	}
	for id := range byID {
		return nil, usagef("--node %s: no such member in the cluster status", id)
	}
	return c, nil
}

// status asks --server, then every node, for the cluster status, until
// one names a leader (an election may be under way) or 30 s have passed.
func (c *remoteCluster) status(ctx context.Context) (*clusterv1.StatusResponse, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var errs []error
		for _, u := range c.admin {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := clusterv1connect.NewClusterAdminServiceClient(c.hc, u, c.auth).Status(cctx, connect.NewRequest(&clusterv1.StatusRequest{}))
			cancel()
			if err == nil && st.Msg.LeaderId != "" {
				return st.Msg, nil
			}
			if err == nil {
				err = errors.New("no leader")
			}
			errs = append(errs, fmt.Errorf("%s: %w", u, err))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errors.Join(errs...)
		}
		if err := localcluster.Sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func (c *remoteCluster) node(id string) (remoteNode, bool) {
	for _, n := range c.nodes {
		if n.id == id {
			return n, true
		}
	}
	return remoteNode{}, false
}

// pick resolves a target (leader, follower, a node id, region:NAME) to
// nodes, asking who leads now.
func (c *remoteCluster) pick(ctx context.Context, target string) ([]remoteNode, string, error) {
	st, err := c.status(ctx)
	if err != nil {
		return nil, "", err
	}
	switch {
	case target == "leader":
		n, ok := c.node(st.LeaderId)
		if !ok {
			return nil, "", fmt.Errorf("leader %s has no URL", st.LeaderId)
		}
		return []remoteNode{n}, "leader " + n.id, nil
	case target == "follower":
		for _, n := range c.nodes {
			if n.id != st.LeaderId {
				return []remoteNode{n}, "follower " + n.id, nil
			}
		}
		return nil, "", errors.New("no follower")
	case strings.HasPrefix(target, "region:"):
		var out []remoteNode
		for _, n := range c.nodes {
			if n.region == strings.TrimPrefix(target, "region:") {
				out = append(out, n)
			}
		}
		if len(out) == 0 || len(out) == len(c.nodes) {
			return nil, "", usagef("%s: the region must hold some but not all nodes", target)
		}
		return out, target, nil
	default:
		n, ok := c.node(target)
		if !ok {
			return nil, "", usagef("%q: want leader, follower, a member id or region:NAME", target)
		}
		return []remoteNode{n}, n.id, nil
	}
}

// run runs an operator command for each node, {node} and {region}
// substituted.
func (c *remoteCluster) run(ctx context.Context, tmpl string, nodes []remoteNode) error {
	for _, n := range nodes {
		cmdline := strings.NewReplacer("{node}", n.id, "{region}", n.region).Replace(tmpl)
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		out, err := exec.CommandContext(cctx, "/bin/sh", "-c", cmdline).CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("%q: %w: %s", cmdline, err, strings.TrimSpace(string(out)))
		}
		if c.f.output == "text" {
			fmt.Fprintf(c.e.stderr, "          $ %s\n", cmdline)
		}
	}
	return nil
}

// waitReady waits until every node answers /readyz with 200.
func (c *remoteCluster) waitReady(ctx context.Context, nodes []remoteNode) error {
	deadline := time.Now().Add(c.f.readyTimeout)
	for _, n := range nodes {
		for {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url+"/readyz", nil)
			if err != nil {
				return err
			}
			resp, err := c.hc.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not ready after %v", n.id, c.f.readyTimeout)
			}
			if err := localcluster.Sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

func ids(nodes []remoteNode) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.id
	}
	return out
}

// drillRemote drills a running cluster: failover (a kill and a restart by
// command, or --graceful: a leadership transfer), partition (by command),
// rolling-restart (every node in turn, followers first).
func drillRemote(ctx context.Context, f drillFlags, e env) (loadtest.DrillReport, error) {
	if err := checkRemoteDrillFlags(f); err != nil {
		return loadtest.DrillReport{}, err
	}
	c, err := newRemoteCluster(ctx, f, e)
	if err != nil {
		return loadtest.DrillReport{}, err
	}
	if err := c.waitReady(ctx, c.nodes); err != nil {
		return loadtest.DrillReport{}, fmt.Errorf("before the drill: %w", err)
	}
	cfg := f.cfg
	for _, n := range c.nodes {
		cfg.Nodes = append(cfg.Nodes, loadtest.DrillNode{ID: n.id, Issuer: n.url + "/t/" + url.PathEscape(f.tenant)})
	}
	if f.output == "text" {
		for _, n := range c.nodes {
			fmt.Fprintf(e.stderr, "node %s (%s) at %s\n", n.id, n.region, n.url)
		}
	}
	cfg.ClientID, cfg.ClientSecret = f.clientID, f.clientSecret
	if cfg.ClientID == "" {
		if cfg.ClientID, cfg.ClientSecret, err = c.createDrillClient(ctx); err != nil {
			return loadtest.DrillReport{}, err
		}
	}
	switch {
	case f.kind == "failover" && f.graceful:
		cfg.Plan = c.transferPlan
	case f.kind == "failover":
		cfg.Plan = func(ctx context.Context) (loadtest.Fault, error) {
			nodes, what, err := c.pick(ctx, f.target)
			if err != nil {
				return loadtest.Fault{}, err
			}
			return c.killFault(what, nodes), nil
		}
	case f.kind == "partition":
		cfg.Plan = c.partitionPlan
	default: // rolling-restart
		cfg.Steps = len(c.nodes)
		cfg.Plan = c.rollingPlan()
	}
	return loadtest.RunDrill(ctx, cfg)
}

// checkRemoteDrillFlags checks that the commands the drill kind needs
// against a remote cluster are set.
func checkRemoteDrillFlags(f drillFlags) error {
	switch {
	case f.kind == "failover" && !f.graceful && (f.killCmd == "" || f.restartCmd == ""):
		return usagef("failover --server needs --kill-cmd and --restart-cmd (or --graceful)")
	case f.kind == "partition" && (f.partitionCmd == "" || f.healCmd == ""):
		return usagef("partition --server needs --partition-cmd and --heal-cmd")
	case f.kind == "rolling-restart" && f.restartCmd == "":
		return usagef("rolling-restart --server needs --restart-cmd (and --kill-cmd to stop a node first)")
	}
	return nil
}

// createDrillClient creates the drill's client through the first admin API
// that answers.
func (c *remoteCluster) createDrillClient(ctx context.Context) (id, secret string, err error) {
	var resp *connect.Response[adminv1.CreateClientResponse]
	for _, u := range c.admin {
		admin := adminv1connect.NewAdminServiceClient(c.hc, u, c.auth)
		resp, err = admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: c.f.tenant, Name: "drill", AccessTokenTtlSeconds: 3600}))
		if err == nil {
			break
		}
	}
	if err != nil {
		return "", "", fmt.Errorf("creating the drill client: %w", err)
	}
	if c.f.output == "text" {
		fmt.Fprintf(c.e.stderr, "created client %s for the drill\n", resp.Msg.Client.ClientId)
	}
	return resp.Msg.Client.ClientId, resp.Msg.ClientSecret, nil
}

// transferPlan is the graceful failover: leadership transferred.
func (c *remoteCluster) transferPlan(ctx context.Context) (loadtest.Fault, error) {
	st, err := c.status(ctx)
	if err != nil {
		return loadtest.Fault{}, err
	}
	return loadtest.Fault{
		Event: "leadership of " + st.LeaderId + " transferred",
		Inject: func(ctx context.Context) error {
			var err error
			for _, u := range c.admin {
				_, err = clusterv1connect.NewClusterAdminServiceClient(c.hc, u, c.auth).TransferLeadership(ctx, connect.NewRequest(&clusterv1.TransferLeadershipRequest{}))
				if err == nil {
					return nil
				}
			}
			return err
		},
	}, nil
}

// partitionPlan cuts the --isolate nodes off with --partition-cmd and heals
// with --heal-cmd.
func (c *remoteCluster) partitionPlan(ctx context.Context) (loadtest.Fault, error) {
	f := c.f
	group, what, err := c.pick(ctx, f.isolate)
	if err != nil {
		return loadtest.Fault{}, err
	}
	var rest []string
	for _, n := range c.nodes {
		if !slices.Contains(ids(group), n.id) {
			rest = append(rest, n.id)
		}
	}
	minority := ids(group)
	if 2*len(group) > len(c.nodes) {
		minority = rest
	}
	return loadtest.Fault{
		Event:             fmt.Sprintf("%s (%s) cut off from %s", what, strings.Join(ids(group), ","), strings.Join(rest, ",")),
		Isolated:          minority,
		Inject:            func(ctx context.Context) error { return c.run(ctx, f.partitionCmd, group) },
		EffectiveOnReturn: true,
		HealEvent:         "partition healed",
		Heal: func(ctx context.Context) error {
			if err := c.run(ctx, f.healCmd, group); err != nil {
				return err
			}
			return c.waitReady(ctx, c.nodes)
		},
	}, nil
}

// rollingPlan restarts every node once, the followers first and the leader
// last: one election at most.
func (c *remoteCluster) rollingPlan() func(context.Context) (loadtest.Fault, error) {
	done := map[string]bool{}
	return func(ctx context.Context) (loadtest.Fault, error) {
		st, err := c.status(ctx)
		if err != nil {
			return loadtest.Fault{}, err
		}
		var next *remoteNode
		for _, n := range c.nodes {
			if done[n.id] {
				continue
			}
			if next == nil || next.id == st.LeaderId {
				next = &n
			}
		}
		if next == nil {
			return loadtest.Fault{}, errors.New("every node was restarted already")
		}
		done[next.id] = true
		what := next.id
		if next.id == st.LeaderId {
			what = "leader " + next.id
		}
		return c.killFault(what, []remoteNode{*next}), nil
	}
}

// killFault stops nodes with --kill-cmd (if set) and brings them back with
// --restart-cmd, waiting until they are ready.
func (c *remoteCluster) killFault(what string, nodes []remoteNode) loadtest.Fault {
	verb := "killed"
	if c.f.kind == "rolling-restart" {
		verb = "stopped"
		if c.f.killCmd == "" {
			verb = "restarting"
		}
	}
	return loadtest.Fault{
		Event:             fmt.Sprintf("%s %s", what, verb),
		Down:              ids(nodes),
		EffectiveOnReturn: true,
		Inject: func(ctx context.Context) error {
			if c.f.killCmd == "" {
				return nil
			}
			return c.run(ctx, c.f.killCmd, nodes)
		},
		HealEvent: strings.Join(ids(nodes), ",") + " restarted",
		Heal:      func(ctx context.Context) error { return c.run(ctx, c.f.restartCmd, nodes) },
		Settle:    func(ctx context.Context) error { return c.waitReady(ctx, c.nodes) },
	}
}
