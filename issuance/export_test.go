package issuance

import (
	"context"
	"crypto"
	"crypto/cipher"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
)

// Test-only access to internals for the external test package.

// TokenDataForTest is what a token says.
type TokenDataForTest = tokenData

// ParseTokenRequestForTest is the token endpoint's request parser.
func ParseTokenRequestForTest(r *http.Request, maxBody int64) (*TokenRequest, error) {
	return parseTokenRequest(r, maxBody)
}

// KeyLoads reports how many times a key was decrypted and parsed.
func (s *Server) KeyLoads() int64 { return s.keys.loads.Load() }

// CachedTenants reports how many tenants the keyring caches.
func (s *Server) CachedTenants() int {
	s.keys.mu.RLock()
	defer s.keys.mu.RUnlock()
	return len(s.keys.tenants)
}

// Sealer seals and unseals opaque tokens with one sealing key.
type Sealer struct {
	lk     loadedKey
	tenant string
}

// NewSealerForTest loads sealing key k.
func NewSealerForTest(kek *KEK, k Key) (*Sealer, error) {
	lk := newKeyring(kek, slog.New(slog.DiscardHandler)).load(k.Tenant, k)
	if lk.err != nil {
		return nil, lk.err
	}
	return &Sealer{lk: lk, tenant: k.Tenant}, nil
}

// Seal mints an opaque token for d.
func (s *Sealer) Seal(rnd io.Reader, d TokenDataForTest) (string, error) {
	d.Tenant = s.tenant
	return sealOpaque(s.lk.aead, s.lk.meta.ID, rnd, &d)
}

// SealRaw seals an arbitrary plaintext in the opaque token format.
func (s *Sealer) SealRaw(rnd io.Reader, plaintext []byte) (string, error) {
	d := tokenData{Tenant: s.tenant}
	buf := make([]byte, gcmNonceSize)
	if _, err := io.ReadFull(rnd, buf); err != nil {
		return "", err
	}
	buf = s.lk.aead.Seal(buf, buf[:gcmNonceSize], plaintext, opaqueAAD(d.Tenant, s.lk.meta.ID))
	return opaquePrefix + s.lk.meta.ID + "." + base64.RawURLEncoding.EncodeToString(buf), nil
}

// Unseal opens an opaque token presented to tenant.
func (s *Sealer) Unseal(tenant, token string) (TokenDataForTest, error) {
	return unsealOpaque(tenant, token, func(kid string) cipher.AEAD {
		if kid == s.lk.meta.ID {
			return s.lk.aead
		}
		return nil
	})
}

// EncodeOpaqueForTest is the plaintext encoding of an opaque token.
func EncodeOpaqueForTest(d TokenDataForTest) []byte { return encodeOpaque(&d) }

// PrivateKeyForTest decrypts the private part of signing key k.
func PrivateKeyForTest(kek *KEK, k Key) (crypto.Signer, error) {
	lk := newKeyring(kek, slog.New(slog.DiscardHandler)).load(k.Tenant, k)
	if lk.signer == nil {
		return nil, lk.err
	}
	return lk.signer, nil
}

// SubjectMatchesForTest is tls_client_auth's subject DN match (dn.go).
func SubjectMatchesForTest(rawSubject []byte, registered string) bool {
	return subjectMatches(rawSubject, registered)
}

// SealSessionForTest and OpenSessionForTest seal and open a session cookie
// value as the login does (seal_rotating.go).
func (s *Server) SealSessionForTest(ctx context.Context, tenant, userID string, expires int64) (string, error) {
	return s.sealFlow(ctx, tenant, s.flow.browser, "", flowPrefixV2, &session{UserID: userID, Expires: expires}, sessionAAD(tenant))
}

func (s *Server) OpenSessionForTest(ctx context.Context, tenant, value string) (string, error) {
	var sess session
	err := s.openFlow(ctx, tenant, s.flow.browser, "", flowPrefixV2, value, sessionAAD(tenant), &sess)
	return sess.UserID, err
}

// OpenPendingForTest opens value as a sealed login form request.
func (s *Server) OpenPendingForTest(ctx context.Context, tenant, value string) error {
	var p pending
	return s.openFlow(ctx, tenant, s.flow.browser, "", flowPrefixV2, value, pendingAAD(tenant, "authorize"), &p)
}
