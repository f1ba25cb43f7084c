package raft

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// delCmd wraps a deletion operation in a command at now.
func delCmd(now int64, op any) *raftpb.Command {
	c := &raftpb.Command{Version: CommandVersion, TimeUnixNano: now}
	switch o := op.(type) {
	case *raftpb.DeleteClient:
		c.Op = &raftpb.Command_DeleteClient{DeleteClient: o}
	case *raftpb.DeleteUser:
		c.Op = &raftpb.Command_DeleteUser{DeleteUser: o}
	case *raftpb.DeleteTenant:
		c.Op = &raftpb.Command_DeleteTenant{DeleteTenant: o}
	default:
		return flowCmd(now, op)
	}
	return c
}

// goldenDeleteV1 are the deletion commands (issue 16), encoded in
// testdata/command_v1_*.bin like the others; they apply after goldenV1's
// tenant and client and goldenFlowsV1's user.
func goldenDeleteV1() []struct {
	name string
	cmd  *raftpb.Command
} {
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"delete_user", delCmd(t0+20, &raftpb.DeleteUser{Tenant: "acme", UserId: "user-1"})},
		{"delete_client", delCmd(t0+21, &raftpb.DeleteClient{Tenant: "acme", ClientId: "c1"})},
		{"delete_tenant", delCmd(t0+22, &raftpb.DeleteTenant{Tenant: "acme"})},
	}
}

// TestDeleteCommandV1Decoding is TestCommandV1Decoding for the deletion
// commands (run with -update to write new files).
func TestDeleteCommandV1Decoding(t *testing.T) {
	golden := goldenDeleteV1()
	writeGolden(t, golden)
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"), createClient(t0, testClient("acme", "c1")),
		flowCmd(t0+10, &raftpb.CreateUser{User: testUser("acme", "user-1", "alice")}))
	applyGolden(t, f, "TestDeleteCommandV1Decoding", golden)
	if _, ok := f.State().Tenant("acme"); ok {
		t.Fatal("tenant still there after the golden log")
	}
}

// piiUser is a user whose personal data is easy to find in raw bytes.
func piiUser(tenant, id string) *raftpb.User {
	return &raftpb.User{Tenant: tenant, Id: id, Username: "Zorglub-Username-7731", Email: "zorglub.mail.7731@example.org",
		Name: "Zorglub Fullname 7731",
		Password: &raftpb.PasswordHash{Alg: "argon2id", Salt: []byte("SALTSALT-7731-xx"), Hash: []byte("PWHASH-7731-0123456789abcdef"),
			Time: 1, MemoryKib: 64, Threads: 1}}
}

var piiMarkers = [][]byte{
	[]byte("Zorglub-Username-7731"), []byte("zorglub-username-7731"), []byte("zorglub.mail.7731@example.org"),
	[]byte("Zorglub Fullname 7731"), []byte("SALTSALT-7731-xx"), []byte("PWHASH-7731-0123456789abcdef"),
}

func checkNoPII(t *testing.T, what string, b []byte) {
	t.Helper()
	for _, m := range piiMarkers {
		if bytes.Contains(b, m) {
			t.Errorf("%s still holds %q", what, m)
		}
	}
}

func TestDeleteUserErasesPersonalData(t *testing.T) {
	f := flowFSM(t)
	mustApply(t, f, flowCmd(t0, &raftpb.CreateUser{User: piiUser("t", "u9")}))
	fam := family("fam-9", h("r9"))
	fam.UserId = "u9"
	mustApply(t, f,
		flowCmd(t0+1, &raftpb.RememberConsent{Consent: &raftpb.Consent{Tenant: "t", UserId: "u9", ClientId: "c1", Scopes: []string{"openid"}}}),
		flowCmd(t0+2, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("code9"), CodeExpiresUnixNano: t0 + 60*sec, ClientId: "c1", UserId: "u9",
			Family: fam, AccessToken: at("at-9", t0+hour)}),
		flowCmd(t0+3, &raftpb.CreateDeviceCode{DeviceCode: &raftpb.DeviceCode{Tenant: "t", DeviceCodeHash: h("dev9"),
			UserCode: "BCDFGHJK", ClientId: "c1", Scopes: []string{"openid"}, ExpiresUnixNano: t0 + 600*sec, IntervalNanos: 5 * sec}}),
		flowCmd(t0+4, &raftpb.DecideDeviceCode{Tenant: "t", UserCode: "BCDFGHJK", Approve: true, UserId: "u9", AuthTimeUnixNano: t0}),
	)
	raw, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, piiMarkers[0]) {
		t.Fatal("test is blind: the username is not in the file before the delete")
	}
	before, _ := f.EventsSince(0, 0)

	mustApply(t, f, delCmd(t0+5, &raftpb.DeleteUser{Tenant: "t", UserId: "u9"}))
	checkViewMatchesDB(t, f)
	st := f.State()
	if _, ok := st.User("t", "u9"); ok {
		t.Fatal("user still in the view")
	}
	if _, ok := st.UserByUsername("t", "zorglub-username-7731"); ok {
		t.Fatal("username still resolves")
	}
	if _, ok := st.Consent("t", "u9", "c1"); ok {
		t.Fatal("consent kept")
	}
	if _, ok := st.DeviceCodeByUserCode("t", "BCDFGHJK"); ok {
		t.Fatal("device grant of the user kept")
	}
	if !st.Revoked("t", "at-9") {
		t.Fatal("the family's access token is not revoked")
	}
	if _, ok := st.DeletedUsers("t")["u9"]; !ok {
		t.Fatal("no tombstone")
	}
	if _, ok := st.User("t", "u1"); !ok {
		t.Fatal("another user went too")
	}
	evs, _ := f.EventsSince(uint64(len(before)), 0)
	var kinds []raftpb.EventKind
	for _, ev := range evs {
		kinds = append(kinds, ev.Kind)
		b, _ := proto.Marshal(ev)
		checkNoPII(t, "event", b)
	}
	if len(kinds) == 0 || kinds[len(kinds)-1] != raftpb.EventKind_EVENT_KIND_USER_DELETED || evs[len(evs)-1].Subject != "u9" {
		t.Fatalf("events %v", kinds)
	}

	// The file (compacted at apply) and a snapshot taken now hold none of it.
	raw, err = os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	checkNoPII(t, "state.db", raw)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	checkNoPII(t, "snapshot", sink.Bytes())

	// The id cannot be taken while tokens issued before may live; the
	// username can. The tombstone goes with the sweep after the retention.
	res := applyAll(t, f, flowCmd(t0+6, &raftpb.CreateUser{User: testUser("t", "u9", "other")}))[0]
	if !errors.Is(res.Err, ErrExists) {
		t.Fatalf("re-create a deleted id: %v", res.Err)
	}
	mustApply(t, f, flowCmd(t0+7, &raftpb.CreateUser{User: &raftpb.User{Tenant: "t", Id: "u10", Username: "zorglub-username-7731"}}))
	mustApply(t, f, sweep(t0+5+deletedRetentionNanos))
	if _, ok := f.State().DeletedUsers("t")["u9"]; ok {
		t.Fatal("tombstone not swept")
	}
	checkViewMatchesDB(t, f)
}

func TestDeleteClient(t *testing.T) {
	f := flowFSM(t)
	mustApply(t, f,
		flowCmd(t0+1, &raftpb.RememberConsent{Consent: &raftpb.Consent{Tenant: "t", UserId: "u1", ClientId: "c1", Scopes: []string{"openid"}}}),
		flowCmd(t0+2, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("code1"), CodeExpiresUnixNano: t0 + 60*sec, ClientId: "c1", UserId: "u1",
			Family: family("fam-1", h("r1")), AccessToken: at("at-1", t0+hour)}),
		flowCmd(t0+3, &raftpb.CreateDeviceCode{DeviceCode: &raftpb.DeviceCode{Tenant: "t", DeviceCodeHash: h("dev1"),
			UserCode: "BCDFGHJK", ClientId: "c1", Scopes: []string{"openid"}, ExpiresUnixNano: t0 + 600*sec, IntervalNanos: 5 * sec}}),
		command(t0+4, &raftpb.SetClientDisabled{Tenant: "t", ClientId: "c1", Disabled: true}),
	)
	mustApply(t, f, delCmd(t0+5, &raftpb.DeleteClient{Tenant: "t", ClientId: "c1"}))
	checkViewMatchesDB(t, f)
	st := f.State()
	if _, ok := st.Client("t", "c1"); ok {
		t.Fatal("client still there")
	}
	if _, ok := st.Client("t", "c2"); !ok {
		t.Fatal("another client went too")
	}
	if _, ok := st.Consent("t", "u1", "c1"); ok {
		t.Fatal("consent kept")
	}
	if _, ok := st.DeviceCodeByUserCode("t", "BCDFGHJK"); ok {
		t.Fatal("device code kept")
	}
	if !st.Revoked("t", "at-1") {
		t.Fatal("the family's access token is not revoked")
	}
	if d := st.DeletedClients("t")["c1"]; d != t0+5 {
		t.Fatalf("tombstone %d", d)
	}
	evs, _ := f.EventsSince(0, 0)
	last := evs[len(evs)-1]
	if last.Kind != raftpb.EventKind_EVENT_KIND_CLIENT_DELETED || last.ClientId != "c1" || last.TimeUnixNano != t0+5 {
		t.Fatalf("last event %v", last)
	}
	// A refresh of the deleted client's family fails; re-creating the id
	// waits for the tombstone to go.
	if res := applyAll(t, f, flowCmd(t0+6, &raftpb.RotateRefresh{Tenant: "t", FamilyId: "fam-1", Generation: 1, TokenHash: h("r1"),
		ClientId: "c1", NewHash: h("r2")}))[0]; res.Err == nil && (res.Grant == nil || res.Grant.Outcome == OutcomeDone) {
		t.Fatalf("refresh after delete: %v", res.Grant)
	}
	if res := applyAll(t, f, createClient(t0+7, testClient("t", "c1")))[0]; !errors.Is(res.Err, ErrExists) {
		t.Fatalf("re-create: %v", res.Err)
	}
	mustApply(t, f, sweep(t0+5+deletedRetentionNanos), createClient(t0+5+deletedRetentionNanos+1, testClient("t", "c1")))
}

func TestDeleteTenant(t *testing.T) {
	f := flowFSM(t)
	mustApply(t, f, createTenant(t0, "other"), flowCmd(t0, &raftpb.CreateUser{User: piiUser("t", "u9")}),
		revoke(t0+1, "t", "jti-1", t0+hour))
	mustApply(t, f, delCmd(t0+2, &raftpb.DeleteTenant{Tenant: "t"}))
	checkViewMatchesDB(t, f)
	if _, ok := f.State().Tenant("t"); ok {
		t.Fatal("tenant still there")
	}
	if _, ok := f.State().Tenant("other"); !ok {
		t.Fatal("another tenant went too")
	}
	f.mu.Lock()
	_ = f.db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			if bytes.HasPrefix(name, []byte("t/t/")) {
				t.Errorf("bucket %s left", name)
			}
			return nil
		})
	})
	f.mu.Unlock()
	raw, _ := os.ReadFile(f.path)
	checkNoPII(t, "state.db", raw)
	evs, _ := f.EventsSince(0, 0)
	if last := evs[len(evs)-1]; last.Kind != raftpb.EventKind_EVENT_KIND_TENANT_DELETED || last.Tenant != "t" {
		t.Fatalf("last event %v", last)
	}
	// The id is free again: a new tenant starts empty.
	mustApply(t, f, createTenant(t0+3, "t"))
	if len(f.State().Clients("t")) != 0 || len(f.State().Users("t")) != 0 || f.State().Revoked("t", "jti-1") {
		t.Fatal("the new tenant inherited records")
	}
	checkViewMatchesDB(t, f)
	// Reopening reads the same view.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g := openTestFSMAt(t, f.path)
	if _, ok := g.State().Tenant("other"); !ok {
		t.Fatal("reopen lost a tenant")
	}
}

func TestDeleteNotFoundAndInvalid(t *testing.T) {
	f := flowFSM(t)
	for _, c := range []*raftpb.Command{
		delCmd(t0+1, &raftpb.DeleteClient{Tenant: "t", ClientId: "nope"}),
		delCmd(t0+1, &raftpb.DeleteClient{Tenant: "nope", ClientId: "c1"}),
		delCmd(t0+1, &raftpb.DeleteUser{Tenant: "t", UserId: "nope"}),
		delCmd(t0+1, &raftpb.DeleteTenant{Tenant: "nope"}),
	} {
		if res := applyAll(t, f, c)[0]; !errors.Is(res.Err, ErrNotFound) {
			t.Errorf("%v: %v, want not found", c, res.Err)
		}
	}
	for _, c := range []*raftpb.Command{
		delCmd(t0+1, &raftpb.DeleteClient{Tenant: "t"}),
		delCmd(t0+1, &raftpb.DeleteUser{Tenant: "", UserId: "u1"}),
		delCmd(t0+1, &raftpb.DeleteTenant{Tenant: "Bad/Id"}),
	} {
		if res := applyAll(t, f, c)[0]; !errors.Is(res.Err, ErrInvalid) {
			t.Errorf("%v: %v, want invalid", c, res.Err)
		}
	}
	checkViewMatchesDB(t, f)
}

// TestDeleteTenantTombstone (issue 16): DeleteTenant keeps a tombstone with
// the deletion time and the tenant's unexpired signing keys (no sealing
// key), which the view serves, a reopen reads and the sweep removes after
// the retention; the tenant's gateway configuration goes with the tenant
// and its tenant-admin credentials are revoked (no other).
func TestDeleteTenantTombstone(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "t", sigKey("k-sig", t0, hour), sealKey("k-seal", t0, hour)),
		&raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + 1, Op: &raftpb.Command_SetGatewayConfig{SetGatewayConfig: &raftpb.SetGatewayConfig{
			Config: &raftpb.GatewayConfig{Tenant: "t", Routes: []*raftpb.GatewayRoute{{PathPrefix: "/api"}}}}}})
	if f.State().GatewayConfig("t") == nil {
		t.Fatal("test is blind: no gateway config")
	}
	for _, c := range []*raftpb.AdminCredential{
		{Id: "ta", Name: "t admin", Role: RoleTenantAdmin, Tenant: "t", TokenHash: []byte{1}},
		{Id: "oa", Name: "other admin", Role: RoleTenantAdmin, Tenant: "other", TokenHash: []byte{2}},
		{Id: "op", Name: "operator", Role: RoleOperator, TokenHash: []byte{3}},
	} {
		mustApply(t, f, &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + 2, Op: &raftpb.Command_PutAdminCredential{
			PutAdminCredential: &raftpb.PutAdminCredential{Credential: c}}})
	}
	if _, ok := f.State().DeletedTenant("t"); ok {
		t.Fatal("tombstone before the delete")
	}
	mustApply(t, f, delCmd(t0+5, &raftpb.DeleteTenant{Tenant: "t"}))
	check := func(st *State) {
		t.Helper()
		d, ok := st.DeletedTenant("t")
		if !ok || d.DeletedUnixNano != t0+5 || d.SigningAlg != "ES256" {
			t.Fatalf("tombstone %v %v", d, ok)
		}
		if got := kids(d.SigningKeys); len(got) != 1 || got[0] != "k-sig" || string(d.SigningKeys[0].EncryptedPrivate) != "priv-k-sig" {
			t.Fatalf("tombstone keys %v", got)
		}
		if st.GatewayConfig("t") != nil {
			t.Fatal("gateway config kept")
		}
	}
	check(f.State())
	for id, revoked := range map[string]bool{"ta": true, "oa": false, "op": false} {
		if c, ok := f.AdminCredential(id); !ok || (c.RevokedUnixNano == t0+5) != revoked {
			t.Errorf("admin credential %s: %v", id, c)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = openTestFSMAt(t, f.path)
	check(f.State())
	// A tenant created again starts without the old gateway config; the
	// tombstone stays until the sweep.
	mustApply(t, f, createTenant(t0+6, "t"))
	check(f.State())
	mustApply(t, f, sweep(t0+5+deletedRetentionNanos-1))
	check(f.State())
	mustApply(t, f, sweep(t0+5+deletedRetentionNanos))
	if _, ok := f.State().DeletedTenant("t"); ok {
		t.Fatal("tombstone kept after the retention")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := openTestFSMAt(t, f.path).State().DeletedTenant("t"); ok {
		t.Fatal("swept tombstone back after a reopen")
	}
}
