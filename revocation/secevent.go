package revocation

import (
	"encoding/json"
	"fmt"
	"strings"
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
)

// SchemaVersion is the version of EventDetails; the JSON schema of the
// whole SET claim set is schema/secevent.v1.json.
const SchemaVersion = 1

// SETType is the JWS "typ" header of a Security Event Token (RFC 8417 §2.3).
const SETType = "secevent+jwt"

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
	EventAdminAudit:     "security.admin_audit",
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
	TokensIssuedUntil int64 `json:"tokens_issued_until,omitempty"`
	// Audit (admin-audit): the audit log record (issue 13).
	Audit *AuditDetails `json:"audit,omitempty"`
}

// EventAdminAudit announces one record of the admin audit log (issue 13):
// an admin or cluster-admin call that changed, or was refused the change
// of, something. Events without a tenant are published under the default
// tenant's subjects.
const EventAdminAudit = "https://tally.dev/secevent/admin-audit"

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

func (a Audience) contains(s string) bool {
	for _, v := range a {
		if v == s {
			return true
		}
	}
	return false
}

// tenantOfSubject extracts the tenant of an event subject.
func tenantOfSubject(subject string) string {
	rest, ok := strings.CutPrefix(subject, "tally.")
	if !ok {
		return ""
	}
	t, _, _ := strings.Cut(rest, ".")
	return t
}
