package raft

import (
	"github.com/tallyauth/tally/raft/raftpb"
)

// The third set of typed enums (issue 15, feature "typed_enums_v3"):
// AdminCredential.role → role_value (AdminRole, field 202). It works as the
// second set (enums_v2.go): the string is always written (older releases
// read only it), the FSM fills the typed field wherever it stores an admin
// credential (putAdminCredential, revokeAdminCredential, revokeTenantAdmins)
// only once the recorded cluster version enables the feature, a credential
// written while it is not recorded has the typed field cleared, and the
// SetClusterVersion that enables it migrates every stored credential in
// its transaction. It is a feature of its own because a cluster that has
// already recorded typed_enums_v2 would never run migrateTypedEnumsV2 again:
// the credentials stored before this release must be migrated by the entry
// that records typed_enums_v3. Commands need not carry role_value; one that
// does must agree with role (checkTypedV3).
//
// Values follow the rules of the second set (typedV2Value, typedV2Read):
// adminRoleValues is the explicit table; a role it does not name would be
// OTHER (checkAdminCredential refuses such a role today, but a newer
// release may add one, and its records are read from the string); a value
// this binary does not know reads as the string, and so does a string
// that names another role than the typed value. Adding a role changes what
// the FSM stores for its string, so it needs a new feature like this one.
//
// The FSM itself decides on the string (revokeTenantAdmins), as every
// release does; the node reads through RoleOf.
//
// Closed-set strings of stored records that stay strings, and why, are
// listed in node/DESIGN.md ("Typed enums").

// FeatureTypedEnumsV3 is the feature under which the FSM writes
// AdminCredential.role_value.
const FeatureTypedEnumsV3 = "typed_enums_v3"

// adminRoleValues maps the roles of AdminRoles to AdminRole.
var adminRoleValues = map[string]int32{
	RoleAdmin:       int32(raftpb.AdminRole_ADMIN_ROLE_ADMIN),
	RoleOperator:    int32(raftpb.AdminRole_ADMIN_ROLE_OPERATOR),
	RoleTenantAdmin: int32(raftpb.AdminRole_ADMIN_ROLE_TENANT_ADMIN),
	RoleAuditor:     int32(raftpb.AdminRole_ADMIN_ROLE_AUDITOR),
}

// RoleOf is c's role (RoleAdmin, …): the typed value when it is set and
// this binary knows it, else the string.
func RoleOf(c *raftpb.AdminCredential) string {
	return typedV2Read(adminRoleValues, c.GetRole(), int32(c.GetRoleValue()))
}

// setTypedV3 sets (on) or clears (off) c's role_value from its role.
func setTypedV3(c *raftpb.AdminCredential, on bool) {
	c.RoleValue = raftpb.AdminRole_ADMIN_ROLE_UNSPECIFIED
	if on {
		c.RoleValue = raftpb.AdminRole(typedV2Value(adminRoleValues, c.GetRole()))
	}
}

// checkTypedV3 refuses a command whose admin credential carries a
// role_value that disagrees with its role (a proposer need not set it: the
// FSM derives it).
func checkTypedV3(cmd *raftpb.Command) error {
	c := cmd.GetPutAdminCredential().GetCredential()
	if v := c.GetRoleValue(); v != raftpb.AdminRole_ADMIN_ROLE_UNSPECIFIED && !typedV2Agrees(adminRoleValues, c.GetRole(), int32(v)) {
		return invalidf("admin credential %q: role value %v disagrees with role %q", c.GetId(), v, c.GetRole())
	}
	return nil
}

// typedEnumsV3 reports whether the cluster version recorded in the
// batch's transaction enables FeatureTypedEnumsV3.
func (a *applier) typedEnumsV3() bool {
	return a.recorded(FeatureTypedEnumsV3)
}

// deriveTypedV3 sets or clears c's typed field as the recorded cluster
// version says, before c is stored.
func (a *applier) deriveTypedV3(c *raftpb.AdminCredential) {
	setTypedV3(c, a.typedEnumsV3())
}

// migrateTypedEnumsV3 fills role_value of every stored admin credential,
// revoked ones included. It runs when a SetClusterVersion enables
// FeatureTypedEnumsV3 (the recorded version did not), after the record:
// every member applies it at the same entry. Times are kept.
func (a *applier) migrateTypedEnumsV3() {
	b := a.tx.Bucket([]byte(bucketThreatAdminCreds))
	if b == nil {
		return // no credential was ever stored (or a state of an older release)
	}
	var ids []string
	_ = b.ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil })
	for _, id := range ids { // not inside ForEach: bbolt forbids writes there
		c := new(raftpb.AdminCredential)
		a.get(b, id, c)
		a.putAdminCredentialRecord(b, c)
	}
}
