package node

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Security alerts (issue 13): the issuance detectors (issuance/alerts.go)
// hand their alerts to the node, which records each as a Raft command
// (op 140 RaiseSecurityAlert, feature "threat_v2"): the FSM announces it
// once per minute and alert key for the whole cluster, on the event log
// (tally.<tenant>.security.alert) and in the SIEM feed (siem.go, a
// Detection Finding). Proposals run off the request path, from a bounded
// queue: when the queue is full (Raft slower than the attack) an alert is
// dropped and counted, never waited for.

func init() { features = append(features, raft.FeatureThreatV2, raft.FeatureRefreshNetwork) }

// alertQueue is how many alerts may wait for their proposal.
const alertQueue = 256

type alertSink struct {
	q       chan issuance.SecurityAlert
	dropped atomic.Int64
	ready   atomic.Bool
}

// startAlerts wires the issuance detectors to Raft until the node closes.
func (n *Node) startAlerts() {
	if n.cfg.RateLimits.Off {
		return
	}
	s := &alertSink{q: make(chan issuance.SecurityAlert, alertQueue)}
	n.alerts = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	n.threat.alertStop = func() { cancel(); <-done }
	n.iss.SetAlertSink(func(a issuance.SecurityAlert) {
		select {
		case s.q <- a:
		default:
			s.dropped.Add(1)
		}
	})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case a := <-s.q:
				n.proposeAlert(ctx, s, a)
			}
		}
	}()
}

// proposeAlert records a as op 140 once every member supports it (the
// recorded cluster version enables threat_v2 or, while none is recorded,
// every live member lists it); before that the alert is only logged (by
// issuance). The recorded version decides first, so a member that is down
// (the attack may be what took it down) does not stop the alerts.
func (n *Node) proposeAlert(ctx context.Context, s *alertSink, a issuance.SecurityAlert) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.WriteTimeout)
	defer cancel()
	if st := n.raft.State(); st.ClusterVersion() != nil {
		if !st.FeatureEnabled(raft.FeatureThreatV2) {
			n.log.Warn("security alert not recorded: the cluster version does not enable it", "kind", a.Kind, "tenant", a.Tenant)
			return
		}
	} else if !s.ready.Load() {
		if n.cl == nil || !n.cl.allSupport(ctx, raft.FeatureThreatV2) {
			n.log.Warn("security alert not recorded: not every member supports it yet", "kind", a.Kind, "tenant", a.Tenant)
			return
		}
		s.ready.Store(true)
	}
	al := &raftpb.SecurityAlert{
		Kind: a.Kind, Tenant: a.Tenant, ClientId: a.ClientID, Subject: a.Subject, Source: a.Source, Signal: a.Signal,
		Count: uint32(max(a.Count, 0)), WindowSeconds: uint32(a.Window / time.Second), Node: n.cfg.NodeID, Region: n.cfg.Region,
	}
	if _, err := n.rep.propose(ctx, &raftpb.Command{Op: &raftpb.Command_RaiseSecurityAlert{RaiseSecurityAlert: &raftpb.RaiseSecurityAlert{Alert: al}}}); err != nil {
		n.log.Error("security alert not recorded", "err", err, "kind", a.Kind, "tenant", a.Tenant, "signal", a.Signal)
	}
}

// AlertsDropped is how many security alerts this node did not record: its
// queue was full, or it raised too many a second.
func (n *Node) AlertsDropped() int64 {
	d := n.iss.AlertsDropped()
	if n.alerts != nil {
		d += n.alerts.dropped.Load()
	}
	return d
}
