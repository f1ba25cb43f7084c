package revocation

import "github.com/tallyauth/tally/revocation/eventwire"

// The event wire contract lives in the leaf package eventwire, which the
// server imports too; these names are the SDK's view of it (same values).

// Event types: the keys of a Security Event Token's "events" claim
// (RFC 8417 §2.2); see eventwire for the subject each is published on.
const (
	EventTokenRevoked   = eventwire.EventTokenRevoked
	EventFamilyRevoked  = eventwire.EventFamilyRevoked
	EventClientDisabled = eventwire.EventClientDisabled
	EventClientEnabled  = eventwire.EventClientEnabled
	EventKeyRotated     = eventwire.EventKeyRotated
	EventReuseDetected  = eventwire.EventReuseDetected
	EventUserLocked     = eventwire.EventUserLocked
	EventUserUnlocked   = eventwire.EventUserUnlocked
	EventClientDeleted  = eventwire.EventClientDeleted
	EventUserDeleted    = eventwire.EventUserDeleted
	EventTenantDeleted  = eventwire.EventTenantDeleted
	EventAdminAudit     = eventwire.EventAdminAudit
	EventSecurityAlert  = eventwire.EventSecurityAlert
)

// SchemaVersion is the version of EventDetails; the JSON schema of the
// whole SET claim set is eventwire/schema/secevent.v1.json.
const SchemaVersion = eventwire.SchemaVersion

// SETType is the JWS "typ" header of a Security Event Token (RFC 8417 §2.3).
const SETType = eventwire.SETType

// StreamSubjects are the subjects of the JetStream stream that carries the
// event log, for every tenant.
var StreamSubjects = eventwire.StreamSubjects

// Subject returns the NATS subject of an event type in tenant, e.g.
// "tally.default.revocation.token"; "" for an unknown type.
func Subject(tenant, eventType string) string { return eventwire.Subject(tenant, eventType) }

// TenantSubjects returns the subject filter of one tenant's events.
func TenantSubjects(tenant string) string { return eventwire.TenantSubjects(tenant) }

// EventDetails is the value of an event in a SET's "events" claim.
type EventDetails = eventwire.EventDetails

// AuditDetails is an admin audit log record (EventAdminAudit, issue 13).
type AuditDetails = eventwire.AuditDetails

// AlertDetails is a security alert (EventSecurityAlert, issue 13).
type AlertDetails = eventwire.AlertDetails

// SETClaims is the claim set of a tally Security Event Token (RFC 8417
// §2.2). Events holds exactly one event.
type SETClaims = eventwire.SETClaims

// Audience is the JWT "aud" claim: one string or an array (RFC 7519 §4.1.3).
type Audience = eventwire.Audience
