package node_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// siemAlerts reads the security alerts of a SIEM file.
func siemAlerts(t *testing.T, path string, forbidden ...string) []node.SIEMEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	for _, f := range forbidden {
		if bytes.Contains(b, []byte(f)) {
			t.Fatalf("%q in the SIEM export", f)
		}
	}
	var out []node.SIEMEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var e node.SIEMEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.ClassUID == 2004 && e.Unmapped["alert"] != nil {
			out = append(out, e)
		}
	}
	return out
}

func alertPost(t *testing.T, u string, form url.Values, id, secret, xff string) int {
	t.Helper()
	req, err := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	req.Header.Set("X-Forwarded-For", xff)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// TestSecurityAlertsReachTheSIEM: failed client authentications spread
// over many addresses (each under its own budget) raise one
// credential_stuffing alert for the tenant, token guessing at the
// introspection endpoint a token_guessing alert naming the client, and a
// client over its budget a rate_limit_exceeded alert; each reaches the
// SIEM feed as a Detection Finding with the source, once, and no secret or
// guessed token appears in it.
func TestSecurityAlertsReachTheSIEM(t *testing.T) {
	path := filepath.Join(t.TempDir(), "siem.jsonl")
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.SIEMFile = path
		c.RateLimits = issuance.RateLimits{
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			AlertFailures:  8, AlertIntrospectMisses: 5,
			Tenants: map[string]issuance.RateLimits{"default": {AlertFailures: 8, AlertIntrospectMisses: 5, PerClient: 600}},
		}
	}))
	target, targetSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "target"})
	rs, rsSecret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "resource-server"})
	tokenURL := n.TokenURL("default")
	introspectURL := strings.TrimSuffix(tokenURL, "/token") + "/introspect"
	cc := url.Values{"grant_type": {"client_credentials"}}
	// Stuffing: 12 wrong secrets, each from another network.
	for i := range 12 {
		if code := alertPost(t, tokenURL, cc, target, "wrong-secret-guess", fmt.Sprintf("198.18.%d.7", i)); code != http.StatusUnauthorized {
			t.Fatalf("wrong secret %d: %d", i, code)
		}
	}
	// Token guessing: 8 made-up tokens.
	for i := range 8 {
		if code := alertPost(t, introspectURL, url.Values{"token": {fmt.Sprintf("guessed-token-%d", i)}}, rs, rsSecret, "203.0.113.9"); code != http.StatusOK {
			t.Fatalf("introspection %d: %d", i, code)
		}
	}
	// The target over its budget of 600 a minute (burst 60).
	limited := false
	for i := 0; i < 200 && !limited; i++ {
		limited = alertPost(t, tokenURL, cc, target, targetSecret, "203.0.113.10") == http.StatusTooManyRequests
	}
	if !limited {
		t.Fatal("the client was never over its budget")
	}
	var alerts []node.SIEMEvent
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		alerts = siemAlerts(t, path, "wrong-secret-guess", "guessed-token", targetSecret, rsSecret)
		kinds := map[string]bool{}
		for _, a := range alerts {
			kinds[fmt.Sprint(a.Unmapped["alert"], "/", a.Unmapped["signal"])] = true
		}
		for _, want := range []string{"credential_stuffing/failures_per_tenant", "token_guessing/introspection_misses_per_client", "rate_limit_exceeded/client"} {
			if !kinds[want] {
				return fmt.Errorf("no %s alert yet: %v", want, kinds)
			}
		}
		return nil
	})
	seen := map[string]int{}
	for _, a := range alerts {
		key := fmt.Sprint(a.Unmapped["alert"], "/", a.Unmapped["signal"], "/", a.Unmapped["client_id"], "/", a.SrcEndpoint)
		if seen[key]++; seen[key] > 1 {
			t.Fatalf("alert %s raised twice within a minute", key)
		}
		if a.FindingInfo == nil || a.FindingInfo.Types[0] != a.Unmapped["alert"] || a.Metadata.UID == "" {
			t.Fatalf("alert without its finding: %+v", a)
		}
		switch a.Unmapped["alert"] {
		case issuance.AlertTokenGuessing:
			if a.Unmapped["client_id"] != rs || a.SrcEndpoint == nil || a.SrcEndpoint.IP != "203.0.113.9" {
				t.Fatalf("token guessing alert: %+v %+v", a.Unmapped, a.SrcEndpoint)
			}
		case issuance.AlertRateLimitExceeded:
			if a.Unmapped["client_id"] != target {
				t.Fatalf("rate limit alert: %+v", a.Unmapped)
			}
		}
	}
}
