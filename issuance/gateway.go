package issuance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// AccessToken is what a verified access token says, for a policy
// enforcement point (the gateway check).
type AccessToken struct {
	JTI       string
	ClientID  string
	Subject   string
	Actor     string
	Scopes    []string
	Audience  []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	Parents   []string
	// JKT and X5T are what the token is bound to (cnf.jkt, RFC 9449 §6;
	// cnf.x5t#S256, RFC 8705 §3.1), "" for a bearer token: the enforcement
	// point must check the sender against them.
	JKT, X5T string
}

// VerifyAccessToken checks an access token of the tenant as introspection
// does, from the local replica and with no write: signature or seal,
// times, revocation of the token and of its parents, client enabled, user
// active. An unacceptable token gives an error wrapping ErrInvalidToken;
// an unknown tenant ErrNotFound; anything else means the server could not
// decide.
func (s *Server) VerifyAccessToken(ctx context.Context, tenant, token string) (AccessToken, error) {
	t, err := s.st.Tenant(ctx, tenant)
	if err != nil {
		return AccessToken{}, err
	}
	if t.Disabled {
		return AccessToken{}, fmt.Errorf("issuance: tenant %q: %w", tenant, ErrNotFound)
	}
	d, err := s.exchangeToken(ctx, t, token, TokenTypeAccessToken, s.cfg.Now())
	if err != nil {
		if e := asError(err); e.Status < 500 {
			return AccessToken{}, fmt.Errorf("%w: %s", ErrInvalidToken, e.Description)
		}
		return AccessToken{}, err
	}
	return AccessToken{JTI: d.JTI, ClientID: d.ClientID, Subject: d.Subject, Actor: actorSubject(d.Act), Scopes: d.Scope,
		Audience: d.Audience, IssuedAt: d.IssuedAt, ExpiresAt: d.ExpiresAt, Parents: d.Parents, JKT: d.JKT, X5T: d.X5T}, nil
}

// PhantomToken mints the phantom JWT of a verified access token for
// audience: same subject, client, scopes and actor, never outliving it,
// recording it as its parent (see exchange.go). The caller (the gateway
// inside the node) is trusted to have chosen the audience from its
// configuration.
func (s *Server) PhantomToken(ctx context.Context, tenant string, at AccessToken, audience string) (string, error) {
	if audience == "" {
		return "", errors.New("issuance: phantom token: no audience")
	}
	t, err := s.st.Tenant(ctx, tenant)
	if err != nil {
		return "", err
	}
	now := s.cfg.Now()
	iat := now.Truncate(time.Second)
	d := &tokenData{ClientID: at.ClientID, Subject: at.Subject, Scope: at.Scopes, Audience: []string{audience},
		IssuedAt: iat, ExpiresAt: iat.Add(s.cfg.AccessTokenTTL), Parents: append(append([]string(nil), at.Parents...), at.JTI)}
	if at.Actor != "" {
		d.Act = &Actor{Subject: at.Actor}
	}
	if at.ExpiresAt.Before(d.ExpiresAt) {
		d.ExpiresAt = at.ExpiresAt
	}
	if !d.ExpiresAt.After(iat) {
		return "", fmt.Errorf("%w: expires too soon", ErrInvalidToken)
	}
	return s.minter.mint(ctx, t, FormatJWT, d, now)
}

// AuthenticateClient authenticates a confidential client of the tenant by
// the HTTP Basic credentials in h (client_secret_basic), for endpoints
// outside the token endpoint (the gateway sidecar's rules). Errors are
// *Error (invalid_client).
func (s *Server) AuthenticateClient(ctx context.Context, tenant string, h http.Header) (Client, error) {
	cc, err := readClientCredentials(h, url.Values{})
	if err != nil {
		return Client{}, err
	}
	return s.authenticateClient(ctx, tenant, cc, s.cfg.Now())
}

// WriteError renders err as the RFC 6749 §5.2 JSON error.
func (s *Server) WriteError(w http.ResponseWriter, r *http.Request, err error) {
	s.writeError(w, r, err)
}

// Policy is the configured policy engine (nil if none).
func (s *Server) Policy() PolicyEngine { return s.cfg.Policy }
