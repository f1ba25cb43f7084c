package raft

import (
	"slices"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tallyauth/tally/raft/raftpb"
)

// The second set of typed enums (issue 15, feature "typed_enums_v2"). It
// works as the first (enums.go: the string of the first release is always
// written, the FSM fills the typed field only once the recorded cluster
// version enables the feature, the SetClusterVersion that enables it
// migrates every stored record in its transaction, a record written while
// the feature is not recorded has the typed field cleared, commands never
// need to carry one). It is a feature of its own because a cluster that has
// already recorded typed_enums would never run migrateTypedEnums again: the
// records stored before this release must be migrated by the entry that
// records typed_enums_v2.
//
// The pairs (string field → typed field, typedV2Pairs):
//
//	Tenant.signing_alg          → signing_algorithm (KeyAlg)
//	Key.alg                     → key_alg (KeyAlg)
//	DeletedTenant.signing_alg   → signing_algorithm (KeyAlg)
//	Client.grant_types          → grant_type_values (repeated GrantType)
//	ClientAuth.methods          → method_values (repeated AuthMethod)
//	DeviceCode.status           → device_status (DeviceStatus)
//	GrantResult.outcome         → outcome_value (GrantOutcome)
//	GrantEvent.kind             → kind_value (GrantEventKind)
//
// They are filled wherever such a message is stored, nested or not (a
// client's ClientAuth, a tombstone's keys, a grant result's device code
// and events, the grant results remembered with request ids).
//
// Strings and values. Every enum has an explicit table (below); "" is
// UNSPECIFIED unless the table names it (outcome "" is DONE); any other
// string the table does not name is OTHER, and the string is kept, so a
// reader gets it back. A value this binary does not know (written by a
// newer release) is read as the string. Adding a value to one of these
// enums changes what the FSM stores for a string, so it must be gated by a
// new feature like this one: until every member knows the value, all of
// them store OTHER.
//
// Readers (SigningAlgOf, KeyAlgOf, GrantTypesOf, AuthMethodsOf,
// DeviceStatusOf, OutcomeOf, GrantEventKindOf) take the typed value,
// except when the string names another value this binary knows: the first
// release rewrites a record it changes with the string only and keeps the
// unknown typed field as it was (a device code it approves during a
// downgrade), so there the string is the newer of the two.

// The third set, admin credential roles, is feature typed_enums_v3
// (enums_v3.go); it reuses typedV2Value, typedV2Read and typedV2Agrees.

// FeatureTypedEnumsV2 is the feature under which the FSM writes the typed
// fields of typedV2Pairs.
const FeatureTypedEnumsV2 = "typed_enums_v2"

// typedV2Pair is one string field of the first release and the typed field
// (number 201) next to it, in the same message.
type typedV2Pair struct {
	str, typed protoreflect.Name
	values     map[string]int32 // explicit; see the comment above
}

var (
	keyAlgValues = map[string]int32{
		"ES256":   int32(raftpb.KeyAlg_KEY_ALG_ES256),
		"EdDSA":   int32(raftpb.KeyAlg_KEY_ALG_EDDSA),
		"RS256":   int32(raftpb.KeyAlg_KEY_ALG_RS256),
		"A256GCM": int32(raftpb.KeyAlg_KEY_ALG_A256GCM),
	}
	grantTypeValues = map[string]int32{
		"client_credentials": int32(raftpb.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS),
		"authorization_code": int32(raftpb.GrantType_GRANT_TYPE_AUTHORIZATION_CODE),
		"refresh_token":      int32(raftpb.GrantType_GRANT_TYPE_REFRESH_TOKEN),
		"urn:ietf:params:oauth:grant-type:device_code":    int32(raftpb.GrantType_GRANT_TYPE_DEVICE_CODE),
		"urn:ietf:params:oauth:grant-type:token-exchange": int32(raftpb.GrantType_GRANT_TYPE_TOKEN_EXCHANGE),
	}
	authMethodValues = map[string]int32{
		"client_secret_basic":         int32(raftpb.AuthMethod_AUTH_METHOD_CLIENT_SECRET_BASIC),
		"client_secret_post":          int32(raftpb.AuthMethod_AUTH_METHOD_CLIENT_SECRET_POST),
		"private_key_jwt":             int32(raftpb.AuthMethod_AUTH_METHOD_PRIVATE_KEY_JWT),
		"tls_client_auth":             int32(raftpb.AuthMethod_AUTH_METHOD_TLS_CLIENT_AUTH),
		"self_signed_tls_client_auth": int32(raftpb.AuthMethod_AUTH_METHOD_SELF_SIGNED_TLS_CLIENT_AUTH),
	}
	deviceStatusValues = map[string]int32{
		DevicePending:  int32(raftpb.DeviceStatus_DEVICE_STATUS_PENDING),
		DeviceApproved: int32(raftpb.DeviceStatus_DEVICE_STATUS_APPROVED),
		DeviceDenied:   int32(raftpb.DeviceStatus_DEVICE_STATUS_DENIED),
		DeviceRedeemed: int32(raftpb.DeviceStatus_DEVICE_STATUS_REDEEMED),
	}
	outcomeValues = map[string]int32{
		OutcomeDone:                 int32(raftpb.GrantOutcome_GRANT_OUTCOME_DONE),
		OutcomeCodeReused:           int32(raftpb.GrantOutcome_GRANT_OUTCOME_CODE_REUSED),
		OutcomeReuseInterval:        int32(raftpb.GrantOutcome_GRANT_OUTCOME_REUSE_INTERVAL),
		OutcomeReuseDetected:        int32(raftpb.GrantOutcome_GRANT_OUTCOME_REUSE_DETECTED),
		OutcomeFamilyRevoked:        int32(raftpb.GrantOutcome_GRANT_OUTCOME_FAMILY_REVOKED),
		OutcomeFamilyExpired:        int32(raftpb.GrantOutcome_GRANT_OUTCOME_FAMILY_EXPIRED),
		OutcomeInvalid:              int32(raftpb.GrantOutcome_GRANT_OUTCOME_INVALID),
		OutcomeAuthorizationPending: int32(raftpb.GrantOutcome_GRANT_OUTCOME_AUTHORIZATION_PENDING),
		OutcomeSlowDown:             int32(raftpb.GrantOutcome_GRANT_OUTCOME_SLOW_DOWN),
		OutcomeAccessDenied:         int32(raftpb.GrantOutcome_GRANT_OUTCOME_ACCESS_DENIED),
		OutcomeExpiredToken:         int32(raftpb.GrantOutcome_GRANT_OUTCOME_EXPIRED_TOKEN),
		OutcomeNotFound:             int32(raftpb.GrantOutcome_GRANT_OUTCOME_NOT_FOUND),
	}
	grantEventKindValues = map[string]int32{
		EventReuseDetected: int32(raftpb.GrantEventKind_GRANT_EVENT_KIND_REUSE_DETECTED),
		EventFamilyRevoked: int32(raftpb.GrantEventKind_GRANT_EVENT_KIND_FAMILY_REVOKED),
		EventCodeReused:    int32(raftpb.GrantEventKind_GRANT_EVENT_KIND_CODE_REUSED),
	}
)

// typedV2Pairs are the pairs of each message, by full name.
var typedV2Pairs = map[protoreflect.FullName][]typedV2Pair{
	"tally.raft.v1.Tenant":        {{"signing_alg", "signing_algorithm", keyAlgValues}},
	"tally.raft.v1.Key":           {{"alg", "key_alg", keyAlgValues}},
	"tally.raft.v1.DeletedTenant": {{"signing_alg", "signing_algorithm", keyAlgValues}},
	"tally.raft.v1.Client":        {{"grant_types", "grant_type_values", grantTypeValues}},
	"tally.raft.v1.ClientAuth":    {{"methods", "method_values", authMethodValues}},
	"tally.raft.v1.DeviceCode":    {{"status", "device_status", deviceStatusValues}},
	"tally.raft.v1.GrantResult":   {{"outcome", "outcome_value", outcomeValues}},
	"tally.raft.v1.GrantEvent":    {{"kind", "kind_value", grantEventKindValues}},
}

// typedV2Reach holds the messages that have pairs or hold, at any depth, a
// message that has: the only ones the FSM walks.
var typedV2Reach = func() map[protoreflect.FullName]bool {
	reach := map[protoreflect.FullName]bool{}
	for n := range typedV2Pairs {
		reach[n] = true
	}
	msgs := raftpb.File_command_proto.Messages()
	for changed := true; changed; {
		changed = false
		for i := 0; i < msgs.Len(); i++ {
			m := msgs.Get(i)
			if reach[m.FullName()] {
				continue
			}
			fs := m.Fields()
			for j := 0; j < fs.Len(); j++ {
				if sub := fs.Get(j).Message(); sub != nil && reach[sub.FullName()] {
					reach[m.FullName()], changed = true, true
					break
				}
			}
		}
	}
	return reach
}()

// typedV2Value is the value the FSM stores for string s.
func typedV2Value(values map[string]int32, s string) int32 {
	if v, ok := values[s]; ok {
		return v
	}
	if s == "" {
		return 0 // UNSPECIFIED
	}
	return 1 // OTHER: every enum of typedV2Pairs has it as 1
}

// typedV2Read is what a reader takes for string s and typed value v:
// the string when v is unset, OTHER or unknown to this binary, or when s
// names another value than v (the string was rewritten by a release that
// does not know the typed field); else the name v stands for.
func typedV2Read(values map[string]int32, s string, v int32) string {
	if v <= 1 {
		return s
	}
	if d, ok := values[s]; ok && d != v {
		return s
	}
	for name, n := range values {
		if n == v {
			return name
		}
	}
	return s // a value of a newer release
}

// setTypedV2 sets (on) or clears (off) the typed fields of m and of every
// message it holds, from their strings.
func setTypedV2(m protoreflect.Message, on bool) {
	d := m.Descriptor()
	if !typedV2Reach[d.FullName()] {
		return
	}
	fields := d.Fields()
	for _, p := range typedV2Pairs[d.FullName()] {
		sf, tf := fields.ByName(p.str), fields.ByName(p.typed)
		m.Clear(tf)
		if !on {
			continue
		}
		if sf.IsList() {
			strs := m.Get(sf).List()
			if strs.Len() == 0 {
				continue
			}
			l := m.Mutable(tf).List()
			for i := 0; i < strs.Len(); i++ {
				l.Append(protoreflect.ValueOfEnum(protoreflect.EnumNumber(typedV2Value(p.values, strs.Get(i).String()))))
			}
		} else if v := typedV2Value(p.values, m.Get(sf).String()); v != 0 {
			m.Set(tf, protoreflect.ValueOfEnum(protoreflect.EnumNumber(v)))
		}
	}
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil || fd.IsMap() || !typedV2Reach[fd.Message().FullName()] || !m.Has(fd) {
			continue
		}
		if fd.IsList() {
			l := m.Get(fd).List()
			for j := 0; j < l.Len(); j++ {
				setTypedV2(l.Get(j).Message(), on)
			}
		} else {
			setTypedV2(m.Get(fd).Message(), on)
		}
	}
}

// checkTypedV2 refuses a command that carries a typed field of
// typedV2Pairs which disagrees with its string (a proposer need not set
// them: the FSM derives them).
func checkTypedV2(cmd *raftpb.Command) error {
	var bad protoreflect.FullName
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		d := m.Descriptor()
		if bad != "" || !typedV2Reach[d.FullName()] {
			return
		}
		fields := d.Fields()
		for _, p := range typedV2Pairs[d.FullName()] {
			sf, tf := fields.ByName(p.str), fields.ByName(p.typed)
			if !m.Has(tf) {
				continue
			}
			if sf.IsList() {
				strs, l := m.Get(sf).List(), m.Get(tf).List()
				ok := strs.Len() == l.Len()
				for i := 0; ok && i < l.Len(); i++ {
					ok = typedV2Agrees(p.values, strs.Get(i).String(), int32(l.Get(i).Enum()))
				}
				if !ok {
					bad = d.FullName().Append(p.typed)
				}
			} else if !typedV2Agrees(p.values, m.Get(sf).String(), int32(m.Get(tf).Enum())) {
				bad = d.FullName().Append(p.typed)
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Message() == nil || fd.IsMap() {
				return true
			}
			if fd.IsList() {
				for j := 0; j < v.List().Len(); j++ {
					walk(v.List().Get(j).Message())
				}
			} else {
				walk(v.Message())
			}
			return bad == ""
		})
	}
	walk(cmd.ProtoReflect())
	if bad != "" {
		return invalidf("%s disagrees with its string", bad)
	}
	return nil
}

// typedV2Agrees: a typed value v carried for string s is what the FSM
// would store, or a value this binary does not know for a string it does
// not know either (a newer proposer's).
func typedV2Agrees(values map[string]int32, s string, v int32) bool {
	d := typedV2Value(values, s)
	if v == d {
		return true
	}
	if d != 1 {
		return false
	}
	for _, n := range values {
		if n == v {
			return false
		}
	}
	return true
}

// typedEnumsV2 reports whether the cluster version recorded in the
// batch's transaction enables FeatureTypedEnumsV2.
func (a *applier) typedEnumsV2() bool {
	return a.recorded(FeatureTypedEnumsV2)
}

// deriveTypedV2 sets or clears m's typed fields as the recorded cluster
// version says, before m is stored.
func (a *applier) deriveTypedV2(m proto.Message) {
	r := m.ProtoReflect()
	if typedV2Reach[r.Descriptor().FullName()] {
		setTypedV2(r, a.typedEnumsV2())
	}
}

// migrateTypedEnumsV2 fills the typed fields of every stored record that
// has some: tenants, clients, keys, device codes, tenant tombstones and
// the grant results remembered with request ids. It runs when a
// SetClusterVersion enables FeatureTypedEnumsV2 (the recorded version did
// not): every member applies it at the same entry. Revisions and times are
// kept.
func (a *applier) migrateTypedEnumsV2() {
	var tenants []string
	_ = a.bucket(bucketTenants).ForEach(func(k, _ []byte) error { tenants = append(tenants, string(k)); return nil })
	for _, t := range tenants {
		a.migrateV2Records(a.bucket(bucketTenants), bucketTenants, t, func() proto.Message { return new(raftpb.Tenant) })
		a.migrateV2Records(a.tenantBucket(t, kindClients), kindClients, t, func() proto.Message { return new(raftpb.Client) })
		a.migrateV2Records(a.tenantBucket(t, kindKeys), kindKeys, t, func() proto.Message { return new(raftpb.Key) })
		if b := a.tx.Bucket(tenantBucket(t, kindDeviceCodes)); b != nil {
			a.migrateV2Records(b, kindDeviceCodes, t, func() proto.Message { return new(raftpb.DeviceCode) })
		}
	}
	if b := a.tx.Bucket([]byte(bucketDeletedTenants)); b != nil {
		var ids []string
		_ = b.ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil })
		for _, id := range ids {
			d := new(raftpb.DeletedTenant)
			a.get(b, id, d)
			a.putTenantTombstone(d) // derives the typed fields, updates the view
		}
	}
	a.migrateV2Raw(a.bucket(bucketRequests), func(v []byte) []byte {
		g := decodeRequestGrant(v)
		if g == nil {
			return nil
		}
		setTypedV2(g.ProtoReflect(), true)
		return appendRequestGrant(slices.Clone(v[:17]), g)
	})
}

// migrateV2Records rewrites every record of b (kind) with its typed
// fields filled; for the tenants bucket only tenant's record.
func (a *applier) migrateV2Records(b *bbolt.Bucket, kind, tenant string, fresh func() proto.Message) {
	var ids []string
	if kind == bucketTenants {
		ids = []string{tenant}
	} else {
		_ = b.ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil })
	}
	for _, id := range ids { // not inside ForEach: bbolt forbids writes there
		m := fresh()
		if !a.get(b, id, m) {
			continue
		}
		setTypedV2(m.ProtoReflect(), true)
		a.putRecord(b, kind, tenant, id, m)
	}
}

// migrateV2Raw rewrites the values of b through f (nil: unchanged).
func (a *applier) migrateV2Raw(b *bbolt.Bucket, f func(v []byte) []byte) {
	type kv struct{ k, v []byte }
	var out []kv
	_ = b.ForEach(func(k, v []byte) error {
		if nv := f(v); nv != nil {
			out = append(out, kv{slices.Clone(k), nv})
		}
		return nil
	})
	for _, e := range out {
		a.put(b, e.k, e.v)
	}
}

// SigningAlgOf is t's signing algorithm ("" for the configured default).
func SigningAlgOf(t *raftpb.Tenant) string {
	return typedV2Read(keyAlgValues, t.GetSigningAlg(), int32(t.GetSigningAlgorithm()))
}

// DeletedSigningAlgOf is the signing algorithm of a tenant tombstone.
func DeletedSigningAlgOf(d *raftpb.DeletedTenant) string {
	return typedV2Read(keyAlgValues, d.GetSigningAlg(), int32(d.GetSigningAlgorithm()))
}

// KeyAlgOf is k's algorithm.
func KeyAlgOf(k *raftpb.Key) string {
	return typedV2Read(keyAlgValues, k.GetAlg(), int32(k.GetKeyAlg()))
}

// GrantTypesOf is c's grant types.
func GrantTypesOf(c *raftpb.Client) []string {
	return typedV2ReadList(grantTypeValues, c.GetGrantTypes(), c.GetGrantTypeValues())
}

// AuthMethodsOf is a's token endpoint authentication methods.
func AuthMethodsOf(a *raftpb.ClientAuth) []string {
	return typedV2ReadList(authMethodValues, a.GetMethods(), a.GetMethodValues())
}

// DeviceStatusOf is d's state (DevicePending, …).
func DeviceStatusOf(d *raftpb.DeviceCode) string {
	return typedV2Read(deviceStatusValues, d.GetStatus(), int32(d.GetDeviceStatus()))
}

// OutcomeOf is g's outcome (OutcomeDone, …).
func OutcomeOf(g *raftpb.GrantResult) string {
	return typedV2Read(outcomeValues, g.GetOutcome(), int32(g.GetOutcomeValue()))
}

// GrantEventKindOf is e's kind (EventReuseDetected, …).
func GrantEventKindOf(e *raftpb.GrantEvent) string {
	return typedV2Read(grantEventKindValues, e.GetKind(), int32(e.GetKindValue()))
}

// typedV2ReadList is typedV2Read for a repeated pair; typed values that do
// not pair with the strings one to one are not read, unless there are no
// strings (a later release that stopped writing them).
func typedV2ReadList[E ~int32](values map[string]int32, strs []string, typed []E) []string {
	if len(strs) == 0 && len(typed) > 0 {
		strs = make([]string, len(typed))
	} else if len(typed) != len(strs) {
		return strs
	}
	var out []string
	for i, s := range strs {
		r := typedV2Read(values, s, int32(typed[i]))
		if r != s && out == nil {
			out = slices.Clone(strs)
		}
		if out != nil {
			out[i] = r
		}
	}
	if out == nil {
		return strs
	}
	return out
}
