package issuance

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by State lookups for a tenant, client or key that
// does not exist.
var ErrNotFound = errors.New("issuance: not found")

// TokenFormat is the kind of access token a client receives.
type TokenFormat string

const (
	// FormatJWT is an RFC 9068 JWT access token, verifiable offline via JWKS.
	FormatJWT TokenFormat = "jwt"
	// FormatOpaque is a sealed token (AEAD under a tenant key), checked by
	// introspection.
	FormatOpaque TokenFormat = "opaque"
)

// KeyUse says what a tenant key is for.
type KeyUse string

const (
	// UseSign keys sign JWTs (ES256, EdDSA, RS256).
	UseSign KeyUse = "sig"
	// UseSeal keys seal opaque tokens (A256GCM).
	UseSeal KeyUse = "seal"
)

// Grant types.
const (
	GrantClientCredentials = "client_credentials"
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
	GrantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
	GrantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
)

// Tenant is an isolated issuer with its own keys, clients and settings.
type Tenant struct {
	ID          string
	DisplayName string
	Disabled    bool
	SigningAlg  string
	Trust       TenantTrust // issue 11, clientauth_zt.go
	// RequirePAR: every authorization request must be pushed (RFC 9126
	// §6, par.go).
	RequirePAR bool
}

// SecretHash is a keyed hash of a client secret. A zero ExpiresAt never
// expires.
type SecretHash struct {
	Hash      []byte
	ExpiresAt time.Time
}

// Client is a registered OAuth client. Slices are shared with the replica
// and must not be modified.
type Client struct {
	Tenant         string
	ID             string
	Name           string
	Secrets        []SecretHash
	GrantTypes     []string
	Scopes         []string
	Audiences      []string
	AccessTokenTTL time.Duration
	TokenFormat    TokenFormat
	Disabled       bool
	Public         bool
	RedirectURIs   []string
	Auth           ClientAuth // issue 11, clientauth_zt.go
	// DPoPBound makes DPoP mandatory for the client's token requests
	// (RFC 9449 §5.2 dpop_bound_access_tokens).
	DPoPBound bool
	// RequirePAR: the client's authorization requests must be pushed
	// (RFC 9126 §6, par.go).
	RequirePAR bool
}

// Key is a tenant key as stored in the replica: public part in the clear,
// private part encrypted under the key-encryption key (see KEK).
type Key struct {
	Tenant           string
	ID               string
	Alg              string
	Use              KeyUse
	PublicKey        []byte // PKIX DER; empty for sealing keys
	EncryptedPrivate []byte
	NotBefore        time.Time
	RetiredAt        time.Time // zero while current
	ExpiresAt        time.Time // zero while current
}

// Revocation records that the token with JTI is revoked until ExpiresAt,
// when the token itself expires.
type Revocation struct {
	Tenant    string
	JTI       string
	ClientID  string
	Subject   string
	ExpiresAt time.Time
	Reason    string
}

// State is the read view of replicated state that issuance needs. It is
// served from the local replica without a Raft round-trip and may be slightly
// stale. Implementations are safe for concurrent use.
type State interface {
	// Tenant returns ErrNotFound for an unknown tenant.
	Tenant(ctx context.Context, id string) (Tenant, error)
	// Client returns ErrNotFound for an unknown client.
	Client(ctx context.Context, tenant, id string) (Client, error)
	// Keys returns every key of the tenant that is still in the state, in
	// the order they were created: an expired key stays until a sweep
	// removes it, so callers check its times (the keyring does).
	Keys(ctx context.Context, tenant string) ([]Key, error)
	// Revoked reports whether the token with this jti is revoked.
	Revoked(ctx context.Context, tenant, jti string) bool
}

// DeletedTenants is implemented by a State that keeps a deleted tenant's
// signing keys for a while (node: the Raft tombstone of DeleteTenant, two
// hours). Only SignSET uses them, to sign the tenant's last Security Event
// Tokens (tenant-deleted); tokens, JWKS and introspection never see them.
type DeletedTenants interface {
	// DeletedTenantKeys returns the signing keys of a deleted tenant and
	// its preferred signing algorithm; found false if it has no tombstone
	// (or exists).
	DeletedTenantKeys(ctx context.Context, tenant string) (keys []Key, signingAlg string, found bool)
}

// Revoker proposes revocations to the replicated state. Revoke returns once
// the revocation is committed and applied locally, so the caller reads its
// own write.
type Revoker interface {
	Revoke(ctx context.Context, r Revocation) error
}
