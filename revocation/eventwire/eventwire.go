// Package eventwire is the wire contract of tally's event log, shared by
// the server (replication publishes, node serves the events API) and the
// resource-server SDK (revocation reads): the Security Event Token (RFC
// 8417) claims and event types, the JSON schema of the claim set
// (schema/secevent.v1.json), the NATS subjects and headers, and — in
// eventsv1 and eventsv1/eventsv1connect — the Connect events API
// (protobuf package tally.events.v1).
//
// It is a leaf: it imports nothing of tally, so the SDK that imports it
// pulls in none of the server (revocation/deps_test.go).
package eventwire

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Event types: the keys of a Security Event Token's "events" claim
// (RFC 8417 §2.2), one per kind of event tally publishes. Each names the
// NATS subject suffix it is published on, under tally.<tenant>.
const (
	// A token was revoked: details carry jti, client_id, sub and exp.
	// Subject tally.<tenant>.revocation.token.
	EventTokenRevoked = "https://tally.dev/secevent/token-revoked"
	// A refresh-token family was revoked (also on reuse): family_id,
	// client_id, sub. Subject tally.<tenant>.revocation.family.
	EventFamilyRevoked = "https://tally.dev/secevent/family-revoked"
	// A client was disabled: client_id. Its tokens are no longer valid.
	// Subject tally.<tenant>.security.client_disabled.
	EventClientDisabled = "https://tally.dev/secevent/client-disabled"
	// A disabled client was enabled again: client_id.
	// Subject tally.<tenant>.security.client_enabled.
	EventClientEnabled = "https://tally.dev/secevent/client-enabled"
	// Signing keys were added: kids. Receivers refresh their JWKS.
	// Subject tally.<tenant>.security.key_rotated.
	EventKeyRotated = "https://tally.dev/secevent/key-rotated"
	// Reuse of a rotated refresh token was detected: family_id, client_id,
	// sub. Subject tally.<tenant>.security.reuse_detected.
	EventReuseDetected = "https://tally.dev/secevent/reuse-detected"
	// A user was disabled or locked: sub. Its tokens are no longer valid.
	// Subject tally.<tenant>.security.user_locked.
	EventUserLocked = "https://tally.dev/secevent/user-locked"
	// A disabled or locked user was enabled again: sub. The reverse of
	// EventUserLocked. Subject tally.<tenant>.security.user_unlocked.
	EventUserUnlocked = "https://tally.dev/secevent/user-unlocked"
	// A client was deleted: client_id, tokens_issued_until (the deletion).
	// Its access tokens issued at or before it are invalid for good.
	// Subject tally.<tenant>.security.client_deleted.
	EventClientDeleted = "https://tally.dev/secevent/client-deleted"
	// A user was deleted: sub (the user id; its personal data is erased),
	// tokens_issued_until (the deletion). Its access tokens issued at or
	// before it are invalid for good. Subject
	// tally.<tenant>.security.user_deleted.
	EventUserDeleted = "https://tally.dev/secevent/user-deleted"
	// A tenant was deleted: tokens_issued_until (the deletion). Every
	// access token of the tenant (of the SET's issuer) issued at or before
	// it is invalid for good. Signed with the deleted tenant's last signing
	// key, which its issuer no longer publishes (its metadata and JWKS
	// answer 404): a receiver that has not cached the key resyncs, and
	// GetRevocationSet says the same (tenant_deleted_unix). Subject
	// tally.<tenant>.security.tenant_deleted.
	EventTenantDeleted = "https://tally.dev/secevent/tenant-deleted"
	// One record of the admin audit log (issue 13): an admin or
	// cluster-admin call that changed, or was refused the change of,
	// something. Events without a tenant are published under the default
	// tenant's subjects. Subject tally.<tenant>.security.admin_audit.
	EventAdminAudit = "https://tally.dev/secevent/admin-audit"
	// A security alert (issue 13): a node's detector saw credential
	// stuffing, token guessing at introspection, device user-code guessing
	// or a client over its budget; alert holds what, from where, how many.
	// Never a secret, token, password or username. Subject
	// tally.<tenant>.security.alert.
	EventSecurityAlert = "https://tally.dev/secevent/security-alert"
)

// SchemaVersion is the version of EventDetails; the JSON schema of the
// whole SET claim set is schema/secevent.v1.json.
const SchemaVersion = 1

// SETType is the JWS "typ" header of a Security Event Token (RFC 8417 §2.3).
const SETType = "secevent+jwt"

// ContentType is the Content-Type header of a published event's message.
const ContentType = "application/secevent+jwt"

// Headers set on every event published to the stream.
const (
	// HeaderRaftIndex is the Raft index of the event's command (decimal).
	HeaderRaftIndex = "Tally-Raft-Index"
	// HeaderCluster is the publishing cluster's id.
	HeaderCluster = "Tally-Cluster"
)

// ConsumerHeartbeat is the idle heartbeat of an ordered consumer that
// follows the stream: when the server that holds the consumer goes away
// while the client's own connection stays up (a stream leader failing over
// in a NATS cluster), two missed heartbeats recreate the consumer elsewhere
// within seconds instead of nats.go's default 30 s.
const ConsumerHeartbeat = time.Second

// StreamSubjects are the subjects of the JetStream stream that carries the
// event log, for every tenant.
var StreamSubjects = []string{"tally.*.revocation.*", "tally.*.security.*"}

var subjectSuffix = map[string]string{
	EventTokenRevoked:   "revocation.token",
	EventFamilyRevoked:  "revocation.family",
	EventClientDisabled: "security.client_disabled",
	EventClientEnabled:  "security.client_enabled",
	EventKeyRotated:     "security.key_rotated",
	EventReuseDetected:  "security.reuse_detected",
	EventUserLocked:     "security.user_locked",
	EventUserUnlocked:   "security.user_unlocked",
	EventClientDeleted:  "security.client_deleted",
	EventUserDeleted:    "security.user_deleted",
	EventTenantDeleted:  "security.tenant_deleted",
	EventAdminAudit:     "security.admin_audit",
	EventSecurityAlert:  "security.alert",
}

// Subject returns the NATS subject of an event type in tenant, e.g.
// "tally.default.revocation.token"; "" for an unknown type.
func Subject(tenant, eventType string) string {
	s, ok := subjectSuffix[eventType]
	if !ok {
		return ""
	}
	return "tally." + tenant + "." + s
}

// TenantSubjects returns the subject filter of one tenant's events.
func TenantSubjects(tenant string) string { return "tally." + tenant + ".>" }

// TenantOfSubject returns the tenant of an event subject ("" if it is not
// one).
func TenantOfSubject(subject string) string {
	rest, ok := strings.CutPrefix(subject, "tally.")
	if !ok {
		return ""
	}
	t, _, _ := strings.Cut(rest, ".")
	return t
}

// LiveSubjects is the core NATS subject filter of a tenant's live events:
// every tally node sends each event's SET there as soon as it is applied,
// besides publishing it to the stream, so a subscriber learns it within
// milliseconds even while the stream elects a new leader. Each node sends
// it, so keep one per SET jti; the stream remains the ordered log to
// replay from.
func LiveSubjects(tenant string) string { return "tally." + tenant + ".live.>" }

// LiveSubject is the subject on which an event of subject
// tally.<tenant>.<rest> is also sent at once, without JetStream:
// tally.<tenant>.live.<rest>, inside LiveSubjects(tenant); "" if subject
// has fewer than three tokens.
func LiveSubject(subject string) string {
	parts := strings.SplitN(subject, ".", 3)
	if len(parts) != 3 {
		return ""
	}
	return parts[0] + "." + parts[1] + ".live." + parts[2]
}

// InboxPrefix is the inbox prefix of a resource server's NATS connection:
// a tally node's embedded NATS server lets a resource server receive
// replies (and ordered-consumer deliveries) only under it, so that no
// client reads another's.
func InboxPrefix(tenant, clientID string) string {
	return "_TALLY_RS." + tenant + "." + clientID
}

// EventDetails is the value of an event in a SET's "events" claim.
type EventDetails struct {
	SchemaVersion int    `json:"schema_version"`
	Tenant        string `json:"tenant"`
	// RaftIndex of the command that produced the event: events of one
	// cluster are ordered by it. A state change (client disabled/enabled,
	// user locked/unlocked) is applied only if its index is above the last
	// one applied for the same client or user, so a replayed old event
	// cannot undo a newer one.
	RaftIndex uint64   `json:"raft_index"`
	JTI       string   `json:"jti,omitempty"`
	ClientID  string   `json:"client_id,omitempty"`
	Subject   string   `json:"sub,omitempty"`
	ExpiresAt int64    `json:"exp,omitempty"`
	KeyIDs    []string `json:"kids,omitempty"`
	FamilyID  string   `json:"family_id,omitempty"`
	// TokensIssuedUntil (user-unlocked): the user's access tokens with an
	// iat at or before it (unix seconds; the user's lock) stay invalid.
	// (client-deleted, user-deleted, tenant-deleted): the deletion; the
	// client's, user's or tenant's access tokens with an iat at or before
	// it are invalid for good.
	TokensIssuedUntil int64 `json:"tokens_issued_until,omitempty"`
	// Audit (admin-audit): the audit log record (issue 13).
	Audit *AuditDetails `json:"audit,omitempty"`
	// Alert (security-alert): the alert (issue 13).
	Alert *AlertDetails `json:"alert,omitempty"`
}

// AlertDetails is a security alert: kind (credential_stuffing,
// token_guessing, user_code_guessing, rate_limit_exceeded,
// refresh_new_network, scope_first_use, refresh_impossible_travel), the
// client, user id and source address or subnet it is about (each when
// known), the signal that fired and what it counted within window_seconds,
// and the node and region that saw it; scope_first_use names the scope,
// refresh_impossible_travel the region of the previous rotation and the
// seconds between the two.
type AlertDetails struct {
	Kind          string `json:"kind"`
	ClientID      string `json:"client_id,omitempty"`
	Subject       string `json:"sub,omitempty"`
	Source        string `json:"source,omitempty"`
	Signal        string `json:"signal,omitempty"`
	Count         uint32 `json:"count"`
	WindowSeconds uint32 `json:"window_seconds"`
	Node          string `json:"node,omitempty"`
	Region        string `json:"region,omitempty"`
	// Issue 13, threat_v3.
	Scope          string `json:"scope,omitempty"`
	PreviousRegion string `json:"previous_region,omitempty"`
	GapSeconds     int64  `json:"gap_seconds,omitempty"`
}

// AuditDetails is an audit log record; hashes are hex SHA-256.
type AuditDetails struct {
	Seq      uint64 `json:"seq"`
	Actor    string `json:"actor"`
	Role     string `json:"role,omitempty"`
	Action   string `json:"action"`
	Target   string `json:"target,omitempty"`
	Tenant   string `json:"tenant,omitempty"`
	Outcome  string `json:"outcome"`
	Node     string `json:"node,omitempty"`
	PrevHash string `json:"prev_hash,omitempty"`
	Hash     string `json:"hash"`
}

// SETClaims is the claim set of a tally Security Event Token (RFC 8417
// §2.2). Events holds exactly one event.
type SETClaims struct {
	Issuer      string                  `json:"iss"`
	IssuedAt    int64                   `json:"iat"`
	ID          string                  `json:"jti"`
	Audience    Audience                `json:"aud"`
	TimeOfEvent int64                   `json:"toe,omitempty"`
	Events      map[string]EventDetails `json:"events"`
}

// Event returns the one event of the SET and its type.
func (c *SETClaims) Event() (string, EventDetails, error) {
	if len(c.Events) != 1 {
		return "", EventDetails{}, fmt.Errorf("revocation: SET has %d events, want 1", len(c.Events))
	}
	for typ, d := range c.Events {
		if d.SchemaVersion != SchemaVersion {
			return "", EventDetails{}, fmt.Errorf("revocation: SET schema_version %d, this SDK reads %d", d.SchemaVersion, SchemaVersion)
		}
		return typ, d, nil
	}
	panic("unreachable")
}

// Audience is the JWT "aud" claim: one string or an array (RFC 7519 §4.1.3).
type Audience []string

func (a Audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

func (a *Audience) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = Audience{s}
		return nil
	}
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return err
	}
	*a = ss
	return nil
}

// Contains reports whether s is one of the audiences.
func (a Audience) Contains(s string) bool {
	for _, v := range a {
		if v == s {
			return true
		}
	}
	return false
}
