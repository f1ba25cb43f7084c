package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServe runs `tally serve --dev` in-process on fresh ports and returns
// its base URL and a function that stops it (as SIGTERM does) and returns the
// exit code.
func startServe(t *testing.T, dataDir string) (string, func() int) {
	t.Helper()
	// freeAddr's ports are free when found, but another process (another
	// test binary) may take one before serve binds it: then serve exits at
	// once and it starts again on other ports.
	for attempt := 1; ; attempt++ {
		base, stop, exit := tryServe(t, dataDir)
		if stop != nil {
			return base, stop
		}
		if attempt == 5 || !strings.Contains(exit, "address already in use") {
			t.Fatal(exit)
		}
	}
}

// tryServe is one attempt of startServe; when serve exits before it is
// ready, stop is nil and exit says why.
func tryServe(t *testing.T, dataDir string) (base string, stop func() int, exit string) {
	t.Helper()
	listen := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--dev", "--data-dir", dataDir, "--listen", listen,
			"--raft-bind", freeAddr(t), "--nats-listen", freeAddr(t), "--log-level", "warn"},
			env{stdin: strings.NewReader(""), stdout: new(bytes.Buffer), stderr: &stderr, getenv: func(string) string { return "" }})
	}()
	base = "http://" + listen
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case code := <-done:
			cancel()
			return "", nil, fmt.Sprintf("serve exited with %d: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready: %v\n%s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopped := false
	stop = func() int {
		if stopped {
			return 0
		}
		stopped = true
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(30 * time.Second):
			t.Fatal("serve did not stop within 30s of SIGTERM")
			return -1
		}
	}
	t.Cleanup(func() { stop() })
	return base, stop, ""
}

func cli(t *testing.T, base, token string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	getenv := func(k string) string {
		switch k {
		case "TALLY_SERVER":
			return base
		case "TALLY_ADMIN_TOKEN":
			return token
		}
		return ""
	}
	if code := run(context.Background(), append([]string{"admin"}, args...), env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: getenv}); code != 0 {
		t.Fatalf("tally admin %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return out.String()
}

// TestReadmeTour is the README's five-minute tour, run against `tally serve
// --dev`: create a client with the CLI, get a token, introspect it, revoke it,
// stop gracefully, restart, and find everything still there.
func TestReadmeTour(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	base, stop := startServe(t, dir)

	tokBytes, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatalf("dev mode did not write the admin token: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "admin-token")); fi.Mode().Perm() != 0o600 {
		t.Errorf("admin-token mode %v, want 0600", fi.Mode().Perm())
	}
	if fi, err := os.Stat(filepath.Join(dir, "kek")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("kek: %v %v, want mode 0600", fi, err)
	}
	admin := strings.TrimSpace(string(tokBytes))

	var created struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}
	out := cli(t, base, admin, "client", "create", "--tenant", "default", "--name", "billing",
		"--grant", "client_credentials", "--scope", "read:orders write:orders", "--output", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ClientID == "" || created.ClientSecret == "" {
		t.Fatalf("client create --output json printed %q (%v)", out, err)
	}
	issuer := base + "/t/default"

	getToken := func(base string) string {
		t.Helper()
		req, _ := http.NewRequest("POST", base+"/t/default/oauth2/token", strings.NewReader("grant_type=client_credentials&scope=read:orders"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(created.ClientID, created.ClientSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != 200 || body["token_type"] != "Bearer" {
			t.Fatalf("token: %d %v", resp.StatusCode, body)
		}
		return body["access_token"].(string)
	}
	introspect := func(base, tok string) bool {
		t.Helper()
		req, _ := http.NewRequest("POST", base+"/t/default/oauth2/introspect", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(created.ClientID, created.ClientSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return body["active"] == true
	}

	tok := getToken(base)
	if !introspect(base, tok) {
		t.Fatal("a fresh token is not active")
	}
	cli(t, base, admin, "revoke", "--tenant", "default", "--token", tok, "--reason", "tour")
	if introspect(base, tok) {
		t.Fatal("a revoked token is still active")
	}
	if out := cli(t, base, admin, "tenant", "list"); !strings.Contains(out, issuer) && !strings.Contains(out, "default") {
		t.Errorf("tenant list: %q", out)
	}

	if code := stop(); code != 0 {
		t.Fatalf("serve exited %d after SIGTERM, want 0", code)
	}

	base2, _ := startServe(t, dir)
	if introspect(base2, tok) {
		t.Fatal("the revocation did not survive a restart")
	}
	if !introspect(base2, getToken(base2)) {
		t.Fatal("the client did not survive a restart")
	}
}

func TestServeRejectsBadConfig(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--listen", "nope"},
		{"serve"}, // not dev, no KEK, no admin credential
		{"serve", "--dev", "extra"},
		{"serve", "--dev", "--log-level", "loud"},
	} {
		var stderr bytes.Buffer
		code := run(context.Background(), args, env{stdout: new(bytes.Buffer), stderr: &stderr, getenv: func(string) string { return "" }})
		if code != 2 || stderr.Len() == 0 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, stderr.String())
		}
	}
	// The environment fills flags that are not given.
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"serve", "--dev"}, env{stdout: new(bytes.Buffer), stderr: &stderr, getenv: func(k string) string {
		if k == "TALLY_LISTEN" {
			return "bad-address"
		}
		return ""
	}})
	if code != 2 || !strings.Contains(stderr.String(), "bad-address") {
		t.Errorf("TALLY_LISTEN=bad-address: exit %d, %q", code, stderr.String())
	}
}
