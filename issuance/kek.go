package issuance

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"
)

// KEKSize is the length in bytes of a key-encryption key.
const KEKSize = 32

// secretHashInfo is the HKDF info that derives the client-secret hashing key
// from the KEK. Changing it invalidates every stored secret hash.
const secretHashInfo = "tally client-secret v1"

var errKEKNil = errors.New("issuance: nil KEK")

// ErrDecrypt is returned by KEK.Open for a ciphertext that is malformed, was
// tampered with, or was sealed under another key or associated data.
var ErrDecrypt = errors.New("issuance: decryption failed")

// KEK is the key-encryption key: it encrypts tenant private keys at rest
// (AES-256-GCM) and keys the hash of client secrets. It never enters the Raft
// log. A KEK is immutable and safe for concurrent use.
type KEK struct {
	aead    cipher.AEAD
	hashKey []byte // HKDF-SHA256(kek, info secretHashInfo)
	// macs holds keyed HMAC-SHA256 states (hash.Hash) for HashSecret:
	// keying one costs two allocations and two block compressions, on
	// every client authentication otherwise.
	macs sync.Pool
}

// NewKEK returns a KEK for exactly KEKSize raw bytes. raw is copied.
func NewKEK(raw []byte) (*KEK, error) {
	if len(raw) != KEKSize {
		return nil, fmt.Errorf("issuance: KEK must be %d bytes, got %d", KEKSize, len(raw))
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("issuance: KEK cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("issuance: KEK GCM: %w", err)
	}
	hk, err := hkdf.Key(sha256.New, raw, nil, secretHashInfo, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("issuance: KEK subkey: %w", err)
	}
	k := &KEK{aead: aead, hashKey: hk}
	k.macs.New = func() any { return hmac.New(sha256.New, k.hashKey) }
	return k, nil
}

// Seal encrypts plaintext with AES-256-GCM under a fresh random 96-bit nonce
// and returns nonce‖ciphertext‖tag. aad is authenticated but not encrypted;
// Open must be given the same aad (callers bind tenant and key id into it).
func (k *KEK) Seal(plaintext, aad []byte) ([]byte, error) {
	if k == nil {
		return nil, errKEKNil
	}
	ns := k.aead.NonceSize()
	out := make([]byte, ns, ns+len(plaintext)+k.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("issuance: KEK nonce: %w", err)
	}
	return k.aead.Seal(out, out[:ns], plaintext, aad), nil
}

// Open reverses Seal. It returns ErrDecrypt for anything that does not
// authenticate under this KEK and aad.
func (k *KEK) Open(ciphertext, aad []byte) ([]byte, error) {
	if k == nil {
		return nil, errKEKNil
	}
	ns := k.aead.NonceSize()
	if len(ciphertext) < ns+k.aead.Overhead() {
		return nil, ErrDecrypt
	}
	pt, err := k.aead.Open(nil, ciphertext[:ns], ciphertext[ns:], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// HashSecret returns the keyed hash stored for a client secret:
// HMAC-SHA256 keyed by an HKDF-SHA256 subkey of the KEK (info
// "tally client-secret v1"). Generated secrets carry 256 bits of entropy
// (NewClientSecret), so no slow password hash is needed. A nil KEK returns
// nil, which matches no stored hash.
func (k *KEK) HashSecret(secret string) []byte {
	if k == nil {
		return nil
	}
	m := k.macs.Get().(hash.Hash)
	m.Reset() // back to the keyed initial state
	io.WriteString(m, secret)
	sum := m.Sum(make([]byte, 0, sha256.Size))
	k.macs.Put(m)
	return sum
}

// VerifySecret reports whether presented is one of the client's secrets that
// has not expired at now. It compares against every stored hash in constant
// time and does not stop at the first match, so timing does not reveal which
// secret matched or how many the client has.
func (k *KEK) VerifySecret(c Client, presented string, now time.Time) bool {
	if k == nil {
		return false
	}
	h := k.HashSecret(presented)
	ok := 0
	for _, s := range c.Secrets {
		match := subtle.ConstantTimeCompare(s.Hash, h)
		live := 1
		if !s.ExpiresAt.IsZero() && !now.Before(s.ExpiresAt) {
			live = 0
		}
		ok |= match & live
	}
	return ok == 1
}
