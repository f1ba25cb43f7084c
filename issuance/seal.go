package issuance

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// flowKeys are the keys of the interactive flows. They are derived from the
// KEK with HKDF-SHA256 (RFC 5869), one per purpose, so every node of the
// cluster has them and none of them is ever stored:
//
//   - codes seals authorization codes, which carry everything they are
//     bound to (RFC 6749 §4.1.2 lets the code's format be ours);
//   - browser seals the session cookie and the pending authorization
//     request carried through the login and consent forms (codes and
//     browser are used only while the tenant's rotating sealing key may
//     not be: seal_rotating.go);
//   - successor seals the successor refresh token stored on a family for
//     the reuse interval;
//   - refreshMAC authenticates refresh tokens, so a forged token never
//     reaches the FSM.
type flowKeys struct {
	codes, browser, successor cipher.AEAD
	refreshMAC                []byte
}

func newFlowKeys(k *KEK) (*flowKeys, error) {
	derive := func(info string) ([]byte, error) {
		return hkdf.Key(sha256.New, k.hashKey, nil, info, 32)
	}
	aeadFor := func(info string) (cipher.AEAD, error) {
		key, err := derive(info)
		if err != nil {
			return nil, err
		}
		b, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}
	var fk flowKeys
	var err error
	if fk.codes, err = aeadFor("tally authorization-code v1"); err != nil {
		return nil, fmt.Errorf("issuance: derive code key: %w", err)
	}
	if fk.browser, err = aeadFor("tally browser v1"); err != nil {
		return nil, fmt.Errorf("issuance: derive browser key: %w", err)
	}
	if fk.successor, err = aeadFor("tally refresh-successor v1"); err != nil {
		return nil, fmt.Errorf("issuance: derive successor key: %w", err)
	}
	if fk.refreshMAC, err = derive("tally refresh-mac v1"); err != nil {
		return nil, fmt.Errorf("issuance: derive refresh key: %w", err)
	}
	return &fk, nil
}

var errSealed = errors.New("sealed value does not authenticate")

// maxSealedLen bounds sealed values presented to us (codes, cookies, form
// fields).
const maxSealedLen = 4 << 10

// sealJSON seals v as JSON under aead with a fresh random nonce and returns
// prefix + base64url(nonce ‖ ciphertext).
func sealJSON(aead cipher.AEAD, rnd io.Reader, prefix string, v any, aad string) (string, error) {
	pt, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	b, err := sealBytes(aead, rnd, pt, aad)
	if err != nil {
		return "", err
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

func sealBytes(aead cipher.AEAD, rnd io.Reader, pt []byte, aad string) ([]byte, error) {
	buf := make([]byte, aead.NonceSize(), aead.NonceSize()+len(pt)+aead.Overhead())
	if _, err := io.ReadFull(rnd, buf); err != nil {
		return nil, fmt.Errorf("issuance: random nonce: %w", err)
	}
	return aead.Seal(buf, buf[:aead.NonceSize()], pt, []byte(aad)), nil
}

func openBytes(aead cipher.AEAD, b []byte, aad string) ([]byte, error) {
	ns := aead.NonceSize()
	if len(b) < ns+aead.Overhead() {
		return nil, errSealed
	}
	pt, err := aead.Open(nil, b[:ns], b[ns:], []byte(aad))
	if err != nil {
		return nil, errSealed
	}
	return pt, nil
}

// openJSON reverses sealJSON; every failure is errSealed.
func openJSON(aead cipher.AEAD, prefix, s string, aad string, v any) error {
	if len(s) > maxSealedLen {
		return errSealed
	}
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return errSealed
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil {
		return errSealed
	}
	pt, err := openBytes(aead, b, aad)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(pt, v); err != nil {
		return errSealed
	}
	return nil
}
