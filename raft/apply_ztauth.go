package raft

import (
	"encoding/binary"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Issue 11 (zero-trust clients): ConsumeAssertion makes a client
// assertion's jti single-use across the cluster; SetTenantTrust records the
// tenant's client-certificate CAs and federation trusts.
//
// Buckets, per tenant, created on first use (see schema.go):
//
//	ztauth_jti         SHA-256(client_id | 0 | jti) → expires (8, big-endian)
//	ztauth_jti_expiry  expires (8, big-endian) | key → empty; sweep order

// Limits of the records these operations store.
const (
	maxAssertionLifetimeNanos = int64(24 * 60 * 60 * 1e9) // what the FSM accepts; issuance bounds it far lower
	maxTrustCABytes           = 256 << 10
	maxTrustJWKSBytes         = 64 << 10
	maxFederations            = 32
	maxSubjectMappings        = 1024
)

// FeatureZTAuth names the ConsumeAssertion and SetTenantTrust operations
// (ops 90, 91) in the cluster's feature set (opRegistry).
const FeatureZTAuth = "ztauth"

func checkConsumeAssertion(c *raftpb.ConsumeAssertion) error {
	if err := checkTenantID(c.GetTenant()); err != nil {
		return err
	}
	if err := checkClientID(c.GetClientId()); err != nil {
		return err
	}
	if len(c.GetKey()) != 32 {
		return invalidf("consume assertion: key must be 32 bytes")
	}
	if c.GetExpiresUnixNano() <= 0 {
		return invalidf("consume assertion: expiry must be positive")
	}
	return nil
}

func checkSetTenantTrust(s *raftpb.SetTenantTrust) error {
	if err := checkTenantID(s.GetTenant()); err != nil {
		return err
	}
	t := s.GetTrust()
	if len(t.GetClientCaPem()) > maxTrustCABytes {
		return invalidf("tenant trust: CA bundle larger than %d bytes", maxTrustCABytes)
	}
	if len(t.GetFederations()) > maxFederations {
		return invalidf("tenant trust: more than %d federations", maxFederations)
	}
	names := map[string]bool{}
	for _, f := range t.GetFederations() {
		if f.GetName() == "" || len(f.GetName()) > 64 || names[f.GetName()] {
			return invalidf("tenant trust: federation name %q empty, too long or repeated", f.GetName())
		}
		names[f.GetName()] = true
		if u, err := url.Parse(f.GetIssuer()); err != nil || !u.IsAbs() || u.Host == "" || len(f.GetIssuer()) > maxTextLen {
			return invalidf("tenant trust: federation %q: issuer must be an absolute URL", f.GetName())
		}
		if len(f.GetJwks()) > maxTrustJWKSBytes {
			return invalidf("tenant trust: federation %q: JWKS larger than %d bytes", f.GetName(), maxTrustJWKSBytes)
		}
		if f.GetJwksUri() != "" {
			if u, err := url.Parse(f.GetJwksUri()); err != nil || !u.IsAbs() || u.Host == "" || len(f.GetJwksUri()) > maxTextLen {
				return invalidf("tenant trust: federation %q: jwks_uri must be an absolute URL", f.GetName())
			}
		}
		if err := checkText("federation audience", f.GetAudience()); err != nil {
			return err
		}
		if len(f.GetSubjects()) > maxSubjectMappings {
			return invalidf("tenant trust: federation %q: more than %d subjects", f.GetName(), maxSubjectMappings)
		}
		for _, m := range f.GetSubjects() {
			if m.GetSubject() == "" || len(m.GetSubject()) > maxTextLen || strings.ContainsAny(m.GetSubject(), "\x00") {
				return invalidf("tenant trust: federation %q: empty or overlong subject", f.GetName())
			}
			if err := checkClientID(m.GetClientId()); err != nil {
				return err
			}
		}
	}
	return nil
}

// consumeAssertion records a client assertion id; a second use before it
// expires is ErrExists. An assertion already expired at command time is
// ErrInvalid (its issuer-side check would have refused it too).
func (a *applier) consumeAssertion(c *raftpb.ConsumeAssertion, now int64) error {
	if !a.tenantExists(c.GetTenant()) {
		return notFoundTenant(c.GetTenant())
	}
	exp := c.GetExpiresUnixNano()
	if exp <= now {
		return invalidf("consume assertion: expired at command time")
	}
	exp = min(exp, now+maxAssertionLifetimeNanos)
	b := a.flowBucket(c.GetTenant(), kindZTJTI)
	key := c.GetKey()
	if v := b.Get(key); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) > now {
		return fmt.Errorf("%w: client assertion already used", ErrExists)
	}
	a.put(b, key, u64(uint64(exp)))
	a.put(a.flowBucket(c.GetTenant(), kindZTJTIExpiry), timeKey(exp, string(key)), nil)
	return nil
}

// setTenantTrust replaces the tenant's trust record.
func (a *applier) setTenantTrust(s *raftpb.SetTenantTrust, now int64) error {
	b := a.bucket(bucketTenants)
	t := new(raftpb.Tenant)
	if !a.get(b, s.GetTenant(), t) {
		return notFoundTenant(s.GetTenant())
	}
	t = proto.Clone(t).(*raftpb.Tenant)
	tr := proto.Clone(s.GetTrust()).(*raftpb.TenantTrust)
	if tr == nil {
		tr = &raftpb.TenantTrust{}
	}
	tr.UpdatedUnixNano = now
	t.Trust = tr
	a.putRecord(b, bucketTenants, t.Id, t.Id, t)
	return nil
}

// sweepZT forgets assertion ids that expired at or before now.
func (a *applier) sweepZT(tenant string, now int64) {
	if a.tx.Bucket(tenantBucket(tenant, kindZTJTIExpiry)) == nil {
		return
	}
	idx := a.flowBucket(tenant, kindZTJTIExpiry)
	ids := a.flowBucket(tenant, kindZTJTI)
	for _, k := range a.expiredKeys(idx, now) {
		a.del(idx, k)
		a.del(ids, k[8:])
	}
}

// clientAuthMethods are the token_endpoint_auth_method values a client may
// register (RFC 7591 §2, RFC 8705 §2.1.1, §2.2.1).
var clientAuthMethods = []string{"client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth"}

// checkClientAuth validates a client's authentication settings (nil is
// valid: secrets only).
func checkClientAuth(ca *raftpb.ClientAuth) error {
	if ca == nil {
		return nil
	}
	if len(ca.GetMethods()) > len(clientAuthMethods) {
		return invalidf("client auth: too many methods")
	}
	has := map[string]bool{}
	for _, m := range ca.GetMethods() {
		if !slicesContains(clientAuthMethods, m) || has[m] {
			return invalidf("client auth: method %q unknown or repeated", m)
		}
		has[m] = true
	}
	if len(ca.GetJwks()) > maxTrustJWKSBytes {
		return invalidf("client auth: JWKS larger than %d bytes", maxTrustJWKSBytes)
	}
	for _, f := range []struct{ name, v string }{{"jwks_uri", ca.GetJwksUri()}, {"tls subject dn", ca.GetTlsSubjectDn()},
		{"tls san dns", ca.GetTlsSanDns()}, {"tls san uri", ca.GetTlsSanUri()}} {
		if err := checkText("client auth "+f.name, f.v); err != nil {
			return err
		}
	}
	if ca.GetJwksUri() != "" {
		if u, err := url.Parse(ca.GetJwksUri()); err != nil || !u.IsAbs() || u.Host == "" {
			return invalidf("client auth: jwks_uri must be an absolute URL")
		}
	}
	if has["private_key_jwt"] && len(ca.GetJwks()) == 0 && ca.GetJwksUri() == "" {
		return invalidf("client auth: private_key_jwt needs a JWKS or a jwks_uri")
	}
	if has["self_signed_tls_client_auth"] && len(ca.GetJwks()) == 0 {
		return invalidf("client auth: self_signed_tls_client_auth needs a JWKS")
	}
	if has["tls_client_auth"] && ca.GetTlsSubjectDn() == "" && ca.GetTlsSanDns() == "" && ca.GetTlsSanUri() == "" {
		return invalidf("client auth: tls_client_auth needs a subject DN or a SAN")
	}
	return nil
}

func slicesContains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// CheckClientAuth validates client auth settings as the FSM will (for the
// admin API).
func CheckClientAuth(ca *raftpb.ClientAuth) error { return checkClientAuth(ca) }

// CheckTenantTrust validates a SetTenantTrust as the FSM will.
func CheckTenantTrust(s *raftpb.SetTenantTrust) error { return checkSetTenantTrust(s) }
