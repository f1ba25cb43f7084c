package issuance

import (
	"net/http"
	"slices"
	"time"
)

// handleToken is the token endpoint, RFC 6749 §3.2: parse the request once,
// dispatch on grant_type, authenticate the client (RFC 6749 §2.3.1), check
// that it may use the grant (§5.2 unauthorized_client), and let the grant's
// handler decide. Successful responses follow §5.1, errors §5.2.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx := r.Context()
	grantType := grantUnknown
	var tenantID, clientID string // of the authenticated client
	resp, err := func() (*TokenResponse, error) {
		t, err := s.tenant(ctx, r)
		if err != nil {
			return nil, err
		}
		req, err := parseTokenRequest(r, s.cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		h, ok := s.grants[req.GrantType]
		if !ok {
			return nil, newError(CodeUnsupportedGrantType, http.StatusBadRequest, "grant type not supported", nil)
		}
		grantType = req.GrantType
		now := s.cfg.Now()
		authenticate := s.authenticateClient
		if req.GrantType != GrantClientCredentials {
			// Public clients use the end-user grants (RFC 6749 §2.1).
			authenticate = s.authenticateFlowClient
		}
		proof, err := s.checkDPoP(r, t.ID, now)
		if err != nil {
			return nil, err
		}
		c, err := authenticate(ctx, t.ID, req.Client, now)
		if err != nil {
			return nil, err
		}
		tenantID, clientID = t.ID, c.ID
		if !slices.Contains(c.GrantTypes, req.GrantType) {
			return nil, newError(CodeUnauthorizedClient, http.StatusBadRequest, "client is not allowed to use this grant type", nil)
		}
		if err := s.useDPoP(c, proof, now); err != nil {
			return nil, err
		}
		return h.HandleGrant(ctx, GrantRequest{Tenant: t, Client: c, Request: req, Now: now, ClientIP: clientIP(r), DPoP: proof,
			Device: s.devicePosture(r)})
	}()
	if err != nil {
		s.metrics.token(ctx, grantType, outcomeOf(err), time.Since(start))
		s.writeError(w, r, err)
		return
	}
	s.metrics.token(ctx, grantType, outcomeOK, time.Since(start))
	s.respond(w, r, http.StatusOK, resp, "no-store")
	s.observeScopes(r, tenantID, clientID, grantType, resp)
}
