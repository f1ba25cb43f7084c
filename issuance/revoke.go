package issuance

import (
	"context"
	"errors"
	"net/http"
	"strings"
)

// RevocationReason is the Revocation.Reason of revocations requested by a
// client at the revocation endpoint.
const RevocationReason = "rfc7009"

// handleRevoke is the revocation endpoint, RFC 7009 §2. The caller
// authenticates like at the token endpoint.
//
//   - A token that is not a token of this tenant, has expired or is already
//     revoked gives 200 with nothing written (RFC 7009 §2.2: invalid tokens
//     do not cause an error; there is nothing left to revoke).
//   - A valid token issued to another client is refused (RFC 7009 §2.1:
//     "the request is refused") with 400 unauthorized_client: the caller is
//     not authorized to act on that token. This reveals to an authenticated
//     client that the string is a live token of someone else, which it
//     could learn by presenting the token anyway.
//   - Otherwise the revocation is proposed through the Revoker (a quorum
//     write) and 200 is returned once it is applied locally. A failing
//     Revoker gives 503 temporarily_unavailable, so the client retries.
//
// token_type_hint is ignored: the token's shape decides (RFC 7009 §2.1
// lets the server extend its search beyond the hint).
func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	err := func() error {
		t, err := s.tenant(ctx, r)
		if err != nil {
			return err
		}
		form, err := readForm(r, s.cfg.MaxBodyBytes)
		if err != nil {
			return err
		}
		cc, err := readClientCredentials(r.Header, form)
		if err != nil {
			return err
		}
		now := s.cfg.Now()
		authenticate := s.authenticateClient
		if s.users != nil {
			// Public clients revoke their own tokens by client_id
			// (RFC 7009 §2.1, RFC 6749 §2.1).
			authenticate = s.authenticateFlowClient
		}
		c, err := authenticate(ctx, t.ID, cc, now)
		if err != nil {
			return err
		}
		token := form.Get(paramToken)
		if token == "" {
			return errInvalidRequest("missing token")
		}
		if s.users != nil && strings.HasPrefix(token, refreshPrefix) {
			return s.revokeRefresh(ctx, t.ID, c, token)
		}
		d, err := s.readToken(ctx, t.ID, token, now, false)
		if errors.Is(err, ErrInvalidToken) {
			return nil
		}
		if err != nil {
			return errUnavailable("keys unavailable", err)
		}
		if d.ClientID != c.ID {
			return newError(CodeUnauthorizedClient, http.StatusBadRequest, "token was not issued to this client", nil)
		}
		if !now.Before(d.ExpiresAt) || s.st.Revoked(ctx, t.ID, d.JTI) {
			return nil
		}
		err = s.rv.Revoke(ctx, Revocation{
			Tenant:    t.ID,
			JTI:       d.JTI,
			ClientID:  d.ClientID,
			Subject:   d.Subject,
			ExpiresAt: d.ExpiresAt,
			Reason:    RevocationReason,
		})
		if err != nil {
			return errUnavailable("revocation could not be committed, retry", err)
		}
		return nil
	}()
	if err != nil {
		s.metrics.revoke(ctx, outcomeOf(err))
		s.writeError(w, r, err)
		return
	}
	s.metrics.revoke(ctx, outcomeOK)
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(http.StatusOK)
}

// revokeRefresh revokes the family of a refresh token (RFC 7009 §2.1: and,
// as RFC 9700 §4.14.2 recommends, the access tokens issued from it). A
// token that is not ours or whose family is gone is 200 with nothing
// written; a family of another client is refused.
func (s *Server) revokeRefresh(ctx context.Context, tenant string, c Client, token string) error {
	family, _, _, ok := s.parseRefreshToken(tenant, token)
	if !ok {
		return nil
	}
	err := s.grantW.RevokeFamily(ctx, tenant, c.ID, family, RevocationReason)
	switch {
	case err == nil, errors.Is(err, ErrNotFound):
		return nil
	case errors.Is(err, ErrGrantInvalid):
		return newError(CodeUnauthorizedClient, http.StatusBadRequest, "token was not issued to this client", nil)
	default:
		return errUnavailable("revocation could not be committed, retry", err)
	}
}
