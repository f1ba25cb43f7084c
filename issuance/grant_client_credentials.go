package issuance

import (
	"context"
	"slices"
	"time"
)

// Access-token lifetimes: DefaultAccessTokenTTL is the lifetime of a client
// that sets none (Config.AccessTokenTTL overrides it); a client's own
// lifetime is between MinAccessTokenTTL and MaxAccessTokenTTL. These are the
// only definitions; the admin API and the node use them.
const (
	DefaultAccessTokenTTL = 10 * time.Minute
	MinAccessTokenTTL     = time.Minute
	MaxAccessTokenTTL     = time.Hour
)

// clientCredentialsGrant implements the client credentials grant, RFC 6749
// §4.4. The client is its own resource owner: the token's subject is its
// client_id (RFC 9068 §2.2). No refresh token is issued (RFC 6749 §4.4.3).
// Issuing performs no write at all.
type clientCredentialsGrant struct {
	mint *minter
	ttl  time.Duration
	// decide evaluates the contextual authorisation policy (policy.go).
	decide func(context.Context, PolicyInput) (PolicyDecision, error)
}

func (g *clientCredentialsGrant) HandleGrant(ctx context.Context, gr GrantRequest) (*TokenResponse, error) {
	c, req := gr.Client, gr.Request

	// RFC 6749 §3.3: an absent scope means the client's default scope, here
	// every scope it is allowed; a requested scope outside that set is
	// invalid_scope (no silent narrowing).
	scope := c.Scopes
	if req.ScopeRequested {
		for _, s := range req.Scope {
			if !slices.Contains(c.Scopes, s) {
				return nil, errInvalidScope("requested scope is not allowed for this client")
			}
		}
		scope = req.Scope
	}

	// RFC 8707 §2: each resource must be an audience the client may obtain
	// tokens for. Without resource, the token is for all of the client's
	// audiences, or, for a client configured with none, for the tenant
	// issuer itself.
	aud := c.Audiences
	if len(req.Resources) > 0 {
		for _, r := range req.Resources {
			if !slices.Contains(c.Audiences, r) {
				return nil, errInvalidTarget("requested resource is not allowed for this client")
			}
		}
		aud = req.Resources
	}
	if len(aud) == 0 {
		aud = []string{g.mint.issuer(gr.Tenant.ID)}
	}

	if g.decide != nil {
		dec, err := g.decide(ctx, PolicyInput{Tenant: gr.Tenant.ID, ClientID: c.ID, GrantType: GrantClientCredentials, Subject: c.ID,
			RequestedScopes: req.Scope, GrantedScopes: scope, Audience: aud, ClientIP: gr.ClientIP, Time: gr.Now, Device: gr.Device})
		if err != nil {
			return nil, err
		}
		scope = dec.narrow(scope)
	}

	ttl := c.AccessTokenTTL
	if ttl <= 0 {
		ttl = g.ttl
	}
	iat := gr.Now.Truncate(time.Second)
	d := &tokenData{
		ClientID:  c.ID,
		Subject:   c.ID,
		Scope:     scope,
		Audience:  aud,
		IssuedAt:  iat,
		ExpiresAt: iat.Add(ttl.Truncate(time.Second)),
		JKT:       gr.jkt(),
	}
	if !d.ExpiresAt.After(iat) {
		d.ExpiresAt = iat.Add(time.Second)
	}
	format := c.TokenFormat
	if format != FormatOpaque {
		format = FormatJWT
	}
	tok, err := g.mint.mint(ctx, gr.Tenant, format, d, gr.Now)
	if err != nil {
		return nil, err
	}
	return &TokenResponse{
		AccessToken: tok,
		TokenType:   gr.tokenType(),
		ExpiresIn:   d.ExpiresAt.Unix() - iat.Unix(),
		Scope:       joinScope(scope),
	}, nil
}
