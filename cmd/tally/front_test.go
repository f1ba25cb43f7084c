package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFrontRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"front"}, // no backend
		{"front", "--backend", "nope"},
		{"front", "--backend", "http://127.0.0.1:1", "--listen", "bad"},
		{"front", "--backend", "http://127.0.0.1:1", "extra"},
		{"front", "--backend", "http://127.0.0.1:1", "--log-level", "loud"},
	} {
		var stderr bytes.Buffer
		code := run(context.Background(), args, env{stdout: new(bytes.Buffer), stderr: &stderr, getenv: func(string) string { return "" }})
		if code != 2 || stderr.Len() == 0 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, stderr.String())
		}
	}
}

// TestFrontProxiesAndStopsGracefully: tally front forwards to its backends
// and exits 0 when its context ends (SIGTERM in main).
func TestFrontProxiesAndStopsGracefully(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			return
		}
		fmt.Fprintf(w, "hello from the node: %s", r.URL.Path)
	}))
	defer backend.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"front", "--listen", addr, "--backend", backend.URL, "--check-every", "20ms"},
			env{stdout: new(bytes.Buffer), stderr: stderr, getenv: func(string) string { return "" }})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/t/default/jwks.json")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && string(b) == "hello from the node: /t/default/jwks.json" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("front door not serving: %v; log:\n%s", err, stderr.String())
		}
		select {
		case code := <-done:
			t.Fatalf("front exited early with %d: %s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after SIGTERM; log:\n%s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("front did not stop")
	}
	if !strings.Contains(stderr.String(), `"msg":"stopped"`) {
		t.Fatalf("log: %s", stderr.String())
	}
}
