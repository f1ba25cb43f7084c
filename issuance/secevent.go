package issuance

import (
	"context"
	"errors"
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// SETType is the JWS "typ" of a Security Event Token (RFC 8417 §2.3).
const SETType = "secevent+jwt"

// ErrNoSigningKey means the tenant has no key that may sign now.
var ErrNoSigningKey = errors.New("issuance: no current signing key")

// SignSET signs claims as a Security Event Token (RFC 8417) of tenant with
// the tenant's current signing key (the one that signs access tokens, so a
// receiver verifies it with the JWKS it already has). The header carries
// typ "secevent+jwt" (RFC 8417 §2.3), alg and kid. The caller builds the
// claims (iss, iat, jti, aud, events; RFC 8417 §2.2); SignSET does not
// change them. It returns ErrNotFound for an unknown tenant and
// ErrNoSigningKey when no key may sign. Safe for concurrent use.
func (s *Server) SignSET(ctx context.Context, tenant string, claims map[string]any) (string, error) {
	t, err := s.st.Tenant(ctx, tenant)
	if err != nil {
		return "", err
	}
	set, err := s.keys.get(ctx, s.st, t.ID)
	if err != nil {
		return "", err
	}
	k := set.signingKey(s.cfg.Now(), t.SigningAlg)
	if k == nil {
		return "", fmt.Errorf("%w in tenant %q", ErrNoSigningKey, tenant)
	}
	tok := &jwt.Token{
		Header: map[string]any{"typ": SETType, "alg": k.method.Alg(), "kid": k.meta.ID},
		Claims: jwt.MapClaims(claims),
		Method: k.method,
	}
	out, err := tok.SignedString(k.signer)
	if err != nil {
		return "", fmt.Errorf("issuance: sign SET with key %s: %w", k.meta.ID, err)
	}
	return out, nil
}
