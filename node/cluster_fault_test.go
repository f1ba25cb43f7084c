package node_test

// Node-level fault tests: real tally nodes (mutual TLS, forwarded writes,
// HTTP) whose Raft traffic runs through rafttest's fault-injecting network
// (wrapped around each node's TLS stream layer). The network cuts and
// delays Raft only; the internal Connect service on the same port is not
// cut, so a partitioned follower can still reach the leader's Apply RPC but
// hears nothing back through Raft.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/rafttest"
	"github.com/tallyauth/tally/revocation"
)

// faultRaft puts every node's Raft stream layer on nw.
func faultRaft(nw *rafttest.Network) nodetest.Option {
	return func(cfg *node.Config) {
		prev := cfg.RaftTuning
		cfg.RaftTuning = func(rc *raft.Config) {
			if prev != nil {
				prev(rc)
			}
			rc.StreamLayer = nw.Wrap(rc.ID, rc.StreamLayer)
		}
	}
}

func nodeIDs(c *nodetest.Cluster) []string {
	ids := make([]string, c.Len())
	for i := range ids {
		ids[i] = fmt.Sprintf("node%d", i)
	}
	return ids
}

// tokenStatus requests a client-credentials token and returns the status
// and the OAuth error code, if any.
func tokenStatus(issuer, id, secret string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, issuer+"/oauth2/token",
		strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	if err != nil {
		return 0, "", err
	}
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var body struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body)
	return resp.StatusCode, body.Error, nil
}

// TestClusterFaultPartitionedFollower: a follower cut off from Raft keeps
// issuing client-credentials tokens from its replica until the staleness
// bound, then fails closed with temporarily_unavailable; a write sent to it
// fails with Unavailable; the rest of the cluster keeps taking writes; once
// healed the follower catches up (including a write it forwarded while cut
// off, applied once) and issues again.
func TestClusterFaultPartitionedFollower(t *testing.T) {
	// Generous: the first token after the cut must come within it on a
	// loaded machine too (the test fails if none does).
	const bound = 5 * time.Second
	nw := rafttest.NewNetwork()
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(faultRaft(nw), func(cfg *node.Config) {
		cfg.MaxStale = bound
		cfg.WriteTimeout = 1500 * time.Millisecond
	}))
	l := c.LeaderIndex()
	leader := c.Node(l)
	id, secret := leader.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", AccessTokenTtlSeconds: 300})
	c.WaitApplied(leader.Raft().State().AppliedIndex())

	fi := (l + 1) % 3
	f := c.Node(fi)
	issuer := f.Issuer("default")
	// A resource server follows events on the follower's NATS server (the
	// partition cuts Raft only). While the follower is stale, and while it
	// catches up after the heal, it cannot vouch for the client's
	// credentials; that is no reason to drop a connection it admitted.
	rsConns, err := revocation.ConnectNATSEach(revocation.NATSConfig{URLs: f.NATSURL(), Tenant: "default", ClientID: id, ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	rs := rsConns[0]
	defer rs.Close()
	nodetest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !rs.IsConnected() {
			return errors.New("resource server not connected to the follower's NATS")
		}
		return nil
	})
	nw.Partition(nodeIDs(c), fmt.Sprintf("node%d", fi))
	cut := time.Now()

	// Until the bound: tokens. After it: 503 temporarily_unavailable.
	// Nothing else, ever.
	var fresh, stale int
	nodetest.CheckFor(t, 4*bound, 10*time.Millisecond, func() error {
		status, code, err := tokenStatus(issuer, id, secret)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case status == http.StatusOK:
			if stale > 0 {
				t.Fatalf("a token after the follower went stale (%v after the cut)", time.Since(cut))
			}
			fresh++
		case status == http.StatusServiceUnavailable && code == "temporarily_unavailable":
			stale++
		default:
			t.Fatalf("token from a partitioned follower: %d %q", status, code)
		}
		if stale == 0 {
			return fmt.Errorf("still issuing after %v (%d tokens)", time.Since(cut), fresh)
		}
		return nil
	})
	if fresh == 0 {
		t.Fatal("the partitioned follower issued no token within the staleness bound")
	}
	t.Logf("partitioned follower: %d tokens, then fail-closed %v after the cut (bound %v)", fresh, time.Since(cut), bound)

	// A write through it fails with a retriable error within its write
	// timeout (it may have been committed by the leader: then it must be
	// there once after healing).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = f.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "via-cut-follower"}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("write through a partitioned follower: %v, want Unavailable", err)
	}

	// The majority keeps taking writes.
	id2, _ := leader.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "during"})
	if _, ok := f.Raft().State().Client("default", id2); ok {
		t.Fatal("the partitioned follower applied a write while cut off")
	}

	nw.Heal()
	c.WaitConverged()
	if _, ok := f.Raft().State().Client("default", id2); !ok {
		t.Fatal("the healed follower did not catch up")
	}
	n := 0
	for _, cl := range f.Raft().State().Clients("default") {
		if cl.Name == "via-cut-follower" {
			n++
		}
	}
	if n > 1 {
		t.Fatalf("the write forwarded while cut off was applied %d times", n)
	}
	if status, code, err := tokenStatus(issuer, id, secret); err != nil || status != http.StatusOK {
		t.Fatalf("token from the healed follower: %d %q %v", status, code, err)
	}
	if st := rs.Stats(); !rs.IsConnected() || st.Reconnects != 0 {
		t.Fatalf("the resource server's connection to the follower was dropped while it was stale or catching up (connected %v, %d reconnects)", rs.IsConnected(), st.Reconnects)
	}
}

// TestClusterFaultLeaderKillKeepsIssuing kills the leader (its Raft links
// cut, then the node stopped) while clients take tokens from the two other
// nodes and a writer writes through one of them: no token request fails,
// and a forwarded write succeeds again once a new leader is elected.
func TestClusterFaultLeaderKillKeepsIssuing(t *testing.T) {
	nw := rafttest.NewNetwork()
	// The staleness bound outlasts the election: on a loaded machine (-race,
	// two cores, another CPU-heavy process) the first forwarded write came
	// 12 s after the kill, and a survivor past the default 5 s bound
	// rightly fails closed (TestClusterFaultPartitionedFollower tests that).
	// Rate limits off: four unpaced workers of one client may exceed its
	// budget (1000/s) on a fast machine.
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(faultRaft(nw), func(cfg *node.Config) {
		cfg.MaxStale = 2 * nodetest.Timeout
		cfg.RateLimits.Off = true
	}))
	l := c.LeaderIndex()
	id, secret := c.Node(l).CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", AccessTokenTtlSeconds: 300})
	c.WaitApplied(c.Node(l).Raft().State().AppliedIndex())
	var survivors []*nodetest.Node
	for i := range 3 {
		if i != l {
			survivors = append(survivors, c.Node(i))
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var tokensOK, tokensBad atomic.Int64
	var badMu sync.Mutex
	var bad []string
	for k := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := survivors[k%2]
			for {
				select {
				case <-stop:
					return
				default:
				}
				status, code, err := tokenStatus(n.Issuer("default"), id, secret)
				if err == nil && status == http.StatusOK {
					tokensOK.Add(1)
					continue
				}
				tokensBad.Add(1)
				badMu.Lock()
				bad = append(bad, fmt.Sprintf("%d %q %v", status, code, err))
				badMu.Unlock()
			}
		}()
	}
	var killedAt atomic.Int64
	firstWrite := make(chan time.Duration, 1)
	var ackedMu sync.Mutex
	var acked []string // names of clients whose creation was acknowledged
	wg.Add(1)
	go func() { // writes through a surviving follower (forwarded)
		defer wg.Done()
		w := survivors[0]
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			call := time.Now()
			name := fmt.Sprintf("w%d", seq)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := w.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: name}))
			cancel()
			if err == nil {
				ackedMu.Lock()
				acked = append(acked, name)
				ackedMu.Unlock()
			} else if code := connect.CodeOf(err); code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded {
				t.Errorf("write through a follower during the failover: %v, want success or Unavailable", err)
			}
			if k := killedAt.Load(); err == nil && k != 0 && call.UnixNano() > k {
				select {
				case firstWrite <- time.Since(time.Unix(0, k)):
				default:
				}
			}
		}
	}()

	nodetest.CheckFor(t, nodetest.Timeout, 5*time.Millisecond, func() error {
		if tokensOK.Load() < 50 {
			return errors.New("warming up")
		}
		return nil
	})
	before := tokensOK.Load()
	kill := time.Now()
	killedAt.Store(kill.UnixNano())
	nw.SetDown(fmt.Sprintf("node%d", l), true)
	c.Stop(l)
	var took time.Duration
	select {
	case took = <-firstWrite:
	case <-time.After(nodetest.Timeout):
		t.Fatal("no forwarded write succeeded after the leader kill")
	}
	// Keep issuing a little past the first write, then stop the load.
	want := tokensOK.Load() + 20
	nodetest.CheckFor(t, nodetest.Timeout, 5*time.Millisecond, func() error {
		if tokensOK.Load() < want {
			return errors.New("more tokens")
		}
		return nil
	})
	close(stop)
	wg.Wait()
	t.Logf("leader kill → first forwarded write: %v; tokens during the run: %d ok (%d after the kill), %d failed",
		took, tokensOK.Load(), tokensOK.Load()-before, tokensBad.Load())
	if n := tokensBad.Load(); n > 0 {
		t.Fatalf("%d token requests failed around the leader kill, e.g. %v", n, bad[:min(len(bad), 5)])
	}

	nw.SetDown(fmt.Sprintf("node%d", l), false)
	c.Restart(l)
	c.WaitConverged()
	// Every acknowledged write is on every node; none is there twice
	// (a write that failed in flight may be there once).
	for i := range 3 {
		names := map[string]int{}
		for _, cl := range c.Node(i).Raft().State().Clients("default") {
			names[cl.Name]++
		}
		for name, n := range names {
			if n > 1 {
				t.Fatalf("node%d: client %q created %d times", i, name, n)
			}
		}
		for _, name := range acked {
			if names[name] != 1 {
				t.Fatalf("node%d lost the acknowledged creation of client %q", i, name)
			}
		}
	}
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
}

// TestClusterFaultLeaderInMinority: the leader's Raft traffic is cut off
// from the two others. They elect a new leader and take writes; the old
// leader steps down, and a write sent to it fails with Unavailable and is
// not there after healing (only the old leader ever saw it).
func TestClusterFaultLeaderInMinority(t *testing.T) {
	nw := rafttest.NewNetwork()
	c := nodetest.StartCluster(t, 3, nodetest.WithNodeOptions(faultRaft(nw), func(cfg *node.Config) {
		cfg.WriteTimeout = 1500 * time.Millisecond
	}))
	l := c.LeaderIndex()
	old := c.Node(l)
	nw.Partition(nodeIDs(c), fmt.Sprintf("node%d", l))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := old.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "minority"}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("write through the partitioned old leader: %v, want Unavailable", err)
	}
	nodetest.CheckFor(t, nodetest.Timeout, 10*time.Millisecond, func() error {
		if old.Raft().IsLeader() {
			return errors.New("the old leader still leads")
		}
		return nil
	})
	var majority *nodetest.Node
	nodetest.CheckFor(t, nodetest.Timeout, 10*time.Millisecond, func() error {
		for i := range 3 {
			if n := c.Node(i); i != l && n.Raft().IsLeader() {
				majority = n
				return nil
			}
		}
		return errors.New("no leader in the majority")
	})
	id, _ := majority.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "majority"})

	nw.Heal()
	c.WaitConverged()
	if _, ok := old.Raft().State().Client("default", id); !ok {
		t.Fatal("the old leader did not catch up after healing")
	}
	for i := range 3 {
		for _, cl := range c.Node(i).Raft().State().Clients("default") {
			if cl.Name == "minority" {
				t.Fatalf("node%d holds the write only the deposed leader accepted", i)
			}
		}
	}
}
