package issuance

import (
	"fmt"
	"testing"
	"time"
)

// A client that polls at the advertised interval plus 5 s per slow_down it
// received is answered within a bounded number of polls, whatever polls
// came before it; one that keeps polling too fast only gets slow_down.
func TestDevicePacerConverges(t *testing.T) {
	const base = 5 * time.Second
	t0 := time.Unix(1_700_000_000, 0)
	for early := 0; early <= 15; early++ {
		t.Run(fmt.Sprintf("%d early polls", early), func(t *testing.T) {
			p := newDevicePacer(10)
			exp := t0.Add(10 * time.Minute)
			now := t0
			p.poll("c", base, exp, now)
			for range early { // a buggy poller, 100 ms apart
				now = now.Add(100 * time.Millisecond)
				if v := p.poll("c", base, exp, now); v != paceTooFast {
					t.Fatalf("too fast poll: %v", v)
				}
			}
			// x/oauth2: starts at the advertised interval, +5 s per
			// slow_down, with up to 900 ms of jitter in either direction.
			interval := base
			for i := 0; ; i++ {
				jitter := time.Duration((i*7919)%1800-900) * time.Millisecond
				now = now.Add(interval + jitter)
				v := p.poll("c", base, exp, now)
				if v == paceOnTime {
					break
				}
				if v == paceTooFast {
					t.Fatalf("compliant poll %d (interval %s) counted as too fast", i, interval)
				}
				interval += slowDownStep
				if i > 20 {
					t.Fatal("compliant client starved")
				}
			}
		})
	}
	// Polling too fast for ever: always slow_down, the interval capped.
	p := newDevicePacer(10)
	now := t0
	p.poll("c", base, t0.Add(time.Hour), now)
	for range 100 {
		now = now.Add(time.Second)
		if v := p.poll("c", base, t0.Add(time.Hour), now); v == paceOnTime {
			t.Fatal("a client polling every second was answered")
		}
	}
	if got := p.m["c"].interval; got != base+maxSlowDownGrowth {
		t.Fatalf("held interval %s, want the cap %s", got, base+maxSlowDownGrowth)
	}
}

func TestDevicePacerForgetsExpiredCodes(t *testing.T) {
	p := newDevicePacer(3)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 3 {
		p.poll(fmt.Sprint(i), time.Second, t0.Add(time.Minute), t0)
	}
	// Full of live codes: a new one is answered, unpaced, not stored.
	if v := p.poll("new", time.Second, t0.Add(time.Minute), t0); v != paceOnTime || len(p.m) != 3 {
		t.Fatalf("full pacer: %v, %d entries", v, len(p.m))
	}
	// Once they expire, they are pruned to make room.
	later := t0.Add(2 * time.Minute)
	p.poll("new", time.Second, later.Add(time.Minute), later)
	if len(p.m) != 1 {
		t.Fatalf("%d entries after the others expired", len(p.m))
	}
}

func TestKeyedLimiterBoundedAndEvictsIdle(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	l := newKeyedLimiter(60, 2, 4) // 1/s, burst 2: idle after 2 s
	for i := range 2 {
		if ok, _ := l.allow("a", t0); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, wait := l.allow("a", t0)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("over the burst: %v, wait %s", ok, wait)
	}
	if ok, _ := l.allow("a", t0.Add(time.Second)); !ok {
		t.Fatal("not refilled after 1 s")
	}
	// Memory is bounded: with 4 busy keys, a fifth is refused...
	for _, k := range []string{"b", "c", "d"} {
		l.allow(k, t0.Add(time.Second))
	}
	if ok, _ := l.allow("e", t0.Add(time.Second)); ok || len(l.m) != 4 {
		t.Fatalf("fifth key: %v, %d keys", ok, len(l.m))
	}
	// ...until the others are idle (their buckets full again).
	if ok, _ := l.allow("e", t0.Add(4*time.Second)); !ok || len(l.m) != 1 {
		t.Fatalf("after idling: %v, %d keys", ok, len(l.m))
	}
}

func TestIPKeyGroupsIPv6Slash64(t *testing.T) {
	if a, b := ipKey("2001:db8:1:2::1"), ipKey("2001:db8:1:2:ffff::9"); a != b {
		t.Fatalf("same /64: %q %q", a, b)
	}
	if a, b := ipKey("2001:db8:1:2::1"), ipKey("2001:db8:1:3::1"); a == b {
		t.Fatal("different /64 share a key")
	}
	if got := ipKey("192.0.2.7"); got != "192.0.2.7" {
		t.Fatalf("IPv4 key %q", got)
	}
}
