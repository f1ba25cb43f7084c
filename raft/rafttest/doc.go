// Package rafttest runs real tally Raft nodes in tests — real
// hashicorp/raft, the bbolt FSM, files under t.TempDir() — on a network
// that injects faults, with polling helpers instead of sleeps.
//
//	c := rafttest.NewCluster(t, 3)
//	c.Propose(cmd)              // through the leader, retried with one request id
//	c.Partition(c.LeaderIndex()) // the leader into a minority
//	c.Heal()
//	c.Kill(i); c.Restart(i)     // hard stop; same data directory and address
//	c.Delay(0, 1, 30*time.Millisecond)
//	c.CheckInvariants()         // replicas equal, no request id applied twice
//
// # The fault-injecting network
//
// Network gives each node a hashicorp/raft StreamLayer over real loopback
// TCP (or wraps the node's own layer, such as tally's mutual-TLS one, with
// Network.Wrap). Every connection starts with a header naming the dialing
// node, so the network knows both ends and can, per directed link, cut it
// (dials and writes fail, open connections are closed) or delay it (bytes
// are held for a fixed one-way time and delivered in order, without
// blocking the writer). Faults therefore hit Raft the way a real network
// does — lost connections and late bytes — while the nodes themselves run
// unmodified.
//
// # Invariants
//
// The Cluster observes every entry each node applies (FSM.OnApplied) and
// CheckInvariants fails the test if a request id took effect at two log
// indices, if two nodes applied different commands at one index, or if the
// running replicas do not converge to identical records.
package rafttest
