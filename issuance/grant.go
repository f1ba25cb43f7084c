package issuance

import (
	"context"
	"time"

	"github.com/tallyauth/tally/dpop"
)

// GrantRequest is what a grant handler decides from: an authenticated client
// that may use the grant type, its tenant, the parsed request and the time.
type GrantRequest struct {
	Tenant  Tenant
	Client  Client
	Request *TokenRequest
	Now     time.Time
	// ClientIP is the caller's address, for rate limits.
	ClientIP string
	// Device is the device posture a trusted proxy asserted (policy.go).
	Device map[string]string
	// DPoP is the request's checked DPoP proof, nil without one (dpop.go).
	DPoP *dpop.Proof
}

// TokenResponse is the RFC 6749 §5.1 successful token response.
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
	// RefreshToken (RFC 6749 §5.1) and IDToken (OIDC Core §3.1.3.3) are
	// issued by the end-user grants.
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
	// IssuedTokenType is the token exchange's issued_token_type (RFC 8693
	// §2.2.1).
	IssuedTokenType string `json:"issued_token_type,omitempty"`
}

// GrantHandler issues tokens for one grant type (RFC 6749 §4). The token
// endpoint dispatches to it by grant_type after parsing the request,
// authenticating the client and checking that the client may use the grant.
// Errors it returns should be *Error; anything else is rendered as
// server_error. Implementations are safe for concurrent use.
type GrantHandler interface {
	HandleGrant(ctx context.Context, req GrantRequest) (*TokenResponse, error)
}

// grantHandlers builds the registry of supported grant types. Adding a grant
// is one file with its handler plus one line here; discovery advertises the
// registry's keys.
func (s *Server) grantHandlers() map[string]GrantHandler {
	m := map[string]GrantHandler{
		GrantClientCredentials: &clientCredentialsGrant{mint: s.minter, ttl: s.cfg.AccessTokenTTL, decide: s.decide},
	}
	if s.users != nil {
		m[GrantAuthorizationCode] = &authorizationCodeGrant{s: s}
		m[GrantRefreshToken] = &refreshTokenGrant{s: s}
		m[GrantDeviceCode] = &deviceCodeGrant{s: s}
	}
	m[GrantTokenExchange] = &tokenExchangeGrant{s: s}
	return m
}
