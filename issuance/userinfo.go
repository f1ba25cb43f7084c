package issuance

import (
	"errors"
	"net/http"
	"slices"
	"strings"
)

// userinfo is the OIDC Core §5.3.2 response; profile and email claims
// appear with their scopes (§5.4).
type userinfo struct {
	Subject           string `json:"sub"`
	Name              string `json:"name,omitempty"`
	PreferredUsername string `json:"preferred_username,omitempty"`
	Email             string `json:"email,omitempty"`
	EmailVerified     *bool  `json:"email_verified,omitempty"`
}

// bearerError renders an RFC 6750 §3 error: a WWW-Authenticate Bearer
// challenge and a JSON body.
func (s *Server) bearerError(w http.ResponseWriter, r *http.Request, status int, code, desc string) {
	ch := `Bearer realm="` + s.Issuer(r.PathValue("tenant")) + `"`
	if code != "" {
		ch += `, error="` + code + `", error_description="` + desc + `"`
	}
	w.Header().Set("WWW-Authenticate", ch)
	body := []byte(`{}`)
	if code != "" {
		body = []byte(`{"error":"` + code + `","error_description":"` + desc + `"}`)
	}
	writeJSON(w, status, body, "no-store")
}

// handleUserinfo is the UserInfo endpoint, OIDC Core §5.3, GET and POST,
// with the access token in the Authorization header (RFC 6750 §2.1). The
// token must be live, not revoked, carry the openid scope and name an
// active user. It reads only the local replica.
func (s *Server) handleUserinfo(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	t, err := s.tenant(ctx, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	authz := r.Header.Values("Authorization")
	if len(authz) == 0 {
		s.bearerError(w, r, http.StatusUnauthorized, "", "")
		return
	}
	scheme, tok, ok := strings.Cut(authz[0], " ")
	isDPoP := strings.EqualFold(scheme, "DPoP") // dpop.go
	if len(authz) > 1 || !ok || !(strings.EqualFold(scheme, "Bearer") || isDPoP) || tok == "" {
		s.bearerError(w, r, http.StatusBadRequest, "invalid_request", "malformed Authorization header")
		return
	}
	now := s.cfg.Now()
	d, err := s.readToken(ctx, t.ID, strings.TrimSpace(tok), now, true)
	switch {
	case errors.Is(err, ErrInvalidToken):
		s.bearerError(w, r, http.StatusUnauthorized, "invalid_token", "the access token is invalid or expired")
		return
	case err != nil:
		s.writeError(w, r, errUnavailable("keys unavailable", err))
		return
	}
	if s.st.Revoked(ctx, t.ID, d.JTI) {
		s.bearerError(w, r, http.StatusUnauthorized, "invalid_token", "the access token is revoked")
		return
	}
	if !s.checkResourceDPoP(w, r, strings.TrimSpace(tok), d, isDPoP, now) {
		return
	}
	if !slices.Contains(d.Scope, ScopeOpenID) {
		s.bearerError(w, r, http.StatusForbidden, "insufficient_scope", "the access token lacks the openid scope")
		return
	}
	if c, err := s.st.Client(ctx, t.ID, d.ClientID); err != nil || c.Disabled {
		s.bearerError(w, r, http.StatusUnauthorized, "invalid_token", "the access token is invalid or expired")
		return
	}
	u, err := s.users.User(ctx, t.ID, d.Subject)
	if err != nil || !u.Active() || (!u.LockedAt.IsZero() && d.IssuedAt.Unix() <= u.LockedAt.Unix()) {
		s.bearerError(w, r, http.StatusUnauthorized, "invalid_token", "the access token is invalid or expired")
		return
	}
	out := userinfo{Subject: u.ID}
	if slices.Contains(d.Scope, ScopeProfile) {
		out.Name, out.PreferredUsername = u.Name, u.Username
	}
	if slices.Contains(d.Scope, ScopeEmail) && u.Email != "" {
		v := u.EmailVerified
		out.Email, out.EmailVerified = u.Email, &v
	}
	s.respond(w, r, http.StatusOK, out, "no-store")
}
