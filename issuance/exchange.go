package issuance

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token exchange, RFC 8693.
//
// A client registered for GrantTokenExchange trades a token of its tenant
// (subject_token) for a short-lived RFC 9068 JWT for one of its audiences:
//
//   - without actor_token it is a phantom token: the JWT carries the
//     subject token's subject, client_id and scopes (intersected with the
//     requested scope and with the exchanging client's scopes, which say
//     what it may hand to its audiences), aud is the requested audience or
//     resource, and it never outlives the subject token. A gateway uses it
//     to turn an external opaque token into an internal JWT.
//   - with actor_token it is delegation (RFC 8693 §1.1): client_id is the
//     exchanging client and the act claim names the actor, nesting the
//     subject token's own act (the chain of earlier actors, §4.1). If the
//     subject token carries may_act (§4.4), the actor must be the one it
//     names.
//
// Impersonation — a token under the exchanging client's own client_id for
// someone else's subject without act — is off by default: delegation
// records the actor. Only a contextual policy allows it, per request
// (PolicyDecision.Impersonate, the policy's "impersonate": true, evaluated
// with the actor known): the token then carries the subject token's own
// act, if any, and not the actor's, which stays in parent_jti (revoking the
// actor token revokes it) and in the policy decision log.
//
// Every derived token records its parents in the private claim parent_jti:
// the jtis of the subject token, of the actor token and of their own
// parents. Revoking any of them makes the derived token inactive at
// introspection, refused as a subject token here, and rejected by the
// resource-server SDK (package revocation), which drops tokens whose jti or
// any parent_jti is in its revocation set: the TOKEN_REVOKED event of the
// parent is the event that revokes its derived JWTs. A derived token never
// outlives its parents, so the parent's revocation record (kept until the
// parent's exp) covers it. The exchange performs no write.
//
// No refresh token is issued (requested_token_type refresh_token is
// refused); the issued token is always an access token JWT
// (issued_token_type access_token, or jwt when that was requested).

// Token type identifiers, RFC 8693 §3.
const (
	TokenTypeAccessToken  = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeRefreshToken = "urn:ietf:params:oauth:token-type:refresh_token"
	TokenTypeIDToken      = "urn:ietf:params:oauth:token-type:id_token"
	TokenTypeJWT          = "urn:ietf:params:oauth:token-type:jwt"
)

// Exchange parameter names (RFC 8693 §2.1).
const (
	paramSubjectToken       = "subject_token"
	paramSubjectTokenType   = "subject_token_type"
	paramActorToken         = "actor_token"
	paramActorTokenType     = "actor_token_type"
	paramRequestedTokenType = "requested_token_type"
	paramAudience           = "audience"
)

// maxExchangeDepth bounds the parents a derived token records (and so the
// length of a delegation chain).
const maxExchangeDepth = 8

// Actor is the RFC 8693 §4.1 act (and §4.4 may_act) claim: the acting
// party, with the earlier actors nested in Act.
type Actor struct {
	Subject  string `json:"sub,omitempty"`
	Issuer   string `json:"iss,omitempty"`
	ClientID string `json:"client_id,omitempty"`
	Act      *Actor `json:"act,omitempty"`
}

// depth is the length of the chain.
func (a *Actor) depth() int {
	n := 0
	for ; a != nil; a = a.Act {
		n++
	}
	return n
}

// ExchangeParams are the token exchange request parameters.
type ExchangeParams struct {
	SubjectToken, SubjectTokenType string
	ActorToken, ActorTokenType     string
	RequestedTokenType             string
	// Audiences are the audience parameters, in order without duplicates.
	Audiences []string
}

func parseExchangeParams(form url.Values) ExchangeParams {
	p := ExchangeParams{
		SubjectToken: form.Get(paramSubjectToken), SubjectTokenType: form.Get(paramSubjectTokenType),
		ActorToken: form.Get(paramActorToken), ActorTokenType: form.Get(paramActorTokenType),
		RequestedTokenType: form.Get(paramRequestedTokenType),
	}
	for _, a := range form[paramAudience] {
		if !slices.Contains(p.Audiences, a) {
			p.Audiences = append(p.Audiences, a)
		}
	}
	return p
}

type tokenExchangeGrant struct{ s *Server }

// errExchange is RFC 8693 §2.2.2: invalid_request when a subject or actor
// token is invalid or unacceptable.
func errExchange(desc string) *Error { return errInvalidRequest(desc) }

func (g *tokenExchangeGrant) HandleGrant(ctx context.Context, gr GrantRequest) (*TokenResponse, error) {
	s, c, req := g.s, gr.Client, gr.Request
	p := req.Exchange
	issued, err := checkExchangeParams(c, p)
	if err != nil {
		return nil, err
	}
	aud, err := g.exchangeAudience(gr)
	if err != nil {
		return nil, err
	}
	subj, err := s.exchangeToken(ctx, gr.Tenant, p.SubjectToken, p.SubjectTokenType, gr.Now)
	if err != nil {
		return nil, err
	}
	if p.SubjectTokenType == TokenTypeIDToken {
		// An ID token grants no scope of its own: the exchanged token
		// has the requested scopes within the client's.
		subj.Scope = slices.Clone(c.Scopes)
	}
	d := &tokenData{
		ClientID: subj.ClientID,
		Subject:  subj.Subject,
		Act:      subj.Act,
		Audience: aud,
	}
	if err := g.exchangeActor(ctx, gr, &subj, d); err != nil {
		return nil, err
	}
	scope, err := exchangeScope(c, req, subj)
	if err != nil {
		return nil, err
	}
	d.Scope = scope

	dec, err := s.decide(ctx, PolicyInput{
		Tenant: gr.Tenant.ID, ClientID: c.ID, GrantType: GrantTokenExchange, Subject: d.Subject,
		RequestedScopes: req.Scope, GrantedScopes: scope, Audience: aud, ClientIP: gr.ClientIP, Time: gr.Now,
		Actor: actorSubject(d.Act), Device: gr.Device,
	})
	if err != nil {
		return nil, err
	}
	d.Scope = dec.narrow(d.Scope)
	if p.ActorToken != "" && dec.Impersonate && !dec.DryRun {
		d.Act = subj.Act
		s.log.Info("issuance: impersonation allowed by policy", "tenant", gr.Tenant.ID, "client_id", c.ID,
			"subject", d.Subject, "policy_version", dec.Version)
	}

	return g.mintExchanged(ctx, gr, subj, d, issued)
}

// checkExchangeParams checks the client and the RFC 8693 §2.1 parameters,
// and returns the issued_token_type to answer.
func checkExchangeParams(c Client, p ExchangeParams) (issued string, err error) {
	if c.Public {
		return "", newError(CodeUnauthorizedClient, http.StatusBadRequest, "token exchange needs a confidential client", nil)
	}
	if p.SubjectToken == "" {
		return "", errInvalidRequest("missing subject_token")
	}
	if p.SubjectTokenType == "" {
		return "", errInvalidRequest("missing subject_token_type")
	}
	if p.ActorToken != "" && p.ActorTokenType == "" {
		return "", errInvalidRequest("actor_token_type is required with actor_token")
	}
	if p.ActorToken == "" && p.ActorTokenType != "" {
		return "", errInvalidRequest("actor_token_type without actor_token")
	}
	switch p.RequestedTokenType {
	case "", TokenTypeAccessToken:
		return TokenTypeAccessToken, nil
	case TokenTypeJWT:
		return TokenTypeJWT, nil
	}
	return "", errInvalidRequest("requested_token_type is not supported; this server issues access tokens (JWT) only")
}

// exchangeAudience is the target: audience (RFC 8693 §2.1) and resource
// (RFC 8707) are both checked against the client's audiences (§2.2.2
// invalid_target); none asked for is the client's, or the issuer.
func (g *tokenExchangeGrant) exchangeAudience(gr GrantRequest) ([]string, error) {
	c, req := gr.Client, gr.Request
	var aud []string
	for _, a := range append(slices.Clone(req.Exchange.Audiences), req.Resources...) {
		if !slices.Contains(c.Audiences, a) {
			return nil, errInvalidTarget("the client may not obtain tokens for this audience")
		}
		if !slices.Contains(aud, a) {
			aud = append(aud, a)
		}
	}
	if len(aud) == 0 {
		aud = slices.Clone(c.Audiences)
	}
	if len(aud) == 0 {
		aud = []string{g.s.Issuer(gr.Tenant.ID)}
	}
	return aud, nil
}

// exchangeActor checks the actor token, if any (may_act), makes the client
// the token's and the actor its act, shortens subj's expiry to the
// actor's, and sets d's chain of parent tokens (at most maxExchangeDepth).
func (g *tokenExchangeGrant) exchangeActor(ctx context.Context, gr GrantRequest, subj *tokenData, d *tokenData) error {
	p := gr.Request.Exchange
	parents := append(slices.Clone(subj.Parents), subj.JTI)
	if p.ActorToken != "" {
		act, err := g.s.exchangeToken(ctx, gr.Tenant, p.ActorToken, p.ActorTokenType, gr.Now)
		if err != nil {
			return errExchange("actor_token: " + asError(err).Description)
		}
		if m := subj.MayAct; m != nil && !mayAct(m, act) {
			return newError(CodeInvalidGrant, http.StatusBadRequest, "the actor is not named by the subject token's may_act", nil)
		}
		d.ClientID = gr.Client.ID
		d.Act = &Actor{Subject: act.Subject, ClientID: act.ClientID, Act: subj.Act}
		parents = append(parents, act.Parents...)
		if act.JTI != "" {
			parents = append(parents, act.JTI)
		}
		if act.ExpiresAt.Before(subj.ExpiresAt) {
			subj.ExpiresAt = act.ExpiresAt
		}
	}
	parents = slices.DeleteFunc(parents, func(j string) bool { return j == "" })
	if len(parents) > maxExchangeDepth || d.Act.depth() > maxExchangeDepth {
		return errExchange("the subject token was exchanged too many times")
	}
	d.Parents = parents
	return nil
}

// exchangeScope is the subject's scope, narrowed to the request (a scope
// outside the subject's is invalid_scope) and to what the client may hand
// on.
func exchangeScope(c Client, req *TokenRequest, subj tokenData) ([]string, error) {
	scope := slices.Clone(subj.Scope)
	if req.ScopeRequested {
		for _, sc := range req.Scope {
			if !slices.Contains(subj.Scope, sc) {
				return nil, errInvalidScope("requested scope exceeds the subject token's")
			}
		}
		scope = slices.Clone(req.Scope)
	}
	if len(c.Scopes) > 0 {
		scope = slices.DeleteFunc(scope, func(sc string) bool { return !slices.Contains(c.Scopes, sc) })
	}
	return scope, nil
}

// mintExchanged mints the exchanged token: the client's lifetime, never
// past the subject's (or actor's) expiry.
func (g *tokenExchangeGrant) mintExchanged(ctx context.Context, gr GrantRequest, subj tokenData, d *tokenData, issued string) (*TokenResponse, error) {
	s, c := g.s, gr.Client
	ttl := c.AccessTokenTTL
	if ttl <= 0 {
		ttl = s.cfg.AccessTokenTTL
	}
	iat := gr.Now.Truncate(time.Second)
	d.IssuedAt = iat
	d.ExpiresAt = iat.Add(ttl.Truncate(time.Second))
	if subj.ExpiresAt.Before(d.ExpiresAt) {
		d.ExpiresAt = subj.ExpiresAt
	}
	if !d.ExpiresAt.After(iat) {
		return nil, errExchange("subject_token expires too soon")
	}
	tok, err := s.minter.mint(ctx, gr.Tenant, FormatJWT, d, gr.Now)
	if err != nil {
		return nil, err
	}
	return &TokenResponse{
		AccessToken:     tok,
		TokenType:       "Bearer",
		ExpiresIn:       d.ExpiresAt.Unix() - iat.Unix(),
		Scope:           joinScope(d.Scope),
		IssuedTokenType: issued,
	}, nil
}

func actorSubject(a *Actor) string {
	if a == nil {
		return ""
	}
	return a.Subject
}

// mayAct reports whether the actor token's party is the one may_act names
// (RFC 8693 §4.4: the claims given must match).
func mayAct(m *Actor, act tokenData) bool {
	if m.Subject != "" && m.Subject != act.Subject {
		return false
	}
	if m.ClientID != "" && m.ClientID != act.ClientID {
		return false
	}
	return m.Subject != "" || m.ClientID != ""
}

// exchangeToken reads a subject or actor token of the tenant of the given
// RFC 8693 token type and checks that it is still good: unexpired, not
// revoked (nor any of its parents), its client enabled and its user active.
// Errors are *Error (invalid_request per §2.2.2).
func (s *Server) exchangeToken(ctx context.Context, t Tenant, token, typ string, now time.Time) (tokenData, error) {
	switch typ {
	case TokenTypeAccessToken, TokenTypeJWT:
	case TokenTypeIDToken:
		return s.readIDToken(ctx, t, token, now)
	default:
		return tokenData{}, errInvalidRequest("unsupported token type")
	}
	if typ == TokenTypeJWT && strings.HasPrefix(token, opaquePrefix) {
		return tokenData{}, errExchange("token is not a JWT")
	}
	d, err := s.readToken(ctx, t.ID, token, now, true)
	if errors.Is(err, ErrInvalidToken) {
		return tokenData{}, errExchange("token is invalid or expired")
	}
	if err != nil {
		return tokenData{}, errUnavailable("keys unavailable", err)
	}
	if s.RevokedAny(ctx, t.ID, d.JTI, d.Parents) {
		return tokenData{}, errExchange("token is revoked")
	}
	cl, err := s.st.Client(ctx, t.ID, d.ClientID)
	switch {
	case errors.Is(err, ErrNotFound) || (err == nil && cl.Disabled):
		return tokenData{}, errExchange("token's client is disabled or deleted")
	case err != nil:
		return tokenData{}, errUnavailable("client lookup failed", err)
	}
	if ok, err := s.subjectActive(ctx, t.ID, d); err != nil {
		return tokenData{}, errUnavailable("user lookup failed", err)
	} else if !ok {
		return tokenData{}, errExchange("token's user is not active")
	}
	return d, nil
}

// RevokedAny reports whether the token jti or any of its parents (the
// tokens it was exchanged from) is revoked.
func (s *Server) RevokedAny(ctx context.Context, tenant, jti string, parents []string) bool {
	if s.st.Revoked(ctx, tenant, jti) {
		return true
	}
	for _, p := range parents {
		if s.st.Revoked(ctx, tenant, p) {
			return true
		}
	}
	return false
}

// readIDToken verifies an ID token of this tenant (signature by a published
// key, iss, exp) and returns its subject. ID tokens carry no jti and are not
// revocable; the user must still be active.
func (s *Server) readIDToken(ctx context.Context, t Tenant, token string, now time.Time) (tokenData, error) {
	if len(token) > maxTokenLen {
		return tokenData{}, errExchange("token is invalid or expired")
	}
	set, err := s.keys.get(ctx, s.st, t.ID)
	if err != nil {
		return tokenData{}, errUnavailable("keys unavailable", err)
	}
	var c idClaims
	_, err = jwt.NewParser(
		jwt.WithValidMethods(jwtAlgs),
		jwt.WithIssuer(s.Issuer(t.ID)),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithLeeway(s.cfg.Leeway),
		jwt.WithExpirationRequired(),
	).ParseWithClaims(token, &c, func(tk *jwt.Token) (any, error) {
		if typ, _ := tk.Header["typ"].(string); typ != "" && !strings.EqualFold(typ, "JWT") {
			return nil, errJWTType
		}
		kid, _ := tk.Header["kid"].(string)
		k := set.verifyKey(kid, now)
		if k == nil {
			return nil, errJWTKid
		}
		if tk.Method == nil || tk.Method.Alg() != k.meta.Alg {
			return nil, errJWTAlg
		}
		return k.pub, nil
	})
	if err != nil || c.Subject == "" {
		return tokenData{}, errExchange("token is invalid or expired")
	}
	d := tokenData{Subject: c.Subject, ClientID: c.AZP, ExpiresAt: time.Unix(c.Expires, 0), IssuedAt: time.Unix(c.IssuedAt, 0)}
	if d.ClientID == "" && len(c.Audience) == 1 {
		d.ClientID = c.Audience[0]
	}
	cl, err := s.st.Client(ctx, t.ID, d.ClientID)
	if err != nil || cl.Disabled {
		return tokenData{}, errExchange("token's client is disabled or deleted")
	}
	if ok, err := s.subjectActive(ctx, t.ID, d); err != nil {
		return tokenData{}, errUnavailable("user lookup failed", err)
	} else if !ok {
		return tokenData{}, errExchange("token's user is not active")
	}
	return d, nil
}
