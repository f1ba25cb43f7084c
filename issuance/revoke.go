package issuance

import (
	"errors"
	"net/http"
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
		c, err := s.authenticateClient(ctx, t.ID, cc, now)
		if err != nil {
			return err
		}
		token := form.Get(paramToken)
		if token == "" {
			return errInvalidRequest("missing token")
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
