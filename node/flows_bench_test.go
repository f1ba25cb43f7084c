package node_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/nodetest"
)

// benchNodes starts a single node or an n-node cluster.
func benchNodes(b *testing.B, n int) []*nodetest.Node {
	b.Helper()
	// The benchmarks measure the write path, not the rate limiter: one
	// public client from one address meets its budget (1,000 requests a
	// second) within a few thousand requests.
	noLimits := nodetest.WithConfig(func(c *node.Config) { c.RateLimits.Off = true })
	if n == 1 {
		return []*nodetest.Node{nodetest.Start(b, noLimits)}
	}
	c := nodetest.StartCluster(b, n, nodetest.WithNodeOptions(noLimits))
	nodes := make([]*nodetest.Node, n)
	for i := range n {
		nodes[i] = c.Node(i)
	}
	return nodes
}

// benchFlow signs alice in once; code then mints a fresh code (the
// session is remembered: a GET and, since the client is a native app that
// RFC 8252 section 8.6 asks every time, a consent post).
type benchFlow struct {
	nodes    []*nodetest.Node
	conf     *oauth2.Config
	env      *flowEnv
	br       *browser
	verifier string
}

func newBenchFlow(b *testing.B, n int) *benchFlow {
	b.Helper()
	nodes := benchNodes(b, n)
	e := newFlowEnv(b, nodes[0])
	bf := &benchFlow{nodes: nodes, conf: e.conf, env: e, br: newBrowser(b), verifier: oauth2.GenerateVerifier()}
	bf.code(b)
	return bf
}

func (bf *benchFlow) code(b *testing.B) string {
	loc := bf.env.signIn(b, bf.br, bf.conf.AuthCodeURL("s", oauth2.S256ChallengeOption(bf.verifier)))
	if loc.Query().Get("code") == "" {
		b.Fatalf("no code: %v", loc)
	}
	return loc.Query().Get("code")
}

// post sends a token request to node i and returns the refresh token.
func (bf *benchFlow) post(i int, form url.Values) (string, error) {
	form.Set("client_id", bf.conf.ClientID)
	resp, err := http.PostForm(bf.nodes[i%len(bf.nodes)].Issuer("default")+"/oauth2/token", form)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		RefreshToken string `json:"refresh_token"`
		Error        string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%d %s", resp.StatusCode, body.Error)
	}
	return body.RefreshToken, nil
}

// latencies records request latencies and reports rate, p50 and p99.
type latencies struct {
	mu    sync.Mutex
	h     *hdr.Histogram
	start time.Time
}

func newLatencies() *latencies {
	return &latencies{h: hdr.New(1, int64(60*time.Second/time.Microsecond), 3), start: time.Now()}
}

func (l *latencies) record(d time.Duration) {
	l.mu.Lock()
	_ = l.h.RecordValue(d.Microseconds())
	l.mu.Unlock()
}

func (l *latencies) report(b *testing.B) {
	el := time.Since(l.start)
	b.ReportMetric(float64(l.h.TotalCount())/el.Seconds(), "ops/s")
	b.ReportMetric(float64(l.h.ValueAtQuantile(50))/1000, "p50-ms")
	b.ReportMetric(float64(l.h.ValueAtQuantile(99))/1000, "p99-ms")
}

// BenchmarkAuthCodeRedemption: concurrent code redemptions (one Raft
// command each: mark the code used and create the refresh family), spread
// over the nodes; codes are minted before the timer starts.
//
//	go test ./node -run '^$' -bench AuthCodeRedemption -benchtime 2000x
func BenchmarkAuthCodeRedemption(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			bf := newBenchFlow(b, n)
			codes := make(chan string, b.N)
			for range b.N {
				codes <- bf.code(b)
			}
			close(codes)
			lat := newLatencies()
			var next atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			lat.start = time.Now()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1))
				for pb.Next() {
					c := <-codes
					t0 := time.Now()
					if _, err := bf.post(i, url.Values{"grant_type": {"authorization_code"}, "code": {c},
						"redirect_uri": {callback}, "code_verifier": {bf.verifier}}); err != nil {
						b.Error(err)
						return
					}
					lat.record(time.Since(t0))
					i++
				}
			})
			b.StopTimer()
			lat.report(b)
		})
	}
}

// BenchmarkRefreshRotation: concurrent refresh-token rotations (one
// compare-and-swap command each), one family per worker so that they do
// not conflict, spread over the nodes.
//
//	go test ./node -run '^$' -bench RefreshRotation -benchtime 2000x
func BenchmarkRefreshRotation(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			bf := newBenchFlow(b, n)
			const workers = 16
			families := make(chan string, workers)
			for range workers {
				rt, err := bf.post(0, url.Values{"grant_type": {"authorization_code"}, "code": {bf.code(b)},
					"redirect_uri": {callback}, "code_verifier": {bf.verifier}})
				if err != nil {
					b.Fatal(err)
				}
				families <- rt
			}
			lat := newLatencies()
			var next atomic.Int64
			b.SetParallelism(workers / 2)
			b.ResetTimer()
			lat.start = time.Now()
			b.RunParallel(func(pb *testing.PB) {
				rt := <-families
				i := int(next.Add(1))
				for pb.Next() {
					t0 := time.Now()
					nrt, err := bf.post(i, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})
					if err != nil {
						b.Error(err)
						return
					}
					lat.record(time.Since(t0))
					rt = nrt
					i++
				}
			})
			b.StopTimer()
			lat.report(b)
		})
	}
}
