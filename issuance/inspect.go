package issuance

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"strings"
	"time"
)

// TokenInfo is what an access token says, as far as revoking it needs.
type TokenInfo struct {
	JTI       string
	ClientID  string
	Subject   string
	Scopes    []string
	ExpiresAt time.Time
	IssuedAt  time.Time
	Format    TokenFormat
}

// maxTokenLen bounds presented tokens; ours are a few hundred bytes (RSA
// JWTs under 1 KiB).
const maxTokenLen = 8 << 10

// readToken checks that token is an access token of the tenant — a JWT
// signed by one of its published keys with its issuer, or an opaque token
// sealed under one of its sealing keys for it — and returns what it says.
// With checkTimes, expired (beyond Leeway) or not-yet-valid tokens are
// invalid too. Invalid tokens give errors wrapping ErrInvalidToken; a State
// failure gives another error.
func (s *Server) readToken(ctx context.Context, tenant, token string, now time.Time, checkTimes bool) (tokenData, error) {
	if token == "" || len(token) > maxTokenLen {
		return tokenData{}, ErrInvalidToken
	}
	set, err := s.keys.get(ctx, s.st, tenant)
	if err != nil {
		return tokenData{}, err
	}
	var d tokenData
	switch {
	case strings.HasPrefix(token, opaquePrefix):
		d, err = unsealOpaque(tenant, token, func(kid string) cipher.AEAD { return set.unsealKey(kid, now) })
		if err != nil {
			return tokenData{}, err
		}
		d.Issuer = s.Issuer(tenant)
		if checkTimes {
			lw := s.cfg.Leeway
			if !now.Before(d.ExpiresAt.Add(lw)) || d.IssuedAt.After(now.Add(lw)) {
				return tokenData{}, fmt.Errorf("%w: expired or not yet valid", ErrInvalidToken)
			}
		}
	case strings.Count(token, ".") == 2:
		d, err = verifyJWT(set, s.Issuer(tenant), token, now, s.cfg.Leeway, checkTimes)
		if err != nil {
			return tokenData{}, err
		}
		d.Tenant = tenant
	default:
		return tokenData{}, ErrInvalidToken
	}
	return d, nil
}

// Inspect checks a token presented to the admin API for the tenant: its
// signature or seal, its issuer and its tenant. It returns what a revocation
// needs even if the token has expired or is already revoked. An unknown
// tenant gives an error matching ErrNotFound; anything that is not a token of
// this tenant gives ErrInvalidToken (which also matches ErrNotFound).
func (s *Server) Inspect(ctx context.Context, tenant, token string) (TokenInfo, error) {
	if _, err := s.st.Tenant(ctx, tenant); err != nil {
		if errors.Is(err, ErrNotFound) {
			return TokenInfo{}, fmt.Errorf("issuance: inspect: tenant: %w", err)
		}
		return TokenInfo{}, fmt.Errorf("issuance: inspect: %w", err)
	}
	d, err := s.readToken(ctx, tenant, token, s.cfg.Now(), false)
	if err != nil {
		return TokenInfo{}, err
	}
	return TokenInfo{
		JTI:       d.JTI,
		ClientID:  d.ClientID,
		Subject:   d.Subject,
		Scopes:    d.Scope,
		ExpiresAt: d.ExpiresAt,
		IssuedAt:  d.IssuedAt,
		Format:    d.Format,
	}, nil
}
