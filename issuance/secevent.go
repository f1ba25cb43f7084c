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
// change them. A tenant deleted recently signs with the keys its tombstone
// keeps (DeletedTenants), so that its last events reach resource servers.
// It returns ErrNotFound for an unknown tenant and ErrNoSigningKey when no
// key may sign. Safe for concurrent use.
func (s *Server) SignSET(ctx context.Context, tenant string, claims map[string]any) (string, error) {
	var set *keySet
	var alg string
	t, err := s.st.Tenant(ctx, tenant)
	switch {
	case err == nil:
		if set, err = s.keys.get(ctx, s.st, t.ID); err != nil {
			return "", err
		}
		alg = t.SigningAlg
	case errors.Is(err, ErrNotFound):
		dt, ok := s.st.(DeletedTenants)
		if !ok {
			return "", err
		}
		keys, preferred, found := dt.DeletedTenantKeys(ctx, tenant)
		if !found {
			return "", err
		}
		// Built afresh each time: a deleted tenant signs a handful of
		// events, and its keys must not enter the keyring that serves
		// JWKS, tokens and introspection.
		set, alg = s.keys.build(tenant, keys, nil), preferred
	default:
		return "", err
	}
	k := set.signingKey(s.cfg.Now(), alg)
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
