package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/oauth2"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// TestWritePathFigures measures the figures of BENCHMARKS.md's "The write
// path" section (issue 14) in one run on one 3-node cluster (mutual TLS,
// test Raft timing, everything in this process): the raw commit rate of the
// cluster's Raft log (32 writers proposing directly to the leader's Raft
// node, entries the size of a refresh rotation's command), then refresh
// rotation, authorization-code redemption (the token step; codes minted
// before) and revocation by jti through the followers' admin API, all with
// 32 workers spread round-robin over the nodes (revocations over the
// followers only), each reported with its ratio to the raw commit rate,
// which is measured again at the end, and with the CPU time the process
// (three nodes and the load generator) used: cores kept busy and CPU per
// operation, which tell a CPU-bound row from one that waits. It runs only
// with TALLY_FIGURES=1:
//
//	TALLY_FIGURES=1 go test -run '^TestWritePathFigures$' -v -timeout 15m ./node/
//
// TALLY_FIGURES_DURATION sets each row's time (default 5s). With
// -cpuprofile, every node's goroutines carry the pprof label node=nodeN and
// the leader's index is logged, so `go tool pprof -tagfocus node=node0`
// shows one node.
func TestWritePathFigures(t *testing.T) {
	if os.Getenv("TALLY_FIGURES") == "" {
		t.Skip("set TALLY_FIGURES=1 to measure")
	}
	d := 5 * time.Second
	if v := os.Getenv("TALLY_FIGURES_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	const workers = 32
	ctx := context.Background()
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("machine: %d cores (GOMAXPROCS %d), %s; load average before: %s", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), strings.TrimSpace(string(load)))

	var opts []nodetest.ClusterOption
	opts = append(opts, nodetest.WithNodeOptions(nodetest.WithConfig(func(c *node.Config) { c.RateLimits.Off = true })))
	for i := range 3 {
		// Goroutines started from here on (the node's Raft, HTTP and
		// cluster servers) inherit the label.
		opts = append(opts, nodetest.WithNode(i, nodetest.WithConfig(func(*node.Config) {
			pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("node", fmt.Sprintf("node%d", i))))
		})))
	}
	c := nodetest.StartCluster(t, 3, opts...)
	pprof.SetGoroutineLabels(context.Background())
	nodes := []*nodetest.Node{c.Node(0), c.Node(1), c.Node(2)}
	li := c.LeaderIndex()
	var leader atomic.Pointer[raft.Node] // the raw rows follow leadership changes
	leader.Store(node.RaftForTest(nodes[li].Node))
	var followers []*nodetest.Node
	for i, n := range nodes {
		if i != li {
			followers = append(followers, n)
		}
	}
	t.Logf("leader: node%d", li)

	// Sign alice in once; codes are then a GET and a consent each (the
	// client is a native app: RFC 8252 section 8.6 asks every time).
	e := newFlowEnv(t, nodes[0])
	verifier := oauth2.GenerateVerifier()
	br := newBrowser(t)
	authURL := e.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier))
	e.signIn(t, br, authURL)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 30 * time.Second}
	code := func() string {
		loc := e.signIn(t, br, authURL)
		if loc.Query().Get("code") == "" {
			t.Fatalf("no code: %v", loc)
		}
		return loc.Query().Get("code")
	}
	post := func(i int, form url.Values) (string, error) {
		form.Set("client_id", e.conf.ClientID)
		resp, err := hc.PostForm(nodes[i%3].Issuer("default")+"/oauth2/token", form)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var body struct {
			RefreshToken string `json:"refresh_token"`
			Error        string `json:"error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil && resp.StatusCode == http.StatusOK {
			return "", err
		}
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%d %s", resp.StatusCode, body.Error)
		}
		return body.RefreshToken, nil
	}
	redeem := func(i int, c string) (string, error) {
		return post(i, url.Values{"grant_type": {"authorization_code"}, "code": {c},
			"redirect_uri": {callback}, "code_verifier": {verifier}})
	}

	// A refresh rotation's command as the leader applied it: the raw rows
	// propose copies of it for families that do not exist (same size, same
	// operation, no state change, no event).
	var rotate atomic.Pointer[raftpb.Command]
	var revoked atomic.Int64
	node.RaftForTest(nodes[li].Node).FSM().OnApplied(func(_ uint64, cmd *raftpb.Command, _ raft.Result) {
		if cmd.GetRevokeToken() != nil {
			revoked.Add(1)
		}
		if cmd.GetRotateRefresh() != nil && rotate.Load() == nil {
			rotate.Store(proto.Clone(cmd).(*raftpb.Command))
		}
	})
	families := make([]string, workers)
	for w := range families {
		rt, err := redeem(w, code())
		if err != nil {
			t.Fatal(err)
		}
		if families[w], err = post(w, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}); err != nil {
			t.Fatal(err)
		}
	}
	tmpl := rotate.Load()
	if tmpl == nil {
		t.Fatal("no RotateRefresh command seen")
	}
	t.Logf("entry: RotateRefresh, %d bytes", proto.Size(tmpl))
	only := os.Getenv("TALLY_FIGURES_ROWS") // e.g. "refresh": only rows whose name contains it (and the raw rows)

	type row struct {
		name string
		fig  closedFigure
	}
	var rows []row
	measure := func(name string, fn func(w, seq int) error) closedFigure {
		t.Helper()
		f := runClosed(workers, d, fn)
		if f.errs > 0 {
			t.Logf("%s: %d errors, first: %v", name, f.errs, f.firstErr)
		}
		rows = append(rows, row{name, f})
		t.Log(name, f)
		return f
	}

	// Raw commits: the rotation's command for an unknown family of an id
	// as long as the real ones, under a fresh request id.
	var rawSeq atomic.Int64
	raw := func(w, _ int) error {
		n := rawSeq.Add(1)
		cmd := proto.Clone(tmpl).(*raftpb.Command)
		cmd.RequestId = fmt.Sprintf("%0*d", len(tmpl.RequestId), n)
		rr := cmd.GetRotateRefresh()
		rr.FamilyId = fmt.Sprintf("%0*d", len(rr.FamilyId), n)
		res, err := leader.Load().Propose(ctx, cmd)
		if errors.Is(err, raft.ErrNotLeader) {
			leader.Store(node.RaftForTest(nodes[c.LeaderIndex()].Node))
		}
		if err == nil {
			err = res.Err
		}
		if err == nil && (res.Grant == nil || res.Grant.Outcome != raft.OutcomeInvalid) {
			err = fmt.Errorf("raw commit: want outcome invalid (no such family), got %v", res.Grant)
		}
		return err
	}
	want := func(name string) bool { return only == "" || strings.Contains(name, only) }
	measure("raw commit (propose on the leader)", raw)

	if want("refresh") {
		measure("refresh rotation (round-robin)", func(w, seq int) error {
			rt, err := post(w+seq, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {families[w]}})
			if err == nil {
				families[w] = rt
			}
			return err
		})
	}

	// Codes for the redemption row: minted before (one GET each), for at
	// most 30 s, so that none has outlived its 60 s lifetime (CodeTTL)
	// when the row ends: on a loaded machine minting 4,000/s takes longer,
	// and expired codes made every redemption an invalid_grant.
	if want("code") {
		nCodes := 4000 * int(d/time.Second)
		codes := make(chan string, nCodes)
		mintUntil := time.Now().Add(30 * time.Second)
		for range nCodes {
			if time.Now().After(mintUntil) {
				t.Logf("code redemption: %d codes minted in 30 s (wanted %d); the row ends when they run out", len(codes), nCodes)
				break
			}
			codes <- code()
		}
		close(codes)
		measure("code redemption (round-robin)", func(w, seq int) error {
			c, ok := <-codes
			if !ok {
				return errStop
			}
			_, err := redeem(w+seq, c)
			return err
		})
	}

	if want("revocation") {
		// RFC 7009 revocation of access tokens (one RevokeToken command
		// each) at the followers; the tokens are minted before.
		id, secret := nodes[0].CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "revoker",
			GrantTypes: []string{"client_credentials"}, Scopes: []string{"read"}})
		nTokens := 2000 * int(d/time.Second)
		// Each token is revoked at the follower that issued it (in tests
		// every node has its own issuer URL).
		type minted struct {
			tok string
			at  *nodetest.Node
		}
		tokens := make(chan minted, nTokens)
		var mint sync.WaitGroup
		for w := range workers {
			mint.Add(1)
			go func() {
				defer mint.Done()
				for i := w; i < nTokens; i += workers {
					at := followers[i%len(followers)]
					req, _ := http.NewRequest(http.MethodPost, at.TokenURL("default"), strings.NewReader("grant_type=client_credentials&scope=read"))
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					req.SetBasicAuth(id, secret)
					resp, err := hc.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					var body struct {
						AccessToken string `json:"access_token"`
					}
					_ = json.NewDecoder(resp.Body).Decode(&body)
					resp.Body.Close()
					if body.AccessToken == "" {
						t.Errorf("client_credentials: %d", resp.StatusCode)
						return
					}
					tokens <- minted{body.AccessToken, at}
				}
			}()
		}
		mint.Wait()
		close(tokens)
		measure("token revocation, RFC 7009 (followers)", func(w, seq int) error {
			m, ok := <-tokens
			if !ok {
				return errStop
			}
			req, _ := http.NewRequest(http.MethodPost, m.at.Issuer("default")+"/oauth2/revoke",
				strings.NewReader(url.Values{"token": {m.tok}, "token_type_hint": {"access_token"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.SetBasicAuth(id, secret)
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("revoke: %d", resp.StatusCode)
			}
			return nil
		})
		t.Logf("RevokeToken commands applied on the leader: %d", revoked.Load())
	}
	measure("raw commit again", raw)

	rawRate := (rows[0].fig.rate() + rows[len(rows)-1].fig.rate()) / 2
	var b strings.Builder
	fmt.Fprintf(&b, "\n| row | workers | ok | ok/s | ratio to raw commit | p50 | p99 | max | errors | CPU (cores of %d) | CPU per op |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", runtime.NumCPU())
	for _, r := range rows {
		f := r.fig
		fmt.Fprintf(&b, "| %s | %d | %d | %.0f | %.2f | %.1f ms | %.1f ms | %.1f ms | %d | %.2f | %d µs |\n", r.name, workers, f.ok, f.rate(), f.rate()/rawRate,
			float64(f.hist.ValueAtQuantile(50))/1000, float64(f.hist.ValueAtQuantile(99))/1000, float64(f.hist.Max())/1000, f.errs, f.cores(), f.cpuPerOp().Microseconds())
	}
	load, _ = os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "\nraw commit rate (mean of first and last row): %.0f/s; load average after: %s\n", rawRate, strings.TrimSpace(string(load)))
	t.Log(b.String())
}

var errStop = fmt.Errorf("stop")

// closedFigure is one closed-loop run.
type closedFigure struct {
	elapsed  time.Duration
	cpu      time.Duration // CPU time of the process (nodes and load generator) during the run
	ok, errs int64
	firstErr error
	hist     *hdr.Histogram
}

func (f closedFigure) rate() float64 { return float64(f.ok) / f.elapsed.Seconds() }

// cores is how many cores the process kept busy on average.
func (f closedFigure) cores() float64 { return f.cpu.Seconds() / f.elapsed.Seconds() }

// cpuPerOp is the process's CPU time per successful operation.
func (f closedFigure) cpuPerOp() time.Duration {
	if f.ok == 0 {
		return 0
	}
	return f.cpu / time.Duration(f.ok)
}

func (f closedFigure) String() string {
	return fmt.Sprintf("%d ok in %s: %.0f/s, p50 %.1f ms, p99 %.1f ms, errors %d; CPU %.2f cores, %d µs per op", f.ok, f.elapsed.Round(time.Millisecond), f.rate(),
		float64(f.hist.ValueAtQuantile(50))/1000, float64(f.hist.ValueAtQuantile(99))/1000, f.errs, f.cores(), f.cpuPerOp().Microseconds())
}

// runClosed runs fn from workers goroutines until d has passed (or fn
// returns errStop), each call after the previous one returned.
func runClosed(workers int, d time.Duration, fn func(w, seq int) error) closedFigure {
	f := closedFigure{hist: hdr.New(1, int64(60*time.Second/time.Microsecond), 3)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	cpu0 := processCPU()
	start := time.Now()
	deadline := start.Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; time.Now().Before(deadline); seq++ {
				t0 := time.Now()
				err := fn(w, seq)
				el := time.Since(t0)
				if err == errStop {
					return
				}
				mu.Lock()
				if err != nil {
					f.errs++
					if f.firstErr == nil {
						f.firstErr = err
					}
				} else {
					f.ok++
					_ = f.hist.RecordValue(el.Microseconds())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	f.elapsed = time.Since(start)
	f.cpu = processCPU() - cpu0
	return f
}

// processCPU is the CPU time (user and system) this process has used: the
// three nodes and the load generator.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
