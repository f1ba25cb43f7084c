package raft

import (
	"fmt"
	"math"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Limits on command fields. They are part of the FSM's deterministic
// behaviour: changing them changes which commands are ErrInvalid, so a change
// needs a new CommandVersion.
const (
	maxTenantIDLen  = 63
	maxIDLen        = 255  // client id, kid
	maxJTILen       = 1024 // jti from foreign tokens may be long
	maxRequestIDLen = 256
	maxTextLen      = 4096 // names, reasons, subjects, list elements
	maxListLen      = 256  // grant types, scopes, audiences, redirect URIs, keys, secrets
	maxHashLen      = 1024
	maxKeyBytes     = 16 << 10
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// validTenantID reports whether id is 1 to 63 lower-case letters, digits and
// '-' (the admin API's rule; it also keeps '/' out of bucket names).
func validTenantID(id string) bool {
	if len(id) == 0 || len(id) > maxTenantIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validID reports whether id is a non-empty printable-ASCII identifier
// (RFC 6749 Appendix A.1 VSCHAR: %x20-7E) of at most maxIDLen bytes.
func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

func checkTenantID(id string) error {
	if !validTenantID(id) {
		return invalidf("tenant id %q: want 1 to %d of [a-z0-9-]", id, maxTenantIDLen)
	}
	return nil
}

func checkClientID(id string) error {
	if !validID(id) {
		return invalidf("client id %q: want 1 to %d printable ASCII characters", id, maxIDLen)
	}
	return nil
}

func checkText(field, s string) error {
	if len(s) > maxTextLen {
		return invalidf("%s longer than %d bytes", field, maxTextLen)
	}
	return nil
}

func checkList(field string, l []string) error {
	if len(l) > maxListLen {
		return invalidf("%s: more than %d entries", field, maxListLen)
	}
	for _, s := range l {
		if s == "" {
			return invalidf("%s: empty entry", field)
		}
		if err := checkText(field, s); err != nil {
			return err
		}
	}
	return nil
}

// checkCommand validates a command without reading state. The FSM runs it
// for every entry (a failure is the ErrInvalid outcome); Node.Propose runs it
// before proposing so that malformed commands never reach the log.
func checkCommand(cmd *raftpb.Command) error {
	if len(cmd.GetRequestId()) > maxRequestIDLen {
		return invalidf("request id longer than %d bytes", maxRequestIDLen)
	}
	if cmd.GetTimeUnixNano() <= 0 {
		return invalidf("time_unix_nano must be positive")
	}
	if err := checkTypedV2(cmd); err != nil { // enums_v2.go
		return err
	}
	if err := checkTypedV3(cmd); err != nil { // enums_v3.go
		return err
	}
	return checkOp(cmd) // ops.go
}

func checkCreateTenant(c *raftpb.CreateTenant) error {
	t := c.GetTenant()
	if t == nil {
		return invalidf("create tenant: no tenant")
	}
	if err := checkTenantID(t.GetId()); err != nil {
		return err
	}
	if err := checkText("display name", t.GetDisplayName()); err != nil {
		return err
	}
	switch t.GetSigningAlg() {
	case "", "ES256", "EdDSA", "RS256":
	default:
		return invalidf("signing alg %q: want ES256, EdDSA or RS256", t.GetSigningAlg())
	}
	if t.GetCreatedUnixNano() < 0 {
		return invalidf("tenant created time is negative")
	}
	return checkKeys(t.GetId(), c.GetKeys())
}

func checkClient(c *raftpb.Client, create bool) error {
	if c == nil {
		return invalidf("no client")
	}
	if err := checkTenantID(c.GetTenant()); err != nil {
		return err
	}
	if err := checkClientID(c.GetId()); err != nil {
		return err
	}
	if err := checkText("client name", c.GetName()); err != nil {
		return err
	}
	// A slice, not a map: the first error found must be the same on every
	// replica.
	for _, f := range []struct {
		name string
		l    []string
	}{
		{"grant types", c.GetGrantTypes()},
		{"scopes", c.GetScopes()},
		{"audiences", c.GetAudiences()},
		{"redirect uris", c.GetRedirectUris()},
	} {
		if err := checkList(f.name, f.l); err != nil {
			return err
		}
	}
	if c.GetAccessTokenTtlSeconds() < 0 {
		return invalidf("access token ttl is negative")
	}
	if err := checkTokenFormat(c); err != nil { // enums.go
		return err
	}
	if err := checkClientAuth(c.GetAuth()); err != nil { // apply_ztauth.go
		return err
	}
	if !create {
		return nil // secrets, times and revision of an update are ignored
	}
	if c.GetPublic() && len(c.GetSecrets()) > 0 {
		return invalidf("public client with a secret")
	}
	if len(c.GetSecrets()) > maxListLen {
		return invalidf("more than %d secrets", maxListLen)
	}
	for _, s := range c.GetSecrets() {
		if err := checkSecret(s); err != nil {
			return err
		}
	}
	return nil
}

func checkSecret(s *raftpb.SecretHash) error {
	if s == nil || len(s.GetHash()) == 0 {
		return invalidf("secret without hash")
	}
	if len(s.GetHash()) > maxHashLen {
		return invalidf("secret hash longer than %d bytes", maxHashLen)
	}
	if s.GetCreatedUnixNano() < 0 || s.GetExpiresUnixNano() < 0 {
		return invalidf("secret time is negative")
	}
	return nil
}

func checkRotate(r *raftpb.RotateClientSecret) error {
	if err := checkTenantID(r.GetTenant()); err != nil {
		return err
	}
	if err := checkClientID(r.GetClientId()); err != nil {
		return err
	}
	if err := checkSecret(r.GetNewSecret()); err != nil {
		return err
	}
	if r.GetPreviousExpiresUnixNano() < 0 {
		return invalidf("previous secret expiry is negative")
	}
	return nil
}

// checkKeys validates keys added to tenant (by CreateTenant or AddKeys).
func checkKeys(tenant string, keys []*raftpb.Key) error {
	if len(keys) > maxListLen {
		return invalidf("more than %d keys", maxListLen)
	}
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if k == nil {
			return invalidf("nil key")
		}
		if !validID(k.GetKid()) {
			return invalidf("kid %q: want 1 to %d printable ASCII characters", k.GetKid(), maxIDLen)
		}
		if seen[k.GetKid()] {
			return invalidf("kid %q twice in one command", k.GetKid())
		}
		seen[k.GetKid()] = true
		if k.GetTenant() != "" && k.GetTenant() != tenant {
			return invalidf("key %q belongs to tenant %q, not %q", k.GetKid(), k.GetTenant(), tenant)
		}
		switch k.GetUse() {
		case "sig":
			switch k.GetAlg() {
			case "ES256", "EdDSA", "RS256":
			default:
				return invalidf("key %q: alg %q is not a signing alg", k.GetKid(), k.GetAlg())
			}
			if len(k.GetPublicKey()) == 0 {
				return invalidf("signing key %q without public key", k.GetKid())
			}
		case "seal":
			if k.GetAlg() != "A256GCM" {
				return invalidf("key %q: alg %q is not a sealing alg", k.GetKid(), k.GetAlg())
			}
		default:
			return invalidf("key %q: use %q: want sig or seal", k.GetKid(), k.GetUse())
		}
		if err := checkKeyUse(k); err != nil { // enums.go
			return err
		}
		if len(k.GetEncryptedPrivate()) == 0 {
			return invalidf("key %q without private part", k.GetKid())
		}
		if len(k.GetPublicKey()) > maxKeyBytes || len(k.GetEncryptedPrivate()) > maxKeyBytes {
			return invalidf("key %q larger than %d bytes", k.GetKid(), maxKeyBytes)
		}
		if k.GetRetiredUnixNano() != 0 || k.GetExpiresUnixNano() != 0 {
			return invalidf("new key %q is already retired", k.GetKid())
		}
		if k.GetCreatedUnixNano() < 0 || k.GetNotBeforeUnixNano() < 0 || k.GetRetentionNanos() < 0 {
			return invalidf("key %q: negative time", k.GetKid())
		}
	}
	return nil
}

func checkRevocation(r *raftpb.Revocation) error {
	if r == nil {
		return invalidf("no revocation")
	}
	if err := checkTenantID(r.GetTenant()); err != nil {
		return err
	}
	if len(r.GetJti()) == 0 || len(r.GetJti()) > maxJTILen {
		return invalidf("jti: want 1 to %d bytes", maxJTILen)
	}
	if r.GetClientId() != "" {
		if err := checkClientID(r.GetClientId()); err != nil {
			return err
		}
	}
	if r.GetExpiresUnixNano() <= 0 {
		return invalidf("revocation without expiry")
	}
	if r.GetRevokedUnixNano() < 0 {
		return invalidf("revocation time is negative")
	}
	if err := checkText("reason", r.GetReason()); err != nil {
		return err
	}
	return checkText("subject", r.GetSubject())
}

// addSat adds two non-negative int64s, saturating at math.MaxInt64.
func addSat(a, b int64) int64 {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
