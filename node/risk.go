package node

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Security alerts as policy inputs (issue 13): every replica watches the
// RaiseSecurityAlert commands it applies (op 140, alerts.go) and keeps the
// alerts raised within the last Config.AlertRiskWindow in memory. The
// issuance and gateway Risk hooks answer from them, so a tenant's CEL
// policy can deny or narrow a grant while its client, user or source
// network is under an active alert (issuance/policy package doc):
//
//   - an alert applies to a request when everything it names is the
//     request's: its client id, its user id (subject) and its source (an
//     address, or a network that contains the request's address). A
//     failure on alice's account from one network thus marks alice's
//     requests from that network only, so an attacker cannot turn the
//     policy into a denial of service for alice everywhere;
//   - alerts naming none of these (e.g. failures_per_tenant) are the
//     tenant's: tenant_alerts, risk 0.5 when there is nothing else;
//   - risk is 1 when an alert applies to the request, listed in alerts.
//
// The window runs from the command's time (the proposer's clock), so the
// replicas agree and a log replayed at start does not revive old alerts.
// The index is in memory, rebuilt from replicated state: once the cluster
// records threat_v3 the FSM keeps every announced alert for 24 hours of
// command time (raft's alert log), and the node indexes the alerts of the
// window from it at start and after a snapshot restore (rebuild), so a
// node restarted, or caught up from a snapshot, knows the alerts raised
// before (an alert repeated within its minute is logged once: its window
// runs from the first). Before threat_v3 is recorded, a node restarted
// from a snapshot knows only the alerts applied after it. The index holds
// at most maxRiskAlerts alerts; beyond that new ones are not indexed until
// old ones expire.

// DefaultAlertRiskWindow is Config.AlertRiskWindow's default.
const DefaultAlertRiskWindow = 10 * time.Minute

// DefaultAlertTravelWindow is Config.AlertTravelWindow's default.
const DefaultAlertTravelWindow = raft.DefaultTravelWindow

// maxRiskAlerts bounds the index.
const maxRiskAlerts = 20000

type riskAlert struct {
	kind, client, subject string
	source                netip.Prefix // invalid: none
	until                 time.Time
}

// applies reports whether everything a names is in's.
func (a *riskAlert) applies(in issuance.PolicyInput, ip netip.Addr) bool {
	return (a.client == "" || a.client == in.ClientID) &&
		(a.subject == "" || a.subject == in.Subject) &&
		(!a.source.IsValid() || (ip.IsValid() && a.source.Contains(ip)))
}

type riskTenant struct {
	alerts map[string]*riskAlert // by alert key
	// Indexed by the most specific thing an alert names.
	bySource  map[netip.Prefix]map[string]*riskAlert
	byClient  map[string]map[string]*riskAlert
	bySubject map[string]map[string]*riskAlert
	wide      map[string]*riskAlert
	bits      map[int]bool // source prefix lengths present
}

type riskIndex struct {
	window time.Duration
	now    func() time.Time
	mu     sync.RWMutex
	n      atomic.Int64 // alerts indexed (read without mu: the hot path's empty case)
	sweep  time.Time
	tenant map[string]*riskTenant
}

func newRiskIndex(window time.Duration, now func() time.Time) *riskIndex {
	if window == 0 {
		window = DefaultAlertRiskWindow
	}
	return &riskIndex{window: window, now: now, tenant: map[string]*riskTenant{}}
}

// observe is the FSM observer: it indexes applied security alerts, and
// forgets a deleted tenant's (the FSM drops them from its alert log too,
// raft/apply_threat3_delete.go, so a tenant created again with the id
// inherits none, before or after a restart).
func (x *riskIndex) observe(_ uint64, cmd *raftpb.Command, res raft.Result) {
	if res.Err != nil {
		return
	}
	if d := cmd.GetDeleteTenant(); d != nil {
		x.mu.Lock()
		if t := x.tenant[d.GetTenant()]; t != nil {
			x.n.Add(-int64(len(t.alerts)))
			delete(x.tenant, d.GetTenant())
		}
		x.mu.Unlock()
		return
	}
	at := time.Unix(0, cmd.GetTimeUnixNano())
	if cmd.GetTimeUnixNano() == 0 {
		at = x.now()
	}
	al := cmd.GetRaiseSecurityAlert().GetAlert()
	if al == nil {
		al = res.Grant.GetAlert() // a refresh family from a new network (RotateRefresh)
	}
	if al != nil {
		x.add(al, at)
	}
	// threat_v3: scope_first_use (RecordScopeUse), refresh_impossible_travel
	// (RotateRefresh).
	for _, al := range res.Grant.GetAlerts() {
		x.add(al, at)
	}
}

// rebuild indexes the alerts of the risk window that the state database
// keeps (the FSM's alert log, raft.FSM.SecurityAlertsSince; threat_v3): at
// start, and after a snapshot is restored, so a node that restarts or
// catches up from a snapshot knows the alerts raised before.
func (x *riskIndex) rebuild(f *raft.FSM) {
	if x == nil || x.window < 0 {
		return
	}
	als, err := f.SecurityAlertsSince(x.now().Add(-x.window))
	if err != nil {
		return
	}
	for _, al := range als {
		x.add(al, time.Unix(0, al.GetTimeUnixNano()))
	}
}

func sourcePrefix(s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p.Masked()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen())
	}
	return netip.Prefix{}
}

func (x *riskIndex) add(al *raftpb.SecurityAlert, at time.Time) {
	until := at.Add(x.window)
	now := x.now()
	if al == nil || !until.After(now) {
		return
	}
	a := &riskAlert{kind: al.GetKind(), client: al.GetClientId(), subject: al.GetSubject(), source: sourcePrefix(al.GetSource()), until: until}
	if al.GetSource() != "" && !a.source.IsValid() {
		return // a source that is not an address: nothing to match it with
	}
	key := a.kind + "\x00" + a.client + "\x00" + a.subject + "\x00" + a.source.String()
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.n.Load() >= maxRiskAlerts || now.Sub(x.sweep) > time.Minute {
		x.sweepLocked(now)
	}
	t := x.tenant[al.GetTenant()]
	if t == nil {
		t = &riskTenant{alerts: map[string]*riskAlert{}, bySource: map[netip.Prefix]map[string]*riskAlert{},
			byClient: map[string]map[string]*riskAlert{}, bySubject: map[string]map[string]*riskAlert{},
			wide: map[string]*riskAlert{}, bits: map[int]bool{}}
		x.tenant[al.GetTenant()] = t
	}
	if old := t.alerts[key]; old != nil {
		if until.After(old.until) {
			old.until = until
		}
		return
	}
	if x.n.Load() >= maxRiskAlerts {
		return
	}
	x.n.Add(1)
	t.alerts[key] = a
	put := func(m map[string]*riskAlert) map[string]*riskAlert {
		if m == nil {
			m = map[string]*riskAlert{}
		}
		m[key] = a
		return m
	}
	switch {
	case a.source.IsValid():
		t.bySource[a.source] = put(t.bySource[a.source])
		t.bits[a.source.Bits()] = true
	case a.client != "":
		t.byClient[a.client] = put(t.byClient[a.client])
	case a.subject != "":
		t.bySubject[a.subject] = put(t.bySubject[a.subject])
	default:
		t.wide[key] = a
	}
}

// sweepLocked forgets the expired alerts.
func (x *riskIndex) sweepLocked(now time.Time) {
	x.sweep = now
	for tid, t := range x.tenant {
		for key, a := range t.alerts {
			if now.Before(a.until) {
				continue
			}
			delete(t.alerts, key)
			x.n.Add(-1)
			drop := func(m map[string]*riskAlert) bool { delete(m, key); return len(m) == 0 }
			switch {
			case a.source.IsValid():
				if drop(t.bySource[a.source]) {
					delete(t.bySource, a.source)
				}
			case a.client != "":
				if drop(t.byClient[a.client]) {
					delete(t.byClient, a.client)
				}
			case a.subject != "":
				if drop(t.bySubject[a.subject]) {
					delete(t.bySubject, a.subject)
				}
			default:
				delete(t.wide, key)
			}
		}
		if len(t.alerts) == 0 {
			delete(x.tenant, tid)
		}
	}
}

// signal is the Risk hook: the active alerts that apply to in.
func (x *riskIndex) signal(_ context.Context, in issuance.PolicyInput) issuance.RiskSignal {
	var r issuance.RiskSignal
	if x == nil || x.window < 0 || x.n.Load() == 0 {
		return r
	}
	now := x.now()
	ip, err := netip.ParseAddr(in.ClientIP)
	if err == nil {
		ip = ip.Unmap()
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	t := x.tenant[in.Tenant]
	if t == nil {
		return r
	}
	check := func(m map[string]*riskAlert) {
		for _, a := range m {
			if now.Before(a.until) && a.applies(in, ip) && !slices.Contains(r.Alerts, a.kind) {
				r.Alerts = append(r.Alerts, a.kind)
			}
		}
	}
	if ip.IsValid() {
		for bits := range t.bits {
			if p, err := ip.Prefix(bits); err == nil {
				check(t.bySource[p])
			}
		}
	}
	if in.ClientID != "" {
		check(t.byClient[in.ClientID])
	}
	if in.Subject != "" {
		check(t.bySubject[in.Subject])
	}
	for _, a := range t.wide {
		if now.Before(a.until) && !slices.Contains(r.TenantAlerts, a.kind) {
			r.TenantAlerts = append(r.TenantAlerts, a.kind)
		}
	}
	slices.Sort(r.Alerts)
	slices.Sort(r.TenantAlerts)
	switch {
	case len(r.Alerts) > 0:
		r.Score = 1
	case len(r.TenantAlerts) > 0:
		r.Score = 0.5
	}
	return r
}
