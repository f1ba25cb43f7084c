package raft

import (
	"fmt"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// BenchmarkDeleteUser measures applying one DeleteUser, which compacts the
// state database (erasure on disk), against a SetUserStatus of the same
// user that does not, in a tenant of 20000 users.
func BenchmarkDeleteUser(b *testing.B) {
	const users = 20000
	for _, op := range []string{"delete", "set_status"} {
		b.Run(op, func(b *testing.B) {
			f := openTestFSM(b)
			mustApply(b, f, createTenant(t0, "t"))
			var batch []*raftpb.Command
			for i := range users {
				batch = append(batch, flowCmd(t0+1, &raftpb.CreateUser{User: testUser("t", fmt.Sprintf("u%d", i), fmt.Sprintf("user%d", i))}))
				if len(batch) == 500 {
					mustApply(b, f, batch...)
					batch = nil
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("u%d", i%users)
				if op == "delete" {
					mustApply(b, f, delCmd(t0+2+int64(i), &raftpb.DeleteUser{Tenant: "t", UserId: id}))
					b.StopTimer()
					mustApply(b, f, flowCmd(t0+2+int64(i), &raftpb.CreateUser{User: testUser("t", id+"x", fmt.Sprintf("user%dx", i))}))
					b.StartTimer()
				} else {
					mustApply(b, f, flowCmd(t0+2+int64(i), &raftpb.SetUserStatus{Tenant: "t", UserId: id, Disabled: i%2 == 0}))
				}
			}
		})
	}
}
