package raft

import (
	"errors"
	"slices"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// v2State is a store with every record typed_enums_v2 covers: a tenant
// with a signing alg, clients with grant types (one the enum does not name)
// and auth methods, keys, device codes (one approved), a grant result
// remembered with its request id, and a deleted tenant's tombstone.
func v2Commands() []*raftpb.Command {
	c := testClient("t", "c1")
	c.GrantTypes = []string{"authorization_code", "device_code", "urn:ietf:params:oauth:grant-type:device_code"}
	c.Auth = &raftpb.ClientAuth{Methods: []string{"private_key_jwt", "client_secret_basic"}, JwksUri: "https://c.example/jwks"}
	ten := createTenant(t0, "t", sigKey("k1", t0, hour), sealKey("s1", t0, hour))
	ten.GetCreateTenant().Tenant.SigningAlg = "EdDSA"
	dc := func(code, user string) *raftpb.Command {
		return flowCmd(t0, &raftpb.CreateDeviceCode{DeviceCode: &raftpb.DeviceCode{Tenant: "t", DeviceCodeHash: h(code),
			UserCode: user, ClientId: "c1", ExpiresUnixNano: t0 + 600*sec, IntervalNanos: 5 * sec}})
	}
	return []*raftpb.Command{
		ten, createClient(t0, c), createClient(t0, testClient("t", "c2")),
		flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u1", "Alice")}),
		dc("d1", "BCDFGHJK"), dc("d2", "LMNPQRST"),
		flowCmd(t0+sec, &raftpb.DecideDeviceCode{Tenant: "t", UserCode: "LMNPQRST", Approve: true, UserId: "u1"}),
		withRequestID(flowCmd(t0+sec, &raftpb.PollDeviceCode{Tenant: "t", DeviceCodeHash: h("d1"), ClientId: "c1"}), "poll-1"),
		createTenant(t0, "gone", sigKey("g1", t0, hour)),
		delCmd(t0+sec, &raftpb.DeleteTenant{Tenant: "gone"}),
	}
}

// checkV2 checks that every record of v2Commands reads as its strings, and
// stores the typed values exactly when typed.
func checkV2(t *testing.T, f *FSM, stage string, typed bool) {
	t.Helper()
	st := f.State()
	isSet := func(what string, set bool) {
		t.Helper()
		if set != typed {
			t.Errorf("%s: %s typed %v, want %v", stage, what, set, typed)
		}
	}
	ten, _ := st.Tenant("t")
	isSet("tenant", ten.GetSigningAlgorithm() == raftpb.KeyAlg_KEY_ALG_EDDSA)
	if SigningAlgOf(ten) != "EdDSA" {
		t.Errorf("%s: tenant alg %q", stage, SigningAlgOf(ten))
	}
	c := client(t, st, "t", "c1")
	want := []raftpb.GrantType{raftpb.GrantType_GRANT_TYPE_AUTHORIZATION_CODE, raftpb.GrantType_GRANT_TYPE_OTHER, raftpb.GrantType_GRANT_TYPE_DEVICE_CODE}
	isSet("grant types", slices.Equal(c.GetGrantTypeValues(), want))
	if !slices.Equal(GrantTypesOf(c), c.GetGrantTypes()) {
		t.Errorf("%s: grant types read %q", stage, GrantTypesOf(c))
	}
	isSet("auth methods", slices.Equal(c.GetAuth().GetMethodValues(), []raftpb.AuthMethod{raftpb.AuthMethod_AUTH_METHOD_PRIVATE_KEY_JWT, raftpb.AuthMethod_AUTH_METHOD_CLIENT_SECRET_BASIC}))
	if !slices.Equal(AuthMethodsOf(c.GetAuth()), c.GetAuth().GetMethods()) {
		t.Errorf("%s: auth methods read %q", stage, AuthMethodsOf(c.GetAuth()))
	}
	for _, k := range st.Keys("t") {
		isSet("key "+k.GetKid(), k.GetKeyAlg() > raftpb.KeyAlg_KEY_ALG_OTHER)
		if KeyAlgOf(k) != k.GetAlg() {
			t.Errorf("%s: key %s alg %q", stage, k.GetKid(), KeyAlgOf(k))
		}
	}
	for code, s := range map[string]string{"BCDFGHJK": DevicePending, "LMNPQRST": DeviceApproved} {
		d, ok := st.DeviceCodeByUserCode("t", code)
		if !ok || d.GetStatus() != s || DeviceStatusOf(d) != s {
			t.Fatalf("%s: device code %s: %v", stage, code, d)
		}
		isSet("device code "+code, d.GetDeviceStatus() > raftpb.DeviceStatus_DEVICE_STATUS_OTHER)
	}
	g := f.RememberedGrant("poll-1")
	isSet("remembered grant", g.GetOutcomeValue() == raftpb.GrantOutcome_GRANT_OUTCOME_AUTHORIZATION_PENDING &&
		g.GetDeviceCode().GetDeviceStatus() == raftpb.DeviceStatus_DEVICE_STATUS_PENDING)
	if OutcomeOf(g) != OutcomeAuthorizationPending {
		t.Errorf("%s: remembered outcome %q", stage, OutcomeOf(g))
	}
	d, ok := st.DeletedTenant("gone")
	if !ok || DeletedSigningAlgOf(d) != d.GetSigningAlg() || len(d.GetSigningKeys()) != 1 {
		t.Fatalf("%s: tombstone %v", stage, d)
	}
	isSet("tombstone key", d.GetSigningKeys()[0].GetKeyAlg() == raftpb.KeyAlg_KEY_ALG_ES256)
}

// TestTypedEnumsV2Migration (issue 15): a cluster that already recorded
// typed_enums stores none of the second set; the SetClusterVersion that
// records typed_enums_v2 migrates every stored record (tenants, clients
// with their auth, keys, device codes, remembered grant results,
// tombstones) without touching revisions; a downgrade's record makes new
// writes carry the strings only; enabling it again migrates again.
func TestTypedEnumsV2Migration(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, setVersion(t0, FeatureClusterVersion, FeatureTypedEnums))
	mustApply(t, f, v2Commands()...)
	checkV2(t, f, "typed_enums only", false)
	rev := client(t, f.State(), "t", "c1").GetRevision()

	mustApply(t, f, setVersion(t0+2*sec, FeatureClusterVersion, FeatureTypedEnums, FeatureTypedEnumsV2))
	checkV2(t, f, "migrated", true)
	if c := client(t, f.State(), "t", "c1"); c.GetRevision() != rev || c.GetFormat() != raftpb.TokenFormat_TOKEN_FORMAT_JWT {
		t.Fatalf("migration changed the client: revision %d (was %d), format %v", c.GetRevision(), rev, c.GetFormat())
	}
	checkViewMatchesDB(t, f)

	// Written with both while enabled: a decision, a new result.
	r := apply1(t, f, flowCmd(t0+3*sec, &raftpb.DecideDeviceCode{Tenant: "t", UserCode: "BCDFGHJK", Approve: false}))
	if r.Err != nil || r.Grant.GetOutcomeValue() != raftpb.GrantOutcome_GRANT_OUTCOME_DONE || OutcomeOf(r.Grant) != OutcomeDone {
		t.Fatalf("decision: %v %v", r.Grant, r.Err)
	}
	if d, _ := f.State().DeviceCodeByUserCode("t", "BCDFGHJK"); d.GetDeviceStatus() != raftpb.DeviceStatus_DEVICE_STATUS_DENIED {
		t.Fatalf("denied code stores %v", d.GetDeviceStatus())
	}

	// A downgrade's record: new writes carry the strings only.
	mustApply(t, f, setVersion(t0+4*sec, FeatureClusterVersion, FeatureTypedEnums))
	upd := testClient("t", "c1")
	upd.GrantTypes = []string{"client_credentials"}
	mustApply(t, f, command(t0+4*sec, &raftpb.UpdateClient{Client: upd}))
	if c := client(t, f.State(), "t", "c1"); len(c.GetGrantTypeValues()) != 0 || len(c.GetAuth().GetMethodValues()) != 0 || c.GetFormat() != raftpb.TokenFormat_TOKEN_FORMAT_JWT {
		t.Fatalf("written after the downgrade: %v", c)
	}
	if c := client(t, f.State(), "t", "c2"); !slices.Equal(GrantTypesOf(c), c.GetGrantTypes()) || len(c.GetGrantTypeValues()) == 0 {
		t.Fatalf("a migrated client after the downgrade: %v", c)
	}
	// Enabled again: migrated again, the updated client too.
	mustApply(t, f, setVersion(t0+5*sec, FeatureClusterVersion, FeatureTypedEnums, FeatureTypedEnumsV2))
	if c := client(t, f.State(), "t", "c1"); !slices.Equal(c.GetGrantTypeValues(), []raftpb.GrantType{raftpb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS}) {
		t.Fatalf("enabled again: %v", c.GetGrantTypeValues())
	}
	checkViewMatchesDB(t, f)
}

// TestTypedEnumsV2Determinism: the entry that enables typed_enums_v2 in
// the middle of a workload leaves the same state however the log is split
// into batches, and the same as a replica that applies it one at a time.
func TestTypedEnumsV2Determinism(t *testing.T) {
	cmds := append(v2Commands(), workload(7, 120)...)
	mid := len(cmds) / 2
	cmds = slices.Insert(cmds, mid, setVersion(t0+30*sec, FeatureClusterVersion, FeatureTypedEnums, FeatureTypedEnumsV2))
	sameStateAcrossSplits(t, logOf(t, 1, cmds...), 5, 40, len(cmds))
}

// TestTypedEnumsV2Reading: a value this binary does not know (a newer
// release's) reads as the string; a string this binary does not name is
// OTHER and reads as itself; a string rewritten by the first release (the
// typed value stale) wins over the typed value.
func TestTypedEnumsV2Reading(t *testing.T) {
	if got := DeviceStatusOf(&raftpb.DeviceCode{Status: "approved", DeviceStatus: 99}); got != "approved" {
		t.Errorf("unknown value: %q", got)
	}
	if got := DeviceStatusOf(&raftpb.DeviceCode{Status: "pending", DeviceStatus: raftpb.DeviceStatus_DEVICE_STATUS_APPROVED}); got != "pending" {
		t.Errorf("stale typed value: %q", got)
	}
	if got := DeviceStatusOf(&raftpb.DeviceCode{DeviceStatus: raftpb.DeviceStatus_DEVICE_STATUS_APPROVED}); got != "approved" {
		t.Errorf("typed value only: %q", got)
	}
	if got := OutcomeOf(&raftpb.GrantResult{OutcomeValue: raftpb.GrantOutcome_GRANT_OUTCOME_DONE}); got != OutcomeDone {
		t.Errorf("done: %q", got)
	}
	if got := OutcomeOf(&raftpb.GrantResult{Outcome: "something_new", OutcomeValue: raftpb.GrantOutcome_GRANT_OUTCOME_OTHER}); got != "something_new" {
		t.Errorf("other: %q", got)
	}
	c := &raftpb.Client{GrantTypes: []string{"jwt-bearer", "refresh_token"}}
	setTypedV2(c.ProtoReflect(), true)
	if !slices.Equal(c.GrantTypeValues, []raftpb.GrantType{raftpb.GrantType_GRANT_TYPE_OTHER, raftpb.GrantType_GRANT_TYPE_REFRESH_TOKEN}) {
		t.Fatalf("derived %v", c.GrantTypeValues)
	}
	c.GrantTypeValues[1] = 77 // a newer release's value
	if got := GrantTypesOf(c); !slices.Equal(got, c.GrantTypes) {
		t.Errorf("read %q", got)
	}
	if got := GrantTypesOf(&raftpb.Client{GrantTypeValues: []raftpb.GrantType{raftpb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS}}); !slices.Equal(got, []string{"client_credentials"}) {
		t.Errorf("typed values only: %q", got)
	}
	if got := GrantTypesOf(&raftpb.Client{GrantTypes: []string{"a", "b"}, GrantTypeValues: []raftpb.GrantType{2}}); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("unpaired: %q", got)
	}
}

// TestTypedEnumsV2InCommand: a command may carry a typed field only in
// agreement with its string; a value this binary does not know goes with
// a string it does not know either.
func TestTypedEnumsV2InCommand(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"))
	bad := testClient("acme", "c1")
	bad.GrantTypeValues = []raftpb.GrantType{raftpb.GrantType_GRANT_TYPE_REFRESH_TOKEN}
	if r := applyAll(t, f, createClient(t0, bad)); !errors.Is(r[0].Err, ErrInvalid) {
		t.Fatalf("grant type values disagreeing: %v", r[0].Err)
	}
	badAuth := testClient("acme", "c1")
	badAuth.Auth = &raftpb.ClientAuth{Methods: []string{"client_secret_post"}, MethodValues: []raftpb.AuthMethod{raftpb.AuthMethod_AUTH_METHOD_PRIVATE_KEY_JWT}}
	if r := applyAll(t, f, createClient(t0, badAuth)); !errors.Is(r[0].Err, ErrInvalid) {
		t.Fatalf("nested method values disagreeing: %v", r[0].Err)
	}
	k := sigKey("k9", t0, hour)
	k.KeyAlg = raftpb.KeyAlg_KEY_ALG_RS256
	if r := applyAll(t, f, command(t0, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{k}})); !errors.Is(r[0].Err, ErrInvalid) {
		t.Fatalf("key alg disagreeing: %v", r[0].Err)
	}
	good := testClient("acme", "c1")
	good.GrantTypes = append(good.GrantTypes, "urn:example:new")
	for _, g := range good.GrantTypes[:len(good.GrantTypes)-1] {
		good.GrantTypeValues = append(good.GrantTypeValues, raftpb.GrantType(grantTypeValues[g]))
	}
	good.GrantTypeValues = append(good.GrantTypeValues, 42) // a newer release's value for a string unknown here
	mustApply(t, f, createClient(t0, good))
	if c := client(t, f.State(), "acme", "c1"); len(c.GetGrantTypeValues()) != 0 {
		t.Fatalf("stored grant type values %v before the feature is enabled", c.GetGrantTypeValues())
	}
}
