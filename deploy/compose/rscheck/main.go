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
