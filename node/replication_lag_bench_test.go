package node_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// BenchmarkRevocationApplyLag measures how long after a revocation is
// acknowledged the other nodes of a 3-node cluster have it in force. Each
// revocation goes through a follower (so it is forwarded to the leader and
// acknowledged once the follower has applied it); an apply hook on every
// node's FSM records when each node applied it. The lag of a node is its
// apply time minus the acknowledgement time, 0 when it applied first.
// Revocations are sent one at a time, so no lag is queueing.
//
//	go test -run '^$' -bench RevocationApplyLag -benchtime 2000x ./node/
func BenchmarkRevocationApplyLag(b *testing.B) {
	c := nodetest.StartCluster(b, 3)
	entry := c.Follower()
	type key struct {
		node int
		jti  string
	}
	var mu sync.Mutex
	applied := map[key]time.Time{}
	others := []int{}
	for i := 0; i < c.Len(); i++ {
		i := i
		if c.Node(i) != entry {
			others = append(others, i)
		}
		c.Node(i).Raft().FSM().OnApplied(func(_ uint64, cmd *raftpb.Command, _ raft.Result) {
			if rv := cmd.GetRevokeToken(); rv != nil {
				now := time.Now()
				mu.Lock()
				applied[key{i, rv.GetRevocation().GetJti()}] = now
				mu.Unlock()
			}
		})
	}
	ctx := context.Background()
	acked := make(map[string]time.Time, b.N)
	jtis := make([]string, b.N)
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		jti := fmt.Sprintf("lag-%d-%d", n, time.Now().UnixNano())
		jtis[n] = jti
		_, err := entry.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
			Tenant: "default", Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		}))
		if err != nil {
			b.Fatal(err)
		}
		acked[jti] = time.Now()
		if !entry.Raft().State().Revoked("default", jti) {
			b.Fatalf("revocation %s acknowledged by a node that does not have it in force", jti)
		}
	}
	b.StopTimer()

	nodetest.CheckFor(b, 30*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, jti := range jtis {
			for _, i := range others {
				if _, ok := applied[key{i, jti}]; !ok {
					return fmt.Errorf("node %d has not applied %s", i, jti)
				}
			}
		}
		return nil
	})
	var lags []time.Duration
	before := 0
	mu.Lock()
	for _, jti := range jtis {
		for _, i := range others {
			d := applied[key{i, jti}].Sub(acked[jti])
			if d <= 0 {
				before++
				d = 0
			}
			lags = append(lags, d)
		}
	}
	mu.Unlock()
	slices.Sort(lags)
	pct := func(p float64) float64 {
		return float64(lags[int(p*float64(len(lags)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-lag-ms")
	b.ReportMetric(pct(0.99), "p99-lag-ms")
	b.ReportMetric(float64(lags[len(lags)-1])/float64(time.Millisecond), "max-lag-ms")
	b.ReportMetric(100*float64(before)/float64(len(lags)), "%applied-before-ack")
}
