package main

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/proctest"
)

var clientIDRE = regexp.MustCompile(`"client_?[iI]d"\s*:\s*"([^"]+)"`)

// createClientCLI creates a client through `tally admin client create`
// against server and returns its id.
func createClientCLI(t *testing.T, server, token, name string) (string, error) {
	t.Helper()
	code, out, errb := runCLI(t, map[string]string{"TALLY_SERVER": server, "TALLY_ADMIN_TOKEN": token},
		"admin", "client", "create", "--name", name, "--output", "json")
	if code != 0 {
		return "", fmt.Errorf("client create: exit %d: %s%s", code, out, errb)
	}
	m := clientIDRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no client id in %s", out)
	}
	return m[1], nil
}

// TestRunbookLostQuorumProcesses is deploy/runbooks/lost-quorum.md on real
// `tally serve` processes: two of three are killed (SIGKILL) for good, the
// survivor is stopped (SIGTERM), recovered with the tally binary's
// `admin cluster recover --peers-json`, and started again: it is ready as a
// cluster of one, keeps the acknowledged write and takes new ones. On the
// way it checks /metrics on the separate --metrics-listen port of real
// processes.
func TestRunbookLostQuorumProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	metricsPorts := []int{proctest.FreePort(t), proctest.FreePort(t), proctest.FreePort(t)}
	c := proctest.Start(t, proctest.Options{Args: func(i int, _ *proctest.Cluster) []string {
		return []string{"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", metricsPorts[i])}
	}})
	survivor := c.Node(0)

	// Metrics on the separate listener of each process, not on the public one.
	for i, p := range c.Nodes() {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPorts[i]))
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(resp)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "\ntally_raft_term ") || !strings.Contains(body, "\ntally_raft_voters 3") {
			t.Fatalf("%s metrics: %s\n%.400s", p.ID, resp.Status, body)
		}
		if resp, err := http.Get(p.URL() + "/metrics"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Fatalf("%s still serves /metrics on its public listener", p.ID)
			}
		}
	}

	// Ready comes before the leader has created the default tenant: retry.
	var id string
	proctestEventually(t, func() error {
		var err error
		id, err = createClientCLI(t, survivor.URL(), c.AdminToken, "before-the-loss")
		return err
	})
	// Every node has it before two are lost (the survivor's log then holds it
	// whichever node led).
	proctestEventually(t, func() error {
		_, members, err := c.Status(t.Context(), survivor)
		if err != nil {
			return err
		}
		var commit uint64
		for _, m := range members {
			if m.Leader {
				commit = m.CommitIndex
			}
		}
		for _, m := range members {
			if commit == 0 || m.AppliedIndex < commit {
				return fmt.Errorf("%s applied %d of %d", m.ID, m.AppliedIndex, commit)
			}
		}
		return nil
	})

	c.Node(1).Kill()
	c.Node(2).Kill()
	if !survivor.Stop() {
		t.Fatalf("the survivor did not stop cleanly; log:\n%s", survivor.LogTail(20))
	}

	peers := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(peers, fmt.Appendf(nil, `[{"id": %q, "address": "127.0.0.1:%d", "non_voter": false}]`, survivor.ID, survivor.Ports.Raft), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(c.Bin, "admin", "cluster", "recover", "--data-dir", survivor.DataDir, "--node-id", survivor.ID, "--peers-json", peers).CombinedOutput()
	if err != nil {
		t.Fatalf("tally admin cluster recover: %v\n%s", err, out)
	}
	if err := survivor.Start(); err != nil {
		t.Fatal(err)
	}
	survivor.WaitReady(60 * time.Second)

	code, stdout, errb := runCLI(t, map[string]string{"TALLY_SERVER": survivor.URL(), "TALLY_ADMIN_TOKEN": c.AdminToken}, "admin", "client", "get", id)
	if code != 0 {
		t.Fatalf("the client written before the loss: exit %d: %s%s", code, stdout, errb)
	}
	if _, err := createClientCLI(t, survivor.URL(), c.AdminToken, "after-recovery"); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	leader, members, err := c.Status(t.Context(), survivor)
	if err != nil || leader != survivor.ID || len(members) != 1 {
		t.Fatalf("status after recovery: leader %q, %d members, %v", leader, len(members), err)
	}
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	b := new(strings.Builder)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// proctestEventually polls fn until it succeeds (30 s).
func proctestEventually(t *testing.T, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRunbookRollingProcesses is three runbooks in one rolling restart of
// real `tally serve` processes (rolling-upgrade.md, followers first and the
// leader last after transfer-leadership; rotate-admin-credential.md, the
// new credential written before the roll; replace-node-certificate.md, a
// new certificate for node2) under client-credentials load on the nodes
// that are up: no token request fails, each restarted node accepts only the
// new credential, and the cluster converges.
func TestRunbookRollingProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	// Rate limits off: the unpaced client-credentials load of one client
	// may exceed its budget (1000 requests a second) on a quiet machine.
	c := proctest.Start(t, proctest.Options{Args: func(int, *proctest.Cluster) []string { return []string{"--rate-limits", "off"} }})
	oldTok := c.AdminToken
	var clientID, secret string
	proctestEventually(t, func() error {
		code, out, errb := runCLI(t, map[string]string{"TALLY_SERVER": c.Node(0).URL(), "TALLY_ADMIN_TOKEN": oldTok},
			"admin", "client", "create", "--name", "load", "--output", "json")
		if code != 0 {
			return fmt.Errorf("client create: %d %s%s", code, out, errb)
		}
		id, sec := clientIDRE.FindStringSubmatch(out), regexp.MustCompile(`"client_?[sS]ecret"\s*:\s*"([^"]+)"`).FindStringSubmatch(out)
		if id == nil || sec == nil {
			return fmt.Errorf("no client id or secret in %s", out)
		}
		clientID, secret = id[1], sec[1]
		return nil
	})
	leader := c.Leader(30 * time.Second)
	// Every node has the client before the load starts.
	proctestEventually(t, func() error {
		for _, p := range c.Nodes() {
			resp, err := http.PostForm(p.URL()+"/t/default/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}})
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", p.ID, resp.Status)
			}
		}
		return nil
	})

	// Load on every node that is up.
	var down atomic.Int32
	down.Store(-1)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl := &http.Client{Timeout: 5 * time.Second}
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			i := k % 3
			if int32(i) == down.Load() {
				continue
			}
			resp, err := cl.PostForm(c.Node(i).URL()+"/t/default/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}})
			if int32(i) == down.Load() {
				if err == nil {
					resp.Body.Close()
				}
				continue // stopped meanwhile: not counted
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", c.Node(i).ID, err))
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %s", c.Node(i).ID, resp.Status))
				continue
			}
			ok.Add(1)
		}
	}()

	// The new credential (one file shared by the nodes here) and a new
	// certificate for node2, both read at the next start.
	newTok := "rotated-admin-credential-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := os.WriteFile(c.TokenFile, []byte(newTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	node2 := c.Node(1)
	staging := filepath.Join(t.TempDir(), "node2-tls")
	if out, err := exec.Command(c.Bin, "admin", "cluster", "node-cert", "--ca", c.CADir, "--node-id", node2.ID, "--ip", "127.0.0.1", "--out", staging).CombinedOutput(); err != nil {
		t.Fatalf("node-cert: %v\n%s", err, out)
	}
	for _, f := range []string{"node.pem", "node-key.pem", "ca.pem"} {
		b, err := os.ReadFile(filepath.Join(staging, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(node2.TLSDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	order := append(c.Followers(leader), leader)
	for _, p := range order {
		vars := map[string]string{"TALLY_SERVER": p.URL(), "TALLY_ADMIN_TOKEN": oldTok}
		if p == leader {
			if code, out, errb := runCLI(t, vars, "admin", "cluster", "transfer-leadership"); code != 0 {
				t.Fatalf("transfer-leadership: %d %s%s", code, out, errb)
			}
		}
		down.Store(int32(p.Index))
		time.Sleep(100 * time.Millisecond) // requests in flight to p finish
		if !p.Stop() {
			t.Fatalf("%s did not stop cleanly; log:\n%s", p.ID, p.LogTail(20))
		}
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		p.WaitReady(60 * time.Second)
		down.Store(-1)
		if code, _, _ := runCLI(t, map[string]string{"TALLY_SERVER": p.URL(), "TALLY_ADMIN_TOKEN": newTok}, "admin", "cluster", "status"); code != 0 {
			t.Fatalf("%s refuses the new credential after its restart", p.ID)
		}
		if code, _, _ := runCLI(t, vars, "admin", "cluster", "status"); code == 0 {
			t.Fatalf("%s accepts the old credential after its restart", p.ID)
		}
	}
	close(stop)
	<-done
	if failed.Load() > 0 || ok.Load() == 0 {
		t.Fatalf("token requests on nodes that were up: %d ok, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
	}
	c.AdminToken = newTok
	proctestEventually(t, func() error {
		_, members, err := c.Status(t.Context(), c.Node(0))
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
	t.Logf("rolling restart of processes: %d token requests, 0 failed", ok.Load())
}
