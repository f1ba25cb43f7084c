package issuance

import (
	"context"
	"errors"
	"io"
	"time"
)

// minter turns a decided token (tokenData) into a JWT or an opaque token of
// the tenant. It performs no write: keys come from the keyring's cache.
type minter struct {
	st     State
	keys   *keyring
	rnd    io.Reader
	issuer func(tenant string) string
}

var errNoKey = errors.New("tenant has no current key for this token format")

// mint fills in Tenant, Issuer, JTI (unless the caller chose it, as the
// end-user grants do to record it before minting) and Format of d and
// returns the token.
// The key is the one current at now — not at d.IssuedAt, which is truncated
// to the second and may precede a key that became current a moment ago.
// When the key that signs or seals it has an expiry before d.ExpiresAt,
// ExpiresAt is shortened to it, so no token outlives its key.
func (m *minter) mint(ctx context.Context, t Tenant, format TokenFormat, d *tokenData, now time.Time) (string, error) {
	set, err := m.keys.get(ctx, m.st, t.ID)
	if err != nil {
		return "", errUnavailable("keys unavailable", err)
	}
	if d.JTI == "" {
		jti, err := NewJTI(m.rnd)
		if err != nil {
			return "", errUnavailable("randomness unavailable", err)
		}
		d.JTI = jti
	}
	d.Tenant, d.Issuer, d.Format = t.ID, m.issuer(t.ID), format
	bindToken(ctx, d) // cnf.go
	switch format {
	case FormatOpaque:
		k := set.sealingKey(now)
		if k == nil {
			return "", errUnavailable("no sealing key available", errNoKey)
		}
		capExpiry(d, k)
		tok, err := sealOpaque(k.aead, k.meta.ID, m.rnd, d)
		if err != nil {
			return "", errUnavailable("randomness unavailable", err)
		}
		return tok, nil
	default:
		k := set.signingKey(now, t.SigningAlg)
		if k == nil {
			return "", errUnavailable("no signing key available", errNoKey)
		}
		capExpiry(d, k)
		d.Format = FormatJWT
		tok, err := signJWT(k, d)
		if err != nil {
			return "", errUnavailable("token signing failed", err)
		}
		return tok, nil
	}
}

func capExpiry(d *tokenData, k *loadedKey) {
	if !k.meta.ExpiresAt.IsZero() && k.meta.ExpiresAt.Before(d.ExpiresAt) {
		d.ExpiresAt = k.meta.ExpiresAt
	}
}
