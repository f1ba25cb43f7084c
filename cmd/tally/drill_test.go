package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/localcluster"
)

// runDrillCmd runs "tally drill args..." and returns the exit code, stdout
// and stderr.
func runDrillCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"drill"}, args...), env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }})
	return code, out.String(), errb.String()
}

// TestDrills runs each drill on a cluster it starts, briefly, with fast
// Raft timeouts: each must pass (exit 0) and report what it measured.
func TestDrills(t *testing.T) {
	short := []string{"--raft-profile", "fast", "--before", "700ms", "--after", "700ms", "--issue-workers", "2", "--write-workers", "2", "--output", "json"}
	tests := []struct {
		name string
		args []string
		// isolated: the report must show the isolated node failing closed.
		isolated bool
	}{
		// The followers must keep issuing through the election: a
		// staleness bound of 5 s (the default) leaves room for a slow
		// election on a loaded machine.
		// The failovers' staleness bound outlasts an election on a loaded
		// machine (-race, two cores, another CPU-heavy process): a serving
		// node that goes stale while there is no leader answers
		// temporarily_unavailable, which the drill counts as a violation.
		{"failover kill", []string{"failover", "--fault-for", "1500ms", "--max-stale", "20s"}, false},
		{"failover graceful", []string{"failover", "--graceful", "--fault-for", "1s", "--max-stale", "20s"}, false},
		{"partition follower", []string{"partition", "--isolate", "follower", "--fault-for", "3s", "--max-stale", "1500ms", "--stale-grace", "700ms"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			html := filepath.Join(t.TempDir(), "drill.html")
			code, out, errs := runDrillCmd(t, append(append(tt.args, short...), "--report", html)...)
			if code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
			}
			var rep struct {
				Pass               bool     `json:"pass"`
				Violations         []string `json:"violations"`
				Issued             int64    `json:"issued"`
				WritesAcked        int64    `json:"writes_acked"`
				Verified           int64    `json:"verified"`
				Nodes              int      `json:"nodes"`
				IsolatedFailClosed int64    `json:"isolated_fail_closed"`
				Events             []struct {
					Name string `json:"name"`
				} `json:"events"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("report: %v\n%s", err, out)
			}
			if !rep.Pass || len(rep.Violations) != 0 || rep.Issued == 0 || rep.WritesAcked == 0 || rep.Verified < rep.WritesAcked || rep.Nodes != 3 {
				t.Fatalf("report: %+v", rep)
			}
			if tt.isolated && rep.IsolatedFailClosed == 0 {
				t.Fatalf("the isolated node never failed closed: %+v", rep)
			}
			if len(rep.Events) < 3 {
				t.Fatalf("events: %+v", rep.Events)
			}
			page, err := os.ReadFile(html)
			if err != nil || !strings.Contains(string(page), rep.Events[1].Name) || !strings.Contains(string(page), "<svg") {
				t.Fatalf("HTML report (%v) lacks the fault event %q or charts", err, rep.Events[1].Name)
			}
		})
	}
}

func TestDrillUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no drill", nil, "Usage"},
		{"unknown drill", []string{"chaos"}, "unknown drill"},
		{"kill through the admin API", []string{"failover", "--server", "http://127.0.0.1:1"}, "--graceful"},
		{"partition without commands", []string{"partition", "--server", "http://127.0.0.1:1"}, "--partition-cmd"},
		{"failover without commands", []string{"failover", "--server", "http://127.0.0.1:1"}, "--kill-cmd"},
		{"rolling restart without a command", []string{"rolling-restart", "--server", "http://127.0.0.1:1"}, "--restart-cmd"},
		{"bad node URL", []string{"failover", "--graceful", "--server", "http://127.0.0.1:1", "--admin-token", "x", "--node", "node1=ftp://x"}, "--node"},
		{"bad output", []string{"failover", "--output", "xml"}, "--output"},
		{"too few nodes", []string{"failover", "--nodes", "2"}, "--nodes"},
		{"bad profile", []string{"partition", "--raft-profile", "moon"}, "--raft-profile"},
		{"remote without token", []string{"failover", "--graceful", "--server", "http://127.0.0.1:1"}, "admin token"},
		{"bad isolate", []string{"partition", "--isolate", "moon"}, "--isolate"},
		{"region with every node", []string{"partition", "--isolate", "region:all", "--regions", "all"}, "--isolate"},
		{"positional", []string{"failover", "extra"}, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := runDrillCmd(t, tt.args...)
			if code != 2 || !strings.Contains(errs, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, errs, tt.want)
			}
		})
	}
}

// TestDrillRemoteGraceful drills a running cluster through its admin API
// (the cluster status names the nodes, TransferLeadership is the fault).
func TestDrillRemoteGraceful(t *testing.T) {
	// A staleness bound that outlasts an election on a loaded machine (see
	// TestDrillRemoteCommands).
	c, err := localcluster.Start(context.Background(), localcluster.Config{Dir: t.TempDir(), Nodes: 3, Regions: []string{"east", "west"}, Profile: "fast", MaxStale: 20 * time.Second, RateLimitsOff: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	l, err := c.Leader(context.Background(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := runDrillCmd(t, "failover", "--graceful", "--server", c.Node(l).URL(), "--admin-token", c.AdminToken(),
		"--before", "700ms", "--fault-for", "1s", "--after", "700ms", "--issue-workers", "2", "--write-workers", "2", "--max-stale", "20s", "--output", "json")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	var rep struct {
		Pass        bool   `json:"pass"`
		Fault       string `json:"fault"`
		Nodes       int    `json:"nodes"`
		WritesAcked int64  `json:"writes_acked"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.Pass || rep.Nodes != 3 || rep.WritesAcked == 0 || !strings.Contains(rep.Fault, c.ID(l)) {
		t.Fatalf("report (%v): %s", err, out)
	}
	if now, err := c.Leader(context.Background(), 10*time.Second); err != nil || now == l {
		t.Fatalf("leader after the drill: node%d (%v), before node%d", now, err, l)
	}
}

// TestDrillRemoteCommands drills a running cluster the way an operator
// does: the nodes given by URL (ids read from their /metrics), the faults
// injected by shell commands with {node} and {region} substituted (here
// curl calls to a fault service in the test that kills, restarts or
// partitions the in-process nodes).
func TestDrillRemoteCommands(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl for the operator commands")
	}
	// The staleness bound must outlast an election on a loaded machine
	// (-race, two cores, another CPU-heavy process: 12 s were seen): a
	// serving node that goes stale while the leader is down answers
	// temporarily_unavailable, which the drill counts as a violation. Rate
	// limits off: the three drills' load from one address exceeds a
	// client's budget on a fast machine (rate_limited is a violation too).
	c, err := localcluster.Start(context.Background(), localcluster.Config{Dir: t.TempDir(), Nodes: 3, Regions: []string{"east", "central", "west"}, Profile: "fast", MaxStale: 20 * time.Second, RateLimitsOff: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var mu sync.Mutex
	var calls []string
	faults := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, region := r.URL.Query().Get("node"), r.URL.Query().Get("region")
		i := slices.Index(c.IDs(), id)
		if i < 0 || c.Region(i) != region {
			http.Error(w, "no node "+id+" in "+region, http.StatusBadRequest)
			return
		}
		mu.Lock()
		calls = append(calls, r.URL.Path+" "+id)
		mu.Unlock()
		switch r.URL.Path {
		case "/kill":
			c.Kill(i)
		case "/restart":
			if err := c.Restart(r.Context(), i); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
		case "/partition":
			c.Net.Partition(c.IDs(), id)
		case "/heal":
			c.Net.Heal()
		}
	}))
	t.Cleanup(faults.Close)
	cmd := func(path string) string {
		return `curl -fsS "` + faults.URL + path + `?node={node}&region={region}"`
	}
	l, err := c.Leader(context.Background(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	common := []string{"--server", c.Node(l).URL(), "--admin-token", c.AdminToken(),
		"--before", "700ms", "--fault-for", "1s", "--after", "700ms", "--issue-workers", "2", "--write-workers", "2",
		"--max-stale", "20s", "--output", "json", "--ready-timeout", "30s"}
	for i := range c.Len() {
		common = append(common, "--node", c.Node(i).URL())
	}
	tests := []struct {
		name  string
		args  []string
		calls []string
	}{
		{"failover", []string{"failover", "--kill-cmd", cmd("/kill"), "--restart-cmd", cmd("/restart")}, []string{"/kill", "/restart"}},
		{"partition", []string{"partition", "--isolate", "follower", "--fault-for", "3500ms", "--partition-cmd", cmd("/partition"), "--heal-cmd", cmd("/heal")}, []string{"/partition", "/heal"}},
		{"rolling-restart", []string{"rolling-restart", "--kill-cmd", cmd("/kill"), "--restart-cmd", cmd("/restart")}, []string{"/kill", "/restart", "/kill", "/restart", "/kill", "/restart"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			calls = nil
			mu.Unlock()
			code, out, errs := runDrillCmd(t, append(tt.args, common...)...)
			if code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
			}
			var rep struct {
				Pass        bool  `json:"pass"`
				Nodes       int   `json:"nodes"`
				WritesAcked int64 `json:"writes_acked"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.Pass || rep.Nodes != 3 || rep.WritesAcked == 0 {
				t.Fatalf("report (%v): %s", err, out)
			}
			mu.Lock()
			defer mu.Unlock()
			var paths []string
			for _, c := range calls {
				p, _, _ := strings.Cut(c, " ")
				paths = append(paths, p)
			}
			if !slices.Equal(paths, tt.calls) {
				t.Fatalf("operator commands %q, want %q", calls, tt.calls)
			}
		})
	}
}
