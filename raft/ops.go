package raft

import (
	"fmt"
	"sort"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tallyauth/tally/raft/raftpb"
)

// The registry of Raft operations (issue 15): one entry per member of the
// Command.op oneof says how the operation is validated without state
// (checkCommand, run by Propose and by the FSM), how it is applied (inside
// the batch's bbolt transaction) and which cluster feature it needs. It
// replaces the parallel type switches that dispatched each operation.
//
// Adding an operation is one entry in opRegistry below (see doc.go, "Adding
// an operation"): write its check and apply functions, add the oneof field
// to raftpb/command.proto in your range, and
//
//	"my_op": opOf((*raftpb.Command).GetMyOp, checkMyOp, (*applier).myOp).since(featureMyOp),
//
// TestOpRegistryCoversTheOneof fails while a oneof member has no entry.

// opSpec is one registered operation.
type opSpec struct {
	// feature is the cluster feature (ClusterVersion.features) that must be
	// enabled before a proposer may use the operation; "" for the
	// operations of the first release (v0.1.0) and for SetClusterVersion.
	feature string
	// proposerGated is a feature that the proposer checks against the live
	// members (every member lists it: node's cluster.allSupport) while no
	// cluster version is recorded; once one is recorded, Propose refuses
	// the operation unless the record enables the feature (so a downgrade,
	// which records the older release's features, stops it at once).
	proposerGated string
	check         func(cmd *raftpb.Command) error
	apply         func(a *applier, cmd *raftpb.Command, now int64) (*raftpb.GrantResult, error)
}

// since returns s gated on feature.
func (s opSpec) since(feature string) opSpec { s.feature = feature; return s }

// gatedBy returns s gated by its proposer on feature (opSpec.proposerGated).
func (s opSpec) gatedBy(feature string) opSpec { s.proposerGated = feature; return s }

// opOf registers an operation whose apply has no grant result. get is the
// generated oneof getter, e.g. (*raftpb.Command).GetCreateTenant.
func opOf[T any](get func(*raftpb.Command) T, check func(T) error, apply func(*applier, T, int64) error) opSpec {
	return opSpec{
		check: func(cmd *raftpb.Command) error { return check(get(cmd)) },
		apply: func(a *applier, cmd *raftpb.Command, now int64) (*raftpb.GrantResult, error) {
			return nil, apply(a, get(cmd), now)
		},
	}
}

// grantOpOf registers an operation whose apply answers with a GrantResult.
func grantOpOf[T any](get func(*raftpb.Command) T, check func(T) error, apply func(*applier, T, int64) (*raftpb.GrantResult, error)) opSpec {
	return opSpec{
		check: func(cmd *raftpb.Command) error { return check(get(cmd)) },
		apply: func(a *applier, cmd *raftpb.Command, now int64) (*raftpb.GrantResult, error) {
			return apply(a, get(cmd), now)
		},
	}
}

func noCheck[T any](T) error { return nil }

// opRegistry maps the oneof field name of each operation to its entry.
// Behaviour is part of the log's contract: an entry's check and apply must
// give the same outcome for every committed entry forever (golden tests).
var opRegistry = map[protoreflect.Name]opSpec{
	// Tenants, clients, keys, revocations (the first commands).
	"create_tenant": opOf((*raftpb.Command).GetCreateTenant, checkCreateTenant, (*applier).createTenant),
	"create_client": opOf((*raftpb.Command).GetCreateClient,
		func(c *raftpb.CreateClient) error { return checkClient(c.GetClient(), true) }, (*applier).createClient),
	"update_client": opOf((*raftpb.Command).GetUpdateClient,
		func(u *raftpb.UpdateClient) error { return checkClient(u.GetClient(), false) }, (*applier).updateClient),
	"rotate_client_secret": opOf((*raftpb.Command).GetRotateClientSecret, checkRotate, (*applier).rotateClientSecret),
	"set_client_disabled":  opOf((*raftpb.Command).GetSetClientDisabled, checkSetClientDisabled, (*applier).setClientDisabled),
	"add_keys":             opOf((*raftpb.Command).GetAddKeys, checkAddKeys, (*applier).applyAddKeys),
	"revoke_token": opOf((*raftpb.Command).GetRevokeToken,
		func(r *raftpb.RevokeToken) error { return checkRevocation(r.GetRevocation()) },
		func(a *applier, r *raftpb.RevokeToken, now int64) error { return a.revokeToken(r.GetRevocation(), now) }),
	"sweep": {
		check: func(cmd *raftpb.Command) error {
			if cmd.GetSweep().GetMaxScan() > maxSweepScan {
				return invalidf("sweep: max_scan above %d", maxSweepScan)
			}
			return nil
		},
		apply: func(a *applier, cmd *raftpb.Command, now int64) (*raftpb.GrantResult, error) {
			cutoff := a.boundCutoff(cmd.GetSweep().GetEventsBeforeUnixNano(), cmd.GetTimeUnixNano(), now)
			if m := cmd.GetSweep().GetMaxScan(); m > 0 {
				a.sweepBounded(now, cutoff, int(m)) // sweep_bounded.go
				return nil, nil
			}
			a.sweep(now)
			a.sweepEvents(cutoff)
			return nil, nil
		},
	},
	// The leader's clock tick: its work is boundTime's (clock.go).
	"tick": opOf((*raftpb.Command).GetTick, noCheck[*raftpb.Tick],
		func(*applier, *raftpb.Tick, int64) error { return nil }),

	// Cluster identity (issue 9, apply_cluster.go). Gated by the node on
	// the live "cluster_identity" feature, as before issue 15.
	"set_cluster_issuer": opOf((*raftpb.Command).GetSetClusterIssuer,
		func(s *raftpb.SetClusterIssuer) error { return CheckIssuer(s.GetIssuer()) },
		func(a *applier, s *raftpb.SetClusterIssuer, _ int64) error { return a.setClusterIssuer(s.GetIssuer()) }),
	"deny_node": opOf((*raftpb.Command).GetDenyNode, checkDenyNode,
		func(a *applier, d *raftpb.DenyNode, now int64) error {
			a.denyNode(d.GetNodeId(), d.GetReason(), now)
			return nil
		}),

	// End-user flows (issue 4, apply_users.go and apply_grants.go).
	"create_user":       opOf((*raftpb.Command).GetCreateUser, func(c *raftpb.CreateUser) error { return checkUser(c.GetUser()) }, (*applier).createUser),
	"set_user_password": opOf((*raftpb.Command).GetSetUserPassword, checkSetUserPassword, (*applier).setUserPassword),
	"set_user_status": opOf((*raftpb.Command).GetSetUserStatus,
		func(s *raftpb.SetUserStatus) error { return checkTenantUser(s.GetTenant(), s.GetUserId()) }, (*applier).setUserStatus),
	"remember_consent": opOf((*raftpb.Command).GetRememberConsent,
		func(r *raftpb.RememberConsent) error { return checkConsent(r.GetConsent()) }, (*applier).rememberConsent),
	"redeem_code":    grantOpOf((*raftpb.Command).GetRedeemCode, checkRedeemCode, (*applier).redeemCode),
	"rotate_refresh": grantOpOf((*raftpb.Command).GetRotateRefresh, checkRotateRefresh, (*applier).rotateRefresh),
	"revoke_family":  grantOpOf((*raftpb.Command).GetRevokeFamily, checkRevokeFamily, (*applier).revokeFamily),
	"create_device_code": opOf((*raftpb.Command).GetCreateDeviceCode,
		func(c *raftpb.CreateDeviceCode) error { return checkDeviceCode(c.GetDeviceCode()) }, (*applier).createDeviceCode),
	"decide_device_code": grantOpOf((*raftpb.Command).GetDecideDeviceCode, checkDecideDevice, (*applier).decideDeviceCode),
	"poll_device_code":   grantOpOf((*raftpb.Command).GetPollDeviceCode, checkPollDevice, (*applier).pollDeviceCode),

	// Cluster version (issue 15, apply_version.go). Not gated on the
	// recorded feature set (it records it): the node proposes it only once
	// every member lists FeatureClusterVersion.
	"set_cluster_version": opOf((*raftpb.Command).GetSetClusterVersion, checkSetClusterVersion, (*applier).setClusterVersion),

	// Deleting clients, users and tenants (issue 16, apply_delete.go) and
	// zero-trust clients (issue 11, apply_ztauth.go). These and the ones
	// below are gated by their proposer on every live member listing the
	// feature (node: cluster.allSupport) while no cluster version is
	// recorded (the record lags a new cluster's start by a second, and a
	// private_key_jwt request must not fail in that second); once one is
	// recorded, Propose refuses them unless it enables the feature, so a
	// downgrade stops them at once (gatedBy).
	"delete_client":     opOf((*raftpb.Command).GetDeleteClient, checkDeleteClient, (*applier).deleteClient).gatedBy(FeatureDelete),
	"delete_user":       opOf((*raftpb.Command).GetDeleteUser, checkDeleteUser, (*applier).deleteUser).gatedBy(FeatureDelete),
	"delete_tenant":     opOf((*raftpb.Command).GetDeleteTenant, checkDeleteTenant, (*applier).deleteTenant).gatedBy(FeatureDelete),
	"consume_assertion": opOf((*raftpb.Command).GetConsumeAssertion, checkConsumeAssertion, (*applier).consumeAssertion).gatedBy(FeatureZTAuth),
	"set_tenant_trust":  opOf((*raftpb.Command).GetSetTenantTrust, checkSetTenantTrust, (*applier).setTenantTrust).gatedBy(FeatureZTAuth),

	// Pushed authorization requests and key policies (issue 11,
	// apply_par.go; gated by the node on feature "par_keypolicy" like the
	// ones above). Their check and apply dispatch on the op themselves.
	"push_authorization_request": parOp.gatedBy("par_keypolicy"),
	"redeem_request_uri":         parOp.gatedBy("par_keypolicy"),
	"set_key_policy":             parOp.gatedBy("par_keypolicy"),
	"set_tenant_par":             parOp.gatedBy("par_keypolicy"),

	// Gateway routes, rate limits and CEL policies (issue 12,
	// apply_gateway.go; gated by the node on feature "gateway_config").
	"set_gateway_config": opOf((*raftpb.Command).GetSetGatewayConfig,
		func(s *raftpb.SetGatewayConfig) error { return CheckGatewayConfig(s.GetConfig()) }, (*applier).setGatewayConfig).gatedBy("gateway_config"),

	// Named admin credentials and the audit log (issue 13, apply_threat.go;
	// gated by the node on feature "threat_protection").
	"put_admin_credential":    threatOp.gatedBy("threat_protection"),
	"revoke_admin_credential": threatOp.gatedBy("threat_protection"),
	"append_audit":            threatOp.gatedBy("threat_protection"),

	// Security alerts (issue 13, apply_alert.go; gated by the node on
	// feature "threat_v2").
	"raise_security_alert": opOf((*raftpb.Command).GetRaiseSecurityAlert, checkRaiseSecurityAlert, (*applier).raiseSecurityAlert).gatedBy(FeatureThreatV2),
	"revoke_user_access":   opOf((*raftpb.Command).GetRevokeUserAccess, checkRevokeUserAccess, (*applier).revokeUserAccess).gatedBy(FeatureThreatV2),

	// A client's scope history and scope_first_use alerts (issue 13,
	// apply_threat3.go; gated by the node on feature "threat_v3").
	"record_scope_use": grantOpOf((*raftpb.Command).GetRecordScopeUse, checkRecordScopeUse, (*applier).recordScopeUse).gatedBy(FeatureThreatV3),
}

// parOp is the entry of the apply_par.go operations.
var parOp = opSpec{
	check: func(cmd *raftpb.Command) error { _, err := checkPARCommand(cmd); return err },
	apply: func(a *applier, cmd *raftpb.Command, now int64) (*raftpb.GrantResult, error) {
		_, g, err := a.dispatchPAR(cmd, now)
		return g, err
	},
}

// threatOp is the entry of the apply_threat.go operations.
var threatOp = opSpec{
	check: func(cmd *raftpb.Command) error { _, err := checkThreatCommand(cmd); return err },
	apply: func(a *applier, cmd *raftpb.Command, now int64) (*raftpb.GrantResult, error) {
		_, err := a.dispatchThreat(cmd, now)
		return nil, err
	},
}

// opOneof is the Command.op oneof.
var opOneof = (&raftpb.Command{}).ProtoReflect().Descriptor().Oneofs().ByName("op")

// lookupOp returns the registry entry of cmd's operation. name is the
// oneof field's name ("" for a command without a known operation).
func lookupOp(cmd *raftpb.Command) (name protoreflect.Name, spec opSpec, ok bool) {
	fd := cmd.ProtoReflect().WhichOneof(opOneof)
	if fd == nil {
		return "", opSpec{}, false
	}
	spec, ok = opRegistry[fd.Name()]
	return fd.Name(), spec, ok
}

// OpFeature is the cluster feature cmd's operation needs ("" for none):
// a proposer must not propose it before the feature is enabled
// (State.FeatureEnabled).
func OpFeature(cmd *raftpb.Command) string {
	_, spec, _ := lookupOp(cmd)
	return spec.feature
}

// OpProposerGated is the feature cmd's operation is gated on by its
// proposer ("" for none; opSpec.proposerGated), or else the feature one of
// its fields is gated on (fieldGates).
func OpProposerGated(cmd *raftpb.Command) string {
	_, spec, _ := lookupOp(cmd)
	if spec.proposerGated != "" {
		return spec.proposerGated
	}
	for _, g := range fieldGates {
		if f := g(cmd); f != "" {
			return f
		}
	}
	return ""
}

// fieldGates gate fields added to operations older releases apply: such a
// release ignores a field it does not know, which for these fields would
// weaken a client (a dpop_bound client given bearer tokens, a client that
// requires PAR accepting plain authorization requests) or make its state
// differ from its peers' (RotateRefresh.network). The node proposes
// a command carrying one only once every member lists the feature (node:
// CreateClient), and Propose refuses it once a recorded cluster version
// lacks the feature, as for gatedBy operations.
var fieldGates = []func(*raftpb.Command) string{
	func(cmd *raftpb.Command) string {
		c := cmd.GetCreateClient().GetClient()
		if c.GetDpopBound() || c.GetRequirePushedAuthorizationRequests() {
			return "par_keypolicy"
		}
		return ""
	},
	// A replica that ignored RotateRefresh.network would write another
	// family record than its peers (apply_alert.go, familyNetwork).
	func(cmd *raftpb.Command) string {
		if cmd.GetRotateRefresh().GetNetwork() != "" {
			return FeatureRefreshNetwork
		}
		return ""
	},
	// Likewise RotateRefresh.travel_region and travel_window_nanos
	// (apply_threat3.go, familyTravel).
	func(cmd *raftpb.Command) string {
		if r := cmd.GetRotateRefresh(); r.GetTravelRegion() != "" || r.GetTravelWindowNanos() != 0 {
			return FeatureThreatV3
		}
		return ""
	},
}

// OpFeatures lists the features of the registered operations, sorted,
// without duplicates.
func OpFeatures() []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range opRegistry {
		if s.feature != "" && !seen[s.feature] {
			seen[s.feature] = true
			out = append(out, s.feature)
		}
	}
	sort.Strings(out)
	return out
}

// checkOp validates cmd's operation (checkCommand's part per operation).
func checkOp(cmd *raftpb.Command) error {
	name, spec, ok := lookupOp(cmd)
	switch {
	case ok:
		return spec.check(cmd)
	case cmd.GetOp() == nil:
		return invalidf("no operation")
	default:
		return invalidf("unknown operation %q", name)
	}
}

// applyOp applies cmd's operation; checkOp has accepted it.
func (a *applier) applyOp(cmd *raftpb.Command, now int64) (*raftpb.GrantResult, error) {
	name, spec, ok := lookupOp(cmd)
	if !ok {
		return nil, invalidf("unknown operation %q", name) // unreachable after checkOp
	}
	return spec.apply(a, cmd, now)
}

// The per-operation checks that were inline in the old switches.

func checkSetClientDisabled(s *raftpb.SetClientDisabled) error {
	if err := checkTenantID(s.GetTenant()); err != nil {
		return err
	}
	return checkClientID(s.GetClientId())
}

func checkAddKeys(k *raftpb.AddKeys) error {
	if err := checkTenantID(k.GetTenant()); err != nil {
		return err
	}
	if len(k.GetKeys()) == 0 {
		return invalidf("add keys: no keys")
	}
	return checkKeys(k.GetTenant(), k.GetKeys())
}

// applyAddKeys is AddKeys: the keys, then the keys_added event.
func (a *applier) applyAddKeys(k *raftpb.AddKeys, now int64) error {
	if err := a.addKeys(k.GetTenant(), k.GetKeys(), now); err != nil {
		return err
	}
	a.emitKeysAdded(k.GetTenant(), k.GetKeys(), now)
	return nil
}

func checkDenyNode(d *raftpb.DenyNode) error {
	if !nodeIDChars.MatchString(d.GetNodeId()) {
		return invalidf("deny node: node id %q", d.GetNodeId())
	}
	if len(d.GetReason()) > 256 {
		return invalidf("deny node: reason longer than 256 bytes")
	}
	return nil
}

func checkSetUserPassword(s *raftpb.SetUserPassword) error {
	if err := checkTenantUser(s.GetTenant(), s.GetUserId()); err != nil {
		return err
	}
	if s.GetPassword() == nil {
		return invalidf("no password")
	}
	return checkPasswordHash(s.GetPassword())
}

func checkRevokeFamily(r *raftpb.RevokeFamily) error {
	if err := checkTenantID(r.GetTenant()); err != nil {
		return err
	}
	if !validID(r.GetFamilyId()) {
		return invalidf("family id: want 1 to %d printable ASCII characters", maxIDLen)
	}
	return checkText("reason", r.GetReason())
}

// errNotUnderstood marks a committed entry this binary cannot apply
// faithfully: undecodable, a newer Command.version, an unknown operation,
// or a field it does not know anywhere in the command. The FSM stops
// applying at such an entry (fsm.go) instead of guessing.
type errNotUnderstood struct {
	index  uint64
	reason string
}

func (e *errNotUnderstood) Error() string {
	return fmt.Sprintf("raft: log entry %d: %s; this node (command version %d, cluster version %d) must be upgraded to apply it",
		e.index, e.reason, CommandVersion, ClusterVersion)
}

// understood reports why cmd cannot be applied by this binary, or nil.
func understood(cmd *raftpb.Command) string {
	switch v := cmd.GetVersion(); {
	case v > CommandVersion:
		return fmt.Sprintf("command version %d is newer than this node's %d", v, CommandVersion)
	case v == 0:
		return "command version 0"
	}
	if cmd.GetOp() == nil && len(cmd.ProtoReflect().GetUnknown()) > 0 {
		return "unknown operation"
	}
	if path := unknownField(cmd.ProtoReflect(), "command"); path != "" {
		return "unknown field in " + path
	}
	return ""
}

// unknownField returns the path of the first message under m that carries
// fields this binary does not know (a newer proposer's new field), or "".
// It runs on every command applied, so the path is only built once found.
func unknownField(m protoreflect.Message, path string) string {
	if rest, ok := unknownBelow(m); ok {
		return path + rest
	}
	return ""
}

// unknownBelow reports whether m or a message under it carries unknown
// fields, with the path below m to the first (".field.sub…").
func unknownBelow(m protoreflect.Message) (string, bool) {
	if len(m.GetUnknown()) > 0 {
		return "", true
	}
	var rest string
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		var r string
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && !found; i++ {
				r, found = unknownBelow(l.Get(i).Message())
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					r, found = unknownBelow(mv.Message())
					return !found
				})
			}
		default:
			r, found = unknownBelow(v.Message())
		}
		if found {
			rest = "." + string(fd.Name()) + r
		}
		return !found
	})
	return rest, found
}
