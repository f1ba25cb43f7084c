package node

import (
	"testing"
	"time"

	"github.com/tallyauth/tally/raft/raftpb"
)

func TestKeyPolicyDue(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	day := 24 * time.Hour
	key := func(use string, nb time.Time) *raftpb.Key {
		return &raftpb.Key{Use: use, NotBeforeUnixNano: nb.UnixNano()}
	}
	policy := &raftpb.Tenant{Id: "acme", KeyRotateEveryNanos: int64(30 * day)}
	keys := []*raftpb.Key{key("sig", t0), key("seal", t0)}
	for _, tc := range []struct {
		name string
		t    *raftpb.Tenant
		keys []*raftpb.Key
		now  time.Time
		due  bool
	}{
		{"off", &raftpb.Tenant{Id: "acme"}, keys, t0.Add(365 * day), false},
		{"fresh", policy, keys, t0.Add(time.Hour), false},
		// Sealing keys: at most every 5 days (AES-GCM bound), even with a
		// 30-day policy.
		{"sealing key due first", policy, keys, t0.Add(5 * day), true},
		{"signing key due", policy, []*raftpb.Key{key("sig", t0), key("seal", t0.Add(29*day))}, t0.Add(30 * day), true},
		{"pending rotation", policy, append(keys, key("sig", t0.Add(31*day))), t0.Add(30*day + time.Hour), false},
		{"disabled tenant", &raftpb.Tenant{Id: "acme", Disabled: true, KeyRotateEveryNanos: int64(day)}, keys, t0.Add(40 * day), false},
		{"explicit seal interval", &raftpb.Tenant{Id: "acme", KeyRotateEveryNanos: int64(30 * day), SealRotateEveryNanos: int64(day)}, keys, t0.Add(day), true},
	} {
		if got := keyPolicyDue(tc.t, tc.keys, tc.now); got != tc.due {
			t.Errorf("%s: due = %v, want %v", tc.name, got, tc.due)
		}
	}
	if next := nextRotation(policy, keys, t0); !next.Equal(t0.Add(5 * day)) {
		t.Errorf("next rotation %v, want %v", next, t0.Add(5*day))
	}
}
