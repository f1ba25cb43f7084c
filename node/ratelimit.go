package node

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go"
)

// rateShareSubject carries, every issuance.RateShareInterval, what each
// node's rate limiter let through, so that every node takes the others'
// traffic out of its own budgets (issuance/ratelimit.go): a client spreading
// its requests over the cluster meets one cluster-wide limit, overshooting
// it by at most one interval's worth per other node. Core NATS (no
// JetStream): a lost message only widens the overshoot of one interval.
const rateShareSubject = "tally.internal.ratelimit"

type rateShareMsg struct {
	Node   string         `json:"node"`
	Counts map[string]int `json:"counts"`
}

// shareRateLimits wires the issuance rate limiter to the event log's NATS
// connection. Without NATS each node enforces its budgets alone.
func (n *Node) shareRateLimits() error {
	if n.events == nil || n.cfg.RateLimits.Off {
		return nil
	}
	nc := n.events.nc
	sub, err := nc.Subscribe(rateShareSubject, func(m *nats.Msg) {
		var msg rateShareMsg
		if json.Unmarshal(m.Data, &msg) != nil || msg.Node == n.cfg.NodeID {
			return
		}
		n.iss.AbsorbRates(msg.Counts)
	})
	if err != nil {
		return err
	}
	sub.SetPendingLimits(1024, 64<<20)
	ctx, cancel := context.WithCancel(context.Background())
	prev := n.events.cancel
	n.events.cancel = func() { cancel(); prev() }
	n.iss.SetRateShare(ctx, func(counts map[string]int) {
		b, err := json.Marshal(rateShareMsg{Node: n.cfg.NodeID, Counts: counts})
		if err == nil {
			_ = nc.Publish(rateShareSubject, b)
		}
	})
	return nil
}

// RatesAbsorbed is how many requests the other nodes reported to this
// node's rate limiter (issuance.Server.RatesAbsorbed).
func (n *Node) RatesAbsorbed() int64 { return n.iss.RatesAbsorbed() }
