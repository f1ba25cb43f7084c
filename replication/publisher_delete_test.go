package replication

import (
	"log/slog"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/revocation"
)

// TestDeletionSETClaims (issue 16): CLIENT_DELETED and USER_DELETED become
// client-deleted and user-deleted events whose cutoff is the deletion time
// and which carry ids only.
func TestDeletionSETClaims(t *testing.T) {
	now := time.Unix(1_700_000_000, 5).UnixNano()
	for _, c := range []struct {
		ev  *raftpb.Event
		typ string
	}{
		{&raftpb.Event{Index: 9, Tenant: "acme", Kind: raftpb.EventKind_EVENT_KIND_CLIENT_DELETED, TimeUnixNano: now, ClientId: "c1"}, revocation.EventClientDeleted},
		{&raftpb.Event{Index: 9, Tenant: "acme", Kind: raftpb.EventKind_EVENT_KIND_USER_DELETED, TimeUnixNano: now, Subject: "u_1"}, revocation.EventUserDeleted},
	} {
		typ, claims := SETClaims("tally", "https://issuer.test/t/acme", nil, c.ev)
		if typ != c.typ {
			t.Fatalf("%v: type %q", c.ev.Kind, typ)
		}
		d := claims["events"].(map[string]any)[typ].(revocation.EventDetails)
		if d.TokensIssuedUntil != 1_700_000_000 || d.RaftIndex != 9 || d.ClientID != c.ev.ClientId || d.Subject != c.ev.Subject {
			t.Fatalf("%v: details %+v", c.ev.Kind, d)
		}
	}
}

// TestPublishableSkipsDeletedTenants (issue 16): no node can sign the
// events of a deleted tenant, so they are skipped instead of blocking the
// outbox.
func TestPublishableSkipsDeletedTenants(t *testing.T) {
	p := &Publisher{log: slog.New(slog.DiscardHandler)}
	p.cfg.TenantExists = func(t string) bool { return t != "gone" }
	evs := []*raftpb.Event{
		{Index: 1, Tenant: "gone", Kind: raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED},
		{Index: 2, Tenant: "acme", Kind: raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED},
		{Index: 3, Tenant: "gone", Kind: raftpb.EventKind_EVENT_KIND_TENANT_DELETED},
	}
	got := p.publishable(evs)
	if len(got) != 1 || got[0].Index != 2 {
		t.Fatalf("publishable: %v", got)
	}
	p.cfg.TenantExists = nil
	if got := p.publishable(evs); len(got) != 2 {
		t.Fatalf("without TenantExists: %v", got)
	}
}
