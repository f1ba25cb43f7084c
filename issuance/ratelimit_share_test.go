package issuance

import (
	"maps"
	"testing"
	"time"
)

// TestRateShareCountsWhatBucketsLetThrough: with sharing on, each bucket
// counts the tokens it gave (also those of a request a later bucket
// refused, which this node spent too), a flush hands them out once under
// kind|perMinute|key, and nothing is counted while sharing is off.
func TestRateShareCountsWhatBucketsLetThrough(t *testing.T) {
	g := newRateGuard(RateLimits{PerClient: 600, PerIP: 30})
	var got []map[string]int
	g.mu.Lock()
	g.share = func(m map[string]int) { got = append(got, maps.Clone(m)) }
	g.mu.Unlock()
	now := time.Unix(1_700_000_000, 0)
	tb := g.buckets("acme")
	takes := []bucketTake{{tb.client, "acme\x00svc"}, {tb.ip, "192.0.2.7"}, {tb.tent, "acme"}}

	g.take(takes, now) // sharing off: spent here, not counted
	g.flush()
	if len(got) != 0 {
		t.Fatalf("sharing off, yet shared %v", got)
	}
	g.sharing.Store(true)
	// The ip budget (30 a minute) has a burst of 3, one spent above.
	refused := 0
	for range 5 {
		if ok, _, kind := g.take(takes, now); !ok {
			if kind != rlIP {
				t.Fatalf("refused by %q, want the ip bucket", kind)
			}
			refused++
		}
	}
	if refused != 3 {
		t.Fatalf("%d refused, want 3", refused)
	}
	g.flush()
	want := map[string]int{
		sharedKey(rlClient, 600, "acme\x00svc"):      5,
		sharedKey(rlIP, 30, "192.0.2.7"):             2,
		sharedKey(rlTenant, g.cfg.PerTenant, "acme"): 2,
	}
	if len(got) != 1 || !maps.Equal(got[0], want) {
		t.Fatalf("shared %v, want %v", got, want)
	}
	g.flush()
	if len(got) != 1 {
		t.Fatalf("a second flush shared again: %v", got[1:])
	}
}
