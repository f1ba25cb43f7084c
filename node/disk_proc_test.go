package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/node/proctest"
	"github.com/tallyauth/tally/raft/rafttest"
)

// diskEpisode is how long each disk-full episode of TestDiskFullProcesses
// lasts (TALLY_DISK_EPISODE overrides, for figures).
func diskEpisode(t *testing.T) time.Duration {
	if v := os.Getenv("TALLY_DISK_EPISODE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("TALLY_DISK_EPISODE=%q: %v", v, err)
		}
		return d
	}
	return 4 * time.Second
}

// procLoad issues client-credentials tokens at one node and revokes (by
// jti) through another, counting outcomes, until stopped.
type procLoad struct {
	issued, issueErrs atomic.Int64
	mu                sync.Mutex
	issueSamples      []string
	acked             []string // jtis whose revocation was acknowledged
	writeErrs         int
	lastAck           time.Time
	maxAckGap         time.Duration // longest time between acknowledged revocations
	stop              chan struct{}
	wg                sync.WaitGroup
}

func startProcLoad(c *proctest.Cluster, issueAt, writeVia *proctest.Proc, id, secret, prefix string) *procLoad {
	l := &procLoad{stop: make(chan struct{})}
	tokenURL := issueAt.URL() + "/t/default/oauth2/token"
	for range 2 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				status, code, err := tokenStatus(strings.TrimSuffix(tokenURL, "/oauth2/token"), id, secret)
				if err == nil && status == http.StatusOK {
					l.issued.Add(1)
					continue
				}
				l.issueErrs.Add(1)
				l.mu.Lock()
				if len(l.issueSamples) < 3 {
					l.issueSamples = append(l.issueSamples, fmt.Sprintf("%d %q %v", status, code, err))
				}
				l.mu.Unlock()
			}
		}()
	}
	if writeVia != nil {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for seq := 0; ; seq++ {
				select {
				case <-l.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				jti := fmt.Sprintf("%s-%d", prefix, seq)
				err := revokeVia(c, writeVia, jti)
				l.mu.Lock()
				if err == nil {
					l.acked = append(l.acked, jti)
					now := time.Now()
					if !l.lastAck.IsZero() && now.Sub(l.lastAck) > l.maxAckGap {
						l.maxAckGap = now.Sub(l.lastAck)
					}
					l.lastAck = now
				} else {
					l.writeErrs++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *procLoad) end() *procLoad {
	close(l.stop)
	l.wg.Wait()
	return l
}

func (l *procLoad) String() string {
	return fmt.Sprintf("%d tokens issued, %d issuance errors %v; %d revocations acknowledged through a healthy node, %d refused, longest gap between acknowledgements %s",
		l.issued.Load(), l.issueErrs.Load(), l.issueSamples, len(l.acked), l.writeErrs, l.maxAckGap.Round(time.Millisecond))
}

// procReadyz returns a node's /readyz status and body.
func procReadyz(p *proctest.Proc) (int, string) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(p.URL() + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return resp.StatusCode, b.String()
}

// revocationsAt lists the jtis node p holds.
func revocationsAt(t *testing.T, c *proctest.Cluster, p *proctest.Proc) map[string]bool {
	t.Helper()
	var out struct {
		Revocations []struct {
			Jti string `json:"jti"`
		} `json:"revocations"`
	}
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	if err := c.Call(ctx, p, "/tally.admin.v1.AdminService/ListRevocations", map[string]any{"tenant": "default"}, &out); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, r := range out.Revocations {
		have[r.Jti] = true
	}
	return have
}

// TestDiskFullProcesses runs three real `tally serve` processes, each with
// its data directory on its own size-capped tmpfs, and fills the disk of a
// follower and then of the leader, below the watermark and completely,
// for an episode each, while clients take tokens from the filled node and
// revoke through a healthy one. The filled node refuses writes with 503 and
// a reason, keeps issuing (errors counted: target 0 below the watermark),
// never exits, and recovers once the space is freed; no acknowledged
// revocation is lost.
func TestDiskFullProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	const diskSize, below = 96 << 20, 12 << 20
	var disks [3]*rafttest.SmallDisk
	for i := range disks {
		disks[i] = rafttest.MountSmallDisk(t, diskSize) // unmounted after the processes are killed
	}
	c := proctest.Start(t, proctest.Options{Args: func(i int, _ *proctest.Cluster) []string {
		return []string{"--data-dir", filepath.Join(disks[i].Dir, "data"), "--min-free-disk", "24MiB"}
	}})
	episode := diskEpisode(t)
	leader := c.Leader(30 * time.Second)
	var client struct {
		Client struct {
			ClientID string `json:"clientId"`
		} `json:"client"`
		ClientSecret string `json:"clientSecret"`
	}
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		defer cancel()
		return c.Call(ctx, leader, "/tally.admin.v1.AdminService/CreateClient", map[string]any{"tenant": "default", "name": "svc"}, &client)
	})
	id, secret := client.Client.ClientID, client.ClientSecret
	for _, p := range c.Nodes() { // every replica has the client
		nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			if status, code, err := tokenStatus(p.URL()+"/t/default", id, secret); err != nil || status != http.StatusOK {
				return fmt.Errorf("token from %s: %d %q %v", p.ID, status, code, err)
			}
			return nil
		})
	}
	var acked []string
	diskOf := func(p *proctest.Proc) *rafttest.SmallDisk { return disks[p.Index] }
	checkNoneLost := func() {
		t.Helper()
		nodetest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
			for _, p := range c.Nodes() {
				have := revocationsAt(t, c, p)
				for _, jti := range acked {
					if !have[jti] {
						return fmt.Errorf("%s lacks acknowledged revocation %s", p.ID, jti)
					}
				}
			}
			return nil
		})
	}
	refusesWrites := func(p *proctest.Proc) {
		t.Helper()
		err := revokeVia(c, p, "refused")
		var ce *proctest.CallError
		if !errors.As(err, &ce) || ce.Status != http.StatusServiceUnavailable || !strings.Contains(ce.Body, "disk space low") {
			t.Errorf("admin write through %s, low on disk: %v; want 503 unavailable with a disk reason", p.ID, err)
		}
		status, body, _ := postForm(t, p.URL()+"/t/default/oauth2/revoke", id, secret, url.Values{"token": {"x"}})
		if status != http.StatusServiceUnavailable && status != http.StatusOK {
			t.Errorf("OAuth revoke through %s, low on disk: %d %v", p.ID, status, body)
		}
	}
	episodeOn := func(name string, p, via *proctest.Proc, leave int64, wantNoIssueErrors bool) {
		t.Helper()
		load := startProcLoad(c, p, via, id, secret, name)
		diskOf(p).Fill(leave)
		nodetest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if code, body := procReadyz(p); code != http.StatusServiceUnavailable || !strings.Contains(body, "refusing writes") {
				return fmt.Errorf("%s /readyz %d %s", p.ID, code, body)
			}
			return nil
		})
		refusesWrites(p)
		<-time.After(episode)
		select {
		case <-p.Exited():
			t.Fatalf("%s exited during %s:\n%s", p.ID, name, p.LogTail(30))
		default:
		}
		diskOf(p).Free()
		load.end()
		t.Logf("%s (%s on %s): %s", name, episode, p.ID, load)
		for _, line := range strings.Split(p.LogTail(400), "\n") {
			if strings.Contains(line, "leadership") || strings.Contains(line, "watermark") || strings.Contains(line, "JetStream") {
				t.Logf("  %s: %.300s", p.ID, line)
			}
		}
		if wantNoIssueErrors && load.issueErrs.Load() != 0 {
			t.Errorf("%s: %d issuance errors on %s, want 0", name, load.issueErrs.Load(), p.ID)
		}
		if load.issued.Load() == 0 {
			t.Errorf("%s: no token issued on %s", name, p.ID)
		}
		acked = append(acked, load.acked...)
		nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			if code, body := procReadyz(p); code != http.StatusOK {
				return fmt.Errorf("%s /readyz after freeing space: %d %s", p.ID, code, body)
			}
			return nil
		})
		if err := revokeVia(c, p, name+"-after"); err != nil {
			t.Errorf("%s: write through %s after freeing space: %v", name, p.ID, err)
		} else {
			acked = append(acked, name+"-after")
		}
		checkNoneLost()
	}

	leader = c.Leader(30 * time.Second)
	f := c.Followers(leader)[0]
	episodeOn("follower-below-watermark", f, leader, below, true)
	leader = c.Leader(30 * time.Second)
	f = c.Followers(leader)[0]
	episodeOn("follower-full", f, leader, 0, false)

	leader = c.Leader(30 * time.Second)
	other := c.Followers(leader)[0]
	episodeOn("leader-below-watermark", leader, other, below, true)
	if now := c.Leader(30 * time.Second); now == leader {
		t.Logf("note: %s leads again after its disk was freed", leader.ID)
	}
	leader = c.Leader(30 * time.Second)
	other = c.Followers(leader)[0]
	episodeOn("leader-full", leader, other, 0, false)
}
