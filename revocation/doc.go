// Package revocation is tally's resource-server SDK: it verifies access
// tokens locally and learns about revocations by subscription, so a
// resource server need not call introspection on every request.
//
// A Verifier checks JWT access tokens (RFC 9068) against the issuer's JWKS,
// found through RFC 8414 discovery and cached per Cache-Control, refetched
// (rate limited) when a token names an unknown kid. Algorithms are pinned
// (ES256, EdDSA, RS256, and always the key's own), typ must be at+jwt, and
// iss, aud, exp and nbf are checked with a small leeway. Opaque tokens
// (tally's "tly1.<kid>.<ciphertext>", or anything that is not a compact JWS)
// go to RFC 7662 introspection, whose answers are cached until a revocation
// event drops them. A rejection is a *RejectionError naming its Reason
// (expired, revoked, wrong_audience, …; see ReasonOf and Config.OnReject).
// Middleware wraps a net/http handler and answers per RFC 6750, with an
// error_description.
//
// A Watcher keeps the tenant's revocation set current from tally's event
// log: Security Event Tokens (RFC 8417) on NATS JetStream subjects
// tally.<tenant>.revocation.* and tally.<tenant>.security.*, read either
// directly with an ordered consumer or through the node's Connect stream
// (tally.events.v1.EventsService/WatchRevocations). It replays from its
// last stream sequence after a reconnect or restart (the sequence and the
// set are saved in PositionFile if one is given); when its position is older
// than the stream's first retained sequence (a gap) it resyncs the whole set
// with GetRevocationSet before it reports itself synced again. While it is
// not synced, or disconnected longer than MaxDisconnect, it is stale, and
// the Verifier either fails closed or falls back to introspection
// (Config.StalePolicy); after such an outage (or a restart from a position
// file older than MaxDisconnect) it resyncs before it trusts tokens again,
// since events lost before publication leave no gap in the stream.
//
// Over NATS the watcher also follows the live subjects
// (NATSLiveSubjects), on which every node sends each event as it applies
// it, for its whole run and on every connection of WatcherConfig.LiveNATS
// (ConnectNATSEach: one per server): a revocation reaches the set within
// milliseconds while the stream elects a leader or the watcher's
// connection moves to another server. The stream still sets the position
// and runs the OnEvent hooks.
//
// The watcher never fails open silently. Its position belongs to one
// stream, named by the stream's creation time: a stream that was recreated
// (another identity) or reset (a head below the position) is noticed on
// connect, on every heartbeat (Connect) or every StreamCheckInterval (NATS),
// and the watcher resyncs, also when it starts from an older position file.
// A SET signed with a kid the JWKS does not list yet (keys rotated with no
// publish delay) is retried with backoff and a JWKS refetch for
// UnknownKeyGrace; if the keys are unreachable it reconnects and retries
// from the same position; only a SET that is permanently invalid (bad
// signature, iss, aud or tenant) is dropped, counted (Rejected, metric
// tally.rs.events.rejected) and logged. Every SET's signature, iss and aud
// are checked; a state change (client disabled or enabled, user locked or
// unlocked) is applied only if its Raft index is above the last applied for
// that client or user, so a replayed old SET cannot undo a newer change.
// Revoked token ids are kept until the token's exp plus the largest Leeway
// of the verifiers that use the watcher. A user enabled again keeps its
// tokens issued before the lock invalid (EventDetails.TokensIssuedUntil).
// A deleted client or user (EventClientDeleted, EventUserDeleted) has its
// tokens issued at or before the deletion rejected for good; a resync
// reproduces it (GetRevocationSet's client_cutoffs and subject_cutoffs).
// A deleted tenant (EventTenantDeleted, or a resync's tenant_deleted_unix)
// has every token of the issuer issued at or before the deletion rejected
// with ReasonTenantDeleted, before any other check and also while the
// watcher is stale; the deletion is kept in PositionFile. Its SET is signed
// with a key the issuer no longer publishes: the watcher verifies it with
// the key it cached, and resyncs if it has none. A Verifier whose issuer
// answers 404 for its metadata, JWKS or introspection rejects the tenant's
// tokens with ReasonTenantDeleted too (until the issuer knows the tenant
// again; refetched at most every JWKSRefetchInterval).
//
// Tokens derived by RFC 8693 token exchange list the jtis of the tokens
// they were exchanged from in the claim parent_jti (Claims.Parents): a
// JWT whose jti or any parent is in the revocation set is ErrRevoked, so
// the TOKEN_REVOKED event of a parent revokes its derived tokens too
// (which never outlive it).
//
// The SDK stays light: it imports no Raft, bbolt, NATS server or tally
// server package (deps_test.go).
package revocation
