package raft

import (
	"github.com/tallyauth/tally/raft/raftpb"
)

// Replicated enums as protobuf enums (issue 15). Some values of the first
// release are strings in the records (Client.token_format, Key.use). A typed field
// with a new number sits next to each such string; the string stays, and is
// always written, because older releases read only it (a downgrade, or a
// snapshot sent to an older member). The FSM fills the typed field when it
// stores a record, but only once the recorded cluster version enables
// FeatureTypedEnums, so that the stored records of a mixed cluster stay
// identical on every member; when the feature becomes enabled, the
// SetClusterVersion that enables it migrates the stored records in the same
// transaction (migrateTypedEnums). Commands keep carrying the strings: a
// proposer never sets a typed field (an older member would stop at the
// unknown field), and a command that does must agree with the string.
// Readers use TokenFormatOf and KeyUseOf, which take the typed field when
// it is set and the string otherwise. Other string enums are typed by the
// second set, feature typed_enums_v2 (enums_v2.go), and the third,
// feature typed_enums_v3 (enums_v3.go: admin credential roles).

// FeatureTypedEnums is the feature under which the FSM writes typed enum
// fields next to the strings of the first release.
const FeatureTypedEnums = "typed_enums"

// TokenFormatOf is c's token format: the typed field when it is set, else
// the string of the first release ("" is JWT).
func TokenFormatOf(c *raftpb.Client) raftpb.TokenFormat {
	if f := c.GetFormat(); f != raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED {
		return f
	}
	f, _ := tokenFormatFromString(c.GetTokenFormat())
	return f
}

// TokenFormatName is the string of f ("jwt" or "opaque"; "jwt" for an
// unknown value, as the issuer treats any format but opaque).
func TokenFormatName(f raftpb.TokenFormat) string {
	if f == raftpb.TokenFormat_TOKEN_FORMAT_OPAQUE {
		return "opaque"
	}
	return "jwt"
}

// tokenFormatFromString maps a token_format string to the enum; ok is
// false for a string checkClient refuses.
func tokenFormatFromString(s string) (f raftpb.TokenFormat, ok bool) {
	switch s {
	case "", "jwt":
		return raftpb.TokenFormat_TOKEN_FORMAT_JWT, true
	case "opaque":
		return raftpb.TokenFormat_TOKEN_FORMAT_OPAQUE, true
	}
	return raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED, false
}

// checkTokenFormat checks a command's client: token_format is one of the
// strings, and format, if set, agrees with it.
func checkTokenFormat(c *raftpb.Client) error {
	f, ok := tokenFormatFromString(c.GetTokenFormat())
	if !ok {
		return invalidf("token format %q: want jwt or opaque", c.GetTokenFormat())
	}
	if g := c.GetFormat(); g != raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED && g != f {
		return invalidf("format %v disagrees with token format %q", g, c.GetTokenFormat())
	}
	return nil
}

// KeyUseOf is k's use: the typed field when it is set, else the string of
// the first release (unspecified for a string checkKeys refuses).
func KeyUseOf(k *raftpb.Key) raftpb.KeyUse {
	if u := k.GetKeyUse(); u != raftpb.KeyUse_KEY_USE_UNSPECIFIED {
		return u
	}
	return keyUseFromString(k.GetUse())
}

// KeyUseName is the string of u ("sig", "seal"; "" when unspecified).
func KeyUseName(u raftpb.KeyUse) string {
	switch u {
	case raftpb.KeyUse_KEY_USE_SIG:
		return "sig"
	case raftpb.KeyUse_KEY_USE_SEAL:
		return "seal"
	}
	return ""
}

func keyUseFromString(s string) raftpb.KeyUse {
	switch s {
	case "sig":
		return raftpb.KeyUse_KEY_USE_SIG
	case "seal":
		return raftpb.KeyUse_KEY_USE_SEAL
	}
	return raftpb.KeyUse_KEY_USE_UNSPECIFIED
}

// checkKeyUse checks a command's key: key_use, if set, agrees with use
// (which checkKeys checks).
func checkKeyUse(k *raftpb.Key) error {
	if u := k.GetKeyUse(); u != raftpb.KeyUse_KEY_USE_UNSPECIFIED && u != keyUseFromString(k.GetUse()) {
		return invalidf("key %q: key use %v disagrees with use %q", k.GetKid(), u, k.GetUse())
	}
	return nil
}

// typedEnums reports whether the cluster version recorded in the batch's
// transaction (including one applied earlier in the same batch) enables
// FeatureTypedEnums.
func (a *applier) typedEnums() bool {
	return a.recorded(FeatureTypedEnums)
}

// setTypedEnums sets or clears c's typed fields from its strings, as the
// recorded cluster version says (on: derived; off: cleared, like a record
// written by the first release).
func setTypedEnums(c *raftpb.Client, on bool) {
	c.Format = raftpb.TokenFormat_TOKEN_FORMAT_UNSPECIFIED
	if on {
		c.Format, _ = tokenFormatFromString(c.GetTokenFormat())
	}
}

// setKeyTypedEnums is setTypedEnums for a key.
func setKeyTypedEnums(k *raftpb.Key, on bool) {
	k.KeyUse = raftpb.KeyUse_KEY_USE_UNSPECIFIED
	if on {
		k.KeyUse = keyUseFromString(k.GetUse())
	}
}

// migrateTypedEnums fills the typed fields of every stored client and key. It runs
// when a SetClusterVersion enables FeatureTypedEnums (prev did not): every
// member applies it at the same entry, so their stores stay identical.
// Revisions and update times are kept: the settings did not change.
func (a *applier) migrateTypedEnums() {
	var tenants []string
	_ = a.bucket(bucketTenants).ForEach(func(k, _ []byte) error { tenants = append(tenants, string(k)); return nil })
	for _, t := range tenants {
		b := a.tenantBucket(t, kindClients)
		var ids []string
		_ = b.ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil })
		for _, id := range ids { // not inside ForEach: bbolt forbids writes there
			c := new(raftpb.Client)
			a.get(b, id, c)
			setTypedEnums(c, true)
			a.putRecord(b, kindClients, t, id, c)
		}
		kb := a.tenantBucket(t, kindKeys)
		var kids []string
		_ = kb.ForEach(func(k, _ []byte) error { kids = append(kids, string(k)); return nil })
		for _, kid := range kids {
			k := new(raftpb.Key)
			a.get(kb, kid, k)
			setKeyTypedEnums(k, true)
			a.putRecord(kb, kindKeys, t, kid, k)
		}
	}
}
