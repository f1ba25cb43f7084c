package node_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/node/proctest"
)

// TestCrossNodeTokensProcesses runs crossNodeTokens against real `tally
// serve` processes configured as `make cluster` configures them: one
// --issuer for every node, served by a `tally front` process over the
// nodes. Besides the checks at each node's own port, a token issued through
// the front door is introspected at every node.
func TestCrossNodeTokensProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	port := proctest.FreePort(t)
	issuer := fmt.Sprintf("http://127.0.0.1:%d", port)
	c := proctest.Start(t, proctest.Options{Issuer: issuer})

	// The front door at the issuer URL, as make cluster runs it.
	args := []string{"front", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--check-every", "200ms"}
	for _, p := range c.Nodes() {
		args = append(args, "--backend", p.URL())
	}
	logPath := filepath.Join(t.TempDir(), "front.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	front := exec.Command(c.Bin, args...)
	front.Stdout, front.Stderr = logFile, logFile
	if err := front.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = front.Process.Kill()
		_ = front.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("front door log:\n%s", b)
		}
	})

	admin := adminv1connect.NewAdminServiceClient(http.DefaultClient, issuer, connect.WithInterceptors(bearerToken(c.AdminToken)))
	oc := &oneIssuerCluster{issuer: issuer, admin: admin}
	for _, p := range c.Nodes() {
		oc.nodes = append(oc.nodes, p.URL())
	}
	oc.replicas = oc.nodes
	// Admin calls go through the front door once it sees a ready node.
	nodetest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get(issuer + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("front door /readyz: %s", resp.Status)
		}
		return nil
	})
	// The leader creates the default tenant once elected.
	nodetest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		for _, u := range append([]string{issuer}, oc.nodes...) {
			resp, err := http.Get(u + "/t/default/.well-known/openid-configuration")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: discovery %s", u, resp.Status)
			}
		}
		return nil
	})
	crossNodeTokens(t, oc)
	// Everything above, once more through the one issuer URL: the front
	// door is just another way in.
	oc.nodes = []string{issuer, oc.replicas[1], issuer}
	crossNodeTokensCC(t, oc)
}

// bearerToken adds the admin credential to unary calls.
type bearerToken string

func (b bearerToken) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearerToken) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (b bearerToken) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
