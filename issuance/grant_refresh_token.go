package issuance

import (
	"context"
	"errors"
	"slices"
)

// refreshTokenGrant is RFC 6749 §6 with rotation (RFC 9700 §4.14.2):
// every use moves the family to its next generation in one replicated
// compare-and-swap, so exactly one of two concurrent uses succeeds
// cluster-wide; presenting a superseded token revokes the family with its
// access tokens. Within Config.RefreshReuseInterval the just-superseded
// token, presented again by the same client, gets the same successor.
type refreshTokenGrant struct{ s *Server }

func (g *refreshTokenGrant) HandleGrant(ctx context.Context, gr GrantRequest) (*TokenResponse, error) {
	s, req, c := g.s, gr.Request, gr.Client
	if req.RefreshToken == "" {
		return nil, errInvalidRequest("missing refresh_token")
	}
	family, gen, bound, ok := s.parseRefreshToken(gr.Tenant.ID, req.RefreshToken)
	if !ok {
		return nil, errInvalidGrant("invalid refresh token", nil)
	}
	if x5t, ok := certBound(bound); ok {
		// RFC 8705 §4: a public client's refresh token is used with the
		// certificate it was issued to (cnf.go).
		if pc := clientCertFrom(ctx); pc == nil || Thumbprint(pc.cert.Raw) != x5t {
			return nil, errInvalidGrant("refresh token is bound to another client certificate", nil)
		}
	} else if bound != "" && bound != gr.jkt() {
		// RFC 9449 §5: a bound refresh token is used with a proof of its key.
		return nil, errInvalidGrant("refresh token is bound to another DPoP key", nil)
	}
	// RFC 6749 §6: a requested scope must have been granted; it is checked
	// against the client here and narrowed to the family's grant below.
	if req.ScopeRequested {
		for _, sc := range req.Scope {
			if !slices.Contains(c.Scopes, sc) {
				return nil, errInvalidScope("requested scope exceeds the grant")
			}
		}
	}
	next, err := s.newRefreshToken(gr.Tenant.ID, family, gen+1, bound)
	if err != nil {
		return nil, errUnavailable("randomness unavailable", err)
	}
	sealed, err := sealBytes(s.flow.successor, s.cfg.Rand, []byte(next), successorAAD(gr.Tenant.ID, family))
	if err != nil {
		return nil, errUnavailable("randomness unavailable", err)
	}
	// The access token's subject and scope come from the family; its jti
	// is chosen now so that the family records it.
	iss, err := s.prepareAccess(gr, "", nil, gr.Now)
	if err != nil {
		return nil, err
	}
	res, err := s.grantW.RotateRefresh(ctx, Rotation{
		Tenant: gr.Tenant.ID, FamilyID: family, Generation: gen, TokenHash: sha256Sum(req.RefreshToken),
		ClientID: c.ID, NewHash: sha256Sum(next), SealedSuccessor: sealed, ReuseInterval: s.cfg.RefreshReuseInterval,
		AccessToken: iss.accessRef(), Network: familyNetwork(gr.ClientIP),
	})
	switch {
	case errors.Is(err, ErrRefreshReused):
		s.log.Warn("issuance: refresh token reuse detected, family revoked", "tenant", gr.Tenant.ID, "client_id", c.ID, "family", family)
		return nil, errInvalidGrant("refresh token already used; the grant is revoked", err)
	case errors.Is(err, ErrGrantInvalid), errors.Is(err, ErrExpiredToken):
		return nil, errInvalidGrant("invalid refresh token", err)
	case err != nil:
		return nil, errUnavailable("the refresh token could not be used now, retry", err)
	}
	if res.Replayed {
		pt, err := openBytes(s.flow.successor, res.SealedSuccessor, successorAAD(gr.Tenant.ID, family))
		if err != nil {
			return nil, errInvalidGrant("invalid refresh token", err)
		}
		next = string(pt)
	}
	u, err := s.users.User(ctx, gr.Tenant.ID, res.Family.UserID)
	if err != nil || !u.Active() {
		return nil, errInvalidGrant("the user is unknown or disabled", err)
	}
	scopes := res.Family.Scopes
	if req.ScopeRequested {
		scopes = slices.DeleteFunc(slices.Clone(req.Scope), func(sc string) bool { return !slices.Contains(res.Family.Scopes, sc) })
	}
	iss.access.Subject, iss.access.Scope = u.ID, scopes
	iss.scopes, iss.auth, iss.refresh = scopes, res.Family.AuthTime, next
	return s.finishUserTokens(ctx, gr, iss, &u, "")
}

func successorAAD(tenant, family string) string { return "successor|" + tenant + "|" + family }
