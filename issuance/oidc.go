package issuance

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// userIssue is what an end-user grant decided before its command is
// proposed: the access token (with its jti chosen, so the command can
// record it) and, with offline_access, the next refresh token.
type userIssue struct {
	access  *tokenData
	format  TokenFormat
	refresh string
	family  *NewFamily
	scopes  []string
	auth    time.Time
}

func (i *userIssue) accessRef() AccessTokenRef {
	return AccessTokenRef{JTI: i.access.JTI, ExpiresAt: i.access.ExpiresAt}
}

// prepareUserTokens decides the tokens of an end-user grant for user with
// scopes. A refresh family is started when offline_access was granted and
// the client may use the refresh_token grant (OIDC Core §11).
func (s *Server) prepareUserTokens(ctx context.Context, gr GrantRequest, userID string, scopes []string, authTime time.Time) (*userIssue, error) {
	iss, err := s.prepareAccess(gr, userID, scopes, authTime)
	if err != nil {
		return nil, err
	}
	if slices.Contains(scopes, ScopeOfflineAccess) && slices.Contains(gr.Client.GrantTypes, GrantRefreshToken) {
		fam, err := randomID(s.cfg.Rand)
		if err != nil {
			return nil, errUnavailable("randomness unavailable", err)
		}
		tok, err := s.newRefreshToken(gr.Tenant.ID, fam, 1, gr.refreshBound(ctx))
		if err != nil {
			return nil, errUnavailable("randomness unavailable", err)
		}
		iss.refresh = tok
		iss.family = &NewFamily{ID: fam, Hash: sha256Sum(tok), ExpiresAt: gr.Now.Add(s.cfg.RefreshTTL), IdleTimeout: s.cfg.RefreshIdleTimeout}
	}
	return iss, nil
}

// prepareAccess decides the access token: subject the user, the client's
// audiences (or the issuer), the client's lifetime.
func (s *Server) prepareAccess(gr GrantRequest, userID string, scopes []string, authTime time.Time) (*userIssue, error) {
	c := gr.Client
	aud := c.Audiences
	if len(aud) == 0 {
		aud = []string{s.Issuer(gr.Tenant.ID)}
	}
	ttl := c.AccessTokenTTL
	if ttl <= 0 {
		ttl = s.cfg.AccessTokenTTL
	}
	jti, err := NewJTI(s.cfg.Rand)
	if err != nil {
		return nil, errUnavailable("randomness unavailable", err)
	}
	iat := gr.Now.Truncate(time.Second)
	d := &tokenData{JTI: jti, ClientID: c.ID, Subject: userID, Scope: scopes, Audience: aud, IssuedAt: iat,
		ExpiresAt: iat.Add(max(ttl.Truncate(time.Second), time.Second)), JKT: gr.jkt()}
	format := c.TokenFormat
	if format != FormatOpaque {
		format = FormatJWT
	}
	return &userIssue{access: d, format: format, scopes: scopes, auth: authTime}, nil
}

// finishUserTokens mints the decided tokens once the command committed:
// the access token, and with openid an ID token (OIDC Core §3.1.3.3).
func (s *Server) finishUserTokens(ctx context.Context, gr GrantRequest, iss *userIssue, u *User, nonce string) (*TokenResponse, error) {
	if err := s.decideUserGrant(ctx, gr, iss, u); err != nil { // policy.go
		return nil, err
	}
	tok, err := s.minter.mint(ctx, gr.Tenant, iss.format, iss.access, gr.Now)
	if err != nil {
		return nil, err
	}
	resp := &TokenResponse{
		AccessToken:  tok,
		TokenType:    gr.tokenType(),
		ExpiresIn:    iss.access.ExpiresAt.Unix() - iss.access.IssuedAt.Unix(),
		Scope:        joinScope(iss.scopes),
		RefreshToken: iss.refresh,
	}
	if slices.Contains(iss.scopes, ScopeOpenID) {
		if resp.IDToken, err = s.signIDToken(ctx, gr, u, iss, nonce, tok); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// idClaims are the ID token claims, OIDC Core §2 and §3.1.3.6.
type idClaims struct {
	Issuer   string   `json:"iss"`
	Subject  string   `json:"sub"`
	Audience audience `json:"aud"`
	Expires  int64    `json:"exp"`
	IssuedAt int64    `json:"iat"`
	AuthTime int64    `json:"auth_time,omitempty"`
	Nonce    string   `json:"nonce,omitempty"`
	AtHash   string   `json:"at_hash,omitempty"`
	AZP      string   `json:"azp"`
}

func (c *idClaims) GetExpirationTime() (*jwt.NumericDate, error) { return numericDate(c.Expires), nil }
func (c *idClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return numericDate(c.IssuedAt), nil }
func (c *idClaims) GetNotBefore() (*jwt.NumericDate, error)      { return nil, nil }
func (c *idClaims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *idClaims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c *idClaims) GetAudience() (jwt.ClaimStrings, error) {
	return jwt.ClaimStrings(c.Audience), nil
}

// atHash is OIDC Core §3.1.3.6: the left half of the hash of the access
// token, with the hash of the signing alg (SHA-512 for EdDSA/Ed25519, as
// verifiers such as go-oidc compute it).
func atHash(alg, token string) string {
	var h hash.Hash
	switch alg {
	case AlgEdDSA:
		h = sha512.New()
	default:
		h = sha256.New()
	}
	h.Write([]byte(token))
	sum := h.Sum(nil)
	return base64.RawURLEncoding.EncodeToString(sum[:len(sum)/2])
}

func (s *Server) signIDToken(ctx context.Context, gr GrantRequest, u *User, iss *userIssue, nonce, accessToken string) (string, error) {
	set, err := s.keys.get(ctx, s.st, gr.Tenant.ID)
	if err != nil {
		return "", errUnavailable("keys unavailable", err)
	}
	k := set.signingKey(gr.Now, gr.Tenant.SigningAlg)
	if k == nil {
		return "", errUnavailable("no signing key available", errNoKey)
	}
	iat := gr.Now.Truncate(time.Second)
	exp := iat.Add(s.cfg.IDTokenTTL)
	if !k.meta.ExpiresAt.IsZero() && k.meta.ExpiresAt.Before(exp) {
		exp = k.meta.ExpiresAt
	}
	c := &idClaims{Issuer: s.Issuer(gr.Tenant.ID), Subject: u.ID, Audience: audience{gr.Client.ID},
		Expires: exp.Unix(), IssuedAt: iat.Unix(), Nonce: nonce, AtHash: atHash(k.meta.Alg, accessToken), AZP: gr.Client.ID}
	if !iss.auth.IsZero() {
		c.AuthTime = iss.auth.Unix()
	}
	t := &jwt.Token{Header: map[string]any{"typ": "JWT", "alg": k.method.Alg(), "kid": k.meta.ID}, Claims: c, Method: k.method}
	out, err := t.SignedString(k.signer)
	if err != nil {
		return "", errUnavailable("token signing failed", err)
	}
	return out, nil
}

// ----- refresh tokens -----

// refreshPrefix starts every refresh token:
//
//	tlyr1.<family>.<generation>.<secret>.<mac>
//
// family is a random 128-bit id, generation counts rotations from 1,
// secret is 256 random bits and mac is HMAC-SHA256 (truncated to 128 bits)
// under a KEK-derived key over tenant, family, generation and secret, so a
// token we did not issue is refused without a write. The family stores
// only the SHA-256 of its current token.
const refreshPrefix = "tlyr1."

func randomID(rnd interface{ Read([]byte) (int, error) }) (string, error) {
	var b [16]byte
	if _, err := rnd.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func (s *Server) refreshMAC(tenant, family string, gen uint64, secret, jkt string) string {
	m := hmac.New(sha256.New, s.flow.refreshMAC)
	fmt.Fprintf(m, "%s\x00%s\x00%d\x00%s%s", tenant, family, gen, secret, refreshBinding(jkt))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// newRefreshToken makes a refresh token; with jkt set it is bound to that
// DPoP key, or to a client certificate (jkt a certBinding): the binding is
// a fifth, MAC-covered part (dpop.go, cnf.go).
func (s *Server) newRefreshToken(tenant, family string, gen uint64, jkt string) (string, error) {
	var b [32]byte
	if _, err := s.cfg.Rand.Read(b[:]); err != nil {
		return "", err
	}
	secret := base64.RawURLEncoding.EncodeToString(b[:])
	g := strconv.FormatUint(gen, 10)
	bound := ""
	if jkt != "" {
		bound = jkt + "."
	}
	return refreshPrefix + family + "." + g + "." + secret + "." + bound + s.refreshMAC(tenant, family, gen, secret, jkt), nil
}

// parseRefreshToken checks a refresh token's form and MAC and returns its
// family, generation and the DPoP key thumbprint or the certBinding it is
// bound to ("" for an unbound token).
func (s *Server) parseRefreshToken(tenant, tok string) (family string, gen uint64, jkt string, ok bool) {
	if len(tok) > 256 {
		return "", 0, "", false
	}
	rest, found := strings.CutPrefix(tok, refreshPrefix)
	if !found {
		return "", 0, "", false
	}
	parts := strings.Split(rest, ".")
	if len(parts) == 5 {
		if _, cert := certBound(parts[3]); len(parts[3]) == 43 || cert {
			jkt = parts[3]
			parts = append(parts[:3], parts[4])
		}
	}
	if len(parts) != 4 || len(parts[0]) != 22 || len(parts[2]) != 43 || len(parts[3]) != 22 {
		return "", 0, "", false
	}
	gen, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil || gen == 0 || strconv.FormatUint(gen, 10) != parts[1] {
		return "", 0, "", false
	}
	want := s.refreshMAC(tenant, parts[0], gen, parts[2], jkt)
	if !hmac.Equal([]byte(want), []byte(parts[3])) {
		return "", 0, "", false
	}
	return parts[0], gen, jkt, true
}
