package main

// tally admin cluster …, tally admin snapshot …: the cluster admin API
// (node/api/cluster/v1) and the local certificate tools.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/raft"
)

// clusterClient returns the cluster admin API client on the same server and
// credential as the admin API.
func (s *adminSession) clusterClient() (clusterv1connect.ClusterAdminServiceClient, error) {
	if _, err := s.client(); err != nil {
		return nil, err
	}
	token, err := s.g.resolveToken(s.getenv)
	if err != nil {
		return nil, err
	}
	return clusterv1connect.NewClusterAdminServiceClient(s.hc, s.server, connect.WithInterceptors(bearerAuth("Bearer "+token))), nil
}

// bearerAuth sets the Authorization header on unary and streaming calls.
type bearerAuth string

func (b bearerAuth) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", string(b))
		return next(ctx, req)
	}
}

func (b bearerAuth) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		c := next(ctx, spec)
		c.RequestHeader().Set("Authorization", string(b))
		return c
	}
}

func (b bearerAuth) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func clusterCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "cluster status",
			synopsis: "",
			summary:  "Show every member (id, region, voter, leader, term, applied index, lag, health) and the cluster version.",
			detail: "Any node answers; it asks every member for its own view, with a short timeout,\n" +
				"and marks members that do not answer as unreachable. Health is healthy,\n" +
				"stale (has not heard from a leader within its staleness bound), lagging\n" +
				"(more than 1000 entries behind the leader's commit index), unreachable, stopped\n" +
				"(its binary does not understand a log entry: upgrade it) or too old (its binary\n" +
				"does not implement the cluster version shown under the table).",
			examples: []string{`tally admin cluster status`, `tally admin cluster status --output json`},
			setup:    clusterStatus,
		},
		memberAddCommand("cluster add-voter", "Add a voting member (it must already run with a node certificate of the cluster CA).", false),
		memberAddCommand("cluster add-nonvoter", "Add a non-voting member: it replicates the state and serves reads and issuance but does not vote.", true),
		{
			path:     "cluster remove",
			takesArg: true,
			synopsis: "ID",
			summary:  "Remove a member from the Raft configuration.",
			detail:   "Stop the node afterwards. Removing voters below a majority of the remaining ones loses the quorum. Removal is final: the id goes on the cluster's deny list and its certificate is refused on every node's cluster port; bring a replacement up under a new node id.",
			examples: []string{`tally admin cluster remove node4`},
			setup:    clusterRemove,
		},
		{
			path:     "cluster transfer-leadership",
			synopsis: "[--to ID]",
			summary:  "Hand leadership to a voter (any up-to-date voter without --to).",
			examples: []string{`tally admin cluster transfer-leadership --to node2`, `tally admin cluster transfer-leadership`},
			setup:    clusterTransferLeadership,
		},
		{
			path:     "cluster ca",
			takesArg: true,
			synopsis: "init --out DIR",
			summary:  "Create a cluster CA (ECDSA P-256) in DIR: ca.pem and ca-key.pem. Runs locally.",
			detail:   "Keep ca-key.pem offline; nodes need only ca.pem and their own certificate.",
			examples: []string{`tally admin cluster ca init --out ./cluster-ca`},
			setup:    clusterCA,
		},
		{
			path:     "cluster node-cert",
			synopsis: "--ca DIR --node-id ID --ip IP [--dns NAME] --out DIR",
			summary:  "Issue a node certificate (ECDSA P-256, server and client) with the CA in DIR. Runs locally.",
			detail: "The certificate names the node as ID" + raft.NodeNameSuffix + " and carries the IP addresses\n" +
				"and DNS names peers dial it at. --out receives node.pem, node-key.pem and ca.pem,\n" +
				"the layout of the node's tls_dir.",
			examples: []string{`tally admin cluster node-cert --ca ./cluster-ca --node-id node1 --ip 127.0.0.1 --out ./node1/tls`},
			setup:    clusterNodeCert,
		},
		{
			path:     "snapshot save",
			takesArg: true,
			synopsis: "FILE",
			summary:  "Save a consistent copy of the answering node's state database to FILE.",
			detail: "The file is a bbolt state database as of one applied index (printed). See the\n" +
				"README, \"Snapshots and restore\", for restoring a cluster from it. FILE is\n" +
				"written to FILE.tmp and renamed when complete; - writes to stdout.",
			examples: []string{`tally admin snapshot save backup.db --timeout 5m`},
			setup:    snapshotSave,
		},
		{
			path:     "snapshot restore",
			takesArg: true,
			synopsis: "FILE",
			summary:  "Replace the whole cluster's state with a saved snapshot (disaster recovery).",
			detail: "The snapshot is sent to the leader (found through --server), installed\n" +
				"through Raft and replicated to every member. Everything written since the\n" +
				"snapshot was saved is lost. The cluster must use the same key-encryption key\n" +
				"as the one that saved it. See the README, \"Snapshots and restore\".",
			examples: []string{`tally admin snapshot restore backup.db --timeout 5m`},
			setup:    snapshotRestore,
		},
	}
}

// clusterStatus is "tally admin cluster status": show every member (id, region, voter, leader, term, applied index, lag, health) and the cluster version.
func clusterStatus(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		api, err := s.clusterClient()
		if err != nil {
			return err
		}
		res, err := api.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{}))
		if err != nil {
			return err
		}
		if s.json {
			b, err := protoJSON(res.Msg)
			if err != nil {
				return err
			}
			return s.writeJSON(b)
		}
		rows := make([][]string, 0, len(res.Msg.Members))
		for _, m := range res.Msg.Members {
			rows = append(rows, []string{m.Id, m.Region, textBool(m.Voter), textBool(m.Leader), m.State,
				strconv.FormatUint(m.Term, 10), strconv.FormatUint(m.AppliedIndex, 10), strconv.FormatUint(m.Lag, 10),
				m.Health, m.RaftAddress, m.HttpAddress})
		}
		if err := writeTable(s.e.stdout, []string{"ID", "REGION", "VOTER", "LEADER", "STATE", "TERM", "APPLIED", "LAG", "HEALTH", "RAFT", "HTTP"}, rows); err != nil {
			return err
		}
		return writeClusterVersion(s.e.stdout, res.Msg) // admin_version.go
	}
}

// clusterRemove is "tally admin cluster remove": remove a member from the Raft configuration.
func clusterRemove(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := oneArg(args, "member ID")
		if err != nil {
			return err
		}
		api, err := s.clusterClient()
		if err != nil {
			return err
		}
		if _, err := api.RemoveServer(ctx, connect.NewRequest(&clusterv1.RemoveServerRequest{Id: id})); err != nil {
			return err
		}
		return s.printFields([]field{{"removed", id}})
	}
}

// clusterTransferLeadership is "tally admin cluster transfer-leadership": hand leadership to a voter (any up-to-date voter without --to).
func clusterTransferLeadership(fs *flag.FlagSet) adminAction {
	to := fs.String("to", "", "`ID` of the voter to lead (default: any)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		api, err := s.clusterClient()
		if err != nil {
			return err
		}
		res, err := api.TransferLeadership(ctx, connect.NewRequest(&clusterv1.TransferLeadershipRequest{To: *to}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg, []field{{"leader", res.Msg.LeaderId}})
	}
}

// clusterCA is "tally admin cluster ca": create a cluster CA (ECDSA P-256) in DIR: ca.pem and ca-key.pem. Runs locally.
func clusterCA(fs *flag.FlagSet) adminAction {
	out := fs.String("out", "", "`directory` for the CA (required; must not hold one)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		verb, err := oneArg(args, "init")
		if err != nil {
			return err
		}
		if verb != "init" {
			return usagef("unknown command %q: want init", verb)
		}
		if err := requireFlag("out", *out); err != nil {
			return err
		}
		if err := raft.InitCADir(*out, time.Time{}); err != nil {
			return err
		}
		return s.printFields([]field{{"ca_cert", filepath.Join(*out, raft.CACertFile)}, {"ca_key", filepath.Join(*out, raft.CAKeyFile)}})
	}
}

// clusterNodeCert is "tally admin cluster node-cert": issue a node certificate (ECDSA P-256, server and client) with the CA in DIR. Runs locally.
func clusterNodeCert(fs *flag.FlagSet) adminAction {
	ca := fs.String("ca", "", "CA `directory` (required)")
	id := fs.String("node-id", "", "node `ID` (required)")
	out := fs.String("out", "", "output `directory` (required)")
	validity := fs.Duration("validity", 365*24*time.Hour, "how long the certificate is valid")
	ips := &listFlag{split: true}
	dns := &listFlag{split: true}
	fs.Var(ips, "ip", "IP `address` peers dial (repeatable)")
	fs.Var(dns, "dns", "DNS `name` peers dial (repeatable)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		// In the order of the synopsis: the first missing flag is named,
		// the same one every time.
		for _, f := range []struct{ name, v string }{{"ca", *ca}, {"node-id", *id}, {"out", *out}} {
			if err := requireFlag(f.name, f.v); err != nil {
				return err
			}
		}
		if len(ips.values) == 0 && len(dns.values) == 0 {
			return usagef("give at least one --ip or --dns")
		}
		o := raft.CertOptions{NodeID: *id, DNSNames: dns.values, Validity: *validity}
		for _, v := range ips.values {
			ip := net.ParseIP(v)
			if ip == nil {
				return usagef("--ip %q is not an IP address", v)
			}
			o.IPs = append(o.IPs, ip)
		}
		if err := raft.IssueNodeCertDir(*ca, *out, o); err != nil {
			return err
		}
		return s.printFields([]field{{"node_id", *id}, {"cert", filepath.Join(*out, raft.NodeCertFile)}, {"key", filepath.Join(*out, raft.NodeKeyFile)}, {"ca_cert", filepath.Join(*out, raft.CACertFile)}})
	}
}

// snapshotSave is "tally admin snapshot save": save a consistent copy of the answering node's state database to FILE.
func snapshotSave(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		path, err := oneArg(args, "FILE")
		if err != nil {
			return err
		}
		api, err := s.clusterClient()
		if err != nil {
			return err
		}
		return saveSnapshot(ctx, s, api, path)
	}
}

// snapshotRestore is "tally admin snapshot restore": replace the whole cluster's state with a saved snapshot (disaster recovery).
func snapshotRestore(fs *flag.FlagSet) adminAction {
	return func(ctx context.Context, s *adminSession, args []string) error {
		path, err := oneArg(args, "FILE")
		if err != nil {
			return err
		}
		return restoreSnapshot(ctx, s, path)
	}
}

// restoreSnapshot uploads path to the leader.
func restoreSnapshot(ctx context.Context, s *adminSession, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	api, err := s.clusterClient()
	if err != nil {
		return err
	}
	st, err := api.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{}))
	if err != nil {
		return err
	}
	leader := ""
	for _, m := range st.Msg.Members {
		if m.Leader && m.HttpAddress != "" {
			leader = m.HttpAddress
		}
	}
	if leader == "" {
		return errors.New("the cluster has no leader now; retry")
	}
	u, err := url.Parse(s.server)
	if err != nil {
		return err
	}
	u.Host = leader
	token, err := s.g.resolveToken(s.getenv)
	if err != nil {
		return err
	}
	lapi := clusterv1connect.NewClusterAdminServiceClient(s.hc, u.String(), connect.WithInterceptors(bearerAuth("Bearer "+token)))
	stream := lapi.RestoreSnapshot(ctx)
	buf := make([]byte, 256<<10)
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			if err := stream.Send(&clusterv1.RestoreSnapshotRequest{Chunk: buf[:n]}); err != nil {
				if _, cerr := stream.CloseAndReceive(); cerr != nil {
					return cerr
				}
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	res, err := stream.CloseAndReceive()
	if err != nil {
		return err
	}
	return s.printFields([]field{{"restored", path}, {"leader", leader}, {"state_index", strconv.FormatUint(res.Msg.StateIndex, 10)}, {"raft_index", strconv.FormatUint(res.Msg.RaftIndex, 10)}})
}

func memberAddCommand(path, summary string, nonvoter bool) adminCommand {
	return adminCommand{
		path:     path,
		synopsis: "--id ID --address HOST:PORT",
		summary:  summary,
		detail:   "HOST:PORT is the new node's advertised Raft (cluster) address. A node started\nwith join set adds itself; this is for nodes started without it.",
		examples: []string{"tally admin " + path + " --id node4 --address 10.0.3.4:7946"},
		setup: func(fs *flag.FlagSet) adminAction {
			id := fs.String("id", "", "member `ID` (required)")
			addr := fs.String("address", "", "member Raft `address` host:port (required)")
			return func(ctx context.Context, s *adminSession, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				if err := requireFlag("id", *id); err != nil {
					return err
				}
				if err := requireFlag("address", *addr); err != nil {
					return err
				}
				api, err := s.clusterClient()
				if err != nil {
					return err
				}
				if nonvoter {
					_, err = api.AddNonvoter(ctx, connect.NewRequest(&clusterv1.AddNonvoterRequest{Id: *id, Address: *addr}))
				} else {
					_, err = api.AddVoter(ctx, connect.NewRequest(&clusterv1.AddVoterRequest{Id: *id, Address: *addr}))
				}
				if err != nil {
					return err
				}
				return s.printFields([]field{{"added", *id}, {"address", *addr}, {"voter", textBool(!nonvoter)}})
			}
		},
	}
}

// saveSnapshot streams the snapshot to path (or stdout for "-").
func saveSnapshot(ctx context.Context, s *adminSession, api clusterv1connect.ClusterAdminServiceClient, path string) error {
	stream, err := api.SaveSnapshot(ctx, connect.NewRequest(&clusterv1.SaveSnapshotRequest{}))
	if err != nil {
		return err
	}
	defer stream.Close()
	var w io.Writer = s.e.stdout
	var f *os.File
	if path != "-" {
		if f, err = os.OpenFile(path+".tmp", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err != nil {
			return err
		}
		defer func() {
			if f != nil {
				f.Close()
				os.Remove(path + ".tmp")
			}
		}()
		w = f
	}
	var index uint64
	var size int64
	for stream.Receive() {
		m := stream.Msg()
		if index == 0 {
			index = m.AppliedIndex
		}
		n, err := w.Write(m.Chunk)
		size += int64(n)
		if err != nil {
			return err
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	if index == 0 || size == 0 {
		return errors.New("the server sent an empty snapshot")
	}
	if f != nil {
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		f = nil
		if err := os.Rename(path+".tmp", path); err != nil {
			return err
		}
		return s.printFields([]field{{"file", path}, {"applied_index", strconv.FormatUint(index, 10)}, {"bytes", strconv.FormatInt(size, 10)}})
	}
	fmt.Fprintf(s.e.stderr, "snapshot at applied index %d, %d bytes\n", index, size)
	return nil
}

// printFields prints key/value results of commands without a response
// message: "key: value" lines, or one flat JSON object of strings.
func (s *adminSession) printFields(fields []field) error {
	if !s.json {
		return writeFields(s.e.stdout, fields)
	}
	var b []byte
	b = append(b, '{')
	for i, f := range fields {
		if i > 0 {
			b = append(b, ',')
		}
		k, _ := json.Marshal(f.key)
		v, _ := json.Marshal(f.value)
		b = append(append(append(b, k...), ':'), v...)
	}
	return s.writeJSON(append(b, '}'))
}
