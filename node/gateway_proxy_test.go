package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/dpop/dpoptest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// gatewayBin finds a gateway binary, skipping the test when it is absent
// (.ci/run installs nginx and caddy from Debian's packages).
func gatewayBin(t *testing.T, name string, paths ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skipf("%s is not installed (apt-get install %s)", name, name)
	return ""
}

// startProc starts a command whose output goes to a file in dir and stops
// it when the test ends.
func startProc(t *testing.T, dir, name string, env []string, args ...string) {
	t.Helper()
	log, err := os.Create(filepath.Join(dir, filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("%s output:\n%s", name, b)
		}
	})
}

// waitHTTP waits until url answers at all.
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

type gatewayFixture struct {
	n                  *nodetest.Node
	appID, appSecret   string
	ordersAddr         string
	ordersID, ordersSc string
}

// newGatewayFixture: a node, the routes, a client with opaque tokens whose
// audience is NOT the orders API (so only the phantom JWT the gateway
// hands on can pass the orders API's own verification), and the example
// orders-api (deploy/examples/orders-api) built and running.
func newGatewayFixture(t *testing.T) *gatewayFixture {
	t.Helper()
	httpAddr := freeAddr(t)
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) { c.Listen = httpAddr }))
	ctx := context.Background()
	f := &gatewayFixture{n: n}
	f.appID, f.appSecret = n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "app", Scopes: []string{"read:orders"}, TokenFormat: "opaque"})
	f.ordersID, f.ordersSc = n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "orders-api"})
	for _, r := range []*adminv1.GatewayRoute{
		{PathPrefix: "/orders", Method: "GET", Scopes: []string{"read:orders"}, PhantomAudience: ordersAPI},
		{PathPrefix: "/orders", Method: "POST", Scopes: []string{"write:orders"}},
	} {
		if _, err := n.Admin.SetGatewayRoute(ctx, connect.NewRequest(&adminv1.SetGatewayRouteRequest{Tenant: "default", Route: r})); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "orders-api")
	build := exec.Command("go", "build", "-o", bin, "../deploy/examples/orders-api")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build orders-api: %v\n%s", err, out)
	}
	f.ordersAddr = freeAddr(t)
	startProc(t, dir, bin, []string{"ORDERS_CLIENT_SECRET=" + f.ordersSc},
		"--issuer", n.Issuer("default"), "--server", n.BaseURL(), "--client-id", f.ordersID,
		"--audience", ordersAPI, "--listen", f.ordersAddr)
	checkFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get("http://" + f.ordersAddr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("orders-api healthz %d", resp.StatusCode)
		}
		return nil
	})
	return f
}

func (f *gatewayFixture) get(t *testing.T, url, method, token string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// prove runs the checks through a gateway at base.
func (f *gatewayFixture) prove(t *testing.T, base string) {
	ctx := context.Background()
	n := f.n
	tok := ccToken(t, n, f.appID, f.appSecret)
	// The client's own token is refused by the orders API itself (wrong
	// audience): only the phantom JWT can get through.
	if st, _, _ := f.get(t, "http://"+f.ordersAddr+"/orders", "GET", tok); st != http.StatusUnauthorized {
		t.Fatalf("orders-api accepted the external token directly: %d", st)
	}
	if st, h, _ := f.get(t, base+"/orders", "GET", ""); st != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("no token: %d %v", st, h)
	}
	if st, _, _ := f.get(t, base+"/orders", "POST", tok); st != http.StatusForbidden {
		t.Errorf("wrong scope: %d", st)
	}
	if st, _, _ := f.get(t, base+"/admin", "GET", tok); st != http.StatusForbidden {
		t.Errorf("no route: %d", st)
	}
	st, _, body := f.get(t, base+"/orders", "GET", tok)
	var out map[string]any
	json.Unmarshal([]byte(body), &out)
	if st != http.StatusOK || out["client_id"] != f.appID {
		t.Fatalf("allowed request: %d %s (the phantom JWT must reach the orders API)", st, body)
	}

	// A DPoP-bound token passes only with a proof of its key for the URL
	// the client addressed (the gateway forwards the DPoP header and says
	// the URL: X-Original-URL from nginx, X-Forwarded-Proto/-Host from
	// Caddy).
	dpopID, dpopSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "dpop-app", Scopes: []string{"read:orders"}})
	k := dpoptest.NewKey("ES256")
	tokenURL := n.Issuer("default") + "/oauth2/token"
	status, _, tb := postToken(t, tokenURL, dpopID, dpopSecret, k.Proof(dpoptest.Claims{HTM: "POST", HTU: tokenURL}))
	if status != http.StatusOK || tb["token_type"] != "DPoP" {
		t.Fatalf("DPoP token: %d %v", status, tb)
	}
	bound := tb["access_token"].(string)
	if st, h, _ := f.get(t, base+"/orders", "GET", bound); st != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "DPoP ") {
		t.Errorf("DPoP-bound token as a Bearer token through the gateway: %d %v", st, h)
	}
	dpopGet := func(proof string) (int, string) {
		req, _ := http.NewRequest("GET", base+"/orders", nil)
		req.Header.Set("Authorization", "DPoP "+bound)
		req.Header.Set("DPoP", proof)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	proof := k.Proof(dpoptest.Claims{HTM: "GET", HTU: base + "/orders", AccessToken: bound})
	if st, body := dpopGet(proof); st != http.StatusOK || !strings.Contains(body, dpopID) {
		t.Errorf("DPoP-bound token with its proof through the gateway: %d %s", st, body)
	}
	if st, _ := dpopGet(proof); st != http.StatusUnauthorized {
		t.Errorf("replayed proof through the gateway: %d", st)
	}
	if st, _ := dpopGet(k.Proof(dpoptest.Claims{HTM: "GET", HTU: base + "/other", AccessToken: bound})); st != http.StatusUnauthorized {
		t.Errorf("proof for another URL through the gateway: %d", st)
	}

	// Rate limit: one request per ~17 minutes, burst 1.
	if _, err := n.Admin.SetGatewayRateLimit(ctx, connect.NewRequest(&adminv1.SetGatewayRateLimitRequest{Tenant: "default", Limit: &adminv1.GatewayRateLimit{ClientId: f.appID, PerSecond: 0.001, Burst: 1}})); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := f.get(t, base+"/orders", "GET", tok); st != http.StatusOK {
		t.Errorf("first request under the limit: %d", st)
	}
	if st, _, _ := f.get(t, base+"/orders", "GET", tok); st != http.StatusTooManyRequests {
		t.Errorf("rate limited: %d, want 429", st)
	}
	if _, err := n.Admin.SetGatewayRateLimit(ctx, connect.NewRequest(&adminv1.SetGatewayRateLimitRequest{Tenant: "default", Limit: &adminv1.GatewayRateLimit{ClientId: f.appID}})); err != nil {
		t.Fatal(err)
	}

	// Revocation: the very next request after the admin call returns is
	// refused (the check reads this node's replica, where the revocation
	// is applied before the call returns) — well within 1 s.
	if st, _, _ := f.get(t, base+"/orders", "GET", tok); st != http.StatusOK {
		t.Fatalf("before revocation: %d", st)
	}
	start := time.Now()
	if _, err := n.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{Tenant: "default", Token: tok})); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := f.get(t, base+"/orders", "GET", tok); st != http.StatusUnauthorized {
		t.Errorf("revoked token: %d, want 401", st)
	}
	t.Logf("revoked token refused %v after the revocation call started", time.Since(start))
}

// TestGatewayNginx (issue 12): a real nginx with auth_request in front of
// the example orders-api.
func TestGatewayNginx(t *testing.T) {
	bin := gatewayBin(t, "nginx", "/usr/sbin/nginx")
	f := newGatewayFixture(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	nodeAddr := strings.TrimPrefix(f.n.BaseURL(), "http://")
	conf := fmt.Sprintf(`worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]s;
    location / {
      auth_request /_tally_check;
      auth_request_set $tally_phantom $upstream_http_x_tally_phantom_token;
      auth_request_set $tally_status $upstream_status;
      error_page 500 = @tally_error;
      proxy_set_header Authorization "Bearer $tally_phantom";
      proxy_pass http://%[3]s;
    }
    location = /_tally_check {
      internal;
      proxy_pass http://%[4]s/t/default/gateway/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
    }
    # auth_request passes only 401 and 403 on; a 429 from the check would
    # be a 500.
    location @tally_error {
      if ($tally_status = 429) { return 429; }
      return 500;
    }
  }
}
`, dir, addr, f.ordersAddr, nodeAddr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	startProc(t, dir, bin, nil, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", path)
	waitHTTP(t, "http://"+addr+"/")
	f.prove(t, "http://"+addr)
}

// TestGatewayCaddy (issue 12): a real Caddy with forward_auth in front of
// the example orders-api.
func TestGatewayCaddy(t *testing.T) {
	bin := gatewayBin(t, "caddy", "/usr/bin/caddy")
	f := newGatewayFixture(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	nodeAddr := strings.TrimPrefix(f.n.BaseURL(), "http://")
	conf := fmt.Sprintf(`{
	admin off
	auto_https off
}
http://%[1]s {
	forward_auth %[2]s {
		uri /t/default/gateway/check
		copy_headers Authorization X-Tally-Subject X-Tally-Client-Id
	}
	reverse_proxy %[3]s
}
`, addr, nodeAddr, f.ordersAddr)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	startProc(t, dir, bin, []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir},
		"run", "--config", path, "--adapter", "caddyfile")
	waitHTTP(t, "http://"+addr+"/")
	f.prove(t, "http://"+addr)
}
