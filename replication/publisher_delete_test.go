package replication

import (
	"log/slog"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/revocation"
)

// TestDeletionSETClaims (issue 16): CLIENT_DELETED, USER_DELETED and
// TENANT_DELETED become client-deleted, user-deleted and tenant-deleted
// events whose cutoff is the deletion time and which carry ids only.
func TestDeletionSETClaims(t *testing.T) {
	now := time.Unix(1_700_000_000, 5).UnixNano()
	for _, c := range []struct {
		ev  *raftpb.Event
		typ string
	}{
		{&raftpb.Event{Index: 9, Tenant: "acme", Kind: raftpb.EventKind_EVENT_KIND_CLIENT_DELETED, TimeUnixNano: now, ClientId: "c1"}, revocation.EventClientDeleted},
		{&raftpb.Event{Index: 9, Tenant: "acme", Kind: raftpb.EventKind_EVENT_KIND_USER_DELETED, TimeUnixNano: now, Subject: "u_1"}, revocation.EventUserDeleted},
		{&raftpb.Event{Index: 9, Tenant: "acme", Kind: raftpb.EventKind_EVENT_KIND_TENANT_DELETED, TimeUnixNano: now}, revocation.EventTenantDeleted},
	} {
		typ, claims := SETClaims("tally", "https://issuer.test/t/acme", nil, c.ev)
		if typ != c.typ {
			t.Fatalf("%v: type %q", c.ev.Kind, typ)
		}
		d := claims["events"].(map[string]any)[typ].(revocation.EventDetails)
		if d.TokensIssuedUntil != 1_700_000_000 || d.RaftIndex != 9 || d.Tenant != "acme" || d.ClientID != c.ev.ClientId || d.Subject != c.ev.Subject {
			t.Fatalf("%v: details %+v", c.ev.Kind, d)
		}
	}
}

// TestPublishableSkipsDeletedTenants (issue 16): the events of a tenant
// whose keys are gone (deleted, its tombstone swept) are skipped instead of
// blocking the outbox; a tenant deleted recently (signable with its
// tombstone's keys) keeps its events, TENANT_DELETED included.
func TestPublishableSkipsDeletedTenants(t *testing.T) {
	p := &Publisher{log: slog.New(slog.DiscardHandler)}
	p.cfg.Signable = func(t string) bool { return t != "gone" }
	evs := []*raftpb.Event{
		{Index: 1, Tenant: "gone", Kind: raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED},
		{Index: 2, Tenant: "acme", Kind: raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED},
		{Index: 3, Tenant: "gone", Kind: raftpb.EventKind_EVENT_KIND_TENANT_DELETED},
		{Index: 4, Tenant: "recent", Kind: raftpb.EventKind_EVENT_KIND_TENANT_DELETED},
	}
	got := p.publishable(evs, true)
	if len(got) != 2 || got[0].Index != 2 || got[1].Index != 4 {
		t.Fatalf("publishable: %v", got)
	}
	p.cfg.Signable = nil
	if got := p.publishable(evs, false); len(got) != 4 {
		t.Fatalf("without Signable: %v", got)
	}
}
