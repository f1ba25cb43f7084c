package raft

import (
	"errors"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

func setVersion(now int64, features ...string) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now, Op: &raftpb.Command_SetClusterVersion{
		SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{Version: ClusterVersion, Features: features}}}}
}

// storedClient decodes the client record as it is in the state database
// (State.Client is built from the same record).
func storedFormat(t *testing.T, f *FSM, tenant, id string) (string, raftpb.TokenFormat) {
	t.Helper()
	c := client(t, f.State(), tenant, id)
	return c.GetTokenFormat(), c.GetFormat()
}

// TestTypedEnumsMigration (issue 15): the typed token format and key use are written
// only once the cluster version enables FeatureTypedEnums; the
// SetClusterVersion that enables it migrates the stored clients and keys without
// touching their revision; a downgrade's record stops it again; the string
// of the first release is always written; readers get the same format from
// either.
func TestTypedEnumsMigration(t *testing.T) {
	f := openTestFSM(t)
	opaque := testClient("acme", "c2")
	opaque.TokenFormat = "opaque"
	empty := testClient("acme", "c3")
	empty.TokenFormat = "" // the first release's default: JWT
	mustApply(t, f, append(tenantWithClient(t0), createClient(t0, opaque), createClient(t0, empty),
		setVersion(t0, FeatureClusterVersion))...)
	want := map[string]raftpb.TokenFormat{"c1": raftpb.TokenFormat_TOKEN_FORMAT_JWT, "c2": raftpb.TokenFormat_TOKEN_FORMAT_OPAQUE, "c3": raftpb.TokenFormat_TOKEN_FORMAT_JWT}
	check := func(stage string, typed bool) {
		t.Helper()
		for id, w := range want {
			c := client(t, f.State(), "acme", id)
			if got := TokenFormatOf(c); got != w {
				t.Errorf("%s: %s reads as %v, want %v", stage, id, got, w)
			}
			if typed && c.GetFormat() != w || !typed && c.GetFormat() != raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED {
				t.Errorf("%s: %s stores format %v (typed %v)", stage, id, c.GetFormat(), typed)
			}
		}
	}
	check("before the feature", false)
	checkTypedKeys(t, f, false)
	rev := client(t, f.State(), "acme", "c2").GetRevision()

	mustApply(t, f, setVersion(t0+sec, FeatureClusterVersion, FeatureTypedEnums))
	check("migrated", true)
	checkTypedKeys(t, f, true)
	if c := client(t, f.State(), "acme", "c2"); c.GetRevision() != rev || c.GetTokenFormat() != "opaque" {
		t.Fatalf("migration changed the record: revision %d (was %d), token_format %q", c.GetRevision(), rev, c.GetTokenFormat())
	}
	dumped := dump(t, f)
	mustApply(t, f, setVersion(t0+2*sec, FeatureClusterVersion, FeatureTypedEnums)) // not a second migration
	if d := dump(t, f); d == dumped {
		t.Fatal("the version record did not change") // (updated_unix_nano moves)
	}
	check("recorded again", true)

	// Written with both once enabled.
	upd := testClient("acme", "c1")
	upd.TokenFormat = "opaque"
	mustApply(t, f, command(t0+3*sec, &raftpb.UpdateClient{Client: upd}), createClient(t0+3*sec, testClient("acme", "c4")))
	want["c1"], want["c4"] = raftpb.TokenFormat_TOKEN_FORMAT_OPAQUE, raftpb.TokenFormat_TOKEN_FORMAT_JWT
	check("written while enabled", true)
	if s, _ := storedFormat(t, f, "acme", "c1"); s != "opaque" {
		t.Fatalf("token_format %q after the update", s)
	}

	// Keys added while enabled carry both; the key they retire too.
	mustApply(t, f, command(t0+3*sec, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{sigKey("k2", t0+3*sec, hour)}}))
	checkTypedKeys(t, f, true)

	// A downgrade records the older features: new writes carry the string
	// only, as an older member writes them.
	mustApply(t, f, setVersion(t0+4*sec, FeatureClusterVersion))
	mustApply(t, f, command(t0+4*sec, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{sealKey("s2", t0+4*sec, hour)}}))
	for _, k := range f.State().Keys("acme") {
		typed := k.GetKid() != "s1" && k.GetKid() != "s2" // s1 was retired (rewritten) by s2
		if (k.GetKeyUse() != raftpb.KeyUse_KEY_USE_UNSPECIFIED) != typed || KeyUseName(KeyUseOf(k)) != k.GetUse() {
			t.Fatalf("after the downgrade: key %s stores use %q, key use %v", k.GetKid(), k.GetUse(), k.GetKeyUse())
		}
	}
	upd.TokenFormat = "jwt"
	mustApply(t, f, command(t0+5*sec, &raftpb.UpdateClient{Client: upd}))
	want["c1"] = raftpb.TokenFormat_TOKEN_FORMAT_JWT
	if s, g := storedFormat(t, f, "acme", "c1"); s != "jwt" || g != raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED {
		t.Fatalf("written after the downgrade: %q %v", s, g)
	}
	if got := TokenFormatOf(client(t, f.State(), "acme", "c2")); got != raftpb.TokenFormat_TOKEN_FORMAT_OPAQUE {
		t.Fatalf("a migrated record after the downgrade reads as %v", got)
	}
	// Enabled again: migrated again.
	mustApply(t, f, setVersion(t0+6*sec, FeatureClusterVersion, FeatureTypedEnums))
	check("enabled again", true)
	checkTypedKeys(t, f, true)
}

// checkTypedKeys checks that every key of tenant acme reads as its use string,
// and stores the typed use exactly when typed.
func checkTypedKeys(t *testing.T, f *FSM, typed bool) {
	t.Helper()
	keys := f.State().Keys("acme")
	if len(keys) == 0 {
		t.Fatal("no keys")
	}
	for _, k := range keys {
		want := map[string]raftpb.KeyUse{"sig": raftpb.KeyUse_KEY_USE_SIG, "seal": raftpb.KeyUse_KEY_USE_SEAL}[k.GetUse()]
		if KeyUseOf(k) != want || want == raftpb.KeyUse_KEY_USE_UNSPECIFIED {
			t.Errorf("key %s (use %q) reads as %v", k.GetKid(), k.GetUse(), KeyUseOf(k))
		}
		if typed && k.GetKeyUse() != want || !typed && k.GetKeyUse() != raftpb.KeyUse_KEY_USE_UNSPECIFIED {
			t.Errorf("key %s stores key use %v (typed %v)", k.GetKid(), k.GetKeyUse(), typed)
		}
	}
}

// TestTypedEnumInCommand: a command may carry a typed field only in
// agreement with its string (the FSM derives it anyway).
func TestTypedEnumInCommand(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"))
	bad := testClient("acme", "c1")
	bad.Format = raftpb.TokenFormat_TOKEN_FORMAT_OPAQUE
	if r := applyAll(t, f, createClient(t0, bad)); !errors.Is(r[0].Err, ErrInvalid) {
		t.Fatalf("format disagreeing with token_format: %v", r[0].Err)
	}
	good := testClient("acme", "c1")
	good.Format = raftpb.TokenFormat_TOKEN_FORMAT_JWT
	mustApply(t, f, createClient(t0, good))
	if _, g := storedFormat(t, f, "acme", "c1"); g != raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED {
		t.Fatalf("stored format %v before the feature is enabled", g)
	}
	badKey := sigKey("k9", t0, hour)
	badKey.KeyUse = raftpb.KeyUse_KEY_USE_SEAL
	if r := applyAll(t, f, command(t0, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{badKey}})); !errors.Is(r[0].Err, ErrInvalid) {
		t.Fatalf("key use disagreeing with use: %v", r[0].Err)
	}
	for _, s := range []string{"JWT", "paseto"} {
		c := testClient("acme", "c9")
		c.TokenFormat = s
		if r := applyAll(t, f, createClient(t0, c)); !errors.Is(r[0].Err, ErrInvalid) {
			t.Fatalf("token_format %q: %v", s, r[0].Err)
		}
	}
}
