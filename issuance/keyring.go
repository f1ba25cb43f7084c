package issuance

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// keyring turns the encrypted tenant keys of State into ready-to-use signers,
// verifiers and AEADs, decrypting and parsing each key once. Keys are
// immutable per kid, so a parsed key is reused for as long as its kid is in
// the tenant's key list; metadata (NotBefore, RetiredAt, ExpiresAt) is taken
// fresh from State whenever the list changes.
//
// Concurrency: a request loads the tenant's current keySet with one atomic
// load and compares it to State's list; only when the list changed does it
// take the tenant's build mutex (so a burst of requests after a rotation
// decrypts the new key once). No lock is held while signing or sealing.
type keyring struct {
	kek    *KEK
	logger *slog.Logger

	mu      sync.RWMutex
	tenants map[string]*tenantKeys

	loads atomic.Int64 // keys decrypted and parsed, observed by tests
}

type tenantKeys struct {
	build sync.Mutex
	set   atomic.Pointer[keySet]
}

// keySet is an immutable view of one tenant's keys.
type keySet struct {
	keys []*loadedKey // in State order (creation order)
	byID map[string]*loadedKey
	jwks atomic.Pointer[jwksDoc] // memoised JWK Set for the last published kid list
}

// loadedKey is one tenant key, decrypted and parsed. The key material fields
// are shared between keySets; meta is per keySet.
type loadedKey struct {
	meta Key

	// Signing keys. pub and jwk are set when the public key parsed; signer
	// is nil when the private part could not be used (err says why), in
	// which case the key still verifies and is still published.
	pub    crypto.PublicKey
	jwk    json.RawMessage
	method jwt.SigningMethod
	signer crypto.Signer

	// Sealing keys: aead seals opaque tokens, flows (a key derived from
	// the same secret) the values of the interactive flows
	// (seal_rotating.go).
	aead, flows cipher.AEAD

	err error
}

type jwksDoc struct {
	kids string // the kids it contains, in order, for cache validation
	body []byte
	etag string
}

func newKeyring(kek *KEK, logger *slog.Logger) *keyring {
	return &keyring{kek: kek, logger: logger, tenants: make(map[string]*tenantKeys)}
}

// get returns the tenant's keys as State has them now.
func (kr *keyring) get(ctx context.Context, st State, tenant string) (*keySet, error) {
	keys, err := st.Keys(ctx, tenant)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("issuance: read keys of tenant: %w", err)
	}
	kr.mu.RLock()
	tk := kr.tenants[tenant]
	kr.mu.RUnlock()
	if len(keys) == 0 {
		if tk != nil {
			kr.mu.Lock()
			delete(kr.tenants, tenant)
			kr.mu.Unlock()
		}
		return &keySet{}, nil
	}
	if tk == nil {
		kr.mu.Lock()
		if tk = kr.tenants[tenant]; tk == nil {
			tk = &tenantKeys{}
			kr.tenants[tenant] = tk
		}
		kr.mu.Unlock()
	}

	if set := tk.set.Load(); set != nil && set.matches(keys) {
		return set, nil
	}
	tk.build.Lock()
	defer tk.build.Unlock()
	prev := tk.set.Load()
	if prev != nil && prev.matches(keys) {
		return prev, nil
	}
	set := kr.build(tenant, keys, prev)
	tk.set.Store(set)
	return set, nil
}

// matches reports whether s was built from exactly this key list. Key
// material never changes for a kid, so ids and the mutable metadata suffice.
func (s *keySet) matches(keys []Key) bool {
	if len(s.keys) != len(keys) {
		return false
	}
	for i := range keys {
		a, b := &s.keys[i].meta, &keys[i]
		if a.ID != b.ID || a.Tenant != b.Tenant || a.Alg != b.Alg || a.Use != b.Use ||
			!a.NotBefore.Equal(b.NotBefore) || !a.RetiredAt.Equal(b.RetiredAt) || !a.ExpiresAt.Equal(b.ExpiresAt) {
			return false
		}
	}
	return true
}

func (kr *keyring) build(tenant string, keys []Key, prev *keySet) *keySet {
	set := &keySet{
		keys: make([]*loadedKey, 0, len(keys)),
		byID: make(map[string]*loadedKey, len(keys)),
	}
	for _, k := range keys {
		if k.ID == "" || set.byID[k.ID] != nil {
			kr.logger.Warn("issuance: skipping key with empty or duplicate id", "tenant", tenant, "kid", k.ID)
			continue
		}
		var lk loadedKey
		if old := prev.lookup(k.ID); old != nil && old.meta.Alg == k.Alg && old.meta.Use == k.Use && old.meta.Tenant == k.Tenant {
			lk = *old
		} else {
			lk = kr.load(tenant, k)
			if lk.err != nil {
				kr.logger.Warn("issuance: tenant key unusable", "tenant", tenant, "kid", k.ID, "alg", k.Alg, "use", k.Use, "err", lk.err)
			}
		}
		lk.meta = k
		lk.meta.EncryptedPrivate = nil // not needed once loaded
		set.keys = append(set.keys, &lk)
		set.byID[k.ID] = &lk
	}
	return set
}

func (s *keySet) lookup(kid string) *loadedKey {
	if s == nil {
		return nil
	}
	return s.byID[kid]
}

// load decrypts and parses one key. It never fails as a whole: problems are
// recorded in err and leave the unusable parts nil.
func (kr *keyring) load(tenant string, k Key) loadedKey {
	kr.loads.Add(1)
	lk := loadedKey{meta: k}
	if k.Tenant != tenant {
		lk.err = fmt.Errorf("key belongs to tenant %q", k.Tenant)
		return lk
	}
	switch k.Use {
	case UseSign:
		pub, method, err := parseSigningPublic(k.Alg, k.PublicKey)
		if err != nil {
			lk.err = err
			return lk
		}
		jwk, err := json.Marshal(jose.JSONWebKey{Key: pub, KeyID: k.ID, Algorithm: k.Alg, Use: "sig"})
		if err != nil {
			lk.err = fmt.Errorf("marshal JWK: %w", err)
			return lk
		}
		lk.pub, lk.method, lk.jwk = pub, method, jwk
		raw, err := kr.kek.Open(k.EncryptedPrivate, keyAAD(k.Tenant, k.ID, k.Use))
		if err != nil {
			lk.err = fmt.Errorf("decrypt private key: %w", err)
			return lk
		}
		defer clear(raw)
		signer, err := parseSigningPrivate(k.Alg, raw, pub)
		if err != nil {
			lk.err = err
			return lk
		}
		lk.signer = signer
	case UseSeal:
		if k.Alg != AlgA256GCM {
			lk.err = fmt.Errorf("%w: %q for sealing", ErrUnsupportedAlg, k.Alg)
			return lk
		}
		raw, err := kr.kek.Open(k.EncryptedPrivate, keyAAD(k.Tenant, k.ID, k.Use))
		if err != nil {
			lk.err = fmt.Errorf("decrypt sealing key: %w", err)
			return lk
		}
		defer clear(raw)
		if len(raw) != sealKeySize {
			lk.err = fmt.Errorf("sealing key is %d bytes", len(raw))
			return lk
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			lk.err = err
			return lk
		}
		if lk.aead, err = cipher.NewGCM(block); err != nil {
			lk.err = err
			return lk
		}
		if lk.flows, err = flowAEAD(raw); err != nil {
			lk.err = err
		}
	default:
		lk.err = fmt.Errorf("unknown key use %q", k.Use)
	}
	return lk
}

func parseSigningPublic(alg string, der []byte) (crypto.PublicKey, jwt.SigningMethod, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse public key: %w", err)
	}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if alg == AlgES256 && p.Curve == elliptic.P256() {
			return p, jwt.SigningMethodES256, nil
		}
	case ed25519.PublicKey:
		if alg == AlgEdDSA {
			return p, jwt.SigningMethodEdDSA, nil
		}
	case *rsa.PublicKey:
		if alg == AlgRS256 && p.N.BitLen() >= RSABits {
			return p, jwt.SigningMethodRS256, nil
		}
	}
	return nil, nil, fmt.Errorf("%w: public key of type %T does not fit alg %q", ErrUnsupportedAlg, pub, alg)
}

func parseSigningPrivate(alg string, der []byte, pub crypto.PublicKey) (crypto.Signer, error) {
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", priv)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if p, ok := signer.Public().(equaler); !ok || !p.Equal(pub) {
		return nil, errors.New("private key does not match the published public key")
	}
	switch signer.(type) {
	case *ecdsa.PrivateKey, ed25519.PrivateKey, *rsa.PrivateKey:
		return signer, nil
	}
	return nil, fmt.Errorf("%w: private key of type %T for alg %q", ErrUnsupportedAlg, priv, alg)
}

// live reports whether the key has not expired at now.
func (k *loadedKey) live(now time.Time) bool {
	return k.meta.ExpiresAt.IsZero() || now.Before(k.meta.ExpiresAt)
}

// current reports whether the key may sign or seal at now: it has started,
// is not retired and has not expired.
func (k *loadedKey) current(now time.Time) bool {
	return k.live(now) && !k.meta.NotBefore.After(now) &&
		(k.meta.RetiredAt.IsZero() || now.Before(k.meta.RetiredAt))
}

// signingKey returns the key that signs JWTs at now: among current, usable
// UseSign keys, the one with the latest NotBefore (the later-created one on a
// tie). When the tenant names a preferred alg, keys of that alg win; other
// algs are a fallback so that issuance keeps working while an operator fixes
// the key set. nil when there is none.
func (s *keySet) signingKey(now time.Time, preferAlg string) *loadedKey {
	var best, bestPreferred *loadedKey
	for _, k := range s.keys {
		if k.meta.Use != UseSign || k.signer == nil || !k.current(now) {
			continue
		}
		if best == nil || !k.meta.NotBefore.Before(best.meta.NotBefore) {
			best = k
		}
		if preferAlg != "" && k.meta.Alg == preferAlg &&
			(bestPreferred == nil || !k.meta.NotBefore.Before(bestPreferred.meta.NotBefore)) {
			bestPreferred = k
		}
	}
	if bestPreferred != nil {
		return bestPreferred
	}
	return best
}

// sealingKey returns the key that seals opaque tokens at now, chosen like
// signingKey. nil when there is none.
func (s *keySet) sealingKey(now time.Time) *loadedKey {
	var best *loadedKey
	for _, k := range s.keys {
		if k.meta.Use != UseSeal || k.aead == nil || !k.current(now) {
			continue
		}
		if best == nil || !k.meta.NotBefore.Before(best.meta.NotBefore) {
			best = k
		}
	}
	return best
}

// verifyKey returns the published signing key kid, or nil. Any key that has
// not expired verifies, including pending ones (NotBefore in the future):
// they are in the JWKS before they sign.
func (s *keySet) verifyKey(kid string, now time.Time) *loadedKey {
	k := s.lookup(kid)
	if k == nil || k.meta.Use != UseSign || k.pub == nil || !k.live(now) {
		return nil
	}
	return k
}

// unsealKey returns the AEAD of sealing key kid if it has not expired.
func (s *keySet) unsealKey(kid string, now time.Time) cipher.AEAD {
	k := s.lookup(kid)
	if k == nil || k.meta.Use != UseSeal || !k.live(now) {
		return nil
	}
	return k.aead
}

// published returns the JWK Set (RFC 7517 §5) of every signing key that has
// not expired at now, in creation order, and its entity tag. Sealing keys
// never appear. The document is memoised per kid list.
func (s *keySet) published(now time.Time) ([]byte, string) {
	var kids strings.Builder
	for _, k := range s.keys {
		if k.meta.Use == UseSign && k.jwk != nil && k.live(now) {
			kids.WriteString(k.meta.ID)
			kids.WriteByte(' ')
		}
	}
	if d := s.jwks.Load(); d != nil && d.kids == kids.String() {
		return d.body, d.etag
	}
	body := []byte(`{"keys":[`)
	first := true
	for _, k := range s.keys {
		if k.meta.Use == UseSign && k.jwk != nil && k.live(now) {
			if !first {
				body = append(body, ',')
			}
			first = false
			body = append(body, k.jwk...)
		}
	}
	body = append(body, "]}"...)
	sum := sha256.Sum256(body)
	d := &jwksDoc{kids: kids.String(), body: body, etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`}
	s.jwks.Store(d)
	return d.body, d.etag
}
