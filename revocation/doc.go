// Package revocation is tally's resource-server SDK: it verifies access
// tokens locally and learns about revocations by subscription, so a
// resource server need not call introspection on every request.
//
// A Verifier checks JWT access tokens (RFC 9068) against the issuer's JWKS,
// found through RFC 8414 discovery and cached per Cache-Control, refetched
// (rate limited) when a token names an unknown kid. Algorithms are pinned
// (ES256, EdDSA, RS256, and always the key's own), typ must be at+jwt, and
// iss, aud, exp and nbf are checked with a small leeway. Opaque tokens go to
// RFC 7662 introspection, whose answers are cached until a revocation event
// drops them. Middleware wraps a net/http handler and answers per RFC 6750.
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
// The SDK stays light: it imports no Raft, bbolt, NATS server or tally
// server package (deps_test.go).
package revocation
