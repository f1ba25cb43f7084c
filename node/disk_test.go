package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft/rafttest"
)

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"0": 0, "1048576": 1 << 20, "512KiB": 512 << 10, "256MiB": 256 << 20, "2GiB": 2 << 30,
		"1TiB": 1 << 40, "64mib": 64 << 20, "100B": 100, " 8 MiB ": 8 << 20,
	} {
		got, err := node.ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if back, err := node.ParseByteSize(node.FormatByteSize(want)); err != nil || back != want {
			t.Errorf("FormatByteSize(%d) = %q does not read back", want, node.FormatByteSize(want))
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "1PiB", "20000000TiB", "12 apples"} {
		if _, err := node.ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
}

// issuer counts client-credentials token requests against one node until
// stopped.
type issuer struct {
	ok, bad atomic.Int64
	mu      sync.Mutex
	samples []string
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startIssuing(n *nodetest.Node, id, secret string) *issuer {
	is := &issuer{stop: make(chan struct{})}
	u := n.Issuer("default")
	for range 2 {
		is.wg.Add(1)
		go func() {
			defer is.wg.Done()
			for {
				select {
				case <-is.stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				status, code, err := tokenStatus(u, id, secret)
				if err == nil && status == http.StatusOK {
					is.ok.Add(1)
					continue
				}
				is.bad.Add(1)
				is.mu.Lock()
				if len(is.samples) < 5 {
					is.samples = append(is.samples, fmt.Sprintf("%d %q %v", status, code, err))
				}
				is.mu.Unlock()
			}
		}()
	}
	return is
}

func (is *issuer) end() (ok, bad int64, samples []string) {
	close(is.stop)
	is.wg.Wait()
	return is.ok.Load(), is.bad.Load(), is.samples
}

// readyz returns /readyz's status and reasons.
func readyz(t *testing.T, n *nodetest.Node) (int, []string) {
	t.Helper()
	resp, err := http.Get(n.BaseURL() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Reasons []string `json:"reasons"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body.Reasons
}

func metricValue(t *testing.T, n *nodetest.Node, name string) string {
	t.Helper()
	resp, err := http.Get(n.BaseURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + `(?:\{[^}]*\})? (\S+)$`).FindStringSubmatch(string(b))
	if m == nil {
		return ""
	}
	return m[1]
}

// createClient creates a client through n and reports the error.
func createClient(n *nodetest.Node, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: name}))
	return err
}

func clientNames(n *nodetest.Node) map[string]bool {
	out := map[string]bool{}
	for _, c := range n.Raft().State().Clients("default") {
		out[c.Name] = true
	}
	return out
}

// wantDiskRefusal checks that n refuses writes for lack of disk space, as
// Connect Unavailable and OAuth 503 temporarily_unavailable, with a reason.
func wantDiskRefusal(t *testing.T, n *nodetest.Node, id, secret string) {
	t.Helper()
	err := createClient(n, "refused")
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "disk space low") {
		t.Fatalf("admin write on a node low on disk: %v, want Unavailable with a disk reason", err)
	}
	tok := token(t, n.Issuer("default"), id, secret, 0)
	status, body, h := postForm(t, n.Issuer("default")+"/oauth2/revoke", id, secret, url.Values{"token": {tok.AccessToken}})
	if status != http.StatusServiceUnavailable || body["error"] != "temporarily_unavailable" || h.Get("Retry-After") == "" {
		t.Fatalf("OAuth revocation on a node low on disk: %d %v", status, body)
	}
	if got := introspect(t, n.Issuer("default"), id, secret, tok.AccessToken); got["active"] != true {
		t.Fatalf("introspection on a node low on disk: %v", got)
	}
}

// TestDiskFull fills the data file system (a size-capped tmpfs per node)
// of a follower and then of the leader of a three-node cluster: below the
// watermark and then completely (ENOSPC). The node refuses writes cleanly,
// says why (/readyz, metrics, cluster status), keeps issuing
// client-credentials tokens, does not panic, hands leadership over when it
// leads, and recovers by itself once space is freed, with every
// acknowledged write present everywhere.
func TestDiskFull(t *testing.T) {
	const (
		diskSize  = 96 << 20
		watermark = 24 << 20
		below     = 12 << 20 // free space left when "below the watermark"
	)
	var disks [3]*rafttest.SmallDisk
	for i := range disks {
		disks[i] = rafttest.MountSmallDisk(t, diskSize) // unmounted after the cluster stops
	}
	opts := []nodetest.ClusterOption{nodetest.WithNodeOptions(func(cfg *node.Config) { cfg.MinFreeDisk = watermark })}
	for i, d := range disks {
		opts = append(opts, nodetest.WithNode(i, func(cfg *node.Config) { cfg.DataDir = filepath.Join(d.Dir, "data") }))
	}
	c := nodetest.StartCluster(t, 3, opts...)
	l := c.LeaderIndex()
	id, secret := c.Node(l).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", AccessTokenTtlSeconds: 300})
	c.WaitApplied(c.Node(l).Raft().State().AppliedIndex())

	var acked []string // every write acknowledged during the test
	write := func(n *nodetest.Node, name string) {
		t.Helper()
		if err := createClient(n, name); err != nil {
			t.Fatalf("write %s through node %s: %v", name, n.NodeID(), err)
		}
		acked = append(acked, name)
	}
	checkAllHave := func() {
		t.Helper()
		nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
			for _, i := range c.Running() {
				have := clientNames(c.Node(i))
				for _, name := range acked {
					if !have[name] {
						return fmt.Errorf("node%d lacks acknowledged write %s", i, name)
					}
				}
			}
			return nil
		})
	}
	waitReady := func(n *nodetest.Node) {
		t.Helper()
		nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
			if code, why := readyz(t, n); code != http.StatusOK {
				return fmt.Errorf("/readyz %d %v", code, why)
			}
			return nil
		})
	}

	t.Run("follower", func(t *testing.T) {
		l := c.LeaderIndex()
		fi := (l + 1) % 3
		f, leader := c.Node(fi), c.Node(l)
		is := startIssuing(f, id, secret)

		// Below the watermark: writes refused, the replica follows.
		disks[fi].Fill(below)
		nodetest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			code, why := readyz(t, f)
			if code != http.StatusServiceUnavailable || !strings.Contains(strings.Join(why, ";"), "min_free_disk") {
				return fmt.Errorf("/readyz %d %v, want 503 with a disk reason", code, why)
			}
			return nil
		})
		if v := metricValue(t, f, "tally_disk_low"); v != "1" {
			t.Errorf("tally_disk_low = %q, want 1", v)
		}
		if v := metricValue(t, f, "tally_disk_free_bytes"); v == "" || v == "0" {
			t.Errorf("tally_disk_free_bytes = %q", v)
		}
		wantDiskRefusal(t, f, id, secret)
		for k, start := 0, time.Now(); time.Since(start) < 2*time.Second; k++ {
			write(leader, fmt.Sprintf("f-low-%d", k))
		}
		checkAllHave()
		for _, m := range clusterStatus(t, leader).Members {
			if m.Id == f.NodeID() && m.Health != "refusing writes" {
				t.Errorf("cluster status of the follower: %q %q, want refusing writes", m.Health, m.Error)
			}
		}
		ok, bad, samples := is.end()
		t.Logf("follower below the watermark: %d tokens issued, %d errors %v", ok, bad, samples)
		if bad != 0 || ok == 0 {
			t.Errorf("issuance on a follower below the watermark: %d ok, %d errors %v; want no errors", ok, bad, samples)
		}

		// Completely full: the follower cannot store what the others
		// commit; it must not panic, and catches up once space is freed.
		is = startIssuing(f, id, secret)
		disks[fi].Fill(0)
		for k := range 20 {
			write(leader, fmt.Sprintf("f-full-%d", k))
		}
		nodetest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if _, why := readyz(t, f); !strings.Contains(strings.Join(why, ";"), "storage failing") {
				return fmt.Errorf("/readyz reasons %v, want a storage fault", why)
			}
			return nil
		})
		ok, bad, samples = is.end()
		t.Logf("follower with a full disk: %d tokens issued, %d errors %v", ok, bad, samples)

		// A replica that cannot follow the log for longer than the
		// staleness bound fails closed, like a partitioned one: it would
		// otherwise honour tokens revoked elsewhere.
		nodetest.CheckFor(t, 4*node.DefaultMaxStale, 100*time.Millisecond, func() error {
			write(leader, fmt.Sprintf("f-stale-%d", len(acked)))
			status, code, err := tokenStatus(f.Issuer("default"), id, secret)
			if err != nil || status != http.StatusServiceUnavailable || code != "temporarily_unavailable" {
				return fmt.Errorf("token from a follower that cannot follow the log: %d %q %v", status, code, err)
			}
			return nil
		})

		disks[fi].Free()
		waitReady(f)
		checkAllHave()
		write(f, "f-after")
		checkAllHave()
	})

	t.Run("leader", func(t *testing.T) {
		li := c.LeaderIndex()
		old := c.Node(li)
		is := startIssuing(old, id, secret)

		// Below the watermark: the leader hands leadership over to a
		// healthy voter, and writes through the others succeed.
		disks[li].Fill(below)
		nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			if old.Raft().IsLeader() {
				return errors.New("the leader low on disk still leads")
			}
			return nil
		})
		var other *nodetest.Node
		for _, i := range c.Running() {
			if i != li {
				other = c.Node(i)
			}
		}
		for k, start := 0, time.Now(); time.Since(start) < 2*time.Second; k++ {
			write(other, fmt.Sprintf("l-low-%d", k))
		}
		checkAllHave()
		wantDiskRefusal(t, old, id, secret)
		ok, bad, samples := is.end()
		t.Logf("leader below the watermark: %d tokens issued, %d errors %v", ok, bad, samples)
		if bad != 0 || ok == 0 {
			t.Errorf("issuance on the leader below the watermark: %d ok, %d errors %v; want no errors", ok, bad, samples)
		}

		// Completely full, then freed.
		is = startIssuing(old, id, secret)
		disks[li].Fill(0)
		for k := range 20 {
			write(other, fmt.Sprintf("l-full-%d", k))
		}
		ok, bad, samples = is.end()
		t.Logf("old leader with a full disk: %d tokens issued, %d errors %v", ok, bad, samples)
		disks[li].Free()
		waitReady(old)
		checkAllHave()
		write(old, "l-after")
		checkAllHave()
	})
}

// TestDiskFullWithoutWatermark: with the watermark off (min_free_disk 0)
// the leader's disk fills completely before anything refuses writes. The
// failing write itself then refuses further writes on that node (storage
// fault), leadership leaves it, the others keep taking writes, nothing
// panics, and it recovers once space is freed.
func TestDiskFullWithoutWatermark(t *testing.T) {
	var disks [3]*rafttest.SmallDisk
	for i := range disks {
		disks[i] = rafttest.MountSmallDisk(t, 64<<20)
	}
	opts := []nodetest.ClusterOption{nodetest.WithNodeOptions(func(cfg *node.Config) { cfg.MinFreeDisk = 0 })}
	for i, d := range disks {
		opts = append(opts, nodetest.WithNode(i, func(cfg *node.Config) { cfg.DataDir = filepath.Join(d.Dir, "data") }))
	}
	c := nodetest.StartCluster(t, 3, opts...)
	li := c.LeaderIndex()
	old := c.Node(li)
	other := c.Node((li + 1) % 3)
	disks[li].Fill(0)
	var acked []string
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		name := fmt.Sprintf("w-%d", len(acked))
		if err := createClient(other, name); err != nil {
			return err
		}
		acked = append(acked, name)
		if len(acked) < 20 {
			return fmt.Errorf("%d writes acknowledged", len(acked))
		}
		return nil
	})
	if err := createClient(old, "via-full"); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("write through the node with a full disk: %v, want Unavailable", err)
	}
	disks[li].Free()
	nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
		if code, why := readyz(t, old); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %v", code, why)
		}
		return createClient(old, "after")
	})
	acked = append(acked, "after")
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		for _, i := range c.Running() {
			have := clientNames(c.Node(i))
			for _, name := range acked {
				if !have[name] {
					return fmt.Errorf("node%d lacks acknowledged write %s", i, name)
				}
			}
		}
		return nil
	})
}
