package revocation

import (
	"context"
	"errors"

	"github.com/golang-jwt/jwt/v5"
)

// Reason says why Verify rejected a token. Read it with ReasonOf.
type Reason string

// Reasons of a rejection.
const (
	ReasonMalformed     Reason = "malformed"      // not a token this verifier can read
	ReasonBadSignature  Reason = "bad_signature"  // the signature does not verify
	ReasonUnknownKey    Reason = "unknown_key"    // signed with a kid the issuer's JWKS does not list
	ReasonWrongIssuer   Reason = "wrong_issuer"   // iss is not Config.Issuer
	ReasonWrongAudience Reason = "wrong_audience" // aud does not contain Config.Audience
	ReasonExpired       Reason = "expired"        // exp passed (beyond Leeway)
	ReasonNotYetValid   Reason = "not_yet_valid"  // nbf or iat in the future (beyond Leeway)
	ReasonRevoked       Reason = "revoked"        // the token, its client, family or user is revoked
	ReasonTenantDeleted Reason = "tenant_deleted" // the token's tenant was deleted (or its issuer answers 404 for it)
	ReasonInactive      Reason = "inactive"       // introspection says the token is not active
	ReasonStale         Reason = "stale"          // the revocation set cannot be trusted now
	ReasonUnavailable   Reason = "unavailable"    // the issuer's keys or introspection are unreachable
	ReasonScope         Reason = "insufficient_scope"
	ReasonDPoPProof     Reason = "invalid_dpop_proof" // the DPoP proof is missing, wrong or replayed (dpop.go)
	ReasonDPoPBinding   Reason = "dpop_binding"       // bound token as Bearer, or bearer token as DPoP
)

// description is the RFC 6750 §3 error_description of each reason (only
// characters allowed there: no quote, no backslash).
var description = map[Reason]string{
	ReasonMalformed:     "the access token is malformed",
	ReasonBadSignature:  "the access token signature is invalid",
	ReasonUnknownKey:    "the access token is signed with an unknown key",
	ReasonWrongIssuer:   "the access token was issued by another issuer",
	ReasonWrongAudience: "the access token is not meant for this resource server",
	ReasonExpired:       "the access token expired",
	ReasonNotYetValid:   "the access token is not valid yet",
	ReasonRevoked:       "the access token was revoked",
	ReasonTenantDeleted: "the tenant that issued the access token was deleted",
	ReasonInactive:      "the access token is not active",
	ReasonStale:         "token revocations cannot be checked now",
	ReasonUnavailable:   "the issuer cannot be reached",
	ReasonScope:         "the access token lacks a required scope",
	ReasonDPoPProof:     "the DPoP proof is missing or invalid for this request and token",
	ReasonDPoPBinding:   "the authorization scheme does not match the token binding",
}

// Description is a short English sentence for the reason, fit for an RFC
// 6750 error_description.
func (r Reason) Description() string {
	if d, ok := description[r]; ok {
		return d
	}
	return "the access token is invalid"
}

// RejectionError is the error Verify returns: the reason, and the cause,
// which wraps one of ErrInvalidToken, ErrRevoked, ErrStale and
// ErrUnavailable (errors.Is keeps working).
type RejectionError struct {
	Reason Reason
	Err    error
}

func (e *RejectionError) Error() string { return e.Err.Error() }
func (e *RejectionError) Unwrap() error { return e.Err }

// ReasonOf returns the reason of an error returned by Verify, "" for nil.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var re *RejectionError
	if errors.As(err, &re) {
		return re.Reason
	}
	return classify(err)
}

// classify derives the reason from the error chain.
func classify(err error) Reason {
	switch {
	case errors.Is(err, ErrInvalidDPoPProof):
		return ReasonDPoPProof
	case errors.Is(err, ErrDPoPBinding):
		return ReasonDPoPBinding
	case errors.Is(err, errTenantDeleted):
		return ReasonTenantDeleted
	case errors.Is(err, ErrRevoked):
		return ReasonRevoked
	case errors.Is(err, ErrStale):
		return ReasonStale
	case errors.Is(err, ErrUnavailable):
		return ReasonUnavailable
	case errors.Is(err, ErrInsufficientScope):
		return ReasonScope
	case errors.Is(err, errInactive):
		return ReasonInactive
	case errors.Is(err, errUnknownKid):
		return ReasonUnknownKey
	case errors.Is(err, errWrongIssuer) || errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonWrongIssuer
	case errors.Is(err, errWrongAudience) || errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ReasonWrongAudience
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet) || errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonBadSignature
	}
	return ReasonMalformed
}

var (
	errInactive      = errors.New("inactive")
	errWrongIssuer   = errors.New("issuer mismatch")
	errWrongAudience = errors.New("audience mismatch")
)

// reject wraps err as a RejectionError and tells the hook and the logger.
func (v *Verifier) reject(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	re := &RejectionError{Reason: classify(err), Err: err}
	if v.cfg.OnReject != nil {
		v.cfg.OnReject(ctx, re.Reason, err)
	}
	if v.cfg.Logger != nil {
		v.cfg.Logger.DebugContext(ctx, "access token rejected", "reason", string(re.Reason), "err", err)
	}
	return re
}
