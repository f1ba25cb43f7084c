package node_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/oauth2"

	"github.com/tallyauth/tally/node/nodetest"
)

// chromiumPath finds Debian's chromium. The browser test may skip only when
// it is missing and CI is unset; in CI it must run (.ci/run installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("CI") == "" {
		t.Skip("chromium is not installed (apt-get install -y chromium); CI runs this test")
	}
	t.Fatal("CI is set but chromium is not installed")
	return ""
}

// TestLoginAndConsentInChromium drives the real login and consent pages in
// headless Chromium: type the username and password, approve, and land on
// the client's callback with a code that x/oauth2 redeems.
func TestLoginAndConsentInChromium(t *testing.T) {
	exe := chromiumPath(t)
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)

	// The client's callback: a loopback redirect on another port (RFC 8252
	// §7.3) that records the authorization response.
	got := make(chan *http.Request, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/callback" {
			select {
			case got <- r:
			default:
			}
		}
		_, _ = w.Write([]byte("<html><body id=done>signed in</body></html>"))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	conf := *e.conf
	conf.RedirectURL = "http://" + ln.Addr().String() + "/callback"

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The first call starts the browser and must not carry a timeout (it
	// would stop the browser); later calls are bounded.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	ctx, cancelT := context.WithTimeout(bctx, 60*time.Second)
	defer cancelT()

	verifier := oauth2.GenerateVerifier()
	authURL := conf.AuthCodeURL("browser-state", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", "bn"))
	err = chromedp.Do(ctx,
		chromedp.Navigate(authURL),
		chromedp.WaitVisible(`#username`),
		// A wrong password first: the page says so and asks again.
		chromedp.SendKeys(`#username`, "alice"),
		chromedp.SendKeys(`#password`, "wrong password"),
		chromedp.Click(`#login`),
		chromedp.WaitVisible(`#error`),
	)
	if err != nil {
		t.Fatal(err)
	}
	errText, err := chromedp.Run(ctx, chromedp.Text(`#error`))
	if err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.SetValue(`#username`, "alice"),
		chromedp.SendKeys(`#password`, alicePassword),
		chromedp.Click(`#login`),
		chromedp.WaitVisible(`#approve`),
		chromedp.Click(`#approve`),
		chromedp.WaitVisible(`#done`),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errText, "Invalid username or password") {
		t.Errorf("error shown = %q", errText)
	}
	var cb *http.Request
	select {
	case cb = <-got:
	case <-time.After(nodetest.Timeout):
		t.Fatal("the callback was not reached")
	}
	q := cb.URL.Query()
	if q.Get("state") != "browser-state" || q.Get("iss") != e.issuer {
		t.Fatalf("callback query %v", q)
	}
	tok, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Extra("id_token") == nil {
		t.Error("no id_token")
	}

	// The browser now has a session: a second authorization needs no
	// sign-in. The client is a native app (public, loopback redirect), so
	// RFC 8252 section 8.6 has the user approve again: the consent page,
	// without the login form.
	err = chromedp.Do(ctx, chromedp.Navigate(conf.AuthCodeURL("again", oauth2.S256ChallengeOption(verifier))),
		chromedp.WaitVisible(`#approve`))
	if err != nil {
		t.Fatal(err)
	}
	loginForms, err := chromedp.Run(ctx, chromedp.Nodes(`#username`, chromedp.AtLeast(0)))
	if err != nil {
		t.Fatal(err)
	}
	if len(loginForms) != 0 {
		t.Fatal("the second authorization asked for a sign-in again")
	}
	if err := chromedp.Do(ctx, chromedp.Click(`#approve`), chromedp.WaitVisible(`#done`)); err != nil {
		t.Fatal(err)
	}
	select {
	case cb = <-got:
		if cb.URL.Query().Get("state") != "again" || cb.URL.Query().Get("code") == "" {
			t.Errorf("second callback %v", cb.URL)
		}
	case <-time.After(nodetest.Timeout):
		t.Fatal("the second callback was not reached")
	}
}
