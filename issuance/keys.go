package issuance

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Key algorithms.
const (
	// AlgES256 is ECDSA on P-256 with SHA-256 (RFC 7518 §3.4).
	AlgES256 = "ES256"
	// AlgEdDSA is Ed25519 (RFC 8037 §3.1).
	AlgEdDSA = "EdDSA"
	// AlgRS256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3) on a
	// 2048-bit modulus.
	AlgRS256 = "RS256"
	// AlgA256GCM is AES-256-GCM, the sealing algorithm of opaque tokens.
	AlgA256GCM = "A256GCM"
)

// RSABits is the modulus size of generated RS256 keys. 2048 bits meets
// NIST SP 800-57 through 2030 and keeps generation fast enough for tests and
// for admin calls; 3072 would take several times longer to generate.
const RSABits = 2048

// sealKeySize is the length of an A256GCM sealing key.
const sealKeySize = 32

// ErrUnsupportedAlg is returned for a key algorithm/use combination this
// package does not implement.
var ErrUnsupportedAlg = errors.New("issuance: unsupported key algorithm")

// GenerateKey creates a tenant key: a signing key (use UseSign; alg ES256,
// EdDSA or RS256) or a sealing key for opaque tokens (use UseSeal; alg
// A256GCM). The key id is 128 random bits, base64url without padding. The
// public key is PKIX DER (empty for sealing keys); the private key (PKCS#8
// DER, or the 32 raw key bytes for A256GCM) is sealed with kek under
// associated data binding tenant, kid and use, so a ciphertext moved to
// another tenant or key fails to open.
//
// rnd supplies the kid, Ed25519 seeds and sealing keys; it should be
// crypto/rand.Reader outside tests. ECDSA and RSA key generation always use
// the standard library's secure source (Go 1.26 ignores the reader there).
// notBefore is when the key starts to sign or seal; a zero notBefore means
// created. created must not be zero.
func GenerateKey(kek *KEK, rnd io.Reader, tenant, alg string, use KeyUse, created, notBefore time.Time) (Key, error) {
	if kek == nil {
		return Key{}, errKEKNil
	}
	if tenant == "" {
		return Key{}, errors.New("issuance: GenerateKey: empty tenant")
	}
	if created.IsZero() {
		return Key{}, errors.New("issuance: GenerateKey: zero creation time")
	}
	if notBefore.IsZero() {
		notBefore = created
	}
	var (
		pub  []byte
		priv []byte
		err  error
	)
	switch {
	case use == UseSign && alg == AlgES256:
		var k *ecdsa.PrivateKey
		if k, err = ecdsa.GenerateKey(elliptic.P256(), rnd); err == nil {
			pub, priv, err = marshalPair(&k.PublicKey, k)
		}
	case use == UseSign && alg == AlgEdDSA:
		var p ed25519.PublicKey
		var k ed25519.PrivateKey
		if p, k, err = ed25519.GenerateKey(rnd); err == nil {
			pub, priv, err = marshalPair(p, k)
		}
	case use == UseSign && alg == AlgRS256:
		var k *rsa.PrivateKey
		if k, err = rsa.GenerateKey(rnd, RSABits); err == nil {
			pub, priv, err = marshalPair(&k.PublicKey, k)
		}
	case use == UseSeal && alg == AlgA256GCM:
		priv = make([]byte, sealKeySize)
		_, err = io.ReadFull(rnd, priv)
	default:
		return Key{}, fmt.Errorf("%w: %q for use %q", ErrUnsupportedAlg, alg, use)
	}
	if err != nil {
		return Key{}, fmt.Errorf("issuance: generate %s key: %w", alg, err)
	}
	kid, err := randomToken(rnd, 16)
	if err != nil {
		return Key{}, err
	}
	sealed, err := kek.Seal(priv, keyAAD(tenant, kid, use))
	clear(priv)
	if err != nil {
		return Key{}, err
	}
	return Key{
		Tenant:           tenant,
		ID:               kid,
		Alg:              alg,
		Use:              use,
		PublicKey:        pub,
		EncryptedPrivate: sealed,
		NotBefore:        notBefore,
	}, nil
}

func marshalPair(pub, priv any) ([]byte, []byte, error) {
	p, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	s, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return p, s, nil
}

// keyAAD is the associated data under which a key's private part is sealed
// with the KEK: "tally key v1" followed by length-prefixed tenant, kid and use.
func keyAAD(tenant, kid string, use KeyUse) []byte {
	b := make([]byte, 0, 16+len(tenant)+len(kid)+len(use)+3*binary.MaxVarintLen64)
	b = append(b, "tally key v1"...)
	b = appendLP(b, tenant)
	b = appendLP(b, kid)
	b = appendLP(b, string(use))
	return b
}

// appendLP appends s with a uvarint length prefix, so concatenations are
// unambiguous.
func appendLP(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// NewClientSecret returns a fresh client secret: 256 random bits, base64url
// without padding (43 characters).
func NewClientSecret(rnd io.Reader) (string, error) {
	return randomToken(rnd, 32)
}

var clientIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewClientID returns a fresh client id: 130 random bits as 26 lowercase
// base32 characters (a-z, 2-7), URL-safe and easy to read aloud.
func NewClientID(rnd io.Reader) (string, error) {
	b := make([]byte, 17) // 136 bits read; the encoding keeps the first 130
	if _, err := io.ReadFull(rnd, b); err != nil {
		return "", fmt.Errorf("issuance: random: %w", err)
	}
	return clientIDEncoding.EncodeToString(b)[:26], nil
}

// NewJTI returns a fresh token id (RFC 7519 §4.1.7): 128 random bits,
// base64url without padding.
func NewJTI(rnd io.Reader) (string, error) {
	return randomToken(rnd, 16)
}

func randomToken(rnd io.Reader, n int) (string, error) {
	var buf [32]byte
	b := buf[:n]
	if _, err := io.ReadFull(rnd, b); err != nil {
		return "", fmt.Errorf("issuance: random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
