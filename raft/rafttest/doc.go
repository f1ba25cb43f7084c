// Package rafttest runs real tally Raft nodes in tests: loopback TCP
// transports, bbolt files under t.TempDir(), fast timeouts, and polling
// helpers instead of sleeps.
//
//	c := rafttest.NewCluster(t, 3)
//	res := c.Propose(cmd)
//	c.WaitApplied(res.Index)
//	c.CheckConverged()
package rafttest
