package main

// tally healthcheck: GET a health URL and exit 0 on 200 — the container
// HEALTHCHECK of an image that has no shell and no curl.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

func runHealthcheck(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("tally healthcheck", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	target := fs.String("url", "", "`URL` to GET; 200 is healthy (env TALLY_HEALTHCHECK_URL, default http://127.0.0.1:8080/readyz)")
	timeout := fs.Duration("timeout", 3*time.Second, "bound on the request")
	fs.Usage = func() {
		fmt.Fprint(e.stderr, "Usage: tally healthcheck [--url URL] [--timeout D]\n\nExits 0 when URL answers 200, 1 otherwise (for container HEALTHCHECKs).\n\n")
		fs.PrintDefaults()
	}
	if code := loadtestParse(fs, args, e); code >= 0 {
		return code
	}
	u := *target
	if u == "" {
		u = e.getenv("TALLY_HEALTHCHECK_URL")
	}
	if u == "" {
		u = "http://127.0.0.1:8080/readyz"
	}
	if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		fmt.Fprintf(e.stderr, "tally healthcheck: --url %q is not an absolute http(s) URL\n", u)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintln(e.stderr, "tally healthcheck: --timeout must be positive")
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		fmt.Fprintf(e.stderr, "tally healthcheck: %v\n", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "tally healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(e.stderr, "tally healthcheck: %s answered %d: %s\n", u, resp.StatusCode, body)
		return 1
	}
	return 0
}
