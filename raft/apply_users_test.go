package raft

import (
	"fmt"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// eventKinds lists the kinds of the outbox events after index.
func eventKinds(t *testing.T, f *FSM, after uint64) []raftpb.EventKind {
	t.Helper()
	evs, err := f.EventsSince(after, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []raftpb.EventKind
	for _, e := range evs {
		out = append(out, e.Kind)
	}
	return out
}

// TestUserLockEndsFamiliesAndUnlockIsAnnounced: disabling a user revokes
// its refresh families and the access tokens they issued in the same
// command, and announces it; enabling it again announces the reverse.
func TestUserLockEndsFamiliesAndUnlockIsAnnounced(t *testing.T) {
	f := flowFSM(t)
	grantOf(t, apply1(t, f, flowCmd(t0, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("a"), CodeExpiresUnixNano: t0 + 60*sec,
		ClientId: "c1", UserId: "u1", Family: family("f1", h("1")), AccessToken: at("j1", t0+hour)})))
	grantOf(t, apply1(t, f, rotate(t0+sec, 1, "1", "2", "j2", 0)))
	lock := apply1(t, f, flowCmd(t0+2*sec, &raftpb.SetUserStatus{Tenant: "t", UserId: "u1", Locked: true}))
	if lock.Err != nil {
		t.Fatal(lock.Err)
	}
	for _, jti := range []string{"j1", "j2"} {
		if !f.State().Revoked("t", jti) {
			t.Errorf("access token %s of the locked user's family not revoked", jti)
		}
	}
	if g := grantOf(t, apply1(t, f, rotate(t0+3*sec, 2, "2", "3", "j3", 0))); g.Outcome != OutcomeFamilyRevoked {
		t.Fatalf("rotation after the lock: %q", g.Outcome)
	}
	kinds := fmt.Sprint(eventKinds(t, f, lock.Index-1))
	want := fmt.Sprint([]raftpb.EventKind{raftpb.EventKind_EVENT_KIND_USER_LOCKED,
		raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED, raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED, raftpb.EventKind_EVENT_KIND_FAMILY_REVOKED})
	if kinds != want {
		t.Fatalf("events of the lock: %s, want %s", kinds, want)
	}
	// Locked → disabled too: still inactive, nothing new to announce.
	r := apply1(t, f, flowCmd(t0+4*sec, &raftpb.SetUserStatus{Tenant: "t", UserId: "u1", Locked: true, Disabled: true}))
	if k := eventKinds(t, f, r.Index-1); len(k) != 0 {
		t.Fatalf("events of a change between inactive states: %v", k)
	}
	r = apply1(t, f, flowCmd(t0+5*sec, &raftpb.SetUserStatus{Tenant: "t", UserId: "u1"}))
	if k := eventKinds(t, f, r.Index-1); len(k) != 1 || k[0] != raftpb.EventKind_EVENT_KIND_USER_UNLOCKED {
		t.Fatalf("events of enabling the user: %v, want one USER_UNLOCKED", k)
	}
	// Tokens issued before the lock stay invalid: the user and the event
	// carry when it was locked.
	evs, err := f.EventsSince(r.Index-1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := f.State().User("t", "u1"); u.LockedUnixNano != t0+2*sec || evs[0].LockedUnixNano != t0+2*sec {
		t.Fatalf("lock time: user %d, event %d, want %d", u.LockedUnixNano, evs[0].LockedUnixNano, t0+2*sec)
	}
}

// TestFamilyRecordsEveryLiveAccessToken: a family never issues an access
// token it cannot record, so revoking it revokes every live one.
func TestFamilyRecordsEveryLiveAccessToken(t *testing.T) {
	f := flowFSM(t)
	grantOf(t, apply1(t, f, flowCmd(t0, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("a"), CodeExpiresUnixNano: t0 + 60*sec,
		ClientId: "c1", UserId: "u1", Family: family("f1", h("1")), AccessToken: at("j0", t0+hour)})))
	tok := func(i int) string { return fmt.Sprintf("r%04d", i) }
	prev := "1"
	n := maxFamilyAccessTokens + 5
	for i := 1; i < n; i++ {
		now := t0 + int64(i)*1e6
		g := grantOf(t, apply1(t, f, flowCmd(now, &raftpb.RotateRefresh{Tenant: "t", FamilyId: "f1", Generation: uint64(i),
			TokenHash: h(prev), ClientId: "c1", NewHash: h(tok(i)), AccessToken: at(fmt.Sprintf("j%d", i), now+hour)})))
		if i < maxFamilyAccessTokens {
			if g.Outcome != OutcomeDone {
				t.Fatalf("rotation %d: %q", i, g.Outcome)
			}
			prev = tok(i)
			continue
		}
		if g.Outcome != OutcomeInvalid {
			t.Fatalf("rotation %d beyond %d live access tokens: %q, want %q", i, maxFamilyAccessTokens, g.Outcome, OutcomeInvalid)
		}
	}
	// Reuse of the first refresh token revokes them all.
	g := grantOf(t, apply1(t, f, flowCmd(t0+sec*10, &raftpb.RotateRefresh{Tenant: "t", FamilyId: "f1", Generation: 1,
		TokenHash: h("1"), ClientId: "c1", NewHash: h("x")})))
	if g.Outcome != OutcomeReuseDetected {
		t.Fatalf("reuse: %q", g.Outcome)
	}
	for i := 0; i < maxFamilyAccessTokens; i++ {
		if jti := fmt.Sprintf("j%d", i); !f.State().Revoked("t", jti) {
			t.Fatalf("access token %s not revoked", jti)
		}
	}
}
