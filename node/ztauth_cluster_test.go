package node_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/localcluster"
	"github.com/tallyauth/tally/node/nodetest"
)

func ztKey(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return k, string(b)
}

func ztSign(t *testing.T, k *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := json.Marshal(claims)
	o, err := s.Sign(p)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := o.CompactSerialize()
	return out
}

func ztPost(t *testing.T, tokenURL, assertion string) (int, string) {
	t.Helper()
	resp, err := http.PostForm(tokenURL, url.Values{"grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}})
	if err != nil {
		t.Error(err)
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Error
}

// TestPrivateKeyJWTReplayAcrossNodes: a client assertion's jti is
// single-use across the cluster. Used at one node, it is refused at the
// same node and at the two others; 30 concurrent uses of one fresh
// assertion spread over the three nodes succeed exactly once.
func TestPrivateKeyJWTReplayAcrossNodes(t *testing.T) {
	c := startZTCluster(t)
	n0 := c.Node(0)
	ctx := context.Background()
	k, jwks := ztKey(t)
	res, err := n0.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "svc", Scopes: []string{"read"},
		Auth: &adminv1.ClientAuth{Methods: []string{"private_key_jwt"}, Jwks: jwks}}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.ClientSecret != "" {
		t.Fatal("a private_key_jwt-only client got a secret")
	}
	id := res.Msg.Client.ClientId
	if got := res.Msg.Client.GetAuth().GetMethods(); len(got) != 1 || got[0] != "private_key_jwt" {
		t.Fatalf("auth methods %v", got)
	}
	waitZT(t, c)
	seq := 0
	assertion := func() string {
		seq++
		now := time.Now()
		return ztSign(t, k, map[string]any{"iss": id, "sub": id, "aud": n0.Issuer("default"),
			"iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(), "jti": "replay-" + strconv.Itoa(seq)})
	}
	// Every node has the cluster's one issuer; requests go to each node's
	// own address, as a load balancer would spread them.
	tokenURL := func(i int) string { return c.Node(i).URL() + "/t/default/oauth2/token" }

	a := assertion()
	if st, code := ztPost(t, tokenURL(1), a); st != http.StatusOK {
		t.Fatalf("first use at node 1: %d %s", st, code)
	}
	for _, i := range []int{1, 0, 2} {
		if st, code := ztPost(t, tokenURL(i), a); st != http.StatusUnauthorized || code != "invalid_client" {
			t.Fatalf("replay at node %d: %d %s, want 401 invalid_client", i, st, code)
		}
	}

	a = assertion()
	const uses = 15
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	start := make(chan struct{})
	for i := range uses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			st, code := ztPost(t, tokenURL(i%3), a)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case st == http.StatusOK:
				ok++
			case st == http.StatusUnauthorized && code == "invalid_client":
			case st == http.StatusServiceUnavailable && code == "temporarily_unavailable":
				// A write that timed out on a loaded machine fails closed.
			default:
				t.Errorf("use %d: %d %s", i, st, code)
			}
		}()
	}
	close(start)
	wg.Wait()
	if ok > 1 {
		t.Fatalf("%d successes of one assertion, want at most 1", ok)
	}
	// Afterwards the assertion is used (by the burst, or by the first of
	// these if every burst write timed out) and refused at every node.
	nodetestCheck(t, func() error {
		for i := range 3 {
			st, code := ztPost(t, tokenURL(i), a)
			switch {
			case st == http.StatusOK:
				ok++
			case st == http.StatusServiceUnavailable:
				return fmt.Errorf("node %d: %d %s", i, st, code)
			case st != http.StatusUnauthorized || code != "invalid_client":
				t.Fatalf("after the burst, node %d: %d %s", i, st, code)
			}
		}
		return nil
	})
	if ok != 1 {
		t.Fatalf("%d successes of one assertion in all, want exactly 1", ok)
	}
}

// TestFederationTrustAdmin: the admin API records a tenant's federation
// trust through Raft; a workload's platform token then authenticates as
// the mapped client at every node.
func TestFederationTrustAdmin(t *testing.T) {
	c := startZTCluster(t)
	n0 := c.Node(0)
	ctx := context.Background()
	cl, err := n0.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
		Tenant: "default", Name: "billing", Scopes: []string{"pay"}, Auth: &adminv1.ClientAuth{Methods: []string{"private_key_jwt"}, JwksUri: "https://keys.example/jwks"}}))
	if err != nil {
		t.Fatal(err)
	}
	id := cl.Msg.Client.ClientId
	k, jwks := ztKey(t)
	const issuer = "https://kubernetes.example/cluster-1"
	const sub = "system:serviceaccount:payments:billing"
	_, err = n0.Admin.SetTenantTrust(ctx, connect.NewRequest(&adminv1.SetTenantTrustRequest{Tenant: "default", Trust: &adminv1.TenantTrust{
		Federations: []*adminv1.FederationTrust{{Name: "k8s", Issuer: issuer, Jwks: jwks, Subjects: []*adminv1.SubjectMapping{{Subject: sub, ClientId: id}}}}}}))
	if err != nil {
		t.Fatal(err)
	}
	// Bad trust: a mapping to a client that does not exist.
	_, err = n0.Admin.SetTenantTrust(ctx, connect.NewRequest(&adminv1.SetTenantTrustRequest{Tenant: "default", Trust: &adminv1.TenantTrust{
		Federations: []*adminv1.FederationTrust{{Name: "k8s", Issuer: issuer, Jwks: jwks, Subjects: []*adminv1.SubjectMapping{{Subject: sub, ClientId: "ghost"}}}}}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("mapping to an unknown client: %v", err)
	}
	got, err := c.Node(2).Admin.GetTenantTrust(ctx, connect.NewRequest(&adminv1.GetTenantTrustRequest{Tenant: "default"}))
	if err != nil {
		t.Fatal(err)
	}
	_ = got
	waitZT(t, c)
	now := time.Now()
	tok := ztSign(t, k, map[string]any{"iss": issuer, "sub": sub, "aud": n0.Issuer("default"),
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()})
	for i := range 3 {
		if st, code := ztPost(t, c.Node(i).URL()+"/t/default/oauth2/token", tok); st != http.StatusOK {
			t.Fatalf("federated token at node %d: %d %s", i, st, code)
		}
	}
	other := ztSign(t, k, map[string]any{"iss": issuer, "sub": "system:serviceaccount:payments:other", "aud": n0.Issuer("default"),
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()})
	if st, code := ztPost(t, c.Node(1).URL()+"/t/default/oauth2/token", other); st != http.StatusUnauthorized || code != "invalid_client" {
		t.Fatalf("unmapped subject: %d %s", st, code)
	}
}

// startZTCluster starts a 3-node in-process cluster with one issuer.
func startZTCluster(t *testing.T) *localcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := localcluster.Start(ctx, localcluster.Config{Dir: t.TempDir(), Nodes: 3, Profile: "fast", Regions: []string{"east", "central", "west"}, MaxStale: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func waitZT(t *testing.T, c *localcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

func nodetestCheck(t *testing.T, fn func() error) {
	t.Helper()
	nodetest.CheckFor(t, 30*time.Second, 200*time.Millisecond, fn)
}
