// Command rscheck measures, round after round, how long a resource server
// keeps accepting a token after tally acknowledged its revocation: the
// check `make e2e` runs throughout the drills (deploy/compose/e2e.sh).
//
// Each round takes a client-credentials token from the next node in turn,
// checks that the resource server accepts it (200), revokes it through the
// same node (RFC 7009), and then asks the resource server every few
// milliseconds until it answers 401. The time reported runs from the end
// of the revocation response to the end of the first 401 response, so it
// is an upper bound on the resource server's delay. A round whose token,
// first check or revocation fails (its node is down) is skipped, not
// judged. One line per round goes to stdout:
//
//	ok round 7 via node2 12 ms
//	FAIL round 9 at 10:46:12 via node1: refused only after 1834 ms
//	skip round 8 via node3: revoke: 502 Bad Gateway
//
//	RSCHECK_CLIENT_SECRET=… rscheck --client-id ID --rs http://127.0.0.1:9090/orders \
//	    --node node1=http://127.0.0.1:8081 --node node2=http://127.0.0.1:8082 --max 1s
//
// It runs until SIGINT or SIGTERM. The secret comes from the environment,
// never a flag.
//
// With --propagation it makes one check instead and exits: a token from
// the first --node is introspected active at the last one and accepted by
// the resource server, revoked through the second node, and then every
// node's introspection and the resource server are polled at once until
// the token is inactive (401 at the resource server); each one's time is
// printed, and rscheck exits 1 if any took longer than --max.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

type nodeFlags []string

func (f *nodeFlags) String() string     { return strings.Join(*f, ",") }
func (f *nodeFlags) Set(v string) error { *f = append(*f, v); return nil }

type node struct{ name, base string }

func main() {
	var nf nodeFlags
	flag.Var(&nf, "node", "`NAME=URL`: a node's base URL (repeatable); rounds go through them in turn")
	clientID := flag.String("client-id", "", "a confidential client of the tenant (secret in RSCHECK_CLIENT_SECRET)")
	tenant := flag.String("tenant", "default", "the tenant")
	rs := flag.String("rs", "http://127.0.0.1:9090/orders", "the resource server's protected URL (GET with the bearer token)")
	maxDelay := flag.Duration("max", time.Second, "a round that takes longer FAILs")
	interval := flag.Duration("interval", 2*time.Second, "pause between rounds")
	poll := flag.Duration("poll", 10*time.Millisecond, "pause between two checks of one round")
	giveUp := flag.Duration("give-up", 15*time.Second, "stop polling a round after this long")
	rounds := flag.Int("rounds", 0, "stop after this many rounds (0: until a signal)")
	propagation := flag.Bool("propagation", false, "one check: issue at the first node, revoke at the second, poll every node and the resource server (see the package doc)")
	flag.Parse()
	secret := os.Getenv("RSCHECK_CLIENT_SECRET")
	if *clientID == "" || secret == "" || len(nf) == 0 {
		fmt.Fprintln(os.Stderr, "rscheck: --client-id, RSCHECK_CLIENT_SECRET and at least one --node are required")
		os.Exit(2)
	}
	var nodes []node
	for _, v := range nf {
		name, base, ok := strings.Cut(v, "=")
		if !ok || name == "" || base == "" {
			fmt.Fprintf(os.Stderr, "rscheck: --node %q: want NAME=URL\n", v)
			os.Exit(2)
		}
		nodes = append(nodes, node{name, strings.TrimRight(base, "/")})
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &checker{
		client: &http.Client{Timeout: 5 * time.Second},
		id:     *clientID, secret: secret, tenant: *tenant, rs: *rs,
	}
	if *propagation {
		if err := c.propagation(ctx, nodes, *poll, *maxDelay); err != nil {
			fmt.Fprintln(os.Stderr, "rscheck:", err)
			os.Exit(1)
		}
		return
	}
	for i := 1; ctx.Err() == nil && (*rounds == 0 || i <= *rounds); i++ {
		n := nodes[i%len(nodes)]
		took, err := c.round(ctx, n, *poll, *giveUp)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			fmt.Printf("skip round %d via %s: %v\n", i, n.name, err)
		case took > *maxDelay:
			fmt.Printf("FAIL round %d at %s via %s: refused only after %d ms\n", i, time.Now().UTC().Format("15:04:05"), n.name, took.Milliseconds())
		default:
			fmt.Printf("ok round %d via %s %d ms\n", i, n.name, took.Milliseconds())
		}
		select {
		case <-ctx.Done():
		case <-time.After(*interval):
		}
	}
}

type checker struct {
	client             *http.Client
	id, secret, tenant string
	rs                 string
}

// round runs one round through n: the time from the revocation's response
// to the resource server's first 401, or why the round was skipped.
func (c *checker) round(ctx context.Context, n node, poll, giveUp time.Duration) (time.Duration, error) {
	tok, err := c.token(ctx, n)
	if err != nil {
		return 0, fmt.Errorf("token: %w", err)
	}
	if st, err := c.rsStatus(ctx, tok); err != nil || st != http.StatusOK {
		return 0, fmt.Errorf("fresh token at the resource server: %d %v", st, err)
	}
	if err := c.revoke(ctx, n, tok); err != nil {
		return 0, fmt.Errorf("revoke: %w", err)
	}
	start := time.Now()
	for {
		st, _ := c.rsStatus(ctx, tok)
		if st == http.StatusUnauthorized {
			return time.Since(start), nil
		}
		if time.Since(start) > giveUp || ctx.Err() != nil {
			return time.Since(start), nil
		}
		time.Sleep(poll)
	}
}

func (c *checker) post(ctx context.Context, u string, form url.Values) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(c.id), url.QueryEscape(c.secret))
	return c.client.Do(req)
}

func (c *checker) token(ctx context.Context, n node) (string, error) {
	resp, err := c.post(ctx, n.base+"/t/"+c.tenant+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil || body.AccessToken == "" {
		return "", fmt.Errorf("no access_token in the response: %v", err)
	}
	return body.AccessToken, nil
}

func (c *checker) revoke(ctx context.Context, n node, tok string) error {
	resp, err := c.post(ctx, n.base+"/t/"+c.tenant+"/oauth2/revoke", url.Values{"token": {tok}})
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

func (c *checker) rsStatus(ctx context.Context, tok string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.rs, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// propagation is the --propagation check.
func (c *checker) propagation(ctx context.Context, nodes []node, poll, maxDelay time.Duration) error {
	if len(nodes) < 2 {
		return errors.New("--propagation needs at least two --node")
	}
	from, via, last := nodes[0], nodes[1], nodes[len(nodes)-1]
	tok, err := c.token(ctx, from)
	if err != nil {
		return fmt.Errorf("token from %s: %w", from.name, err)
	}
	if active, err := c.active(ctx, last, tok); err != nil || !active {
		return fmt.Errorf("%s does not see %s's token active (%v)", last.name, from.name, err)
	}
	if st, err := c.rsStatus(ctx, tok); err != nil || st != http.StatusOK {
		return fmt.Errorf("the resource server refuses a fresh token: %d %v", st, err)
	}
	if err := c.revoke(ctx, via, tok); err != nil {
		return fmt.Errorf("revoke through %s: %w", via.name, err)
	}
	start := time.Now()
	type result struct {
		name string
		took time.Duration
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	wait := func(name string, done func() bool) {
		wg.Go(func() {
			for !done() && time.Since(start) <= 3*maxDelay && ctx.Err() == nil {
				time.Sleep(poll)
			}
			mu.Lock()
			results = append(results, result{name, time.Since(start)})
			mu.Unlock()
		})
	}
	for _, n := range nodes {
		wait(n.name, func() bool {
			active, err := c.active(ctx, n, tok)
			return err == nil && !active
		})
	}
	wait("resource server", func() bool {
		st, _ := c.rsStatus(ctx, tok)
		return st == http.StatusUnauthorized
	})
	wg.Wait()
	var slow []string
	for _, r := range results {
		fmt.Printf("%s: revoked token refused after %d ms\n", r.name, r.took.Milliseconds())
		if r.took > maxDelay {
			slow = append(slow, r.name)
		}
	}
	if len(slow) > 0 {
		return fmt.Errorf("revoked token still accepted after %v by %s", maxDelay, strings.Join(slow, ", "))
	}
	return nil
}

// active introspects tok at n (RFC 7662).
func (c *checker) active(ctx context.Context, n node, tok string) (bool, error) {
	resp, err := c.post(ctx, n.base+"/t/"+c.tenant+"/oauth2/introspect", url.Values{"token": {tok}})
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, errors.New(resp.Status)
	}
	var body struct {
		Active *bool `json:"active"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil || body.Active == nil {
		return false, fmt.Errorf("no active in the introspection response: %v", err)
	}
	return *body.Active, nil
}
