package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/proctest"
	"github.com/tallyauth/tally/raft"
)

// TestRollingUpgrade is `make upgrade-test` (TALLY_UPGRADE_TEST=1; skipped
// otherwise): the last release recorded in .ci/releases, built from its
// commit, and this tree in one cluster of three real `tally serve`
// processes. Under client-credentials and revocation load it replaces the
// nodes one at a time with this tree's binary (followers first, the leader
// last after transfer-leadership), then follows the documented downgrade
// path (deploy/runbooks/rolling-upgrade.md: `tally admin cluster downgrade`,
// then the release's binary node by node). It asserts that no
// client-credentials request to a node that is up fails, that every
// acknowledged revocation is on every node at the end, and that the cluster
// version (the new operation SetClusterVersion) is recorded only once the
// last node runs this tree.
func TestRollingUpgrade(t *testing.T) {
	if os.Getenv("TALLY_UPGRADE_TEST") == "" {
		t.Skip("make upgrade-test runs it (TALLY_UPGRADE_TEST=1)")
	}
	release, commit := lastRelease(t)
	oldBin := buildRelease(t, release, commit)
	newBin := proctest.Binary(t)
	// This tree's nodes run without rate limits (v0.1.0 has none): the
	// unpaced client-credentials load of one client met the cluster-wide
	// budget of 1000 requests a second on a quiet machine (429).
	c := proctest.Start(t, proctest.Options{Bin: oldBin, Args: func(i int, c *proctest.Cluster) []string {
		if c.Node(i).Bin == newBin {
			return []string{"--rate-limits", "off"}
		}
		return nil
	}})
	t.Logf("cluster of %s (%s) up", release, commit[:12])
	vars := func(p *proctest.Proc) map[string]string {
		return map[string]string{"TALLY_SERVER": p.URL(), "TALLY_ADMIN_TOKEN": c.AdminToken}
	}

	var clientID, secret string
	proctestEventually(t, func() error {
		code, out, errb := runCLI(t, vars(c.Node(0)), "admin", "client", "create", "--name", "upgrade-load", "--output", "json")
		if code != 0 {
			return fmt.Errorf("client create: %d %s%s", code, out, errb)
		}
		id, sec := clientIDRE.FindStringSubmatch(out), clientSecretRE.FindStringSubmatch(out)
		if id == nil || sec == nil {
			return fmt.Errorf("no client id or secret in %s", out)
		}
		clientID, secret = id[1], sec[1]
		return nil
	})
	proctestEventually(t, func() error {
		for _, p := range c.Nodes() {
			if err := clientCredentials(http.DefaultClient, p, clientID, secret); err != nil {
				return err
			}
		}
		return nil
	})

	refresh := refreshChains(t, c)
	l := startUpgradeLoad(t, c, clientID, secret, refresh)

	// Upgrade, followers first, the leader last.
	roll(t, c, l, newBin, "this tree", func(i int, p *proctest.Proc) {
		if i < 2 {
			// Mixed: nothing may record the cluster version yet. Give the
			// leader several of its rounds (one a second) to get it wrong.
			time.Sleep(3 * time.Second)
			if v := clusterVersion(t, c, p); v != nil {
				t.Fatalf("cluster version %v recorded while %d node(s) still run %s", v, 2-i, release)
			}
		}
	})
	var upgraded *versionJSON
	proctestEventually(t, func() error {
		upgraded = clusterVersion(t, c, c.Node(0))
		if upgraded == nil || upgraded.Version != raft.ClusterVersion || !slices.Contains(upgraded.Features, raft.FeatureClusterVersion) {
			return fmt.Errorf("cluster version after the last upgrade: %+v", upgraded)
		}
		return nil
	})
	t.Logf("all nodes upgraded: cluster version %d, features %v", upgraded.Version, upgraded.Features)

	// Downgrade: lower and hold the version, then the release's binary node
	// by node.
	leader := c.Leader(30 * time.Second)
	if code, out, errb := runCLI(t, vars(leader), "admin", "cluster", "downgrade", "--to", "1"); code != 0 {
		t.Fatalf("cluster downgrade: %d %s%s", code, out, errb)
	}
	if v := clusterVersion(t, c, leader); v == nil || v.Version != 1 || !v.Hold || slices.Contains(v.Features, raft.FeatureClusterVersion) {
		t.Fatalf("after downgrade: %+v", v)
	}
	roll(t, c, l, oldBin, release, nil)

	ok, failed, first := l.stop()
	if failed > 0 || ok == 0 {
		t.Fatalf("client-credentials requests to nodes that were up: %d ok, %d failed (first: %s)", ok, failed, first)
	}
	if l.refreshOK.Load() == 0 || l.refreshFailed.Load() > 0 {
		t.Fatalf("refresh rotations at nodes that were up: %d ok, %d failed (first: %v)", l.refreshOK.Load(), l.refreshFailed.Load(), l.refreshErr.Load())
	}
	acked := l.acked()
	if len(acked) == 0 {
		t.Fatal("no revocation was acknowledged")
	}
	for _, p := range c.Nodes() {
		proctestEventually(t, func() error {
			have, err := revocationsOn(c, p)
			if err != nil {
				return err
			}
			for _, jti := range acked {
				if !have[jti] {
					return fmt.Errorf("%s lacks acknowledged revocation %s (%d of %d present)", p.ID, jti, len(have), len(acked))
				}
			}
			return nil
		})
	}
	t.Logf("upgrade and downgrade under load: %d client-credentials requests, 0 failed; %d refresh rotations, 0 failed; %d revocations acknowledged (%d refused while a node was switching), all on every node",
		ok, l.refreshOK.Load(), len(acked), l.revokeFailed.Load())
}

var clientSecretRE = regexp.MustCompile(`"client_?[sS]ecret"\s*:\s*"([^"]+)"`)

// roll replaces every node's binary with bin (called name), followers first and the
// leader last (after transfer-leadership), while l runs; after(i, p) runs
// once node p, the i-th replaced, is ready again.
func roll(t *testing.T, c *proctest.Cluster, l *upgradeLoad, bin, name string, after func(i int, p *proctest.Proc)) {
	t.Helper()
	leader := c.Leader(30 * time.Second)
	order := append(c.Followers(leader), leader)
	for i, p := range order {
		if p == leader {
			if code, out, errb := runCLI(t, map[string]string{"TALLY_SERVER": p.URL(), "TALLY_ADMIN_TOKEN": c.AdminToken}, "admin", "cluster", "transfer-leadership"); code != 0 {
				t.Fatalf("transfer-leadership: %d %s%s", code, out, errb)
			}
		}
		l.down.Store(int32(p.Index))
		time.Sleep(100 * time.Millisecond) // requests in flight to p finish
		if !p.Stop() {
			t.Fatalf("%s did not stop cleanly; log:\n%s", p.ID, p.LogTail(20))
		}
		p.Bin = bin
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		p.WaitReady(90 * time.Second)
		waitHealthy(t, c, p)
		l.down.Store(-1)
		t.Logf("%s now runs %s", p.ID, name)
		if after != nil {
			after(i, p)
		}
	}
}

// waitHealthy waits until every member is healthy with no lag, as seen
// from p (the runbook's step 5).
func waitHealthy(t *testing.T, c *proctest.Cluster, p *proctest.Proc) {
	t.Helper()
	proctestEventually(t, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, members, err := c.Status(ctx, p)
		if err != nil {
			return err
		}
		if len(members) != 3 {
			return fmt.Errorf("%d members", len(members))
		}
		for _, m := range members {
			if m.Health != "healthy" {
				return fmt.Errorf("%s is %s", m.ID, m.Health)
			}
		}
		return nil
	})
}

type versionJSON struct {
	Version  uint32   `json:"version"`
	Features []string `json:"features"`
	Hold     bool     `json:"hold"`
}

// clusterVersion is the recorded cluster version as node p reports it
// (ClusterAdminService.Status), nil if none.
func clusterVersion(t *testing.T, c *proctest.Cluster, p *proctest.Proc) *versionJSON {
	t.Helper()
	var out struct {
		ClusterVersion *versionJSON `json:"clusterVersion"`
	}
	proctestEventually(t, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.Call(ctx, p, "/tally.cluster.v1.ClusterAdminService/Status", map[string]any{}, &out)
	})
	return out.ClusterVersion
}

func clientCredentials(cl *http.Client, p *proctest.Proc, id, secret string) error {
	resp, err := cl.PostForm(p.URL()+"/t/default/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}})
	if err != nil {
		return fmt.Errorf("%s: %w", p.ID, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", p.ID, resp.Status)
	}
	return nil
}

// upgradeLoad is the load of the upgrade test: client credentials on every
// node that is up, and revocations (admin API) through every node that is
// up, remembering the acknowledged ones.
type upgradeLoad struct {
	down                           atomic.Int32 // index of the node being replaced, -1 none
	ok, failed                     atomic.Int64
	revokeFailed                   atomic.Int64
	refreshOK, refreshFailed       atomic.Int64
	refreshErr                     atomic.Value
	firstErr                       atomic.Value
	mu                             sync.Mutex
	ackedJTIs                      []string
	stopCh, ccDone, rvDone, rfDone chan struct{}
}

func startUpgradeLoad(t *testing.T, c *proctest.Cluster, clientID, secret string, refresh []loadtest.Op) *upgradeLoad {
	l := &upgradeLoad{stopCh: make(chan struct{}), ccDone: make(chan struct{}), rvDone: make(chan struct{}), rfDone: make(chan struct{})}
	l.down.Store(-1)
	stopped := func() bool {
		select {
		case <-l.stopCh:
			return true
		default:
			return false
		}
	}
	go func() {
		defer close(l.ccDone)
		cl := &http.Client{Timeout: 10 * time.Second}
		for k := 0; !stopped(); k++ {
			i := k % 3
			if int32(i) == l.down.Load() {
				continue
			}
			err := clientCredentials(cl, c.Node(i), clientID, secret)
			if int32(i) == l.down.Load() {
				continue // stopped meanwhile: not counted
			}
			if err != nil {
				l.failed.Add(1)
				l.firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			l.ok.Add(1)
		}
	}()
	go func() {
		defer close(l.rvDone)
		exp := time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)
		for k := 0; !stopped(); k++ {
			p := c.Node(k % 3)
			if int32(p.Index) == l.down.Load() {
				continue
			}
			jti := fmt.Sprintf("upgrade-%d-%d", time.Now().UnixNano(), k)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := c.Call(ctx, p, "/tally.admin.v1.AdminService/RevokeToken",
				map[string]any{"tenant": "default", "jti": jti, "expiresAt": exp, "reason": "upgrade test"}, nil)
			cancel()
			if err != nil {
				l.revokeFailed.Add(1) // not acknowledged: may or may not be applied
				continue
			}
			l.mu.Lock()
			l.ackedJTIs = append(l.ackedJTIs, jti)
			l.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		defer close(l.rfDone)
		for k := 0; !stopped(); k++ {
			i := k % 3
			if int32(i) == l.down.Load() {
				continue
			}
			oc, answered := refresh[i].Do(context.Background())
			if int32(i) == l.down.Load() {
				continue // its node stopped meanwhile: not counted
			}
			if !answered || oc.Code != loadtest.OutcomeOK {
				l.refreshFailed.Add(1)
				l.refreshErr.CompareAndSwap(nil, fmt.Sprintf("node%d: %q (answered %v)", i+1, oc.Code, answered))
				if r, ok := refresh[i].(loadtest.Recoverer); ok {
					_ = r.Recover(context.Background()) // a new chain
				}
				continue
			}
			l.refreshOK.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { l.stop() })
	return l
}

// refreshChains creates users and a public client (loadtest.SetupUserFlow)
// and starts one refresh-token chain per node, each rotated at its node.
func refreshChains(t *testing.T, c *proctest.Cluster) []loadtest.Op {
	t.Helper()
	ctx := context.Background()
	admin := adminv1connect.NewAdminServiceClient(http.DefaultClient, c.Node(0).URL(), connect.WithInterceptors(bearerAuth("Bearer "+c.AdminToken)))
	var flow loadtest.UserFlow
	proctestEventually(t, func() (err error) {
		flow, err = loadtest.SetupUserFlow(ctx, admin, "default", 3)
		return err
	})
	ops := make([]loadtest.Op, 3)
	for i, p := range c.Nodes() {
		tg := loadtest.Target{Issuer: c.Issuer + "/t/default", TokenURL: p.URL() + "/t/default/oauth2/token", AuthorizeURL: p.URL() + "/t/default/oauth2/authorize"}
		sc, err := loadtest.NewRefreshScenario([]loadtest.Target{tg}, flow)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sc.CloseIdleConnections)
		proctestEventually(t, func() (err error) {
			ops[i], err = sc.NewOp(ctx, i)
			return err
		})
	}
	return ops
}

func (l *upgradeLoad) stop() (ok, failed int64, first string) {
	select {
	case <-l.stopCh:
	default:
		close(l.stopCh)
	}
	<-l.ccDone
	<-l.rvDone
	<-l.rfDone
	if v := l.firstErr.Load(); v != nil {
		first = v.(string)
	}
	return l.ok.Load(), l.failed.Load(), first
}

func (l *upgradeLoad) acked() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ackedJTIs)
}

// revocationsOn lists the jtis revoked in the default tenant as node p has
// them.
func revocationsOn(c *proctest.Cluster, p *proctest.Proc) (map[string]bool, error) {
	var out struct {
		Revocations []struct {
			JTI string `json:"jti"`
		} `json:"revocations"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Call(ctx, p, "/tally.admin.v1.AdminService/ListRevocations", map[string]any{"tenant": "default"}, &out); err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(out.Revocations))
	for _, r := range out.Revocations {
		have[r.JTI] = true
	}
	return have, nil
}

// lastRelease is the last VERSION COMMIT line of .ci/releases.
func lastRelease(t *testing.T) (version, commit string) {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), ".ci", "releases"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			t.Fatalf(".ci/releases: bad line %q", line)
		}
		version, commit = fields[0], fields[1]
	}
	if commit == "" {
		t.Fatal(".ci/releases names no release")
	}
	return version, commit
}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse --show-toplevel: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// buildRelease builds the tally binary of commit: its tree is extracted
// with git archive into a temporary directory (the clone's history must
// have it) and built there. The binary is kept in the temporary directory
// under the commit's name, so a second run does not build it again.
func buildRelease(t *testing.T, version, commit string) string {
	t.Helper()
	root := repoRoot(t)
	dir := filepath.Join(os.TempDir(), "tally-release-"+commit)
	bin := filepath.Join(dir, "bin", "tally")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := exec.Command("git", "-C", root, "cat-file", "-e", commit+"^{commit}").Run(); err != nil {
		t.Fatalf("release %s: commit %s is not in this clone; fetch the full history (git fetch --unshallow)", version, commit)
	}
	src := filepath.Join(dir, "src")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", root, commit, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extracting %s: %v\n%s", commit, err, out)
	}
	tmpBin := bin + ".tmp"
	build := exec.Command("go", "build", "-o", tmpBin, "./cmd/tally")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s (%s): %v\n%s", version, commit, err, out)
	}
	if err := os.Rename(tmpBin, bin); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(src); err != nil {
		t.Log(err)
	}
	return bin
}
