package raft_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft/rafttest"
)

// BenchmarkNodePropose measures committed proposals/s on a single-node
// cluster with 1 and 16 concurrent proposers (batching shows with more).
func BenchmarkNodePropose(b *testing.B) {
	for _, proposers := range []int{1, 16} {
		b.Run(fmt.Sprintf("proposers=%d", proposers), func(b *testing.B) {
			cfg := rafttest.Config(b, "bench")
			cfg.Bootstrap = true
			n := rafttest.Open(b, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rafttest.CheckFor(b, rafttest.Timeout, 10*time.Millisecond, func() error {
				if !n.IsLeader() {
					return fmt.Errorf("not leader")
				}
				return nil
			})
			if res, err := n.Propose(ctx, newTenant("acme")); err != nil || res.Err != nil {
				b.Fatal(err, res.Err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			var failed atomic.Value
			b.ResetTimer()
			for p := 0; p < proposers; p++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						res, err := n.Propose(ctx, newRevocation("acme", fmt.Sprintf("j%d", i), t0+int64(time.Hour)))
						if err == nil {
							err = res.Err
						}
						if err != nil {
							failed.Store(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "proposals/s")
		})
	}
}
