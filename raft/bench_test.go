package raft

import (
	"fmt"
	"testing"

	hraft "github.com/hashicorp/raft"
)

// BenchmarkApplyBatch measures entries/s through the FSM (one bbolt
// transaction and fsync per batch) for a revocation-heavy log.
func BenchmarkApplyBatch(b *testing.B) {
	for _, size := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			f := openTestFSM(b)
			mustApply(b, f, createTenant(t0, "acme"))
			logs := make([]*hraft.Log, b.N)
			for i := range logs {
				logs[i] = logOf(b, uint64(i)+2, revoke(t0+int64(i), "acme", fmt.Sprintf("jti-%d", i), t0+hour))[0]
			}
			b.ResetTimer()
			for i := 0; i < len(logs); i += size {
				for _, r := range f.ApplyBatch(logs[i:min(i+size, len(logs))]) {
					if r.(Result).Err != nil {
						b.Fatal(r.(Result).Err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
