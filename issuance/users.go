package issuance

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/crypto/argon2"
)

// User is an end user of a tenant, as stored in the replica.
type User struct {
	Tenant        string
	ID            string
	Username      string
	Email         string
	EmailVerified bool
	Name          string
	Password      PasswordHash
	Disabled      bool
	Locked        bool
	// LockedAt is when the user was last disabled or locked (zero if
	// never): its access tokens issued at or before it stay invalid.
	LockedAt time.Time
	// SessionsRevokedAt ends the sign-in sessions that began at or before
	// it (whole seconds: its second counts); zero if never.
	SessionsRevokedAt time.Time
}

// Active reports whether the user may sign in and get tokens.
func (u User) Active() bool { return !u.Disabled && !u.Locked }

// PasswordHash is an argon2id hash (RFC 9106) together with the parameters
// it was computed with, so they can be raised later without invalidating
// stored hashes. A zero PasswordHash matches no password.
type PasswordHash struct {
	Alg       string // "argon2id"
	Salt      []byte
	Hash      []byte
	Time      uint32
	MemoryKiB uint32
	Threads   uint8
}

// PasswordParams are the argon2id parameters of new password hashes.
type PasswordParams struct {
	Time      uint32
	MemoryKiB uint32
	Threads   uint8
}

// DefaultPasswordParams follow RFC 9106 §4's second recommended option
// scaled to OWASP's minimum for interactive logins: t=2, m=19 MiB, p=1.
func DefaultPasswordParams() PasswordParams {
	return PasswordParams{Time: 2, MemoryKiB: 19 * 1024, Threads: 1}
}

// Validate reports parameters argon2id cannot use or that are too weak to
// be meant.
func (p PasswordParams) Validate() error {
	if p.Time == 0 || p.Time > 64 || p.MemoryKiB < 8 || p.MemoryKiB > 4<<20 || p.Threads == 0 {
		return errors.New("issuance: password params: want time 1..64, memory 8 KiB..4 GiB, threads >= 1")
	}
	return nil
}

// MaxPasswordLen bounds the passwords hashed, so that a huge body cannot
// cost more than a normal login.
const MaxPasswordLen = 1024

// HashPassword hashes password with argon2id under a fresh 16-byte salt
// from rnd.
func HashPassword(p PasswordParams, password string, rnd io.Reader) (PasswordHash, error) {
	if err := p.Validate(); err != nil {
		return PasswordHash{}, err
	}
	if password == "" || len(password) > MaxPasswordLen {
		return PasswordHash{}, fmt.Errorf("issuance: password must be 1 to %d bytes", MaxPasswordLen)
	}
	salt := make([]byte, 16)
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return PasswordHash{}, fmt.Errorf("issuance: password salt: %w", err)
	}
	h := argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, 32)
	return PasswordHash{Alg: "argon2id", Salt: salt, Hash: h, Time: p.Time, MemoryKiB: p.MemoryKiB, Threads: p.Threads}, nil
}

// Verify reports whether password matches, in constant time with respect
// to the stored hash.
func (h PasswordHash) Verify(password string) bool {
	if h.Alg != "argon2id" || len(h.Hash) < 16 || len(h.Salt) < 8 || h.Threads == 0 || h.Time == 0 ||
		password == "" || len(password) > MaxPasswordLen {
		return false
	}
	got := argon2.IDKey([]byte(password), h.Salt, h.Time, h.MemoryKiB, h.Threads, uint32(len(h.Hash)))
	return subtle.ConstantTimeCompare(got, h.Hash) == 1
}

// Consent is what a user approved for a client.
type Consent struct {
	Scopes    []string
	ExpiresAt time.Time // zero: does not expire
}

// DeviceCode is a pending, approved or denied device authorization
// (RFC 8628).
type DeviceCode struct {
	Tenant    string
	UserCode  string // normalized, no dash
	ClientID  string
	Scopes    []string
	ExpiresAt time.Time
	Status    string
	// Interval is the polling interval advertised for the code.
	Interval time.Duration
}

// Users is the read view of end users that the interactive endpoints need.
// Reads are local and may be slightly stale.
type Users interface {
	// User and UserByUsername return ErrNotFound for an unknown user.
	User(ctx context.Context, tenant, id string) (User, error)
	UserByUsername(ctx context.Context, tenant, username string) (User, error)
	// Consent returns ErrNotFound when the user gave the client none.
	Consent(ctx context.Context, tenant, userID, clientID string) (Consent, error)
	// DeviceCode returns ErrNotFound for an unknown normalized user code.
	DeviceCode(ctx context.Context, tenant, userCode string) (DeviceCode, error)
}

// Family is a refresh-token family as the grant commands return it.
type Family struct {
	ID         string
	ClientID   string
	UserID     string
	Scopes     []string
	AuthTime   time.Time
	Generation uint64
}

// AccessTokenRef names an access token issued from a grant, recorded so
// that revoking the grant revokes it.
type AccessTokenRef struct {
	JTI       string
	ExpiresAt time.Time
}

// NewFamily is a refresh family to create with a grant.
type NewFamily struct {
	ID          string
	Hash        []byte // SHA-256 of the first refresh token
	ExpiresAt   time.Time
	IdleTimeout time.Duration
}

// CodeRedemption is one authorization code redemption.
type CodeRedemption struct {
	Tenant      string
	CodeHash    []byte
	CodeExpires time.Time
	ClientID    string
	UserID      string
	Scopes      []string
	AuthTime    time.Time
	Family      *NewFamily // nil: no refresh token
	AccessToken AccessTokenRef
}

// Rotation is one refresh-token use.
type Rotation struct {
	Tenant          string
	FamilyID        string
	Generation      uint64
	TokenHash       []byte
	ClientID        string
	NewHash         []byte
	SealedSuccessor []byte
	ReuseInterval   time.Duration
	AccessToken     AccessTokenRef
	// Network is the client's network (IPv4 /24, IPv6 /64; "" unknown):
	// the store records it in the family and raises a refresh_new_network
	// alert when it differs from the last rotation's (issue 13).
	Network string
}

// RotationResult is a successful rotation: the family after it and, when
// the presented token was the just-superseded one within the reuse
// interval, the successor sealed at the first rotation.
type RotationResult struct {
	Family          Family
	Replayed        bool
	SealedSuccessor []byte
}

// DevicePoll is one poll of the token endpoint with a device code.
type DevicePoll struct {
	Tenant      string
	CodeHash    []byte
	ClientID    string
	Family      *NewFamily
	AccessToken AccessTokenRef
}

// DeviceGrant is a redeemed device code.
type DeviceGrant struct {
	UserID   string
	Scopes   []string
	AuthTime time.Time
	Family   *Family
}

// Outcomes of Grants calls that are refusals, matched with errors.Is. The
// writes they imply (revocations on reuse) are committed before they are
// returned.
var (
	// ErrGrantInvalid: the code, refresh token or device code is unknown,
	// expired, of another client, or its user or client is disabled.
	ErrGrantInvalid = errors.New("issuance: grant invalid")
	// ErrCodeReused: the code was redeemed before; its tokens are revoked.
	ErrCodeReused = errors.New("issuance: code reused, its tokens are revoked")
	// ErrRefreshReused: a superseded refresh token was presented; the
	// family is revoked.
	ErrRefreshReused = errors.New("issuance: refresh token reused, family revoked")
	// ErrAuthorizationPending, ErrSlowDown, ErrAccessDenied and
	// ErrExpiredToken are the RFC 8628 §3.5 polling answers.
	ErrAuthorizationPending = errors.New("issuance: authorization pending")
	ErrSlowDown             = errors.New("issuance: slow down")
	ErrAccessDenied         = errors.New("issuance: access denied")
	ErrExpiredToken         = errors.New("issuance: device code expired")
	// ErrUserCodeInUse: CreateDeviceCode drew a user code that is taken.
	ErrUserCodeInUse = errors.New("issuance: user code in use")
)

// Grants proposes the writes of the end-user flows. Each call is one
// replicated command and returns once it is applied locally; an error that
// is none of the sentinels above means it could not be committed now.
type Grants interface {
	RememberConsent(ctx context.Context, tenant, userID, clientID string, scopes []string, expires time.Time) error
	RedeemCode(ctx context.Context, r CodeRedemption) (*Family, error)
	RotateRefresh(ctx context.Context, r Rotation) (RotationResult, error)
	// RevokeFamily revokes a family of clientID (RFC 7009 for refresh
	// tokens): ErrNotFound if there is none, ErrGrantInvalid if it belongs
	// to another client.
	RevokeFamily(ctx context.Context, tenant, clientID, familyID, reason string) error
	CreateDeviceCode(ctx context.Context, d DeviceCode, codeHash []byte, interval time.Duration) error
	DecideDeviceCode(ctx context.Context, tenant, userCode string, approve bool, userID string, authTime time.Time) error
	PollDeviceCode(ctx context.Context, p DevicePoll) (DeviceGrant, error)
}
