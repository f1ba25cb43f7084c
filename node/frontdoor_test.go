package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/node/nodetest"
)

// fakeNode is a real HTTP backend: /readyz answers per ready, other paths
// echo what arrived.
type fakeNode struct {
	name  string
	srv   *httptest.Server
	ready atomic.Bool
	hits  atomic.Int64
	// handle, if set, serves non-readyz requests instead of the echo.
	handle func(w http.ResponseWriter, r *http.Request)
}

func newFakeNode(t *testing.T, name string) *fakeNode {
	fn := &fakeNode{name: name}
	fn.ready.Store(true)
	fn.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			if !fn.ready.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		fn.hits.Add(1)
		if fn.handle != nil {
			fn.handle(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(map[string]string{
			"node": fn.name, "body": string(body), "path": r.URL.RequestURI(),
			"xff": r.Header.Get("X-Forwarded-For"), "proto": r.Header.Get("X-Forwarded-Proto"), "host": r.Header.Get("X-Forwarded-Host"),
		})
	}))
	t.Cleanup(fn.srv.Close)
	return fn
}

func startFront(t *testing.T, nodes ...*fakeNode) (*node.FrontDoor, string) {
	t.Helper()
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.srv.URL)
	}
	fd, err := node.NewFrontDoor(node.FrontDoorConfig{Backends: urls, CheckEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fd.Run(ctx) }()
	srv := httptest.NewServer(fd)
	t.Cleanup(func() { srv.Close(); cancel(); <-done })
	return fd, srv.URL
}

func waitHealthy(t *testing.T, fd *node.FrontDoor, want int) {
	t.Helper()
	nodetest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := len(fd.Healthy()); got != want {
			return fmt.Errorf("%d healthy backends, want %d", got, want)
		}
		return nil
	})
}

func echo(t *testing.T, req *http.Request) (int, map[string]string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]string
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

func TestFrontDoorSpreadsOverReadyNodes(t *testing.T) {
	a, b, c := newFakeNode(t, "a"), newFakeNode(t, "b"), newFakeNode(t, "c")
	c.ready.Store(false)
	fd, front := startFront(t, a, b, c)
	waitHealthy(t, fd, 2)
	seen := map[string]int{}
	for range 20 {
		req, _ := http.NewRequest(http.MethodGet, front+"/t/default/.well-known/openid-configuration?x=1", nil)
		req.Header.Set("X-Forwarded-For", "6.6.6.6") // spoofed: replaced
		status, out := echo(t, req)
		if status != 200 || out["path"] != "/t/default/.well-known/openid-configuration?x=1" {
			t.Fatalf("status %d, %v", status, out)
		}
		if out["xff"] != "127.0.0.1" || out["proto"] != "http" || out["host"] == "" {
			t.Fatalf("forwarded headers %v", out)
		}
		seen[out["node"]]++
	}
	if seen["c"] != 0 || seen["a"] < 5 || seen["b"] < 5 {
		t.Fatalf("spread %v: want a and b only, both used", seen)
	}
	// c becomes ready, a not.
	c.ready.Store(true)
	a.ready.Store(false)
	nodetest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		h := fd.Healthy()
		if len(h) != 2 || h[0] != b.srv.URL || h[1] != c.srv.URL {
			return fmt.Errorf("healthy %v", h)
		}
		return nil
	})
	// With no node ready, requests still reach one (it answers for itself).
	b.ready.Store(false)
	c.ready.Store(false)
	waitHealthy(t, fd, 0)
	req, _ := http.NewRequest(http.MethodGet, front+"/x", nil)
	if status, out := echo(t, req); status != 200 || out["node"] == "" {
		t.Fatalf("no ready node: %d %v", status, out)
	}
}

func TestFrontDoorRetriesOnlyWhenSafe(t *testing.T) {
	a, b := newFakeNode(t, "a"), newFakeNode(t, "b")
	// a answers with Connection: close, so the front door holds no idle
	// connection to it when it goes down: every attempt dials. Otherwise
	// a POST could be written to a pooled connection a had closed, which
	// the front door rightly does not resend (it cannot tell that nothing
	// reached a), before its transport noticed the close: on a loaded
	// machine it sometimes did not in time (503 in make test).
	a.srv.Config.SetKeepAlivesEnabled(false)
	fd, front := startFront(t, a, b)
	waitHealthy(t, fd, 2)

	// a goes down between two health checks: its port refuses connections.
	// A POST is retried on b (nothing reached a) with its body intact.
	a.srv.Close()
	for range 4 {
		req, _ := http.NewRequest(http.MethodPost, front+"/t/default/oauth2/token", strings.NewReader("grant_type=client_credentials"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		status, out := echo(t, req)
		if status != 200 || out["node"] != "b" || out["body"] != "grant_type=client_credentials" {
			t.Fatalf("POST with a node down: %d %v", status, out)
		}
	}

	// b reads the body and then drops the connection: a POST is not sent
	// again (it may have been acted on), a GET is.
	c := newFakeNode(t, "c")
	var dropped atomic.Int64
	drop := func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		dropped.Add(1)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}
	d := newFakeNode(t, "d")
	d.handle = drop
	fd2, front2 := startFront(t, c, d)
	waitHealthy(t, fd2, 2)
	for i := range 6 {
		before := dropped.Load()
		req, _ := http.NewRequest(http.MethodPost, front2+"/t/default/oauth2/revoke", strings.NewReader("token=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		status, out := echo(t, req)
		if dropped.Load() > before {
			if status != http.StatusServiceUnavailable {
				t.Fatalf("POST %d dropped after its body was read: status %d %v, want 503 without a retry", i, status, out)
			}
		} else if status != 200 || out["node"] != "c" {
			t.Fatalf("POST %d: %d %v", i, status, out)
		}
		fd2.CheckNow(context.Background()) // d is ready again for the next round
	}
	if dropped.Load() == 0 {
		t.Fatal("no request reached the dropping node")
	}
	for range 6 {
		req, _ := http.NewRequest(http.MethodGet, front2+"/t/default/jwks.json", nil)
		if status, out := echo(t, req); status != 200 || out["node"] != "c" {
			t.Fatalf("GET with a dropping node: %d %v, want it retried on c", status, out)
		}
		fd2.CheckNow(context.Background())
	}
}

func TestFrontDoorStreams(t *testing.T) {
	a := newFakeNode(t, "a")
	release := make(chan struct{})
	a.handle = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/connect+json")
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "second\n")
	}
	fd, front := startFront(t, a)
	waitHealthy(t, fd, 1)
	resp, err := http.Post(front+"/tally.events.v1.EventsService/WatchRevocations", "application/connect+json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first message before the stream ends: %q %v", line, err)
	}
	close(release)
	if line, _ := br.ReadString('\n'); line != "second\n" {
		t.Fatalf("second message %q", line)
	}
}

func TestFrontDoorNoBackendAndBadInput(t *testing.T) {
	for _, bad := range [][]string{nil, {"127.0.0.1:1"}, {"ftp://x"}, {"http://a/b"}, {"http://a", "http://a/"}, {"http://u:p@a"}} {
		if _, err := node.NewFrontDoor(node.FrontDoorConfig{Backends: bad}); err == nil {
			t.Errorf("backends %q accepted", bad)
		}
	}
	a := newFakeNode(t, "a")
	fd, front := startFront(t, a)
	waitHealthy(t, fd, 1)
	a.srv.Close()
	req, _ := http.NewRequest(http.MethodPost, front+"/t/default/oauth2/token", strings.NewReader("a=b"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "temporarily_unavailable") {
		t.Fatalf("no backend: %d %s", resp.StatusCode, b)
	}
	// Garbage on the wire gets an HTTP error, and the door keeps serving.
	u := strings.TrimPrefix(front, "http://")
	for _, raw := range []string{"GARBAGE\r\n\r\n", "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"} {
		conn, err := net.Dial("tcp", u)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, raw)
		status, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if !strings.HasPrefix(status, "HTTP/1.1 4") && !strings.HasPrefix(status, "HTTP/1.1 5") {
			t.Errorf("%q: %q", raw, status)
		}
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(front + "/x")
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
}
