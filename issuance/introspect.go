package issuance

import (
	"context"
	"errors"
	"net/http"
)

// introspection is the RFC 7662 §2.2 response for an active token.
type introspection struct {
	Active    bool     `json:"active"`
	Scope     string   `json:"scope,omitempty"`
	ClientID  string   `json:"client_id"`
	TokenType string   `json:"token_type"`
	Exp       int64    `json:"exp"`
	Iat       int64    `json:"iat"`
	Nbf       int64    `json:"nbf,omitempty"`
	Sub       string   `json:"sub,omitempty"`
	Aud       audience `json:"aud,omitempty"`
	Iss       string   `json:"iss"`
	Jti       string   `json:"jti"`
	// Cnf is what the token is bound to: a client certificate (RFC 8705
	// §3.2) or a DPoP key (RFC 9449 §6.2).
	Cnf *confirmation `json:"cnf,omitempty"`
}

// inactive is the whole response for any token that is not active: RFC 7662
// §2.2 says nothing more should be revealed.
var inactive = []byte(`{"active":false}`)

// handleIntrospect is the introspection endpoint, RFC 7662 §2. The caller
// authenticates like at the token endpoint; any enabled confidential client
// of the tenant may introspect any token of the tenant (RFC 7662 §2.1 leaves
// the policy to the server). token_type_hint is only a hint: the token's
// shape decides. A token is inactive when it is malformed, of another tenant
// (unknown kid, other issuer, seal that does not authenticate for this
// tenant), expired beyond Leeway, revoked, when its client is now disabled
// or deleted, or when the user it was issued to is now disabled, locked or
// deleted. Introspection performs no write.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	out, err := func() (*introspection, error) {
		t, err := s.tenant(ctx, r)
		if err != nil {
			return nil, err
		}
		form, err := readForm(r, s.cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		cc, err := readClientCredentials(r.Header, form)
		if err != nil {
			return nil, err
		}
		now := s.cfg.Now()
		caller, err := s.authenticateClient(ctx, t.ID, cc, now)
		if err != nil {
			return nil, err
		}
		token := form.Get(paramToken)
		if token == "" {
			return nil, errInvalidRequest("missing token")
		}
		d, err := s.readToken(ctx, t.ID, token, now, true)
		if errors.Is(err, ErrInvalidToken) {
			// Not a token of this tenant at all: a guess (alerts.go).
			s.introspectMiss(ctx, t.ID, caller.ID)
			return nil, nil
		}
		if err != nil {
			return nil, errUnavailable("keys unavailable", err)
		}
		if s.RevokedAny(ctx, t.ID, d.JTI, d.Parents) {
			return nil, nil
		}
		c, err := s.st.Client(ctx, t.ID, d.ClientID)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, nil
		case err != nil:
			return nil, errUnavailable("client lookup failed", err)
		case c.Disabled:
			return nil, nil
		}
		if active, err := s.subjectActive(ctx, t.ID, d); err != nil {
			return nil, errUnavailable("user lookup failed", err)
		} else if !active {
			return nil, nil
		}
		return &introspection{
			Active:    true,
			Scope:     joinScope(d.Scope),
			ClientID:  d.ClientID,
			TokenType: tokenTypeOf(d),
			Exp:       d.ExpiresAt.Unix(),
			Iat:       d.IssuedAt.Unix(),
			Nbf:       unixOrZero(d.NotBefore),
			Sub:       d.Subject,
			Aud:       audience(d.Audience),
			Iss:       d.Issuer,
			Jti:       d.JTI,
			Cnf:       confirmationOf(&d),
		}, nil
	}()
	switch {
	case err != nil:
		s.metrics.introspect(ctx, outcomeOf(err))
		s.writeError(w, r, err)
	case out == nil:
		s.metrics.introspect(ctx, outcomeInactive)
		writeJSON(w, http.StatusOK, inactive, "no-store")
	default:
		s.metrics.introspect(ctx, outcomeActive)
		s.respond(w, r, http.StatusOK, out, "no-store")
	}
}

// subjectActive reports whether the user a token was issued to may still
// use it. A token whose subject is its client (client credentials) has no
// user.
func (s *Server) subjectActive(ctx context.Context, tenant string, d tokenData) (bool, error) {
	if s.users == nil || d.Subject == "" || d.Subject == d.ClientID {
		return true, nil
	}
	u, err := s.users.User(ctx, tenant, d.Subject)
	switch {
	case errors.Is(err, ErrNotFound):
		return false, nil
	case err != nil:
		return false, err
	}
	// Tokens issued before the user's last lock stay dead after it is
	// enabled again (iat has whole seconds: the lock's second counts).
	if !u.LockedAt.IsZero() && d.IssuedAt.Unix() <= u.LockedAt.Unix() {
		return false, nil
	}
	return u.Active(), nil
}
