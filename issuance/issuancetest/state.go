// Package issuancetest provides hand-written in-memory fakes of the
// interfaces issuance consumes (issuance.State and issuance.Revoker), for the
// issuance package's unit tests. End-to-end tests use the real replica.
package issuancetest

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyauth/tally/issuance"
)

// State is an in-memory issuance.State. It is safe for concurrent use.
// Like the replica, Keys keeps returning a key after it expired until it is
// deleted (as a sweep does): issuance must filter by its own clock.
// RunStateConformance holds it to the replica's behaviour.
type State struct {
	mu       sync.RWMutex
	tenants  map[string]issuance.Tenant
	clients  map[string]map[string]issuance.Client
	keys     map[string][]issuance.Key
	revoked  map[string]map[string]issuance.Revocation
	keyReads atomic.Int64
	err      error
}

var _ issuance.State = (*State)(nil)

// NewState returns an empty State.
func NewState() *State {
	return &State{
		tenants: make(map[string]issuance.Tenant),
		clients: make(map[string]map[string]issuance.Client),
		keys:    make(map[string][]issuance.Key),
		revoked: make(map[string]map[string]issuance.Revocation),
	}
}

// PutTenant creates or replaces a tenant.
func (s *State) PutTenant(t issuance.Tenant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tenants[t.ID] = t
}

// PutClient creates or replaces a client of c.Tenant.
func (s *State) PutClient(c issuance.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.clients[c.Tenant]
	if m == nil {
		m = make(map[string]issuance.Client)
		s.clients[c.Tenant] = m
	}
	m[c.ID] = c
}

// DeleteClient removes a client.
func (s *State) DeleteClient(tenant, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clients[tenant], id)
}

// PutKey appends a key to its tenant, or replaces the key with the same id
// in place (as retiring a key does).
func (s *State) PutKey(k issuance.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := s.keys[k.Tenant]
	if i := slices.IndexFunc(ks, func(x issuance.Key) bool { return x.ID == k.ID }); i >= 0 {
		ks = slices.Clone(ks) // readers may hold the old slice
		ks[i] = k
	} else {
		ks = append(slices.Clip(ks), k)
	}
	s.keys[k.Tenant] = ks
}

// AddKey adds a new key as the replicated state does (AddKeys): the
// tenant's current keys of the same use retire at k.NotBefore and expire
// retention later.
func (s *State) AddKey(k issuance.Key, retention time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := slices.Clone(s.keys[k.Tenant]) // readers may hold the old slice
	for i, old := range ks {
		if old.Use == k.Use && (old.RetiredAt.IsZero() || old.RetiredAt.After(k.NotBefore)) {
			ks[i].RetiredAt = k.NotBefore
			ks[i].ExpiresAt = k.NotBefore.Add(retention)
		}
	}
	s.keys[k.Tenant] = append(ks, k)
}

// DeleteKey removes a key (as the sweep of an expired key does).
func (s *State) DeleteKey(tenant, kid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[tenant] = slices.DeleteFunc(slices.Clone(s.keys[tenant]), func(x issuance.Key) bool { return x.ID == kid })
}

// AddRevocation records a revocation directly.
func (s *State) AddRevocation(r issuance.Revocation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.revoked[r.Tenant]
	if m == nil {
		m = make(map[string]issuance.Revocation)
		s.revoked[r.Tenant] = m
	}
	m[r.JTI] = r
}

// Revocations returns the tenant's revocations, in no particular order.
func (s *State) Revocations(tenant string) []issuance.Revocation {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]issuance.Revocation, 0, len(s.revoked[tenant]))
	for _, r := range s.revoked[tenant] {
		out = append(out, r)
	}
	return out
}

// FailWith makes every later Tenant, Client and Keys call fail with err
// (nil restores normal operation), to simulate a replica that cannot be
// read.
func (s *State) FailWith(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// KeyReads returns how many times Keys was called.
func (s *State) KeyReads() int64 {
	return s.keyReads.Load()
}

// Tenant implements issuance.State.
func (s *State) Tenant(_ context.Context, id string) (issuance.Tenant, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.err != nil {
		return issuance.Tenant{}, s.err
	}
	t, ok := s.tenants[id]
	if !ok {
		return issuance.Tenant{}, issuance.ErrNotFound
	}
	return t, nil
}

// Client implements issuance.State.
func (s *State) Client(_ context.Context, tenant, id string) (issuance.Client, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.err != nil {
		return issuance.Client{}, s.err
	}
	c, ok := s.clients[tenant][id]
	if !ok {
		return issuance.Client{}, issuance.ErrNotFound
	}
	return c, nil
}

// Keys implements issuance.State. The returned slice is shared and must not
// be modified (PutKey never modifies a slice it has handed out).
func (s *State) Keys(_ context.Context, tenant string) ([]issuance.Key, error) {
	s.keyReads.Add(1)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.err != nil {
		return nil, s.err
	}
	if _, ok := s.tenants[tenant]; !ok {
		return nil, issuance.ErrNotFound
	}
	return s.keys[tenant], nil
}

// Revoked implements issuance.State.
func (s *State) Revoked(_ context.Context, tenant, jti string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.revoked[tenant][jti]
	return ok
}

// Revoker is an in-memory issuance.Revoker that applies revocations to a
// State, as the replica does once the command commits. It is safe for
// concurrent use.
type Revoker struct {
	st    *State
	mu    sync.Mutex
	calls []issuance.Revocation
	err   error
}

var _ issuance.Revoker = (*Revoker)(nil)

// NewRevoker returns a Revoker that writes to st.
func NewRevoker(st *State) *Revoker { return &Revoker{st: st} }

// FailWith makes later Revoke calls fail with err without applying anything
// (nil restores normal operation), like a cluster without a quorum.
func (r *Revoker) FailWith(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

// Calls returns every Revoke call so far, failed ones included, in order.
func (r *Revoker) Calls() []issuance.Revocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// Revoke implements issuance.Revoker.
func (r *Revoker) Revoke(ctx context.Context, rv issuance.Revocation) error {
	r.mu.Lock()
	r.calls = append(r.calls, rv)
	err := r.err
	r.mu.Unlock()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.st.AddRevocation(rv)
	return nil
}
