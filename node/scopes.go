package node

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// A client granted a scope it was never granted before (issue 13,
// scope_first_use, feature "threat_v3"): a privilege-escalation signal.
//
// Every successful token response (client credentials, authorization code,
// refresh, device code, token exchange) passes its scopes to scopeWatch
// (issuance Config.ScopeUse), after the response is decided. The client's
// scope history is replicated (raft op 142 RecordScopeUse, bucket
// threat_client_scopes); this node keeps the histories it has read in
// memory and, when a grant carries a scope the history lacks, proposes one
// RecordScopeUse with the new scopes. The FSM decides: the first such
// command applied for a (client, scope) records it and raises the alert
// (event log, SIEM feed, policy input), later ones from other nodes find
// it. A client's first recorded grant is its baseline and raises nothing.
//
// Issuance never waits for it: the comparison on the request path is a
// map lookup; reading a history and proposing run on at most
// scopeWorkers goroutines, one per client at a time; beyond that a use is
// skipped (counted, seen again on the client's next grant). A failed
// proposal fails no request. Nothing is proposed while the cluster does
// not record threat_v3 (before it is recorded: while a member does not
// list it).

func init() { features = append(features, raft.FeatureThreatV3) }

const (
	// scopeWorkers bounds the histories read and proposals in flight.
	scopeWorkers = 4
	// scopeReload is how long a history read from the state is trusted
	// before it is read again (a client deleted and created again starts
	// a new history).
	scopeReload = 5 * time.Minute
	// maxScopeClients bounds the histories kept in memory.
	maxScopeClients = 100000
)

type scopeHistory struct {
	scopes map[string]bool
	full   bool
	read   time.Time
}

type scopeWatch struct {
	n       *Node
	gate    *featureGate
	sem     chan struct{}
	mu      sync.RWMutex
	known   map[string]*scopeHistory // tenant NUL client
	busy    map[string]bool          // a worker is on the client
	skipped atomic.Int64
	ctx     context.Context
	wg      sync.WaitGroup
}

// newScopeWatch returns the watch and the function that stops its workers
// and waits for them.
func newScopeWatch(n *Node) (*scopeWatch, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &scopeWatch{n: n, gate: newFeatureGate(n.cl, raft.FeatureThreatV3), sem: make(chan struct{}, scopeWorkers),
		known: map[string]*scopeHistory{}, busy: map[string]bool{}, ctx: ctx}
	return w, func() { cancel(); w.wg.Wait() }
}

func scopeClientKey(tenant, client string) string { return tenant + "\x00" + client }

// use is the issuance hook: cheap, never blocks.
func (w *scopeWatch) use(u issuance.ScopeUse) {
	if len(u.Scopes) == 0 {
		return
	}
	key := scopeClientKey(u.Tenant, u.ClientID)
	now := time.Now()
	known := func(h *scopeHistory) bool {
		return h != nil && now.Sub(h.read) < scopeReload && (h.full || !slices.ContainsFunc(u.Scopes, func(s string) bool { return !h.scopes[s] }))
	}
	w.mu.RLock()
	done := known(w.known[key])
	w.mu.RUnlock()
	if done {
		return // nothing new: the common case, under a read lock
	}
	w.mu.Lock()
	if known(w.known[key]) || w.busy[key] {
		w.mu.Unlock()
		return
	}
	select {
	case w.sem <- struct{}{}:
	default:
		w.mu.Unlock()
		w.skipped.Add(1)
		return
	}
	w.busy[key] = true
	w.wg.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.wg.Done()
		defer func() {
			w.mu.Lock()
			delete(w.busy, key)
			w.mu.Unlock()
			<-w.sem
		}()
		w.record(key, u)
	}()
}

// enabled reports whether op 142 may be proposed: the recorded cluster
// version enables threat_v3, or none is recorded and every member lists it.
func (w *scopeWatch) enabled(ctx context.Context) bool {
	st := w.n.raft.State()
	if st.ClusterVersion() != nil {
		return st.FeatureEnabled(raft.FeatureThreatV3)
	}
	return w.gate.allow(ctx)
}

// record reads the client's history if needed and proposes the scopes it
// lacks.
func (w *scopeWatch) record(key string, u issuance.ScopeUse) {
	ctx, cancel := context.WithTimeout(w.ctx, w.n.cfg.WriteTimeout)
	defer cancel()
	if !w.enabled(ctx) {
		return
	}
	w.mu.Lock()
	h := w.known[key]
	w.mu.Unlock()
	if h == nil || time.Since(h.read) >= scopeReload {
		stored, err := w.n.raft.FSM().ClientScopes(u.Tenant, u.ClientID)
		if err != nil {
			return
		}
		h = &scopeHistory{scopes: map[string]bool{}, full: stored.GetFull(), read: time.Now()}
		for _, s := range stored.GetScopes() {
			h.scopes[s] = true
		}
		w.mu.Lock()
		if len(w.known) >= maxScopeClients {
			clear(w.known)
		}
		w.known[key] = h
		w.mu.Unlock()
	}
	var fresh []string
	w.mu.Lock()
	if !h.full {
		for _, s := range u.Scopes {
			if !h.scopes[s] && !slices.Contains(fresh, s) && len(fresh) < raft.MaxScopeUse {
				fresh = append(fresh, s)
			}
		}
	}
	w.mu.Unlock()
	if len(fresh) == 0 {
		return
	}
	cmd := &raftpb.Command{Op: &raftpb.Command_RecordScopeUse{RecordScopeUse: &raftpb.RecordScopeUse{
		Tenant: u.Tenant, ClientId: u.ClientID, Scopes: fresh, Source: u.Source, GrantType: u.GrantType,
		Node: w.n.cfg.NodeID, Region: w.n.cfg.Region}}}
	if _, err := w.n.rep.propose(ctx, cmd); err != nil {
		w.n.log.Warn("scope use not recorded", "err", err, "tenant", u.Tenant, "client_id", u.ClientID)
	}
	// The OnApplied observer (observe) has added the scopes on success.
}

// observe is the FSM observer: a RecordScopeUse applied (by any node's
// proposal) adds its scopes to the history this node keeps; a DeleteClient
// or DeleteTenant applied forgets the histories the FSM dropped.
func (w *scopeWatch) observe(_ uint64, cmd *raftpb.Command, res raft.Result) {
	if res.Err != nil {
		return
	}
	if d := cmd.GetDeleteClient(); d != nil {
		// The FSM dropped the client's history (raft/apply_threat3_delete.go).
		w.mu.Lock()
		delete(w.known, scopeClientKey(d.GetTenant(), d.GetClientId()))
		w.mu.Unlock()
		return
	}
	if d := cmd.GetDeleteTenant(); d != nil {
		prefix := d.GetTenant() + "\x00"
		w.mu.Lock()
		maps.DeleteFunc(w.known, func(k string, _ *scopeHistory) bool { return strings.HasPrefix(k, prefix) })
		w.mu.Unlock()
		return
	}
	r := cmd.GetRecordScopeUse()
	if r == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if h := w.known[scopeClientKey(r.GetTenant(), r.GetClientId())]; h != nil {
		for _, s := range r.GetScopes() {
			h.scopes[s] = true
		}
	}
}

// ScopeUsesSkipped is how many grants' scopes this node did not compare
// with the client's history because scopeWorkers were busy.
func (n *Node) ScopeUsesSkipped() int64 {
	if n.scopes == nil {
		return 0
	}
	return n.scopes.skipped.Load()
}
