package main

import (
	"context"
	"flag"
	"path/filepath"
	"strconv"

	"github.com/tallyauth/tally/node"
	"github.com/tallyauth/tally/raft"
)

// recoverCommand is tally admin cluster recover: hashicorp/raft's
// peers.json recovery, run locally on a stopped node's data directory.
func recoverCommand() adminCommand {
	return adminCommand{
		path:     "cluster recover",
		synopsis: "--data-dir DIR --node-id ID (--peers-json FILE | --peers ID=HOST:PORT,...)",
		summary:  "Lost quorum: rewrite a stopped node's Raft configuration (peers.json recovery). Runs locally.",
		detail: "For a cluster that lost a majority of its voters for good. Stop the surviving\n" +
			"node(s), run this on each with the same new member list, start them: they\n" +
			"elect a leader among themselves. Entries a survivor holds that were never\n" +
			"committed become committed, so recover the survivor with the highest last\n" +
			"index. The peers file is hashicorp/raft's peers.json (format 3):\n" +
			"[{\"id\": \"node1\", \"address\": \"10.0.1.1:7946\", \"non_voter\": false}].\n" +
			"See deploy/runbooks/lost-quorum.md.",
		examples: []string{
			`tally admin cluster recover --data-dir /var/lib/tally --node-id node1 --peers-json peers.json`,
			`tally admin cluster recover --data-dir /var/lib/tally --node-id node1 --peers node1=10.0.1.1:7946`,
		},
		setup: func(fs *flag.FlagSet) adminAction {
			dataDir := fs.String("data-dir", "", "the stopped node's data `directory` (required)")
			id := fs.String("node-id", "", "the node's `ID` (required)")
			peersJSON := fs.String("peers-json", "", "hashicorp/raft peers.json `file` with the new members")
			var peers []node.Peer
			fs.Var(peersFlag{&peers}, "peers", "the new voters, `id=host:port,...` (instead of --peers-json)")
			return func(ctx context.Context, s *adminSession, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				for _, f := range []struct{ name, v string }{{"data-dir", *dataDir}, {"node-id", *id}} {
					if err := requireFlag(f.name, f.v); err != nil {
						return err
					}
				}
				var members []raft.Member
				switch {
				case *peersJSON != "" && len(peers) > 0:
					return usagef("give --peers-json or --peers, not both")
				case *peersJSON != "":
					m, err := raft.ReadPeersJSON(*peersJSON)
					if err != nil {
						return err
					}
					members = m
				case len(peers) > 0:
					for _, p := range peers {
						members = append(members, raft.Member{ID: p.ID, Addr: p.RaftAddr, Voter: true})
					}
				default:
					return usagef("give the new members with --peers-json or --peers")
				}
				last, err := raft.Recover(filepath.Join(*dataDir, "raft"), *id, members, nil)
				if err != nil {
					return err
				}
				return s.printFields([]field{{"recovered", *id}, {"members", strconv.Itoa(len(members))}, {"applied_index", strconv.FormatUint(last, 10)}})
			}
		},
	}
}
