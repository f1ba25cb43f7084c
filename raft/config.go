package raft

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Config configures a Node. Start from DefaultConfig and set ID and DataDir.
type Config struct {
	// ID is this server's Raft id, unique and stable in the cluster.
	ID string
	// DataDir holds state.db (the FSM), raft.db (log and stable store) and
	// snapshots/.
	DataDir string
	// BindAddr is the Raft TCP listen address, e.g. "127.0.0.1:7000" or
	// "127.0.0.1:0" for an ephemeral port. Ignored when Transport is set.
	BindAddr string
	// AdvertiseAddr is the address peers dial; empty means the bound address
	// (which must then not be unspecified, like 0.0.0.0).
	AdvertiseAddr string
	// Bootstrap makes a node without any Raft state start a one-voter
	// cluster of itself. It is ignored when state exists.
	Bootstrap bool
	// BootstrapServers is the initial configuration a Bootstrap node
	// writes when it has no Raft state: every initial voter is given the
	// same list (including itself), so any of them may bootstrap and they
	// agree. Empty means a one-voter cluster of this node.
	BootstrapServers []Member
	// Transport, if set, is used instead of a TCP transport (tests inject an
	// in-memory one). The caller keeps ownership and closes it.
	Transport hraft.Transport
	// StreamLayer, if set (and Transport is not), carries Raft traffic
	// instead of plain TCP: pass ClusterListener.StreamLayer() for mutual
	// TLS. Open builds a NetworkTransport on it and closes it on Close.
	StreamLayer hraft.StreamLayer
	// Logger receives the node's and hashicorp/raft's logs; nil discards.
	Logger *slog.Logger

	// ApplyTimeout bounds how long Propose waits to enqueue a command.
	ApplyTimeout time.Duration
	// Raft timing; see hashicorp/raft's Config. LeaderLeaseTimeout must not
	// exceed HeartbeatTimeout.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// MaxAppendEntries is the largest batch replicated and applied at once
	// (1 to 1024); it also sizes the apply queue.
	MaxAppendEntries int
	// SnapshotThreshold is how many new entries trigger a snapshot, checked
	// every SnapshotInterval; TrailingLogs entries are kept after one.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// SnapshotRetain is how many snapshots are kept on disk (at least 1).
	SnapshotRetain int
}

// DefaultConfig returns settings for a LAN cluster; ID and DataDir are left
// empty.
func DefaultConfig() Config {
	return Config{
		BindAddr:           "127.0.0.1:0",
		ApplyTimeout:       10 * time.Second,
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		CommitTimeout:      50 * time.Millisecond,
		MaxAppendEntries:   64,
		SnapshotThreshold:  8192,
		SnapshotInterval:   120 * time.Second,
		TrailingLogs:       10240,
		SnapshotRetain:     2,
	}
}

// Validate reports every problem with c (joined), or nil.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("raft: config: "+format, args...))
	}
	if c.ID == "" {
		bad("ID is empty")
	}
	if c.DataDir == "" {
		bad("DataDir is empty")
	}
	if c.Transport == nil && c.StreamLayer == nil && c.BindAddr == "" {
		bad("BindAddr is empty and no Transport or StreamLayer is set")
	}
	if len(c.BootstrapServers) > 0 {
		self := false
		seen := map[string]bool{}
		for _, m := range c.BootstrapServers {
			if m.ID == "" || m.Addr == "" {
				bad("bootstrap server %+v: id and address are required", m)
			}
			if seen[m.ID] {
				bad("bootstrap server %q listed twice", m.ID)
			}
			seen[m.ID] = true
			if m.ID == c.ID {
				self = true
				if !m.Voter {
					bad("bootstrap server %q (this node) must be a voter", m.ID)
				}
			}
		}
		if !self && c.ID != "" {
			bad("bootstrap servers do not include this node %q", c.ID)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		min  time.Duration
	}{
		{"ApplyTimeout", c.ApplyTimeout, time.Millisecond},
		{"HeartbeatTimeout", c.HeartbeatTimeout, 5 * time.Millisecond},
		{"ElectionTimeout", c.ElectionTimeout, 5 * time.Millisecond},
		{"LeaderLeaseTimeout", c.LeaderLeaseTimeout, 5 * time.Millisecond},
		{"CommitTimeout", c.CommitTimeout, time.Millisecond},
		{"SnapshotInterval", c.SnapshotInterval, 5 * time.Millisecond},
	} {
		if d.v < d.min {
			bad("%s %v is below %v", d.name, d.v, d.min)
		}
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		bad("LeaderLeaseTimeout %v exceeds HeartbeatTimeout %v", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.MaxAppendEntries < 1 || c.MaxAppendEntries > 1024 {
		bad("MaxAppendEntries %d: want 1 to 1024", c.MaxAppendEntries)
	}
	if c.SnapshotThreshold < 1 {
		bad("SnapshotThreshold is 0")
	}
	if c.SnapshotRetain < 1 {
		bad("SnapshotRetain %d: want at least 1", c.SnapshotRetain)
	}
	return errors.Join(errs...)
}

// raftConfig translates c into hashicorp/raft's configuration.
func (c Config) raftConfig(logger *hclogAdapter) *hraft.Config {
	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(c.ID)
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	rc.CommitTimeout = c.CommitTimeout
	rc.MaxAppendEntries = c.MaxAppendEntries
	rc.BatchApplyCh = true
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.SnapshotInterval = c.SnapshotInterval
	rc.TrailingLogs = c.TrailingLogs
	rc.Logger = logger
	return rc
}

// Raft timing profiles (see ApplyProfile).
const (
	ProfileLAN = "lan"
	ProfileWAN = "wan"
)

// ApplyProfile sets the Raft timing for a network profile:
//
//   - "lan" (DefaultConfig): voters in one data centre or in nearby zones,
//     round trips under ~5 ms. Heartbeat and election timeouts of 500 ms,
//     a 250 ms leader lease, 50 ms commit timeout, batches of up to 64
//     entries. A dead or stopped leader is replaced in about 0.7-1.5 s
//     (measured with real processes, SIGSTOP and SIGKILL), so that writes
//     forwarded through a follower resume within 2 s; with 1 s timeouts
//     it took 1.1-2.7 s.
//   - "wan": voters in different regions, round trips up to ~150 ms.
//     Timeouts of 2.5 s and a 1.25 s lease, so that a few delayed
//     heartbeats do not start an election; batches of up to 256 entries, so
//     one replication round trip carries more writes when commits queue up
//     behind the latency. A dead leader is replaced in about 3-5 s.
//
// Both keep batching of the apply queue on. Other fields are left alone.
func (c *Config) ApplyProfile(name string) error {
	switch name {
	case ProfileLAN, "":
		d := DefaultConfig()
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = d.HeartbeatTimeout, d.ElectionTimeout, d.LeaderLeaseTimeout
		c.CommitTimeout, c.MaxAppendEntries = d.CommitTimeout, d.MaxAppendEntries
	case ProfileWAN:
		c.HeartbeatTimeout = 2500 * time.Millisecond
		c.ElectionTimeout = 2500 * time.Millisecond
		c.LeaderLeaseTimeout = 1250 * time.Millisecond
		c.CommitTimeout = 50 * time.Millisecond
		c.MaxAppendEntries = 256
	default:
		return fmt.Errorf("raft: profile %q: want %q or %q", name, ProfileLAN, ProfileWAN)
	}
	return nil
}
