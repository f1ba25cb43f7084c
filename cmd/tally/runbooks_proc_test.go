package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
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
