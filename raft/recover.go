package raft

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ReadPeersJSON reads a hashicorp/raft peers.json file (format 3: a JSON
// array of {"id": ..., "address": ..., "non_voter": false}) as members.
func ReadPeersJSON(path string) ([]Member, error) {
	conf, err := hraft.ReadConfigJSON(path)
	if err != nil {
		return nil, fmt.Errorf("raft: %s: %w", path, err)
	}
	out := make([]Member, 0, len(conf.Servers))
	for _, s := range conf.Servers {
		out = append(out, Member{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == hraft.Voter})
	}
	return out, nil
}

// Recover replaces the Raft configuration of a stopped node with members:
// hashicorp/raft's manual recovery (RecoverCluster, the peers.json
// procedure) for a cluster that lost its quorum for good. dir is the node's
// Raft directory (<data dir>/raft). It restores the newest snapshot and
// every log entry this node holds into the state database, writes a new
// snapshot carrying the new configuration and compacts the log; the node
// then starts with that configuration. Entries this node holds that the old
// cluster never committed become committed: recover the survivor with the
// newest log (highest last index, tally admin cluster status). The node
// must not run: its stores are locked by a running node and Recover fails.
func Recover(dir, id string, members []Member, logger *slog.Logger) (lastIndex uint64, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	conf := hraft.Configuration{}
	self := false
	for _, m := range members {
		s := hraft.Server{Suffrage: hraft.Voter, ID: hraft.ServerID(m.ID), Address: hraft.ServerAddress(m.Addr)}
		if !m.Voter {
			s.Suffrage = hraft.Nonvoter
		}
		self = self || (m.ID == id && m.Voter)
		conf.Servers = append(conf.Servers, s)
	}
	if !self {
		return 0, fmt.Errorf("raft: recover: %q must be a voter of the new configuration", id)
	}
	logPath := filepath.Join(dir, "raft.db")
	if _, err := os.Stat(logPath); err != nil {
		return 0, fmt.Errorf("raft: recover: no Raft log in %s: %w", dir, err)
	}
	logs, err := raftboltdb.New(raftboltdb.Options{Path: logPath, BoltOptions: &bbolt.Options{Timeout: 2 * time.Second}})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return 0, fmt.Errorf("raft: recover: %s is locked: stop the node first", logPath)
		}
		return 0, fmt.Errorf("raft: recover: open log store: %w", err)
	}
	defer logs.Close()
	fsm, err := OpenFSM(filepath.Join(dir, "state.db"), logger)
	if err != nil {
		return 0, fmt.Errorf("raft: recover: %w", err)
	}
	defer fsm.Close()
	hlog := newHCLogAdapter(logger.With("library", "hashicorp-raft"), hclog.Info)
	snaps, err := hraft.NewFileSnapshotStoreWithLogger(dir, DefaultConfig().SnapshotRetain, hlog)
	if err != nil {
		return 0, fmt.Errorf("raft: recover: open snapshot store: %w", err)
	}
	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(id)
	rc.Logger = hlog
	_, trans := hraft.NewInmemTransport(hraft.ServerAddress(id))
	if err := hraft.RecoverCluster(rc, fsm, logs, logs, snaps, trans, conf); err != nil {
		return 0, fmt.Errorf("raft: recover: %w", err)
	}
	return fsm.AppliedIndex(), nil
}
