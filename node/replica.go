package node

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// replica adapts the Raft read view and proposals to the interfaces that
// issuance declares. Reads never leave the process; writes are one Raft
// command each.
type replica struct {
	rn  *raft.Node
	now func() time.Time
	// forward commits a command through the leader and waits until it is
	// applied here (cluster.propose); nil proposes on rn directly.
	forward func(context.Context, *raftpb.Command) (raft.Result, error)
	// fresh reports ErrStale when the replica is beyond the staleness
	// bound; reads then fail closed. nil means always fresh.
	fresh func() error
	// clockErr refuses to stamp a command with this node's clock while it
	// is off the voters' (clock.go). nil means never.
	clockErr func() error
	// onWrite, if set, records each write's kind, path and outcome
	// (nodeMetrics.write).
	// It is set once the metrics exist, after goroutines that write have
	// started, hence atomic.
	onWrite atomic.Pointer[writeHook]

	mu   sync.RWMutex
	keys map[string]keyCacheEntry // tenant → converted keys
}

type keyCacheEntry struct {
	src []*raftpb.Key
	out []issuance.Key
}

func newReplica(rn *raft.Node, now func() time.Time) *replica {
	return &replica{rn: rn, now: now, keys: make(map[string]keyCacheEntry)}
}

var _ issuance.State = (*replica)(nil)
var _ issuance.Revoker = (*replica)(nil)
var _ issuance.ClientPublicity = (*replica)(nil)

func (r *replica) Tenant(_ context.Context, id string) (issuance.Tenant, error) {
	// Every OAuth endpoint looks the tenant up first, so this one check
	// makes issuance, introspection, JWKS and discovery fail closed
	// (temporarily_unavailable) on a stale replica.
	if r.fresh != nil {
		if err := r.fresh(); err != nil {
			return issuance.Tenant{}, err
		}
	}
	t, ok := r.rn.State().Tenant(id)
	if !ok {
		return issuance.Tenant{}, issuance.ErrNotFound
	}
	return tenantFromPB(t), nil
}

func (r *replica) Client(_ context.Context, tenant, id string) (issuance.Client, error) {
	c, ok := r.rn.State().Client(tenant, id)
	if !ok {
		return issuance.Client{}, issuance.ErrNotFound
	}
	return clientFromPB(c), nil
}

// ClientPublic is Client's Public without converting the whole record
// (issuance.ClientPublicity: the rate limiter asks it on every request).
func (r *replica) ClientPublic(_ context.Context, tenant, id string) (bool, error) {
	c, ok := r.rn.State().Client(tenant, id)
	if !ok {
		return false, issuance.ErrNotFound
	}
	return c.Public, nil
}

// Keys converts the replica's key records once per change: the stored
// records are immutable, so the converted slice is reused while the
// replica's slice holds the same pointers.
func (r *replica) Keys(_ context.Context, tenant string) ([]issuance.Key, error) {
	src := r.rn.State().Keys(tenant)
	r.mu.RLock()
	e, ok := r.keys[tenant]
	r.mu.RUnlock()
	if ok && slices.Equal(e.src, src) {
		return e.out, nil
	}
	if _, ok := r.rn.State().Tenant(tenant); !ok {
		return nil, issuance.ErrNotFound
	}
	out := make([]issuance.Key, len(src))
	for i, k := range src {
		out[i] = keyFromPB(k)
	}
	r.mu.Lock()
	r.keys[tenant] = keyCacheEntry{src: src, out: out}
	r.mu.Unlock()
	return out, nil
}

// DeletedTenantKeys (issuance.DeletedTenants): the signing keys the
// tombstone of a deleted tenant keeps, for its last events.
func (r *replica) DeletedTenantKeys(_ context.Context, tenant string) ([]issuance.Key, string, bool) {
	st := r.rn.State()
	if _, ok := st.Tenant(tenant); ok {
		return nil, "", false
	}
	d, ok := st.DeletedTenant(tenant)
	if !ok {
		return nil, "", false
	}
	out := make([]issuance.Key, len(d.SigningKeys))
	for i, k := range d.SigningKeys {
		out[i] = keyFromPB(k)
	}
	return out, raft.DeletedSigningAlgOf(d), true
}

func (r *replica) Revoked(_ context.Context, tenant, jti string) bool {
	return r.rn.State().Revoked(tenant, jti)
}

// Revoke proposes a revocation and returns once it is applied locally.
func (r *replica) Revoke(ctx context.Context, rv issuance.Revocation) error {
	_, err := r.propose(ctx, &raftpb.Command{Op: &raftpb.Command_RevokeToken{RevokeToken: &raftpb.RevokeToken{
		Revocation: &raftpb.Revocation{
			Tenant:          rv.Tenant,
			Jti:             rv.JTI,
			ClientId:        rv.ClientID,
			Subject:         rv.Subject,
			RevokedUnixNano: r.now().UnixNano(),
			ExpiresUnixNano: rv.ExpiresAt.UnixNano(),
			Reason:          rv.Reason,
		},
	}}})
	return err
}

// ErrUnavailable marks a write that could not be committed now (no leader,
// no quorum, timeout); the caller may retry.
var ErrUnavailable = errors.New("node: temporarily unavailable")

// propose stamps a command with the version, a fresh request id and the
// proposer's clock, proposes it, and returns the FSM's result. Domain
// outcomes come back as the FSM's sentinel errors; anything that means "not
// committed now" wraps ErrUnavailable.
func (r *replica) propose(ctx context.Context, cmd *raftpb.Command) (_ raft.Result, err error) {
	if hook := r.onWrite.Load(); hook != nil {
		start, forwarded := time.Now(), !r.rn.IsLeader()
		defer func() { (*hook)(ctx, cmd, forwarded, time.Since(start), err) }()
	}
	if r.clockErr != nil {
		if err := r.clockErr(); err != nil {
			return raft.Result{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	cmd.Version = raft.CommandVersion
	cmd.TimeUnixNano = r.now().UnixNano()
	if cmd.RequestId == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return raft.Result{}, err
		}
		cmd.RequestId = base64.RawURLEncoding.EncodeToString(b[:])
	}
	propose := r.rn.Propose
	if r.forward != nil {
		propose = r.forward
	}
	res, err := propose(ctx, cmd)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return res, err
		}
		return res, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return res, res.Err
}

func tenantFromPB(t *raftpb.Tenant) issuance.Tenant {
	return issuance.Tenant{ID: t.Id, DisplayName: t.DisplayName, Disabled: t.Disabled, SigningAlg: raft.SigningAlgOf(t),
		Trust: trustFromPB(t.Trust), RequirePAR: t.RequirePushedAuthorizationRequests} // ztauth.go, par.go
}

func clientFromPB(c *raftpb.Client) issuance.Client {
	secrets := make([]issuance.SecretHash, len(c.Secrets))
	for i, s := range c.Secrets {
		secrets[i] = issuance.SecretHash{Hash: s.Hash, ExpiresAt: unixNano(s.ExpiresUnixNano)}
	}
	return issuance.Client{
		Tenant:         c.Tenant,
		ID:             c.Id,
		Name:           c.Name,
		Secrets:        secrets,
		GrantTypes:     raft.GrantTypesOf(c),
		Scopes:         c.Scopes,
		Audiences:      c.Audiences,
		AccessTokenTTL: time.Duration(c.AccessTokenTtlSeconds) * time.Second,
		TokenFormat:    issuance.TokenFormat(raft.TokenFormatName(raft.TokenFormatOf(c))),
		Disabled:       c.Disabled,
		Public:         c.Public,
		RedirectURIs:   c.RedirectUris,
		Auth:           clientAuthFromPB(c.Auth), // ztauth.go
		DPoPBound:      c.DpopBound,
		RequirePAR:     c.RequirePushedAuthorizationRequests,
	}
}

func keyFromPB(k *raftpb.Key) issuance.Key {
	return issuance.Key{
		Tenant:           k.Tenant,
		ID:               k.Kid,
		Alg:              raft.KeyAlgOf(k),
		Use:              issuance.KeyUse(raft.KeyUseName(raft.KeyUseOf(k))),
		PublicKey:        k.PublicKey,
		EncryptedPrivate: k.EncryptedPrivate,
		NotBefore:        unixNano(k.NotBeforeUnixNano),
		RetiredAt:        unixNano(k.RetiredUnixNano),
		ExpiresAt:        unixNano(k.ExpiresUnixNano),
	}
}

func keyToPB(k issuance.Key, created time.Time, retention time.Duration) *raftpb.Key {
	return &raftpb.Key{
		Tenant:            k.Tenant,
		Kid:               k.ID,
		Alg:               k.Alg,
		Use:               string(k.Use),
		PublicKey:         k.PublicKey,
		EncryptedPrivate:  k.EncryptedPrivate,
		CreatedUnixNano:   created.UnixNano(),
		NotBeforeUnixNano: k.NotBefore.UnixNano(),
		RetentionNanos:    int64(retention),
	}
}

// unixNano maps 0 to the zero time.
func unixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// writeHook records one write (replica.onWrite).
type writeHook func(ctx context.Context, cmd *raftpb.Command, forwarded bool, d time.Duration, err error)
