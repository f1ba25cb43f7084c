package raft

import (
	"errors"
	"slices"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// putCred is a PutAdminCredential command.
func putCred(now int64, id, name, role, tenant string) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now,
		Op: &raftpb.Command_PutAdminCredential{PutAdminCredential: &raftpb.PutAdminCredential{Credential: &raftpb.AdminCredential{
			Id: id, Name: name, Role: role, Tenant: tenant, TokenHash: h("token-" + id), CreatedBy: "bootstrap-token"}}}}
}

// revokeCred is a RevokeAdminCredential command.
func revokeCred(now int64, id string) *raftpb.Command {
	return &raftpb.Command{Version: CommandVersion, TimeUnixNano: now,
		Op: &raftpb.Command_RevokeAdminCredential{RevokeAdminCredential: &raftpb.RevokeAdminCredential{Id: id}}}
}

// v3Commands store a credential of every role (one revoked), and a
// tenant-admin whose tenant is deleted (revoked by the deletion).
func v3Commands() []*raftpb.Command {
	return []*raftpb.Command{
		createTenant(t0, "t", sigKey("k1", t0, hour)),
		createTenant(t0, "gone", sigKey("g1", t0, hour)),
		putCred(t0, "c-admin", "alice", RoleAdmin, ""),
		putCred(t0, "c-operator", "ci", RoleOperator, ""),
		putCred(t0, "c-tadmin", "t-ops", RoleTenantAdmin, "t"),
		putCred(t0, "c-auditor", "siem", RoleAuditor, ""),
		putCred(t0, "c-gone", "gone-ops", RoleTenantAdmin, "gone"),
		revokeCred(t0+sec, "c-auditor"),
		delCmd(t0+sec, &raftpb.DeleteTenant{Tenant: "gone"}),
	}
}

// checkV3 checks that every stored credential reads as its string, and
// stores the typed role exactly when typed; it returns the credentials.
func checkV3(t *testing.T, f *FSM, stage string, typed bool) []*raftpb.AdminCredential {
	t.Helper()
	creds, err := f.AdminCredentials()
	if err != nil || len(creds) == 0 {
		t.Fatalf("%s: credentials %v, %v", stage, creds, err)
	}
	for _, c := range creds {
		if RoleOf(c) != c.GetRole() {
			t.Errorf("%s: %s reads role %q, stores %q", stage, c.GetId(), RoleOf(c), c.GetRole())
		}
		if set := c.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_UNSPECIFIED; set != typed {
			t.Errorf("%s: %s typed %v (%v), want %v", stage, c.GetId(), set, c.GetRoleValue(), typed)
		} else if typed && int32(c.GetRoleValue()) != adminRoleValues[c.GetRole()] {
			t.Errorf("%s: %s role %q stored as %v", stage, c.GetId(), c.GetRole(), c.GetRoleValue())
		}
	}
	return creds
}

// TestTypedEnumsV3Migration (issue 15): a cluster that already recorded
// typed_enums_v2 stores no typed role; the SetClusterVersion that records
// typed_enums_v3 migrates every stored credential (revoked ones too)
// without changing its times; credentials written while it is recorded
// carry the typed role; a downgrade's record makes new writes (a new
// credential, a revocation, a tenant deletion's revocation) carry the
// string only; enabling it again migrates again.
func TestTypedEnumsV3Migration(t *testing.T) {
	f := openTestFSM(t)
	v2 := []string{FeatureClusterVersion, FeatureTypedEnums, FeatureTypedEnumsV2}
	v3 := append(slices.Clone(v2), FeatureTypedEnumsV3)
	mustApply(t, f, setVersion(t0, v2...))
	mustApply(t, f, v3Commands()...)
	before := checkV3(t, f, "typed_enums_v2 only", false)
	if c, _ := f.AdminCredential("c-gone"); c.GetRevokedUnixNano() != t0+sec {
		t.Fatalf("the deleted tenant's admin: %v", c)
	}

	mustApply(t, f, setVersion(t0+2*sec, v3...))
	after := checkV3(t, f, "migrated", true)
	for i, c := range after {
		if b := before[i]; c.GetId() != b.GetId() || c.GetCreatedUnixNano() != b.GetCreatedUnixNano() || c.GetRevokedUnixNano() != b.GetRevokedUnixNano() || c.GetExpiresUnixNano() != b.GetExpiresUnixNano() {
			t.Fatalf("migration changed %v into %v", b, c)
		}
	}
	if !f.State().FeatureEnabled(FeatureTypedEnumsV3) {
		t.Fatal("feature not recorded")
	}

	// Written with both while enabled.
	mustApply(t, f, putCred(t0+3*sec, "c-new", "bob", RoleOperator, ""))
	if c, _ := f.AdminCredential("c-new"); c.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_OPERATOR || RoleOf(c) != RoleOperator {
		t.Fatalf("new credential: %v", c)
	}

	// A downgrade's record: new writes carry the string only, revocations
	// (also a tenant deletion's) included.
	mustApply(t, f, setVersion(t0+4*sec, v2...))
	mustApply(t, f, putCred(t0+4*sec, "c-late", "carol", RoleAuditor, ""),
		revokeCred(t0+4*sec, "c-admin"), delCmd(t0+4*sec, &raftpb.DeleteTenant{Tenant: "t"}))
	for _, id := range []string{"c-late", "c-admin", "c-tadmin"} {
		if c, _ := f.AdminCredential(id); c.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_UNSPECIFIED || RoleOf(c) != c.GetRole() || (id != "c-late" && c.GetRevokedUnixNano() != t0+4*sec) {
			t.Fatalf("written after the downgrade: %v", c)
		}
	}
	if c, _ := f.AdminCredential("c-operator"); c.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_OPERATOR {
		t.Fatalf("a migrated credential after the downgrade: %v", c)
	}
	// Enabled again: migrated again.
	mustApply(t, f, setVersion(t0+5*sec, v3...))
	checkV3(t, f, "enabled again", true)
	checkViewMatchesDB(t, f)
}

// TestTypedEnumsV3Determinism: the entry that enables typed_enums_v3 in
// the middle of a workload with admin credentials before and after it
// leaves the same state however the log is split into batches, and the
// same as a replica that applies it one at a time.
func TestTypedEnumsV3Determinism(t *testing.T) {
	cmds := append(v3Commands(), workload(11, 120)...)
	mid := len(cmds) / 2
	cmds = slices.Insert(cmds, mid, setVersion(t0+30*sec, FeatureClusterVersion, FeatureTypedEnums, FeatureTypedEnumsV2, FeatureTypedEnumsV3))
	cmds = append(cmds, putCred(t0+40*sec, "c-after", "after", RoleAdmin, ""), revokeCred(t0+41*sec, "c-operator"))
	sameStateAcrossSplits(t, logOf(t, 1, cmds...), 5, 40, len(cmds))
}

// TestTypedEnumsV3Reading: a value this binary does not know (a newer
// release's) reads as the string; a role the table does not name is OTHER
// and reads as itself; a string rewritten by an older release (the typed
// value stale) wins over the typed value; a typed value alone reads as its
// role.
func TestTypedEnumsV3Reading(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    *raftpb.AdminCredential
		want string
	}{
		{"newer release's value", &raftpb.AdminCredential{Role: "auditor", RoleValue: 99}, RoleAuditor},
		{"stale typed value", &raftpb.AdminCredential{Role: "auditor", RoleValue: raftpb.AdminRole_ADMIN_ROLE_ADMIN}, RoleAuditor},
		{"typed value only", &raftpb.AdminCredential{RoleValue: raftpb.AdminRole_ADMIN_ROLE_TENANT_ADMIN}, RoleTenantAdmin},
		{"other", &raftpb.AdminCredential{Role: "break-glass", RoleValue: raftpb.AdminRole_ADMIN_ROLE_OTHER}, "break-glass"},
		{"string only", &raftpb.AdminCredential{Role: "operator"}, RoleOperator},
		{"nothing", &raftpb.AdminCredential{}, ""},
	} {
		if got := RoleOf(tc.c); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	c := &raftpb.AdminCredential{Role: "break-glass"}
	setTypedV3(c, true)
	if c.RoleValue != raftpb.AdminRole_ADMIN_ROLE_OTHER {
		t.Fatalf("derived %v for a role the table does not name", c.RoleValue)
	}
	for _, r := range AdminRoles {
		c := &raftpb.AdminCredential{Role: r}
		setTypedV3(c, true)
		if c.RoleValue <= raftpb.AdminRole_ADMIN_ROLE_OTHER || RoleOf(&raftpb.AdminCredential{RoleValue: c.RoleValue}) != r {
			t.Errorf("role %q: derived %v", r, c.RoleValue)
		}
		setTypedV3(c, false)
		if c.RoleValue != raftpb.AdminRole_ADMIN_ROLE_UNSPECIFIED {
			t.Errorf("role %q: not cleared", r)
		}
	}
}

// TestTypedEnumsV3InCommand: a command may carry role_value only in
// agreement with role; the FSM stores it only once the feature is
// recorded.
func TestTypedEnumsV3InCommand(t *testing.T) {
	f := openTestFSM(t)
	for _, v := range []raftpb.AdminRole{raftpb.AdminRole_ADMIN_ROLE_ADMIN, raftpb.AdminRole_ADMIN_ROLE_OTHER, 42} {
		bad := putCred(t0, "c1", "n", RoleAuditor, "")
		bad.GetPutAdminCredential().Credential.RoleValue = v
		if r := apply1(t, f, bad); !errors.Is(r.Err, ErrInvalid) {
			t.Fatalf("role value %v for %q: %v", v, RoleAuditor, r.Err)
		}
	}
	good := putCred(t0, "c1", "n", RoleAuditor, "")
	good.GetPutAdminCredential().Credential.RoleValue = raftpb.AdminRole_ADMIN_ROLE_AUDITOR
	mustApply(t, f, good)
	if c, _ := f.AdminCredential("c1"); c.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_UNSPECIFIED {
		t.Fatalf("stored role value %v before the feature is enabled", c.GetRoleValue())
	}
}

// goldenTypedV3 are a PutAdminCredential that carries role_value and the
// SetClusterVersion that records typed_enums_v3, encoded in
// testdata/command_v1_*.bin like the others.
func goldenTypedV3() []struct {
	name string
	cmd  *raftpb.Command
} {
	return []struct {
		name string
		cmd  *raftpb.Command
	}{
		{"put_admin_credential_role_value", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0,
			Op: &raftpb.Command_PutAdminCredential{PutAdminCredential: &raftpb.PutAdminCredential{Credential: &raftpb.AdminCredential{
				Id: "8899aabbccddeeff", Name: "acme-ops", Role: RoleTenantAdmin, Tenant: "acme", TokenHash: []byte("hash-of-token-32-bytes-long-----"),
				CreatedUnixNano: t0, ExpiresUnixNano: t0 + 3600e9, CreatedBy: "bootstrap-token", RoleValue: raftpb.AdminRole_ADMIN_ROLE_TENANT_ADMIN}}}}},
		{"set_cluster_version_typed_enums_v3", &raftpb.Command{Version: CommandVersion, TimeUnixNano: t0 + 1,
			Op: &raftpb.Command_SetClusterVersion{SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{
				Version: 2, Features: []string{"cluster_identity", "cluster_version", "typed_enums", "typed_enums_v2", "typed_enums_v3"}}}}}},
	}
}

// TestTypedEnumsV3Golden pins the encoding of role_value (field 202) in a
// command and of the feature in the record (run with -update to write new
// files), and what applying them stores: the credential first without the
// typed role (the feature is not recorded yet), then migrated.
func TestTypedEnumsV3Golden(t *testing.T) {
	golden := goldenTypedV3()
	writeGolden(t, golden)
	f := openTestFSM(t)
	applyGolden(t, f, "TestTypedEnumsV3Golden", golden[:1])
	if c, ok := f.AdminCredential("8899aabbccddeeff"); !ok || c.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_UNSPECIFIED || RoleOf(c) != RoleTenantAdmin {
		t.Fatalf("before the feature: %v", c)
	}
	applyGolden(t, f, "TestTypedEnumsV3Golden", golden[1:])
	if c, ok := f.AdminCredential("8899aabbccddeeff"); !ok || c.GetRoleValue() != raftpb.AdminRole_ADMIN_ROLE_TENANT_ADMIN || RoleOf(c) != RoleTenantAdmin {
		t.Fatalf("after the feature: %v", c)
	}
}
