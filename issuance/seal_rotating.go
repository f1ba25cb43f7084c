package issuance

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"strings"
)

// Values of the interactive flows sealed with rotating keys (issue 11: "keys
// that rotate themselves ... sealing keys for opaque tokens and cookies").
//
// The session cookie, the sealed request carried through the login and
// consent forms, and authorization codes are sealed with a key derived
// (HKDF-SHA256, "tally flows v2") from the tenant's current sealing key —
// the key the tenant's key policy rotates with its opaque-token key (node:
// keypolicy.go), so these AES-GCM random-nonce seals stay far below the
// 2^32 bound per key too. The value names the key:
//
//	session cookie, forms:  "f2." kid "." base64url(nonce ‖ ciphertext)
//	authorization code:     "tlyc2." kid "." base64url(nonce ‖ ciphertext)
//
// with the kid also in the associated data. Any node opens it while that
// sealing key is live (retired keys stay published for their retention,
// which the node makes at least a session's lifetime). Values sealed before
// — pure base64url, and codes "tlyc1." — are sealed with the static
// per-purpose keys derived from the KEK (seal.go); they are still opened,
// and still produced while Config.ZTv2 says not every node can
// open the new form (a rolling upgrade, or after a downgrade).

const (
	flowPrefixV2 = "f2."
	codePrefixV2 = "tlyc2."
)

// flowAEAD derives the flow key of a sealing key's secret.
func flowAEAD(secret []byte) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, secret, nil, "tally flows v2", 32)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// ztv2 is Config.ZTv2.
func (s *Server) ztv2(ctx context.Context) bool {
	return s.cfg.ZTv2 == nil || s.cfg.ZTv2(ctx)
}

// sealFlow seals v for tenant: with the tenant's current sealing key under
// prefixV2 when every node can open that, else with static under prefixV1.
func (s *Server) sealFlow(ctx context.Context, tenant string, static cipher.AEAD, prefixV1, prefixV2 string, v any, aad string) (string, error) {
	if s.ztv2(ctx) {
		if set, err := s.keys.get(ctx, s.st, tenant); err == nil {
			if k := set.sealingKey(s.cfg.Now()); k != nil && k.flows != nil {
				return sealJSON(k.flows, s.cfg.Rand, prefixV2+k.meta.ID+".", v, flowAAD(aad, k.meta.ID))
			}
		}
	}
	return sealJSON(static, s.cfg.Rand, prefixV1, v, aad)
}

// openFlow opens a value of sealFlow; every failure is errSealed.
func (s *Server) openFlow(ctx context.Context, tenant string, static cipher.AEAD, prefixV1, prefixV2, value string, aad string, v any) error {
	rest, ok := strings.CutPrefix(value, prefixV2)
	if !ok {
		return openJSON(static, prefixV1, value, aad, v)
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 || len(value) > maxSealedLen {
		return errSealed
	}
	kid := rest[:i]
	set, err := s.keys.get(ctx, s.st, tenant)
	if err != nil {
		return errSealed
	}
	k := set.lookup(kid)
	if k == nil || k.meta.Use != UseSeal || k.flows == nil || !k.live(s.cfg.Now()) {
		return errSealed
	}
	return openJSON(k.flows, "", rest[i+1:], flowAAD(aad, kid), v)
}

func flowAAD(aad, kid string) string { return aad + "|v2|" + kid }
