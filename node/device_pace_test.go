package node_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// countPolls counts the PollDeviceCode commands n applies.
func countPolls(n *nodetest.Node) *atomic.Int64 {
	var c atomic.Int64
	n.Raft().FSM().OnApplied(func(_ uint64, cmd *raftpb.Command, _ raft.Result) {
		if cmd.GetPollDeviceCode() != nil {
			c.Add(1)
		}
	})
	return &c
}

// The issue 9 livelock: one early poll answered slow_down, then a client
// that polls as x/oauth2 does (the advertised interval, plus 5 s per
// slow_down it received) must get its tokens once the user approved.
func TestDeviceFlowConvergesAfterEarlySlowDown(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	da, err := e.conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c, _, _ := pollOnce(t, e, da.DeviceCode); c != "authorization_pending" {
		t.Fatalf("first poll: %s", c)
	}
	if c, _, _ := pollOnce(t, e, da.DeviceCode); c != "slow_down" {
		t.Fatalf("early poll: %s", c)
	}
	approveDevice(t, e, newBrowser(t), da.UserCode, true)
	tok, err := e.conf.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatalf("x/oauth2 DeviceAccessToken after an early slow_down: %v", err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("tokens: %+v", tok)
	}
}

// Polls that change nothing (pending, too fast, denied, unknown or
// random codes) are answered without a Raft write; the approved poll is
// the one write.
func TestDevicePollsWriteOnlyToRedeem(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	polls := countPolls(n)
	ctx := context.Background()
	da, err := e.conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"authorization_pending", "slow_down", "slow_down"}
	for i, w := range want {
		if c, _, _ := pollOnce(t, e, da.DeviceCode); c != w {
			t.Fatalf("poll %d: %s, want %s", i, c, w)
		}
	}
	for range 5 {
		if c, _, _ := pollOnce(t, e, randomDeviceCode(t)); c != "invalid_grant" {
			t.Fatalf("random device code: %s", c)
		}
	}
	if got := polls.Load(); got != 0 {
		t.Fatalf("%d PollDeviceCode writes for polls that changed nothing", got)
	}
	approveDevice(t, e, newBrowser(t), da.UserCode, true)
	tok, err := e.conf.DeviceAccessToken(ctx, da) // waits the interval
	if err != nil || tok.AccessToken == "" {
		t.Fatalf("redeem: %v %+v", err, tok)
	}
	if got := polls.Load(); got != 1 {
		t.Fatalf("%d PollDeviceCode writes, want the one redemption", got)
	}
	if c, _, _ := pollOnce(t, e, da.DeviceCode); c != "invalid_grant" {
		t.Fatalf("poll after redemption: %s", c)
	}
	if got := polls.Load(); got != 1 {
		t.Fatalf("a poll of a redeemed code wrote: %d", got)
	}
}

func randomDeviceCode(t *testing.T) string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "tlyd1." + base64.RawURLEncoding.EncodeToString(b[:])
}

// Device authorization and polling are rate limited per IP: 429 with
// Retry-After, or slow_down for a known device code.
func TestDeviceTrafficRateLimited(t *testing.T) {
	n := nodetest.Start(t)
	e := newFlowEnv(t, n)
	da, err := e.conf.DeviceAuth(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	var limited *http.Response
	for i := 0; i < 50 && limited == nil; i++ {
		resp, err := http.PostForm(e.conf.Endpoint.DeviceAuthURL, url.Values{"client_id": {e.conf.ClientID}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusTooManyRequests:
			limited = resp
		default:
			t.Fatalf("device authorization %d: %d", i, resp.StatusCode)
		}
	}
	if limited == nil {
		t.Fatal("50 device authorizations from one IP were not limited")
	}
	if s, err := strconv.Atoi(limited.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("429 without Retry-After: %q", limited.Header.Get("Retry-After"))
	}

	// Polls: random codes exhaust the IP's budget and get 429; a known code
	// then gets slow_down (RFC 8628 §3.5), never a write.
	polls := countPolls(n)
	sawLimit := false
	for i := 0; i < 200 && !sawLimit; i++ {
		code, status, _ := pollOnce(t, e, randomDeviceCode(t))
		switch {
		case status == http.StatusTooManyRequests && code == "slow_down":
			sawLimit = true
		case code != "invalid_grant":
			t.Fatalf("random poll %d: %s %d", i, code, status)
		}
	}
	if !sawLimit {
		t.Fatal("200 polls from one IP were not limited")
	}
	if code, status, _ := pollOnce(t, e, da.DeviceCode); code != "slow_down" || status != http.StatusBadRequest {
		t.Fatalf("known code over the limit: %s %d", code, status)
	}
	if got := polls.Load(); got != 0 {
		t.Fatalf("%d writes for limited polls", got)
	}
}
