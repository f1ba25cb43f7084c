package issuance

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// tokenData is what an access token says, whatever its format.
type tokenData struct {
	Format    TokenFormat
	Tenant    string
	Issuer    string
	JTI       string
	ClientID  string
	Subject   string
	Scope     []string
	Audience  []string
	IssuedAt  time.Time
	NotBefore time.Time // zero when absent
	ExpiresAt time.Time
	KeyID     string
	// X5T is the x5t#S256 of the client certificate the token is bound
	// to (RFC 8705 §3), "" for a bearer token (cnf.go).
	X5T string
	// JKT is the DPoP key thumbprint the token is bound to (RFC 9449 §6),
	// "" for a bearer token.
	JKT string
	// Token exchange (RFC 8693, exchange.go): the actor chain, who may act
	// for the subject, and the jtis of the tokens this one was derived
	// from (a revoked ancestor revokes it).
	Act     *Actor
	MayAct  *Actor
	Parents []string
}

// JWT access token header type (RFC 9068 §2.1). Verification also accepts the
// full media type (RFC 9068 §4).
const (
	jwtType         = "at+jwt"
	jwtTypeFullForm = "application/at+jwt"
)

// jwtAlgs are the only algorithms a JWT access token may use. Each key
// additionally pins its own alg, so a token must name exactly its key's alg.
var jwtAlgs = []string{AlgES256, AlgEdDSA, AlgRS256}

// audience is the JWT "aud" claim: a string when there is one value, an array
// otherwise (RFC 7519 §4.1.3).
type audience []string

func (a audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

func (a *audience) UnmarshalJSON(b []byte) error {
	var cs jwt.ClaimStrings
	if err := cs.UnmarshalJSON(b); err != nil {
		return err
	}
	*a = audience(cs)
	return nil
}

// accessClaims is the RFC 9068 §2.2 claim set of a JWT access token.
// NumericDates are whole seconds; 0 means absent.
type accessClaims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  audience `json:"aud,omitempty"`
	ExpiresAt int64    `json:"exp"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf,omitempty"`
	ID        string   `json:"jti"`
	ClientID  string   `json:"client_id"`
	Scope     string   `json:"scope,omitempty"`
	// Cnf binds the token to a key (RFC 7800; RFC 8705 §3.1; RFC 9449 §6.1).
	Cnf     *confirmation `json:"cnf,omitempty"`
	Act     *Actor        `json:"act,omitempty"`
	MayAct  *Actor        `json:"may_act,omitempty"`
	Parents []string      `json:"parent_jti,omitempty"`
}

func numericDate(sec int64) *jwt.NumericDate {
	if sec == 0 {
		return nil
	}
	return jwt.NewNumericDate(time.Unix(sec, 0))
}

func (c *accessClaims) GetExpirationTime() (*jwt.NumericDate, error) {
	return numericDate(c.ExpiresAt), nil
}
func (c *accessClaims) GetIssuedAt() (*jwt.NumericDate, error)  { return numericDate(c.IssuedAt), nil }
func (c *accessClaims) GetNotBefore() (*jwt.NumericDate, error) { return numericDate(c.NotBefore), nil }
func (c *accessClaims) GetIssuer() (string, error)              { return c.Issuer, nil }
func (c *accessClaims) GetSubject() (string, error)             { return c.Subject, nil }
func (c *accessClaims) GetAudience() (jwt.ClaimStrings, error) {
	return jwt.ClaimStrings(c.Audience), nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func timeOrZero(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

// signJWT mints an RFC 9068 JWT access token with key k. It holds no lock.
func signJWT(k *loadedKey, d *tokenData) (string, error) {
	c := &accessClaims{
		Issuer:    d.Issuer,
		Subject:   d.Subject,
		Audience:  audience(d.Audience),
		ExpiresAt: d.ExpiresAt.Unix(),
		IssuedAt:  d.IssuedAt.Unix(),
		NotBefore: unixOrZero(d.NotBefore),
		ID:        d.JTI,
		ClientID:  d.ClientID,
		Scope:     strings.Join(d.Scope, " "),
		Cnf:       confirmationOf(d),
		Act:       d.Act,
		MayAct:    d.MayAct,
		Parents:   d.Parents,
	}
	t := &jwt.Token{
		Header: map[string]any{"typ": jwtType, "alg": k.method.Alg(), "kid": k.meta.ID},
		Claims: c,
		Method: k.method,
	}
	s, err := t.SignedString(k.signer)
	if err != nil {
		return "", fmt.Errorf("issuance: sign JWT with key %s: %w", k.meta.ID, err)
	}
	return s, nil
}

var (
	errJWTType   = errors.New("typ is not at+jwt")
	errJWTKid    = errors.New("kid is not a published key of this tenant")
	errJWTAlg    = errors.New("alg does not match the key's alg")
	errJWTClaims = errors.New("required claim missing")
)

// verifyJWT checks a JWT access token of the tenant: alg among jwtAlgs and
// equal to the alg of the key named by kid, which must be a published signing
// key of this tenant; typ at+jwt (RFC 9068 §4); signature; iss equal to
// issuer. With checkTimes it also applies exp (required), nbf and iat with
// leeway. Errors wrap ErrInvalidToken.
func verifyJWT(set *keySet, issuer, token string, now time.Time, leeway time.Duration, checkTimes bool) (tokenData, error) {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(jwtAlgs),
		jwt.WithStrictDecoding(),
		jwt.WithIssuer(issuer),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithLeeway(leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	if !checkTimes {
		opts = append(opts, jwt.WithoutClaimsValidation())
	}
	var c accessClaims
	var kid string
	_, err := jwt.NewParser(opts...).ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		typ, _ := t.Header["typ"].(string)
		if !strings.EqualFold(typ, jwtType) && !strings.EqualFold(typ, jwtTypeFullForm) {
			return nil, errJWTType
		}
		kid, _ = t.Header["kid"].(string)
		k := set.verifyKey(kid, now)
		if k == nil {
			return nil, errJWTKid
		}
		if t.Method == nil || t.Method.Alg() != k.meta.Alg {
			return nil, errJWTAlg
		}
		return k.pub, nil
	})
	if err != nil {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if c.Issuer != issuer || c.ID == "" || c.ClientID == "" || c.ExpiresAt == 0 || c.IssuedAt == 0 {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, errJWTClaims)
	}
	var scope []string
	if c.Scope != "" {
		if scope, err = ParseScope(c.Scope); err != nil {
			return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
		}
	}
	return tokenData{
		Format:    FormatJWT,
		Issuer:    c.Issuer,
		JTI:       c.ID,
		ClientID:  c.ClientID,
		Subject:   c.Subject,
		Scope:     scope,
		Audience:  []string(c.Audience),
		IssuedAt:  time.Unix(c.IssuedAt, 0),
		NotBefore: timeOrZero(c.NotBefore),
		ExpiresAt: time.Unix(c.ExpiresAt, 0),
		KeyID:     kid,
		X5T:       c.Cnf.x5t(),
		JKT:       c.Cnf.jkt(),
		Act:       c.Act,
		MayAct:    c.MayAct,
		Parents:   c.Parents,
	}, nil
}
