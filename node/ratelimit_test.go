package node_test

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

func withRateLimits(l issuance.RateLimits) nodetest.Option {
	return func(c *node.Config) { c.RateLimits = l }
}

// tokenStatus asks for a client-credentials token and returns the status
// and Retry-After.
func rlTokenStatus(t *testing.T, tokenURL, id, secret, xff string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", tokenURL, strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode, res.Header.Get("Retry-After")
}

// TestRateLimitsPerClientAndNAT: an attacker hammering one client (wrong
// secret) and guessing client ids from an address is refused with 429 and
// Retry-After, while another client behind the same address still gets
// its tokens.
func TestRateLimitsPerClientAndNAT(t *testing.T) {
	n := nodetest.Start(t, withRateLimits(issuance.RateLimits{PerClient: 60, PerUnknownClient: 10, PerIP: 6000}))
	victim, _ := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "victim"})
	good, goodSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "good"})
	url := n.TokenURL("default")
	limited := false
	for i := 0; i < 100 && !limited; i++ {
		code, ra := rlTokenStatus(t, url, victim, "wrong", "")
		if code == http.StatusTooManyRequests {
			if ra == "" {
				t.Fatal("429 without Retry-After")
			}
			limited = true
		}
	}
	if !limited {
		t.Fatal("100 failed client authentications within the burst of 6: never limited")
	}
	limited = false
	for i := 0; i < 100 && !limited; i++ {
		code, _ := rlTokenStatus(t, url, fmt.Sprintf("guess-%d", i), "x", "")
		limited = code == http.StatusTooManyRequests
	}
	if !limited {
		t.Fatal("guessing client ids was never limited")
	}
	if code, _ := rlTokenStatus(t, url, good, goodSecret, ""); code != http.StatusOK {
		t.Fatalf("the other client behind the same address: %d", code)
	}
}

// TestSpoofedForwardedForIgnored: X-Forwarded-For from a peer that is not
// a trusted proxy does not change the client address; from a trusted
// proxy it does.
func TestSpoofedForwardedForIgnored(t *testing.T) {
	n := nodetest.Start(t, withRateLimits(issuance.RateLimits{PerIP: 10, PerUnknownClient: -1}))
	url := n.TokenURL("default")
	limited := false
	for i := 0; i < 50 && !limited; i++ {
		code, _ := rlTokenStatus(t, url, "nobody", "x", fmt.Sprintf("203.0.113.%d", i))
		limited = code == http.StatusTooManyRequests
	}
	if !limited {
		t.Fatal("spoofed X-Forwarded-For from an untrusted peer escaped the per-address limit")
	}

	tp := nodetest.Start(t, withRateLimits(issuance.RateLimits{PerIP: 10, PerSubnet: -1, PerUnknownClient: -1,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}))
	url = tp.TokenURL("default")
	for i := 0; i < 50; i++ {
		// Each request from another client behind the trusted proxy; a
		// spoofed left-most hop is not what counts.
		code, _ := rlTokenStatus(t, url, "nobody", "x", fmt.Sprintf("198.51.100.7, 203.0.%d.1", i))
		if code == http.StatusTooManyRequests {
			t.Fatalf("request %d from distinct clients behind a trusted proxy was limited", i)
		}
	}
	limited = false
	for i := 0; i < 50 && !limited; i++ {
		code, _ := rlTokenStatus(t, url, "nobody", "x", "203.0.113.200")
		limited = code == http.StatusTooManyRequests
	}
	if !limited {
		t.Fatal("one client behind a trusted proxy was never limited")
	}
}

// TestRateLimitsSharedAcrossNodes: what one node let through is taken out
// of the other nodes' budgets over NATS, so a client cannot multiply its
// limit by spreading over the cluster.
func TestRateLimitsSharedAcrossNodes(t *testing.T) {
	const size = 3
	opts := []nodetest.ClusterOption{nodetest.WithNATSCluster(), nodetest.WithNodeOptions(withRateLimits(issuance.RateLimits{PerClient: 1}))}
	c := nodetest.StartCluster(t, size, opts...)
	n0 := c.Node(0)
	id, secret := n0.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "spread"})
	c.WaitConverged()
	// A budget of one request a minute, burst 1: the first request at
	// node 0 spends it.
	if code, _ := rlTokenStatus(t, n0.TokenURL("default"), id, secret, ""); code != http.StatusOK {
		t.Fatalf("first request: %d", code)
	}
	for i := 1; i < size; i++ {
		ni := c.Node(i)
		nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			if ni.RatesAbsorbed() < 1 {
				return fmt.Errorf("node %d has not heard of node 0's request", i)
			}
			return nil
		})
		if code, _ := rlTokenStatus(t, ni.TokenURL("default"), id, secret, ""); code != http.StatusTooManyRequests {
			t.Fatalf("the same client at node %d: %d, want 429", i, code)
		}
		// An SRE sees both on /metrics: the refusal by its bucket, and
		// what the node took from the others' reports.
		rlMetricAtLeast(t, ni, "tally_ratelimit_refusals_total", `bucket="client"`, 1)
		rlMetricAtLeast(t, ni, "tally_ratelimit_shared_total", `direction="absorbed"`, 1)
	}
	rlMetricAtLeast(t, n0, "tally_ratelimit_shared_total", `direction="published"`, 1)
}

// rlMetricAtLeast waits until n's /metrics has name{labels} ≥ min.
func rlMetricAtLeast(t *testing.T, n *nodetest.Node, name, labels string, min float64) {
	t.Helper()
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		ss, err := scrape("http://" + n.Addr() + "/metrics")
		if err != nil {
			return err
		}
		if v, ok := value(ss, name, labels); !ok || v < min {
			return fmt.Errorf("%s{%s} = %v (exported: %v), want at least %v", name, labels, v, ok, min)
		}
		return nil
	})
}

// TestStuffingLocksOnlyTheFailingSource: failed client authentications
// from one network close that client to that network only (429 with
// Retry-After), progressively; the right secret from another network
// still works.
func TestStuffingLocksOnlyTheFailingSource(t *testing.T) {
	n := nodetest.Start(t, withRateLimits(issuance.RateLimits{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}))
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "target"})
	url := n.TokenURL("default")
	const attacker, owner = "198.51.100.9", "203.0.113.5"
	refused := false
	for i := 0; i < 200 && !refused; i++ {
		code, ra := rlTokenStatus(t, url, id, "guess", attacker)
		if code == http.StatusTooManyRequests {
			if ra == "" {
				t.Fatal("429 without Retry-After")
			}
			refused = true
		} else if code != http.StatusUnauthorized {
			t.Fatalf("wrong secret: %d", code)
		}
	}
	if !refused {
		t.Fatal("200 wrong secrets from one network were never refused")
	}
	if code, _ := rlTokenStatus(t, url, id, secret, attacker); code != http.StatusTooManyRequests {
		t.Fatalf("the right secret from the failing network: %d, want 429", code)
	}
	if code, _ := rlTokenStatus(t, url, id, secret, owner); code != http.StatusOK {
		t.Fatalf("the right secret from another network: %d, want 200", code)
	}
}
