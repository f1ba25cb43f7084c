package issuance

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// assertionAlgs are the only algorithms a client assertion may use:
// asymmetric ones (a client's registered keys are public keys; HS256 with
// a public key as the secret and "none" are refused).
var assertionAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// readClientAssertion reads RFC 7521 §4.2 client assertion parameters.
// Using it together with a secret or Basic is invalid_request (RFC 6749
// §2.3); a missing or wrong client_assertion_type is invalid_request too,
// an oversized assertion invalid_client.
func readClientAssertion(authz []string, form url.Values) (ClientCredentials, error) {
	typ, a := form.Get(paramClientAssertionType), form.Get(paramClientAssertion)
	switch {
	case len(authz) > 0 || form.Get(paramClientSecret) != "":
		return ClientCredentials{}, errInvalidRequest("more than one client authentication method")
	case typ != clientAssertionTypeJWTBearer:
		return ClientCredentials{}, errInvalidRequest("client_assertion_type must be " + clientAssertionTypeJWTBearer)
	case a == "":
		return ClientCredentials{}, errInvalidRequest("missing client_assertion")
	case len(a) > maxAssertionLen || len(form.Get(paramClientID)) > maxCredentialLen:
		return ClientCredentials{}, errInvalidClient("client authentication failed", errors.New("client assertion too long"))
	}
	return ClientCredentials{Method: AuthMethodPrivateKeyJWT, ID: form.Get(paramClientID), Assertion: a}, nil
}

// assertionClaims are the claims of a client assertion (RFC 7523 §3).
type assertionClaims struct {
	jwt.RegisteredClaims
}

// peekAssertion reads the unverified iss of an assertion, to choose between
// private_key_jwt and federation. Nothing read here is trusted.
func peekAssertion(a string) (iss string, err error) {
	var c assertionClaims
	if _, _, err := jwt.NewParser().ParseUnverified(a, &c); err != nil {
		return "", err
	}
	return c.Issuer, nil
}

func errAssertion(reason string) *Error {
	return errInvalidClient("client authentication failed", errors.New("client assertion: "+reason))
}

// authenticateAssertion authenticates an RFC 7523 client assertion: a
// federated platform token when its issuer is one the tenant trusts
// (federation.go), else private_key_jwt: iss = sub = client_id, signed by
// one of the client's registered keys with the key's algorithm, aud the
// tenant's issuer or token endpoint, exp at most MaxAssertionLifetime
// ahead, nbf/iat with Leeway, and a jti used once across the cluster
// (AssertionLedger) until exp.
func (s *Server) authenticateAssertion(ctx context.Context, tenant string, cc ClientCredentials, now time.Time) (Client, error) {
	iss, err := peekAssertion(cc.Assertion)
	if err != nil {
		return Client{}, errAssertion("malformed")
	}
	t, err := s.st.Tenant(ctx, tenant)
	if err != nil {
		return Client{}, errUnavailable("tenant lookup failed", err)
	}
	if f := findFederation(t.Trust, iss); f != nil {
		return s.authenticateFederated(ctx, t, f, cc, now)
	}
	if iss == "" || len(iss) > maxCredentialLen || (cc.ID != "" && cc.ID != iss) {
		return Client{}, errAssertion("iss is not the client_id")
	}
	c, err := s.st.Client(ctx, tenant, iss)
	switch {
	case errors.Is(err, ErrNotFound):
		return Client{}, errAssertion("unknown client")
	case err != nil:
		return Client{}, errUnavailable("client lookup failed", err)
	}
	if err := checkZTClient(c, tenant, AuthMethodPrivateKeyJWT); err != nil {
		return Client{}, err
	}
	keys := func(ctx context.Context, kid string, refetch bool) (*jose.JSONWebKeySet, error) {
		if len(c.Auth.JWKS) > 0 {
			return s.zt.inline.parse(c.Auth.JWKS)
		}
		return s.zt.fetch.jwks(ctx, c.Auth.JWKSURI, kid, refetch, now)
	}
	claims, err := s.verifyAssertion(ctx, cc.Assertion, keys, now, s.zt.cfg.MaxAssertionLifetime, s.assertionAudiences(tenant, ""))
	if err != nil {
		return Client{}, err
	}
	if claims.Subject != c.ID || claims.Issuer != c.ID {
		return Client{}, errAssertion("iss and sub must both be the client_id")
	}
	if claims.ID == "" || len(claims.ID) > 256 {
		return Client{}, errAssertion("missing or overlong jti")
	}
	if err := s.zt.consume(ctx, tenant, c.ID, claims.ID, claims.ExpiresAt.Time); err != nil {
		return Client{}, err
	}
	return c, nil
}

// assertionAudiences are the aud values an assertion may carry: the
// issuer (RFC 7523bis) and the token endpoint (RFC 7523 §3), also at the
// mTLS alias; extra, if set, replaces them (a federation's configured
// audience).
func (s *Server) assertionAudiences(tenant, extra string) []string {
	if extra != "" {
		return []string{extra}
	}
	iss := s.Issuer(tenant)
	out := []string{iss, iss + "/oauth2/token"}
	if b := s.zt.cfg.MTLSBaseURL; b != "" {
		out = append(out, b+"/t/"+url.PathEscape(tenant)+"/oauth2/token")
	}
	return out
}

type keySource func(ctx context.Context, kid string, refetch bool) (*jose.JSONWebKeySet, error)

// verifyAssertion checks signature, alg, times and aud of an assertion.
// An unknown kid refetches a jwks_uri once (the fetcher bounds the rate).
func (s *Server) verifyAssertion(ctx context.Context, a string, keys keySource, now time.Time, maxLife time.Duration, auds []string) (*assertionClaims, error) {
	leeway := s.cfg.Leeway
	p := jwt.NewParser(
		jwt.WithValidMethods(assertionAlgs),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithLeeway(leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	var claims *assertionClaims
	var lastErr error
	for _, refetch := range []bool{false, true} {
		claims = new(assertionClaims)
		unknownKid := false
		_, err := p.ParseWithClaims(a, claims, func(t *jwt.Token) (any, error) {
			kid, _ := t.Header["kid"].(string)
			set, err := keys(ctx, kid, refetch)
			if err != nil {
				return nil, err
			}
			vk := matchKeys(set, kid, t.Method.Alg())
			if len(vk.Keys) == 0 {
				unknownKid = kid != ""
				return nil, errors.New("no registered key matches kid and alg")
			}
			return vk, nil
		})
		if err == nil {
			lastErr = nil
			break
		}
		lastErr = err
		if !unknownKid {
			break
		}
	}
	if lastErr != nil {
		var fe *fetchError
		if errors.As(lastErr, &fe) {
			return nil, errInvalidClient("client authentication failed", fmt.Errorf("client assertion: keys: %w", fe))
		}
		return nil, errInvalidClient("client authentication failed", fmt.Errorf("client assertion: %w", lastErr))
	}
	if claims.ExpiresAt.Sub(now) > maxLife+leeway {
		return nil, errAssertion("exp too far in the future")
	}
	if claims.IssuedAt != nil && now.Sub(claims.IssuedAt.Time) > maxLife+leeway && maxLife <= defaultMaxFederatedLifetime {
		return nil, errAssertion("iat too far in the past")
	}
	if !slices.ContainsFunc(auds, func(a string) bool { return slices.Contains(claims.Audience, a) }) {
		return nil, errAssertion("aud is not this issuer or its token endpoint")
	}
	return claims, nil
}

// matchKeys returns the keys of set that may verify alg: kid equal when
// given, use sig or absent, alg equal to the key's when the key pins one,
// and a key type that is the alg's (so an RSA key never verifies ES256 and
// no public key ever serves as an HMAC secret).
func matchKeys(set *jose.JSONWebKeySet, kid, alg string) jwt.VerificationKeySet {
	var out jwt.VerificationKeySet
	if set == nil {
		return out
	}
	for _, k := range set.Keys {
		if (kid != "" && k.KeyID != kid) || (k.Use != "" && k.Use != "sig") || (k.Algorithm != "" && k.Algorithm != alg) {
			continue
		}
		if keyFitsAlg(k.Key, alg) {
			out.Keys = append(out.Keys, k.Key)
		}
	}
	return out
}

func keyFitsAlg(key any, alg string) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return (strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")) && k.N.BitLen() >= 2048
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		case "ES512":
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// ParseClientJWKS parses a client's registered JWK Set and checks that it
// holds only asymmetric public keys (at least one). The admin API uses it
// at registration.
func ParseClientJWKS(b []byte) (*jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("JWKS: no keys")
	}
	for i, k := range set.Keys {
		switch kk := k.Key.(type) {
		case *rsa.PublicKey:
			if kk.N.BitLen() < 2048 {
				return nil, fmt.Errorf("JWKS: key %d: RSA key shorter than 2048 bits", i)
			}
		case *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			return nil, fmt.Errorf("JWKS: key %d: not an RSA, EC or Ed25519 public key", i)
		}
	}
	return &set, nil
}

// jwksCache caches parsed inline JWK Sets by content hash.
type jwksCache struct {
	mu sync.Mutex
	m  map[[32]byte]*jose.JSONWebKeySet
}

func (c *jwksCache) parse(b []byte) (*jose.JSONWebKeySet, error) {
	h := sha256.Sum256(b)
	c.mu.Lock()
	set, ok := c.m[h]
	c.mu.Unlock()
	if ok {
		return set, nil
	}
	set, err := ParseClientJWKS(b)
	if err != nil {
		return nil, &fetchError{err}
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) > 10000 {
		c.m = make(map[[32]byte]*jose.JSONWebKeySet)
	}
	c.m[h] = set
	c.mu.Unlock()
	return set, nil
}
