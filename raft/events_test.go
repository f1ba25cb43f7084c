package raft

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

func kindsOf(evs []*raftpb.Event) []raftpb.EventKind {
	out := make([]raftpb.EventKind, len(evs))
	for i, e := range evs {
		out[i] = e.Kind
	}
	return out
}

func TestEventsOutbox(t *testing.T) {
	f := openTestFSM(t)
	now := t0
	mustApply(t, f,
		createTenant(now, "acme", sigKey("k0", now, hour)),                                                                    // 1: no event
		createClient(now, testClient("acme", "c1")),                                                                           // 2: no event
		revoke(now, "acme", "j1", now+hour),                                                                                   // 3: revoked
		revoke(now, "acme", "j1", now+hour),                                                                                   // 4: already revoked, no event
		revoke(now, "acme", "j2", now-sec),                                                                                    // 5: already expired, no event
		command(now, &raftpb.SetClientDisabled{Tenant: "acme", ClientId: "c1", Disabled: true}),                               // 6: disabled
		command(now, &raftpb.SetClientDisabled{Tenant: "acme", ClientId: "c1", Disabled: true}),                               // 7: no change
		command(now, &raftpb.SetClientDisabled{Tenant: "acme", ClientId: "c1", Disabled: false}),                              // 8: enabled
		command(now, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{sigKey("k1", now, hour), sealKey("s1", now, hour)}}), // 9
		command(now, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{sealKey("s2", now, hour)}}),                          // 10: seal only
	)
	// A failing command emits nothing; a repeated request id emits once.
	res := applyAll(t, f,
		revoke(now, "nope", "j3", now+hour),                          // 11: tenant not found
		withRequestID(revoke(now+sec, "acme", "j4", now+hour), "r1"), // 12
		withRequestID(revoke(now+sec, "acme", "j5", now+hour), "r1"), // 13: answered from memory
	)
	if res[0].Err == nil {
		t.Fatal("revoke in an unknown tenant succeeded")
	}

	evs, err := f.EventsSince(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []raftpb.EventKind{
		raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED,
		raftpb.EventKind_EVENT_KIND_CLIENT_DISABLED,
		raftpb.EventKind_EVENT_KIND_CLIENT_ENABLED,
		raftpb.EventKind_EVENT_KIND_KEY_ROTATED,
		raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED,
	}
	if got := kindsOf(evs); !slices.Equal(got, want) {
		t.Fatalf("kinds %v, want %v", got, want)
	}
	var idx []uint64
	for _, e := range evs {
		idx = append(idx, e.Index)
	}
	if !slices.Equal(idx, []uint64{3, 6, 8, 9, 12}) {
		t.Fatalf("indexes %v", idx)
	}
	if r := evs[0].Revocation; r.GetJti() != "j1" || r.GetClientId() != "c1" || evs[0].Tenant != "acme" || evs[0].TimeUnixNano != now {
		t.Fatalf("revoked event %v", evs[0])
	}
	if !slices.Equal(evs[3].Kids, []string{"k1"}) {
		t.Fatalf("key event kids %v", evs[3].Kids)
	}

	// Paging: after an index, with a limit.
	page, err := f.EventsSince(6, 2)
	if err != nil || len(page) != 2 || page[0].Index != 8 || page[1].Index != 9 {
		t.Fatalf("page after 6: %v %v", page, err)
	}

	// Sweep with a cutoff removes the old ones, in order, and remembers how
	// far; a reader behind that gets ErrEventsSwept.
	mustApply(t, f, command(now+2*sec, &raftpb.Sweep{EventsBeforeUnixNano: now}))
	if _, err := f.EventsSince(0, 0); !errors.Is(err, ErrEventsSwept) {
		t.Fatalf("reader behind the sweep: %v", err)
	}
	if f.EventsSweptThrough() != 9 {
		t.Fatalf("swept through %d", f.EventsSweptThrough())
	}
	rest, err := f.EventsSince(9, 0)
	if err != nil || len(rest) != 1 || rest[0].Index != 12 {
		t.Fatalf("after sweep: %v %v", rest, err)
	}
	// A sweep without a cutoff keeps events.
	mustApply(t, f, sweep(now+3*sec))
	if rest, _ := f.EventsSince(9, 0); len(rest) != 1 {
		t.Fatalf("cutoff 0 swept events: %v", rest)
	}

	idxNow, revs := f.State().RevocationsSnapshot("acme")
	if idxNow != f.AppliedIndex() || len(revs) != 2 || revs[0].Jti != "j1" || revs[1].Jti != "j4" {
		t.Fatalf("snapshot %d %v", idxNow, revs)
	}
	checkViewMatchesDB(t, f)
}

// TestEventsDeterministic: two FSMs fed the same log in different batchings
// hold identical outboxes, and the workload produces events of every kind
// emitted today.
func TestEventsDeterministic(t *testing.T) {
	cmds := workload(7, 400)
	logs := logOf(t, 1, cmds...)
	a, b := openTestFSM(t), openTestFSM(t)
	applyInBatches(a, logs, rand.New(rand.NewPCG(1, 1)), 1)
	applyInBatches(b, logs, rand.New(rand.NewPCG(2, 2)), 50)
	ea, err := a.EventsSince(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := b.EventsSince(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(ea) == 0 || len(ea) != len(eb) {
		t.Fatalf("%d and %d events", len(ea), len(eb))
	}
	seen := map[raftpb.EventKind]bool{}
	for _, e := range ea {
		seen[e.Kind] = true
	}
	for _, k := range []raftpb.EventKind{raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED, raftpb.EventKind_EVENT_KIND_CLIENT_DISABLED, raftpb.EventKind_EVENT_KIND_KEY_ROTATED} {
		if !seen[k] {
			t.Errorf("workload produced no %v event", k)
		}
	}
	da, db := eventsDump(t, a), eventsDump(t, b)
	if da == "" || da != db {
		t.Fatalf("outboxes differ or are empty (%d vs %d bytes)", len(da), len(db))
	}
}

func eventsDump(t *testing.T, f *FSM) string {
	d := dump(t, f)
	start := strings.Index(d, "[events]\n")
	if start < 0 {
		t.Fatal("no events bucket")
	}
	rest := d[start+len("[events]\n"):]
	if end := strings.Index(rest, "\n["); end >= 0 {
		rest = rest[:end]
	}
	return rest
}
