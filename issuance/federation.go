package issuance

import (
	"context"
	"errors"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Workload identity federation: a tenant trusts an external issuer (a
// Kubernetes service-account issuer, a SPIFFE JWT-SVID trust domain, an
// OIDC provider) and maps its subjects to clients. The workload sends its
// platform-issued token as an RFC 7523 client assertion; no secret exists
// anywhere.

// findFederation returns the trust whose issuer is iss, or nil.
func findFederation(t TenantTrust, iss string) *FederationTrust {
	if iss == "" {
		return nil
	}
	for i := range t.Federations {
		if t.Federations[i].Issuer == iss {
			return &t.Federations[i]
		}
	}
	return nil
}

// authenticateFederated authenticates a federated platform token: signed
// by a key of the trusted issuer (inline JWKS, its jwks_uri, or the one its
// discovery document names), exp within MaxFederatedLifetime, aud the
// trust's audience (else the tenant's issuer or token endpoint), and sub
// mapped to an enabled confidential client that allows private_key_jwt or
// has no explicit methods. An unmapped subject, an unknown issuer and a
// form client_id naming another client are invalid_client.
//
// Platform tokens are bearer credentials meant to be presented for their
// lifetime (a Kubernetes projected token is reused until the kubelet
// rotates it), so their jti, when present, is not made single-use.
func (s *Server) authenticateFederated(ctx context.Context, t Tenant, f *FederationTrust, cc ClientCredentials, now time.Time) (Client, error) {
	keys := func(ctx context.Context, kid string, refetch bool) (*jose.JSONWebKeySet, error) {
		if len(f.JWKS) > 0 {
			return s.zt.inline.parse(f.JWKS)
		}
		uri := f.JWKSURI
		if uri == "" {
			var err error
			if uri, err = s.zt.fetch.discoveredJWKSURI(ctx, f.Issuer, now); err != nil {
				return nil, err
			}
		}
		return s.zt.fetch.jwks(ctx, uri, kid, refetch, now)
	}
	claims, err := s.verifyAssertion(ctx, cc.Assertion, keys, now, s.zt.cfg.MaxFederatedLifetime, s.assertionAudiences(t.ID, f.Audience))
	if err != nil {
		return Client{}, err
	}
	if claims.Issuer != f.Issuer {
		return Client{}, errAssertion("issuer changed")
	}
	id, ok := f.Subjects[claims.Subject]
	if !ok || claims.Subject == "" {
		return Client{}, errInvalidClient("client authentication failed", errors.New("federation "+f.Name+": subject not mapped to a client"))
	}
	if cc.ID != "" && cc.ID != id {
		return Client{}, errAssertion("client_id is not the client the subject maps to")
	}
	c, err := s.st.Client(ctx, t.ID, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return Client{}, errAssertion("mapped client does not exist")
	case err != nil:
		return Client{}, errUnavailable("client lookup failed", err)
	}
	if err := checkZTClient(c, t.ID, AuthMethodPrivateKeyJWT); err != nil && len(c.Auth.Methods) > 0 {
		return Client{}, err
	} else if c.Disabled || c.Public || c.Tenant != t.ID {
		return Client{}, errInvalidClient("client authentication failed", errors.New("mapped client disabled or public"))
	}
	return c, nil
}
