package raft

import (
	"bytes"
	"encoding/binary"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Security alerts (issue 13, op 140 RaiseSecurityAlert, feature
// "threat_v2"): the nodes' detectors (credential stuffing, token and
// user-code guessing, budgets exceeded) propose an alert; the FSM announces
// it on the event log (EVENT_KIND_SECURITY_ALERT) at most once per minute
// of the command's time for the same alert key, so that the nodes seeing
// one attack raise it once for the cluster.
//
// Bucket threat_alerts: minute (8, big-endian) | key → empty, the alert
// keys announced in that minute. Applying an alert deletes the minutes
// before the command's, so the bucket holds at most one minute of keys.
//
// Op 141 RevokeUserAccess (same feature) is the admin's answer to a
// compromised account: it drops the user's remembered consents and/or
// sets User.sessions_revoked_unix_nano, which ends every sign-in session
// that began at or before it (sessions are sealed cookies, not records).

// FeatureThreatV2 names op 140 (security alerts).
const FeatureThreatV2 = "threat_v2"

// FeatureRefreshNetwork names RotateRefresh.network (fieldGates): the
// family records the network of its last rotation, and a rotation from
// another network raises a refresh_new_network alert (familyNetwork).
const FeatureRefreshNetwork = "refresh_network"

// Alert kinds (SecurityAlert.kind).
const (
	AlertCredentialStuffing = "credential_stuffing"
	AlertTokenGuessing      = "token_guessing"
	AlertUserCodeGuessing   = "user_code_guessing"
	AlertRateLimitExceeded  = "rate_limit_exceeded"
)

// AlertRefreshNewNetwork is raised by the FSM itself when a refresh
// family rotates from another network than its last rotation's
// (RotateRefresh.network, feature "refresh_network"). It is not a kind op
// 140 accepts (AlertKinds): a replica of the threat_v2 release would refuse
// it.
const AlertRefreshNewNetwork = "refresh_new_network"

// AlertKinds lists the alert kinds op 140 accepts.
var AlertKinds = []string{AlertCredentialStuffing, AlertTokenGuessing, AlertUserCodeGuessing, AlertRateLimitExceeded}

func checkRaiseSecurityAlert(r *raftpb.RaiseSecurityAlert) error {
	a := r.GetAlert()
	if a == nil {
		return invalidf("raise security alert: no alert")
	}
	known := false
	for _, k := range AlertKinds {
		known = known || a.GetKind() == k
	}
	if !known {
		return invalidf("raise security alert: kind %q", a.GetKind())
	}
	if err := checkTenantID(a.GetTenant()); err != nil {
		return err
	}
	for _, f := range []string{a.GetClientId(), a.GetSubject(), a.GetSource(), a.GetSignal(), a.GetNode(), a.GetRegion()} {
		if len(f) > 256 {
			return invalidf("raise security alert: field longer than 256 bytes")
		}
	}
	return nil
}

// alertKey is what makes two alerts the same one.
func alertKey(a *raftpb.SecurityAlert) []byte {
	var b bytes.Buffer
	for _, f := range []string{a.GetKind(), a.GetTenant(), a.GetClientId(), a.GetSubject(), a.GetSource(), a.GetSignal()} {
		b.WriteString(f)
		b.WriteByte(0)
	}
	return b.Bytes()
}

// raiseSecurityAlert is the apply logic of op 140.
func (a *applier) raiseSecurityAlert(r *raftpb.RaiseSecurityAlert, now int64) error {
	b := a.threatBucket(bucketThreatAlerts)
	minute := uint64(now / int64(time.Minute))
	var mk [8]byte
	binary.BigEndian.PutUint64(mk[:], minute)
	// Forget the minutes before this one.
	c := b.Cursor()
	var old [][]byte
	for k, _ := c.First(); len(k) >= 8 && binary.BigEndian.Uint64(k[:8]) < minute; k, _ = c.Next() {
		old = append(old, bytes.Clone(k))
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			storageFault("delete alert key: %v", err)
		}
	}
	al := proto.Clone(r.GetAlert()).(*raftpb.SecurityAlert)
	key := append(mk[:], alertKey(al)...)
	if b.Get(key) != nil {
		return nil // raised this minute already
	}
	a.put(b, key, []byte{})
	a.announceAlert(al, now)
	return nil
}

// announceAlert puts al on the event log (a tenant that exists only: the
// event is signed with the tenant's keys).
func (a *applier) announceAlert(al *raftpb.SecurityAlert, now int64) {
	al.TimeUnixNano = now
	if !a.tenantExists(al.Tenant) {
		return
	}
	a.logAlert(al, now) // apply_threat3.go: once threat_v3 is recorded
	a.emit(&raftpb.Event{Tenant: al.Tenant, Kind: raftpb.EventKind_EVENT_KIND_SECURITY_ALERT, TimeUnixNano: now,
		ClientId: al.ClientId, Subject: al.Subject, Node: al.Node, Region: al.Region, Alert: al})
}

// familyNetwork records the network of a rotation (RotateRefresh.network)
// in the family and, when the family's last rotation came from another
// network, announces a refresh_new_network alert naming the client, the
// user and the new network, and returns it (GrantResult.alert). A family's
// first recorded rotation only records its network. Deterministic: the
// network travels in the command.
func (a *applier) familyNetwork(f *raftpb.Family, r *raftpb.RotateRefresh, now int64) *raftpb.SecurityAlert {
	nw := r.GetNetwork()
	if nw == "" {
		return nil
	}
	prev := f.LastNetwork
	f.LastNetwork = nw
	if prev == "" || prev == nw {
		return nil
	}
	al := &raftpb.SecurityAlert{Kind: AlertRefreshNewNetwork, Tenant: f.Tenant, ClientId: f.ClientId, Subject: f.UserId,
		Source: nw, Signal: "refresh_family_network", Count: 1, Node: r.GetNode(), Region: r.GetRegion()}
	a.announceAlert(al, now)
	return al
}

// checkRevokeUserAccess validates op 141.
func checkRevokeUserAccess(r *raftpb.RevokeUserAccess) error {
	if err := checkTenantID(r.GetTenant()); err != nil {
		return err
	}
	if err := checkUserID(r.GetUserId()); err != nil {
		return err
	}
	if !r.GetConsents() && !r.GetSessions() {
		return invalidf("revoke user access: nothing to revoke (consents, sessions)")
	}
	if r.GetClientId() != "" {
		if !r.GetConsents() || !validID(r.GetClientId()) {
			return invalidf("revoke user access: client id %q", r.GetClientId())
		}
	}
	return nil
}

// revokeUserAccess is the apply logic of op 141: drops the user's
// consents (or one client's) and/or moves the user's sessions cut-off to
// the command's time.
func (a *applier) revokeUserAccess(r *raftpb.RevokeUserAccess, now int64) error {
	u, err := a.getUser(r.GetTenant(), r.GetUserId())
	if err != nil {
		return err
	}
	if r.GetConsents() {
		a.dropConsents(u.Tenant, func(c *raftpb.Consent) bool {
			return c.UserId == u.Id && (r.GetClientId() == "" || c.ClientId == r.GetClientId())
		})
	}
	if r.GetSessions() {
		u.SessionsRevokedUnixNano = now
		u.Revision++
		u.UpdatedUnixNano = now
		a.putUser(u)
	}
	return nil
}
