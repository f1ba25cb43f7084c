package raft

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tallyauth/tally/raft/raftpb"
)

// State is the in-memory read view of the replicated state of one node. The
// FSM brings it up to date after every committed batch (so a proposer that
// got its Result reads its own write) and rebuilds it when it opens or
// restores the state database.
//
// State is safe for concurrent use; reads take no bbolt transaction. It may
// lag the cluster (it is this replica's view). The returned records are
// immutable snapshots shared with other readers: the FSM replaces records,
// it never modifies one it has published. Callers must not modify them
// (clone with proto.Clone to change one).
type State struct {
	applied atomic.Uint64
	// appliedCh is closed (and replaced) whenever applied moves, so that
	// WaitApplied sleeps until then instead of polling (issue 14).
	appliedMu sync.Mutex
	appliedCh chan struct{}

	mu      sync.RWMutex
	tenants map[string]*tenantView

	cluster atomic.Pointer[raftpb.ClusterMeta]    // apply_cluster.go
	version atomic.Pointer[raftpb.ClusterVersion] // apply_version.go

	gateway atomic.Pointer[map[string]*raftpb.GatewayConfig] // apply_gateway.go

	deletedTenants atomic.Pointer[map[string]*raftpb.DeletedTenant] // apply_delete_tenant.go
}

type tenantView struct {
	tenant      *raftpb.Tenant
	clients     map[string]*raftpb.Client
	keys        map[string]*raftpb.Key
	keyOrder    []*raftpb.Key // keys sorted by created time, then kid
	revocations map[string]*raftpb.Revocation
	flow        flowView    // users, consents, device codes (state_users.go)
	deleted     deletedView // tombstones (apply_delete.go)
}

func newState() *State {
	return &State{tenants: make(map[string]*tenantView)}
}

func newTenantView(t *raftpb.Tenant) *tenantView {
	return &tenantView{
		tenant:      t,
		clients:     make(map[string]*raftpb.Client),
		keys:        make(map[string]*raftpb.Key),
		revocations: make(map[string]*raftpb.Revocation),
		flow:        newFlowView(),
	}
}

// AppliedIndex is the Raft index of the last entry reflected in the view.
func (s *State) AppliedIndex() uint64 { return s.applied.Load() }

// Tenant returns the tenant with id.
func (s *State) Tenant(id string) (*raftpb.Tenant, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[id]; tv != nil {
		return tv.tenant, true
	}
	return nil, false
}

// Tenants returns every tenant, sorted by id.
func (s *State) Tenants() []*raftpb.Tenant {
	s.mu.RLock()
	out := make([]*raftpb.Tenant, 0, len(s.tenants))
	for _, tv := range s.tenants {
		out = append(out, tv.tenant)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *raftpb.Tenant) int { return cmp.Compare(a.Id, b.Id) })
	return out
}

// Client returns the client id of tenant.
func (s *State) Client(tenant, id string) (*raftpb.Client, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		c, ok := tv.clients[id]
		return c, ok
	}
	return nil, false
}

// Clients returns the clients of tenant, sorted by id.
func (s *State) Clients(tenant string) []*raftpb.Client {
	s.mu.RLock()
	var out []*raftpb.Client
	if tv := s.tenants[tenant]; tv != nil {
		out = make([]*raftpb.Client, 0, len(tv.clients))
		for _, c := range tv.clients {
			out = append(out, c)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *raftpb.Client) int { return cmp.Compare(a.Id, b.Id) })
	return out
}

// Keys returns the keys of tenant in creation order (then by kid),
// including retired keys that have not been swept yet: callers compare
// not_before, retired and expires with their clock.
func (s *State) Keys(tenant string) []*raftpb.Key {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		return slices.Clone(tv.keyOrder)
	}
	return nil
}

// Revoked reports whether the token jti of tenant is revoked. It is one map
// lookup under a read lock.
func (s *State) Revoked(tenant, jti string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		_, ok := tv.revocations[jti]
		return ok
	}
	return false
}

// Revocation returns the revocation record of jti in tenant.
func (s *State) Revocation(tenant, jti string) (*raftpb.Revocation, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		r, ok := tv.revocations[jti]
		return r, ok
	}
	return nil, false
}

// Revocations returns the revocations of tenant, sorted by jti.
func (s *State) Revocations(tenant string) []*raftpb.Revocation {
	s.mu.RLock()
	var out []*raftpb.Revocation
	if tv := s.tenants[tenant]; tv != nil {
		out = make([]*raftpb.Revocation, 0, len(tv.revocations))
		for _, r := range tv.revocations {
			out = append(out, r)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *raftpb.Revocation) int { return cmp.Compare(a.Jti, b.Jti) })
	return out
}

// apply publishes the changes of one committed batch.
func (s *State) apply(changes []change, applied uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keysChanged := make(map[*tenantView]bool)
	for _, c := range changes {
		if c.kind == kindClusterMeta {
			s.cluster.Store(c.msg.(*raftpb.ClusterMeta))
			continue
		}
		if c.kind == bucketTenants && c.msg == nil {
			delete(s.tenants, c.tenant) // DeleteTenant
			continue
		}
		if c.kind == kindClusterVersion {
			s.version.Store(c.msg.(*raftpb.ClusterVersion))
			continue
		}
		if c.kind == kindGatewayConfig {
			if c.msg == nil {
				s.dropGatewayConfig(c.tenant) // DeleteTenant
			} else {
				s.storeGatewayConfig(c.msg.(*raftpb.GatewayConfig))
			}
			continue
		}
		if c.kind == kindDeletedTenant {
			s.storeTenantTombstone(c)
			continue
		}
		if c.kind == bucketTenants {
			t := c.msg.(*raftpb.Tenant)
			if tv := s.tenants[c.tenant]; tv != nil {
				tv.tenant = t
			} else {
				s.tenants[c.tenant] = newTenantView(t)
			}
			continue
		}
		tv := s.tenants[c.tenant]
		if tv == nil {
			// The FSM writes a tenant record before anything in it.
			panic("raft: view change for unknown tenant " + c.tenant)
		}
		if tv.applyFlowChange(c) || tv.applyDeleteChange(c) {
			continue
		}
		switch c.kind {
		case kindClients:
			if c.msg == nil {
				delete(tv.clients, c.id)
			} else {
				tv.clients[c.id] = c.msg.(*raftpb.Client)
			}
		case kindKeys:
			if c.msg == nil {
				delete(tv.keys, c.id)
			} else {
				tv.keys[c.id] = c.msg.(*raftpb.Key)
			}
			keysChanged[tv] = true
		case kindRevocations:
			if c.msg == nil {
				delete(tv.revocations, c.id)
			} else {
				tv.revocations[c.id] = c.msg.(*raftpb.Revocation)
			}
		}
	}
	for tv := range keysChanged {
		tv.sortKeys()
	}
	s.applied.Store(applied)
	s.appliedMoved()
}

// replace swaps the whole view (after open or restore).
func (s *State) replace(tenants map[string]*tenantView, applied uint64) {
	for _, tv := range tenants {
		tv.sortKeys()
	}
	s.mu.Lock()
	s.tenants = tenants
	s.applied.Store(applied)
	s.mu.Unlock()
	s.appliedMoved()
}

// appliedChanged returns a channel that is closed once the applied index
// moves after the call.
func (s *State) appliedChanged() <-chan struct{} {
	s.appliedMu.Lock()
	defer s.appliedMu.Unlock()
	if s.appliedCh == nil {
		s.appliedCh = make(chan struct{})
	}
	return s.appliedCh
}

// appliedMoved wakes the waiters of appliedChanged.
func (s *State) appliedMoved() {
	s.appliedMu.Lock()
	if s.appliedCh != nil {
		close(s.appliedCh)
		s.appliedCh = nil
	}
	s.appliedMu.Unlock()
}

func (tv *tenantView) sortKeys() {
	order := make([]*raftpb.Key, 0, len(tv.keys))
	for _, k := range tv.keys {
		order = append(order, k)
	}
	slices.SortFunc(order, func(a, b *raftpb.Key) int {
		if c := cmp.Compare(a.CreatedUnixNano, b.CreatedUnixNano); c != 0 {
			return c
		}
		return cmp.Compare(a.Kid, b.Kid)
	})
	tv.keyOrder = order
}
