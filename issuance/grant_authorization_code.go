package issuance

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"time"
)

// codePrefix starts an authorization code sealed with the static code key;
// codes sealed with the tenant's rotating key start with codePrefixV2
// (seal_rotating.go).
const codePrefix = "tlyc1."

// authCode is what an authorization code carries, sealed (RFC 6749 §4.1.2
// leaves the code's format to the server): everything it is bound to, so
// issuing one writes nothing. Single use is enforced at redemption, where
// its SHA-256 is recorded by one replicated command.
type authCode struct {
	ClientID    string   `json:"c"`
	RedirectURI string   `json:"r"`
	Challenge   string   `json:"ch"`
	Nonce       string   `json:"n,omitempty"`
	UserID      string   `json:"u"`
	Scopes      []string `json:"s"`
	AuthTime    int64    `json:"a"`            // unix seconds
	Expires     int64    `json:"e"`            // unix nanoseconds
	Random      string   `json:"x"`            // 128 bits: no two codes are equal
	DPoPJKT     string   `json:"dj,omitempty"` // RFC 9449 §10 (dpop.go)
}

func codeAAD(tenant string) string { return "code|" + tenant }

func (s *Server) newCode(ctx context.Context, tenant string, p *pending, userID string, authTime, now time.Time) (string, error) {
	var b [16]byte
	if _, err := s.cfg.Rand.Read(b[:]); err != nil {
		return "", err
	}
	c := authCode{ClientID: p.ClientID, RedirectURI: p.RedirectURI, Challenge: p.Challenge, Nonce: p.Nonce,
		UserID: userID, Scopes: p.Scopes, AuthTime: authTime.Unix(), Expires: now.Add(s.cfg.CodeTTL).UnixNano(),
		Random: base64.RawURLEncoding.EncodeToString(b[:]), DPoPJKT: p.DPoPJKT}
	return s.sealFlow(ctx, tenant, s.flow.codes, codePrefix, codePrefixV2, c, codeAAD(tenant)) // seal_rotating.go
}

// verifyPKCE implements RFC 7636 §4.6 for S256: BASE64URL(SHA256(verifier))
// equals the challenge, compared in constant time. The verifier must be 43
// to 128 unreserved characters (§4.1).
func verifyPKCE(verifier, challenge string) bool {
	if len(verifier) < 43 || len(verifier) > 128 {
		return false
	}
	for i := 0; i < len(verifier); i++ {
		c := verifier[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	h := sha256.Sum256([]byte(verifier))
	got := base64.RawURLEncoding.EncodeToString(h[:])
	return subtle.ConstantTimeCompare([]byte(got), []byte(challenge)) == 1
}

func errInvalidGrant(desc string, debug error) *Error {
	return newError(CodeInvalidGrant, 400, desc, debug)
}

// authorizationCodeGrant redeems a code, RFC 6749 §4.1.3 with PKCE
// (RFC 7636 §4.5, §4.6). Everything is checked locally against the sealed
// code; then one replicated command records the code as used and creates
// the refresh family. A code presented twice is invalid_grant and the
// tokens issued from it are revoked (RFC 6749 §4.1.2).
type authorizationCodeGrant struct{ s *Server }

func (g *authorizationCodeGrant) HandleGrant(ctx context.Context, gr GrantRequest) (*TokenResponse, error) {
	s, req, c := g.s, gr.Request, gr.Client
	if req.Code == "" {
		return nil, errInvalidRequest("missing code")
	}
	var code authCode
	if err := s.openFlow(ctx, gr.Tenant.ID, s.flow.codes, codePrefix, codePrefixV2, req.Code, codeAAD(gr.Tenant.ID), &code); err != nil {
		return nil, errInvalidGrant("invalid authorization code", err)
	}
	switch {
	case code.ClientID != c.ID:
		return nil, errInvalidGrant("code was issued to another client", nil)
	case gr.Now.UnixNano() >= code.Expires:
		return nil, errInvalidGrant("code expired", nil)
	case req.RedirectURI != code.RedirectURI:
		// RFC 6749 §4.1.3: required and identical when it was in the
		// authorization request; we always bind the one used.
		return nil, errInvalidGrant("redirect_uri does not match the authorization request", nil)
	case req.CodeVerifier == "":
		return nil, errInvalidGrant("code_verifier required", nil)
	case !verifyPKCE(req.CodeVerifier, code.Challenge):
		return nil, errInvalidGrant("code_verifier does not match the code_challenge", nil)
	case code.DPoPJKT != "" && code.DPoPJKT != gr.jkt():
		return nil, errInvalidDPoP("the code is bound to another DPoP key (dpop_jkt)", nil)
	}
	u, err := s.users.User(ctx, gr.Tenant.ID, code.UserID)
	if err != nil || !u.Active() {
		return nil, errInvalidGrant("the user is unknown or disabled", err)
	}
	iss, err := s.prepareUserTokens(ctx, gr, code.UserID, code.Scopes, time.Unix(code.AuthTime, 0))
	if err != nil {
		return nil, err
	}
	_, err = s.grantW.RedeemCode(ctx, CodeRedemption{
		Tenant: gr.Tenant.ID, CodeHash: sha256Sum(req.Code), CodeExpires: time.Unix(0, code.Expires),
		ClientID: c.ID, UserID: code.UserID, Scopes: code.Scopes, AuthTime: time.Unix(code.AuthTime, 0),
		Family: iss.family, AccessToken: iss.accessRef(),
	})
	switch {
	case errors.Is(err, ErrCodeReused):
		return nil, errInvalidGrant("code already used; tokens issued from it are revoked", err)
	case errors.Is(err, ErrGrantInvalid), errors.Is(err, ErrExpiredToken):
		return nil, errInvalidGrant("invalid authorization code", err)
	case err != nil:
		return nil, errUnavailable("the code could not be redeemed now, retry", err)
	}
	return s.finishUserTokens(ctx, gr, iss, &u, code.Nonce)
}
