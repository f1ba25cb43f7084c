package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels string
	value  float64
}

// scrape fetches a Prometheus text page and parses its samples.
func scrape(url string) ([]sample, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	var out []sample
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		var s sample
		rest := line
		if i := strings.IndexAny(line, "{ "); i > 0 {
			s.name, rest = line[:i], line[i:]
		} else {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				return nil, fmt.Errorf("malformed line %q", line)
			}
			s.labels, rest = rest[1:j], rest[j+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		if s.value, err = strconv.ParseFloat(fields[0], 64); err != nil {
			return nil, fmt.Errorf("line %q: %v", line, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// families is the set of metric family names in samples (histogram
// suffixes removed).
func families(samples []sample) map[string]bool {
	out := map[string]bool{}
	for _, s := range samples {
		n := s.name
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if strings.HasSuffix(n, suf) {
				out[strings.TrimSuffix(n, suf)] = true
			}
		}
		out[n] = true
	}
	return out
}

func value(samples []sample, name, labelPart string) (float64, bool) {
	for _, s := range samples {
		if s.name == name && strings.Contains(s.labels, labelPart) {
			return s.value, true
		}
	}
	return 0, false
}

// exercise makes a cluster produce every kind of metric: writes on the
// leader and forwarded from a follower, tokens, a revocation (an event) and
// requests to several endpoints.
// exercise returns the index of the leader it sent its requests to and of
// the follower it wrote through (leadership may move afterwards).
func exercise(t *testing.T, c *nodetest.Cluster) (l, fi int) {
	t.Helper()
	l = c.LeaderIndex()
	fi = (l + 1) % c.Len()
	f := c.Node(fi)
	id, secret := f.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", Scopes: []string{"read"}, TokenFormat: "opaque", AccessTokenTtlSeconds: 300})
	ln := c.Node(l)
	resp, err := http.PostForm(ln.TokenURL("default"), url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token: %s %s", resp.Status, body)
	}
	tok := regexp.MustCompile(`"access_token":"([^"]+)"`).FindSubmatch(body)
	if tok == nil {
		t.Fatalf("no access token in %s", body)
	}
	resp, err = http.PostForm(ln.Issuer("default")+"/oauth2/revoke", url.Values{"token": {string(tok[1])}, "client_id": {id}, "client_secret": {secret}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = http.PostForm(ln.Issuer("default")+"/oauth2/introspect", url.Values{"token": {string(tok[1])}, "client_id": {id}, "client_secret": {secret}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return l, fi
}

// TestMetricsOfARealCluster scrapes /metrics of a three-node cluster and
// checks the node's own metrics: Raft state on every node, the leader's
// view of its followers, writes by kind and result, forwarded writes,
// per-endpoint requests and the event log.
func TestMetricsOfARealCluster(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	// served took the requests (the leader then) and f the write it
	// forwarded; on a loaded machine leadership may move after that, so
	// the Raft leader's and a follower's own metrics are read from the
	// nodes that hold those roles at each scrape.
	served, f := exercise(t, c)
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ss, err := scrape("http://" + c.Node(served).Addr() + "/metrics")
		if err != nil {
			return err
		}
		for _, want := range []struct{ name, labels string }{
			{"tally_writes_total", `kind="revoke_token",result="ok"`},
			{"tally_write_duration_seconds_count", ""},
			{"tally_http_requests_total", `code="2xx",endpoint="token"`},
			{"tally_http_requests_total", `code="2xx",endpoint="revocation"`},
			{"tally_http_requests_total", `code="2xx",endpoint="introspection"`},
			{"tally_http_request_duration_seconds_bucket", `endpoint="token"`},
			{"tally_signin_failures_total", `outcome="bad_credentials"`},
		} {
			if _, ok := value(ss, want.name, want.labels); !ok {
				return fmt.Errorf("node that served the requests: no %s{%s}", want.name, want.labels)
			}
		}
		fs, err := scrape("http://" + c.Node(f).Addr() + "/metrics")
		if err != nil {
			return err
		}
		if v, ok := value(fs, "tally_forwarded_writes_total", `result="ok"`); !ok || v < 1 {
			return fmt.Errorf("follower that forwarded: tally_forwarded_writes_total{result=ok} = %v, %v", v, ok)
		}
		if v, ok := value(fs, "tally_writes_total", `kind="create_client",result="ok"`); !ok || v < 1 {
			return fmt.Errorf("follower that forwarded: tally_writes_total{kind=create_client} = %v, %v", v, ok)
		}

		l := c.LeaderIndex()
		if ss, err = scrape("http://" + c.Node(l).Addr() + "/metrics"); err != nil {
			return err
		}
		for _, want := range []struct{ name, labels string }{
			{"tally_raft_leader", ""},
			{"tally_raft_has_leader", ""},
			{"tally_raft_term", ""},
			{"tally_raft_commit_index", ""},
			{"tally_raft_applied_index", ""},
			{"tally_raft_last_contact_seconds", ""},
			{"tally_raft_voters", ""},
			{"tally_max_stale_exceeded", ""},
			{"tally_max_stale_seconds", ""},
			{"tally_ready", ""},
			{"tally_events_backlog", ""},
			{"tally_events_publish_lag_seconds", ""},
			{"tally_events_publisher_healthy", ""},
			{"tally_nats_ready", ""},
			{"tally_raft_follower_lag_entries", `follower="`},
			{"tally_raft_follower_reachable", `follower="`},
			{"tally_events_published_total", ""},
			{"tally_events_publish_failures_total", ""},
			{"tally_events_stream_up", ""},
			{"tally_events_stream_replicas_current", ""},
			{"tally_events_stream_last_sequence", ""},
		} {
			if _, ok := value(ss, want.name, want.labels); !ok {
				return fmt.Errorf("leader: no %s{%s}", want.name, want.labels)
			}
		}
		if v, _ := value(ss, "tally_raft_leader", ""); v != 1 {
			return fmt.Errorf("leader reports tally_raft_leader %v", v)
		}
		if v, _ := value(ss, "tally_events_stream_up", ""); v != 1 {
			return fmt.Errorf("leader: event stream up = %v", v)
		}
		if v, _ := value(ss, "tally_raft_voters", ""); v != 3 {
			return fmt.Errorf("leader reports %v voters", v)
		}
		if v, _ := value(ss, "tally_raft_follower_reachable", ""); v != 1 {
			return fmt.Errorf("a follower is not reachable: %v", v)
		}
		if fs, err = scrape("http://" + c.Node((l+1)%3).Addr() + "/metrics"); err != nil {
			return err
		}
		if v, _ := value(fs, "tally_raft_leader", ""); v != 0 {
			return fmt.Errorf("follower reports tally_raft_leader %v", v)
		}
		if _, ok := value(fs, "tally_raft_follower_lag_entries", ""); ok {
			return fmt.Errorf("a follower exports follower lag")
		}
		if v, ok := value(fs, "tally_raft_last_contact_seconds", ""); !ok || v < 0 || v > 5 {
			return fmt.Errorf("follower: last contact %v s", v)
		}
		return nil
	})
}

// TestMetricsListen serves /metrics on a separate listener only.
func TestMetricsListen(t *testing.T) {
	n := nodetest.Start(t, func(c *node.Config) { c.MetricsListen = "127.0.0.1:0" })
	if n.MetricsAddr() == "" {
		t.Fatal("no metrics listener")
	}
	ss, err := scrape("http://" + n.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !families(ss)["tally_raft_term"] {
		t.Fatal("separate listener: no tally_raft_term")
	}
	resp, err := http.Get("http://" + n.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("the public listener still serves /metrics")
	}
}

// externalMetrics are used by the dashboard and alerts but exported by
// something else than a node: the resource-server SDK (tally_rs_*).
var externalMetrics = regexp.MustCompile(`^tally_rs_`)

// dashboardExprs returns every PromQL expression of a Grafana dashboard
// (panel targets, annotations, template queries).
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return out
}

// TestDashboardAndAlertMetricsExist checks that every tally_ metric the
// Grafana dashboard and the Prometheus alert rules name is exported by a
// running cluster, and (where promtool is installed) that every dashboard
// expression parses.
func TestDashboardAndAlertMetricsExist(t *testing.T) {
	dash := filepath.Join("..", "deploy", "observability", "grafana", "tally.json")
	alerts := filepath.Join("..", "deploy", "observability", "prometheus", "alerts.yml")
	exprs := dashboardExprs(t, dash)
	if len(exprs) < 20 {
		t.Fatalf("only %d expressions in %s", len(exprs), dash)
	}
	ab, err := os.ReadFile(alerts)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string][]string{}
	nameRE := regexp.MustCompile(`\btally_[a-z0-9_]+`)
	for _, m := range nameRE.FindAllString(strings.Join(exprs, "\n"), -1) {
		used[m] = append(used[m], "dashboard")
	}
	for _, m := range nameRE.FindAllString(string(ab), -1) {
		used[m] = append(used[m], "alerts")
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		// Each dashboard expression as a recording rule, Grafana's
		// variables replaced by values.
		var rules strings.Builder
		rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
		r := strings.NewReplacer("$__rate_interval", "1m", "$job", "tally", "$instance", "tally-0")
		for i, e := range exprs {
			if strings.HasPrefix(e, "label_values(") {
				continue
			}
			q, _ := json.Marshal(r.Replace(e))
			fmt.Fprintf(&rules, "      - record: dashboard_expr_%d\n        expr: %s\n", i, q)
		}
		f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
		if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
			t.Fatalf("dashboard expressions do not parse: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not installed: dashboard expressions not parsed")
	}
	c := nodetest.StartCluster(t, 3)
	exercise(t, c)
	var missing []string
	nodetest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		have := map[string]bool{}
		for i := range c.Len() {
			ss, err := scrape("http://" + c.Node(i).Addr() + "/metrics")
			if err != nil {
				return err
			}
			for k := range families(ss) {
				have[k] = true
			}
		}
		missing = nil
		for name, where := range used {
			switch {
			case have[name], externalMetrics.MatchString(name):
			default:
				missing = append(missing, fmt.Sprintf("%s (%v)", name, where))
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			return fmt.Errorf("not exported by any node: %s", strings.Join(missing, ", "))
		}
		return nil
	})
}

// TestMetricsToken: with a metrics token, /metrics answers 401 without it
// or with another one, on the public and on the separate listener, and
// serves the metrics with it.
func TestMetricsToken(t *testing.T) {
	tokFile := filepath.Join(t.TempDir(), "metrics-token")
	const tok = "scrape-token-0123456789abcdef"
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	public := nodetest.Start(t, func(c *node.Config) { c.MetricsTokenFile = tokFile })
	separate := nodetest.Start(t, func(c *node.Config) { c.MetricsTokenFile = tokFile; c.MetricsListen = "127.0.0.1:0" })
	for _, addr := range []string{public.Addr(), separate.MetricsAddr()} {
		for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Basic " + tok} {
			req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("%s with %q: %d", addr, auth, resp.StatusCode)
			}
		}
		req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "tally_raft_term") {
			t.Fatalf("%s with the token: %d", addr, resp.StatusCode)
		}
	}
	// A token file that is too short is refused at start.
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig()
	cfg.Dev, cfg.DataDir, cfg.MetricsTokenFile = true, t.TempDir(), short
	cfg.Listen, cfg.RaftBind, cfg.NATSListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if n, err := node.New(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil {
		n.Close()
		t.Fatal("a 3-character metrics token was accepted")
	}
}
